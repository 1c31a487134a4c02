"""The released DifFRACT checkpoints: `{transcoder|sae}_{img|txt}_{L}.pt`, plain fp32 state dicts.

They are pickles, so they are opened only with `torch.load(..., weights_only=True)`: the restricted
unpickler builds tensors and plain containers and refuses everything else before it can run.
"""

from __future__ import annotations

import pickle
import re
import warnings
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import torch

from ..errors import (
    CorruptFileError,
    NonFiniteWeightsError,
    ShapeMismatchError,
    UnknownFileNameError,
    UnsafeCheckpointError,
)
from ..file_reading import check_readable_file, describe_size
from .config import Kind, SiteSpec, Stream, TimeEmbeddingSpec, TranscoderConfig

RELEASE_NAME = re.compile(r"^(?P<kind>transcoder|sae)_(?P<stream>img|txt)_(?P<layer>\d+)\.pt$")
RELEASE_NAME_HELP = "transcoder_{img|txt}_{layer}.pt or sae_{img|txt}_{layer}.pt (for example transcoder_img_12.pt)"
RELEASE_KEYS = (
    "time_mlp.0.weight",
    "time_mlp.0.bias",
    "time_mlp.2.weight",
    "time_mlp.2.bias",
    "mod_linear.weight",
    "mod_linear.bias",
    "encoder.weight",
    "encoder.bias",
    "decoder.weight",
    "decoder.bias",
)


@dataclass(frozen=True)
class ReleaseName:
    kind: Kind
    stream: Stream
    layer: int

    @property
    def file_name(self) -> str:
        return f"{self.kind}_{self.stream}_{self.layer}.pt"


def parse_release_name(path: str | Path) -> ReleaseName:
    name = Path(path).name
    match = RELEASE_NAME.match(name)
    if match is None:
        raise UnknownFileNameError(
            f"{name!r} does not follow the release naming pattern {RELEASE_NAME_HELP}; rename the file so its "
            "kind, stream and layer can be read from the name, or move it out of the folder"
        )
    return ReleaseName(kind=match["kind"], stream=match["stream"], layer=int(match["layer"]))  # type: ignore[arg-type]


def load_release_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Open a released `.pt` file safely: tensors only, memory-mapped where the file allows, and no
    tensor declaring more bytes than the file holds."""
    path = Path(path)
    fix = "get the file again from the official release, or re-save it with torch.save(module.state_dict(), path)"
    state = _plain_tensor_dict(load_checkpoint(path, fix), path.name)
    declared = sum(tensor.numel() * tensor.element_size() for tensor in state.values())
    stored = path.stat().st_size
    if declared > stored:
        raise CorruptFileError(
            f"{path.name} declares {describe_size(declared)} of tensors but the file holds {describe_size(stored)}: "
            "its tensors are views that would expand when read (a crafted or damaged file), so it was refused "
            f"before allocating them; {fix}"
        )
    return state


def load_checkpoint(path: Path, fix: str, map_location: torch.device | str = "cpu") -> object:
    """`torch.load` restricted to tensors and plain containers (the restricted unpickler refuses
    anything else before it can run), memory-mapped where the file allows. A refusal or an unreadable
    file is a typed error naming the file and `fix`."""
    check_readable_file(path, fix)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Detected pickle protocol")  # torch's advice, not the user's
            try:
                return torch.load(path, map_location=map_location, weights_only=True, mmap=True)
            except RuntimeError as exc:
                if "mmap" not in str(exc):
                    raise
                return torch.load(path, map_location=map_location, weights_only=True)  # legacy (non-zip) format
    except pickle.UnpicklingError as exc:
        raise UnsafeCheckpointError(
            f"{path} holds objects other than tensors ({_refusal_reason(exc)}), so it was refused before anything "
            f"in it could run. Only plain state dicts of tensors are accepted: {fix}"
        ) from None  # torch's own message advises loading the file unrestricted: it must not reach the user
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError, ValueError, KeyError, IndexError) as exc:
        raise CorruptFileError(
            f"{path} cannot be read as a torch checkpoint ({_first_line(exc)}); it is truncated or damaged: {fix}"
        ) from exc


_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
_GLOBAL = re.compile(r"GLOBAL\s+([\w.]+)")
_UNPICKLER_ERROR = re.compile(r"WeightsUnpickler error:\s*(.+?)(?:\n\n|$)", re.DOTALL)


def _refusal_reason(exc: Exception) -> str:
    """What the restricted unpickler refused, without torch's advice to load the file unrestricted."""
    text = _ANSI.sub("", str(exc))
    if found := _GLOBAL.search(text):
        return f"it imports {found[1]}, which a file of tensors never needs"
    if found := _UNPICKLER_ERROR.search(text):
        return " ".join(found[1].split())
    return "a pickle instruction the safe loader does not allow"


def _first_line(exc: BaseException) -> str:
    lines = _ANSI.sub("", str(exc)).strip().splitlines()
    return lines[0] if lines else type(exc).__name__


def _plain_tensor_dict(obj: object, name: str) -> dict[str, torch.Tensor]:
    if not isinstance(obj, Mapping):
        raise UnsafeCheckpointError(
            f"{name} holds a {type(obj).__name__}, not a state dict; expected a plain dict of tensors "
            "as written by torch.save(module.state_dict(), path)"
        )
    others = {key: type(value).__name__ for key, value in obj.items() if not isinstance(value, torch.Tensor)}
    if others or not all(isinstance(key, str) for key in obj):
        raise UnsafeCheckpointError(
            f"{name} is not a plain dict of tensors (non-tensor entries: {others or 'non-string keys'}); "
            "expected the state dict of a DifFRACT transcoder"
        )
    return dict(obj)


def config_from_release(
    state_dict: Mapping[str, torch.Tensor], name: ReleaseName, provenance: dict[str, object]
) -> TranscoderConfig:
    """Infer d_model, d_features and the time-embedding widths from the shapes, checking every key."""
    missing = [key for key in RELEASE_KEYS if key not in state_dict]
    extra = [key for key in state_dict if key not in RELEASE_KEYS]
    if missing or extra:
        raise ShapeMismatchError(
            f"{name.file_name} is not a DifFRACT transcoder state dict (missing keys: {missing or 'none'}; "
            f"unexpected keys: {extra or 'none'}); expected exactly {list(RELEASE_KEYS)}"
        )
    d_features, d_model = _shape(state_dict, "encoder.weight", 2)
    mlp_width, embed_dim = _shape(state_dict, "time_mlp.0.weight", 2)
    expected = {
        "time_mlp.0.bias": (mlp_width,),
        "time_mlp.2.weight": (mlp_width, mlp_width),
        "time_mlp.2.bias": (mlp_width,),
        "mod_linear.weight": (2 * d_model, mlp_width),
        "mod_linear.bias": (2 * d_model,),
        "encoder.bias": (d_features,),
        "decoder.weight": (d_model, d_features),
        "decoder.bias": (d_model,),
    }
    for key, shape in expected.items():
        if tuple(state_dict[key].shape) != shape:
            raise ShapeMismatchError(
                f"{name.file_name}: {key} has shape {tuple(state_dict[key].shape)}, but encoder.weight "
                f"{(d_features, d_model)} and time_mlp.0.weight {(mlp_width, embed_dim)} imply {shape}; "
                "the file is damaged or comes from a different architecture"
            )
    if embed_dim % 2:
        raise ShapeMismatchError(f"{name.file_name}: the time embedding width {embed_dim} must be even")
    dtypes = {state_dict[key].dtype for key in RELEASE_KEYS}
    if len(dtypes) != 1:
        raise ShapeMismatchError(f"{name.file_name} mixes tensor dtypes {sorted(map(str, dtypes))}")
    try:
        config = TranscoderConfig(
            d_model=d_model,
            d_features=d_features,
            site=SiteSpec(stream=name.stream, layer=name.layer),
            kind=name.kind,
            time_embedding=TimeEmbeddingSpec(dim=embed_dim, mlp_width=mlp_width),
            dtype=str(dtypes.pop()).removeprefix("torch."),
            provenance=provenance,
        )
    except CorruptFileError as exc:  # sizes or dtype outside what a transcoder can be
        raise ShapeMismatchError(f"{name.file_name} does not describe a usable transcoder: {exc}") from exc
    for key in RELEASE_KEYS:
        check_finite(state_dict[key], f"{name.file_name}: {key}")
    return config


def _shape(state_dict: Mapping[str, torch.Tensor], key: str, ndim: int) -> tuple[int, ...]:
    shape = tuple(state_dict[key].shape)
    if len(shape) != ndim:
        raise ShapeMismatchError(f"{key} must have {ndim} dimensions, got shape {shape}")
    return shape


def check_finite(tensor: torch.Tensor, what: str, chunk: int = 1 << 20) -> None:
    """Refuse NaN or Inf, reading a large tensor in chunks so no full-size mask is allocated."""
    flat = tensor.reshape(-1)
    for start in range(0, flat.numel(), chunk):
        piece = flat[start : start + chunk]
        if not bool(torch.isfinite(piece).all()):
            bad = int((~torch.isfinite(piece)).sum())
            raise NonFiniteWeightsError(
                f"{what} contains NaN or Inf ({bad}+ values); the weights are unusable: "
                "download or re-train them, and check the training run for divergence"
            )


# Release key -> native key; the decoder is also transposed ([D, F] -> [F, D], one row per feature).
NATIVE_NAMES = {
    **{key: key for key in RELEASE_KEYS if key.startswith(("time_mlp", "mod_linear"))},
    "encoder.weight": "W_enc",
    "encoder.bias": "b_enc",
    "decoder.weight": "W_dec",
    "decoder.bias": "b_dec",
}
TRANSPOSED = "decoder.weight"


def native_tensors(state_dict: Mapping[str, torch.Tensor], dtype: torch.dtype | None) -> dict[str, torch.Tensor]:
    """Release layout -> native layout, cast to `dtype` (cast first, so the transpose copies less)."""
    out = {}
    for key, native in NATIVE_NAMES.items():
        tensor = state_dict[key] if dtype is None else state_dict[key].to(dtype)
        out[native] = (tensor.t() if key == TRANSPOSED else tensor).contiguous()
    return out


def release_state_dict(native: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Native layout -> the release's state-dict layout (as the reference's nn.Module names it)."""
    out = {}
    for key, name in NATIVE_NAMES.items():
        tensor = native[name].detach()
        out[key] = (tensor.t() if key == TRANSPOSED else tensor).contiguous()
    return out
