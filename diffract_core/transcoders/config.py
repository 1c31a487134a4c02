"""What a transcoder is and where it reads: the JSON config stored beside its weights."""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field, replace
from typing import Any, Literal, NamedTuple

import torch

from ..errors import CorruptFileError, SettingsError
from ..file_reading import parse_json

Stream = Literal["img", "txt"]
Kind = Literal["transcoder", "sae"]

STREAMS: tuple[Stream, ...] = ("img", "txt")
KINDS: tuple[Kind, ...] = ("transcoder", "sae")
FORMAT_NAME = "diffract-transcoder"
FORMAT_VERSION = 1

# Far above any real transcoder (FLUX: d_model 3072, 49152 features, a 256-wide time embedding), low
# enough that a config or checkpoint declaring more is refused before anything of that size is allocated.
MAX_D_MODEL = 65_536
MAX_D_FEATURES = 1 << 24
MAX_TIME_WIDTH = 65_536
MAX_LAYER = 999

DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "bfloat16": torch.bfloat16,
    "float16": torch.float16,
}
DTYPE_ALIASES: dict[str, str] = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}


def dtype_from_name(name: str) -> torch.dtype:
    """`'bf16'`, `'bfloat16'`, ... -> torch dtype; anything else is a clear error."""
    canonical = DTYPE_ALIASES.get(name, name)
    if canonical not in DTYPES:
        choices = ", ".join([*DTYPE_ALIASES, *DTYPES])
        raise SettingsError(f"unknown dtype {name!r}; use one of: {choices}")
    return DTYPES[canonical]


def dtype_name(dtype: torch.dtype) -> str:
    for name, candidate in DTYPES.items():
        if candidate == dtype:
            return name
    raise SettingsError(f"transcoder weights must be float32, bfloat16 or float16, not {dtype}")


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


class Site(NamedTuple):
    """A transcoder site: FLUX's double block `layer`, its image or text MLP. A (stream, layer) tuple,
    so it is also a SiteKey; the one place that knows where the MLP sits in FLUX (BFL / ComfyUI names)."""

    stream: Stream
    layer: int

    @property
    def mlp_name(self) -> str:
        """The MLP's attribute name in its double block."""
        return f"{self.stream}_mlp"

    @property
    def module_path(self) -> str:
        """The MLP's module path inside the diffusion model."""
        return f"double_blocks.{self.layer}.{self.mlp_name}"


@dataclass(frozen=True)
class SiteSpec:
    """Which MLP a transcoder belongs to: a FLUX double-stream block's image or text MLP."""

    stream: Stream
    layer: int
    model_family: str = "flux.1"

    @property
    def hook_point(self) -> str:
        """The module path of the MLP inside the diffusion model (BFL / ComfyUI names)."""
        return self.key.module_path

    @property
    def key(self) -> Site:
        return Site(self.stream, self.layer)


@dataclass(frozen=True)
class TimeEmbeddingSpec:
    """The sinusoidal embedding of t and the width of the small MLP that follows it.

    Frequencies are w_k = exp(-ln(max_period) * k / (dim/2 - freq_shift)); the embedding is
    [sin(t w_k) ..., cos(t w_k) ...] (sin first), as diffusers' get_timestep_embedding with its
    defaults, which the released transcoders were trained with.
    """

    dim: int = 256
    max_period: float = 10000.0
    freq_shift: float = 1.0
    order: Literal["sin_cos"] = "sin_cos"
    mlp_width: int = 256


@dataclass(frozen=True)
class TranscoderConfig:
    """Everything needed to rebuild and place a transcoder; stored as `config.json`."""

    d_model: int
    d_features: int
    site: SiteSpec
    kind: Kind = "transcoder"
    time_embedding: TimeEmbeddingSpec = field(default_factory=TimeEmbeddingSpec)
    activation: Literal["relu", "topk"] = "relu"
    topk: int | None = None  # activation "topk": only the k largest ReLU codes of a token are kept
    timestep_convention: Literal["sigma"] = "sigma"
    dtype: str = "float32"
    provenance: dict[str, Any] = field(default_factory=dict)
    training: dict[str, Any] | None = None

    def __post_init__(self) -> None:
        for name, value, low, high in (("d_model", self.d_model, 1, MAX_D_MODEL),
                                       ("d_features", self.d_features, 1, MAX_D_FEATURES),
                                       ("time_embedding.dim", self.time_embedding.dim, 2, MAX_TIME_WIDTH),
                                       ("time_embedding.mlp_width", self.time_embedding.mlp_width, 1, MAX_TIME_WIDTH),
                                       ("site.layer", self.site.layer, 0, MAX_LAYER)):
            if not _is_int(value) or not low <= value <= high:
                raise CorruptFileError(f"config {name} must be an integer in {low}..{high}, got {value!r}")
        if not isinstance(self.site.model_family, str) or not isinstance(self.training, (dict, type(None))):
            raise CorruptFileError("config site.model_family must be a string and training an object (or null)")
        embedding = self.time_embedding
        if not (_is_number(embedding.max_period) and embedding.max_period > 1
                and _is_number(embedding.freq_shift) and embedding.dim / 2 - embedding.freq_shift > 0):
            raise CorruptFileError(
                f"config time_embedding max_period {embedding.max_period!r} must be a number above 1 and freq_shift "
                f"{embedding.freq_shift!r} a number below dim / 2"
            )
        if self.kind not in KINDS:
            raise CorruptFileError(f"config kind {self.kind!r} is not one of {KINDS}")
        if self.site.stream not in STREAMS:
            raise CorruptFileError(f"config stream {self.site.stream!r} is not one of {STREAMS}")
        if self.activation not in ("relu", "topk"):
            raise CorruptFileError(
                f"config activation {self.activation!r} is not supported; "
                "this version reads 'relu' and 'topk' transcoders"
            )
        if self.activation == "topk" and not (_is_int(self.topk) and 0 < self.topk <= self.d_features):
            raise CorruptFileError(f"config activation 'topk' needs topk in 1..d_features, got {self.topk!r}")
        if self.activation == "relu" and self.topk is not None:
            raise CorruptFileError(f"config topk = {self.topk!r} needs activation 'topk', not 'relu'")
        if self.timestep_convention != "sigma":
            raise CorruptFileError(
                f"config timestep_convention {self.timestep_convention!r} is not supported; "
                "this version reads transcoders conditioned on t = sigma in [0, 1]"
            )
        if self.time_embedding.order != "sin_cos" or self.time_embedding.dim % 2:
            raise CorruptFileError("config time_embedding must be an even-sized sin-first ('sin_cos') embedding")
        if not isinstance(self.dtype, str) or self.dtype not in DTYPES:
            raise CorruptFileError(f"config dtype {self.dtype!r} is not one of {', '.join(DTYPES)}")

    @property
    def torch_dtype(self) -> torch.dtype:
        return dtype_from_name(self.dtype)

    @property
    def input_point(self) -> str:
        """What the encoder reads: the MLP input (transcoder) or the MLP output (SAE)."""
        return "mlp_in" if self.kind == "transcoder" else "mlp_out"

    def with_dtype(self, dtype: torch.dtype) -> TranscoderConfig:
        return replace(self, dtype=dtype_name(dtype))

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["site"]["hook_point"] = self.site.hook_point
        data["input"] = self.input_point
        data["target"] = "mlp_out"
        data["layout"] = {
            "W_enc": "[d_features, d_model], row i = encoder vector of feature i",
            "W_dec": "[d_features, d_model], row i = unit-norm decoder vector of feature i",
            "formula": "z = relu(W_enc @ (x * (1 + scale(t)) + shift(t)) + b_enc); y = W_dec.T @ z + b_dec"
            + ("; topk: only the topk largest entries of z per token are kept" if self.activation == "topk" else ""),
            "time_mlp": "time_mlp.0 -> SiLU -> time_mlp.2 -> SiLU -> mod_linear; scale = first d_model outputs",
        }
        return {"format": FORMAT_NAME, "format_version": FORMAT_VERSION, **data}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=False) + "\n"

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "config") -> TranscoderConfig:
        if data.get("format") != FORMAT_NAME:
            raise CorruptFileError(f"{source} is not a {FORMAT_NAME} config (format = {data.get('format')!r})")
        if data.get("format_version") != FORMAT_VERSION:
            raise CorruptFileError(
                f"{source} has format_version {data.get('format_version')!r}; this version of diffract_core reads "
                f"version {FORMAT_VERSION}: upgrade diffract_core or re-convert the weights"
            )
        try:
            site = data["site"]
            return cls(
                d_model=data["d_model"],
                d_features=data["d_features"],
                site=SiteSpec(stream=site["stream"], layer=site["layer"], model_family=site["model_family"]),
                kind=data["kind"],
                time_embedding=TimeEmbeddingSpec(**data["time_embedding"]),
                activation=data["activation"],
                topk=data.get("topk"),
                timestep_convention=data["timestep_convention"],
                dtype=data["dtype"],
                provenance=dict(data.get("provenance") or {}),
                training=data.get("training"),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise CorruptFileError(f"{source} is missing or mistypes a field ({exc!r}); "
                                   "re-convert the weights") from exc

    @classmethod
    def from_json(cls, text: str | bytes, source: str = "config") -> TranscoderConfig:
        data = parse_json(text, source, "re-convert the weights")
        if not isinstance(data, dict):
            raise CorruptFileError(f"{source} must hold a JSON object; re-convert the weights")
        return cls.from_dict(data, source)
