"""The config file of `harvest`, `train`, `evaluate` and `sweep`: TOML, or YAML when the file ends
in .yaml / .yml. Top-level keys `out` (the run folder, default "run") and `data` (where activations
are harvested, default out/activations); tables [model], [encoder], [prompts], [harvest], [train],
[evaluate] and [sweep]. Relative paths are relative to the config file; unknown keys are refused by
name. `python -m diffract_core config` prints every key with its default and meaning, generated
from the classes below so it cannot drift from them.
"""

from __future__ import annotations

import inspect
import json
import math
import re
from dataclasses import MISSING, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import tomllib
from safetensors.torch import load_file

from ..errors import DiffractError, SettingsError
from ..file_reading import read_regular_file
from ..file_writing import check_destination
from ..flux.config import FluxConfig
from ..flux.model import Flux, init_random_
from ..sites import parse_sites
from ..transcoders.config import KINDS, STREAMS, dtype_from_name
from ..typed_dicts import checked_keys
from .harvest import HarvestSettings
from .prompts import HashingPromptEncoder, PromptEncoder, PromptSplit, read_prompt_file, split_prompts
from .settings import TrainSettings

TOP_LEVEL = {"out", "data", "model", "encoder", "prompts", "harvest", "train", "evaluate", "sweep"}
MAX_CONFIG_BYTES = 1 << 20


MODEL_KINDS = ("random", "reference", "toy")
FLUX_PRESETS = {"schnell": FluxConfig.flux1_schnell, "dev": FluxConfig.flux1_dev, "tiny": FluxConfig.tiny}


@dataclass(frozen=True)
class ModelSpec:
    kind: str = "random"  # "random": seeded random weights; "reference": weights from a safetensors file;
    #                       "toy": the embedded toy FLUX
    weights: str | None = None  # reference: a FLUX diffusion model's safetensors (BFL / ComfyUI names);
    #                             toy: a toy-train file (unset: the embedded one)
    flux: str | dict[str, Any] = "tiny"  # "schnell", "dev", "tiny", or a table of FluxConfig fields
    seed: int = 0  # random: the weights' seed
    dtype: str = "float32"  # the model's dtype while harvesting and in the spliced-in test
    device: str = "cpu"  # where the model runs ("cuda" on a GPU)

    def __post_init__(self) -> None:
        if self.kind not in MODEL_KINDS:
            raise SettingsError(f"model.kind {self.kind!r} is not a model kind: use one of "
                                f"{', '.join(map(repr, MODEL_KINDS))}")
        if isinstance(self.flux, str) and self.flux not in FLUX_PRESETS:
            raise SettingsError(f"model.flux {self.flux!r} is not a preset: use one of "
                                f"{', '.join(map(repr, FLUX_PRESETS))}, or a table of FluxConfig fields")
        dtype_from_name(self.dtype)

    def flux_config(self) -> FluxConfig:
        if self.kind == "toy":
            from ..toy.model import toy_flux_config

            return toy_flux_config()
        if isinstance(self.flux, dict):
            return FluxConfig.from_dict(self.flux)
        return FLUX_PRESETS[self.flux]()

    def build(self) -> Flux:
        if self.kind == "toy":
            from ..toy.embedded import load_toy

            return load_toy(self.weights).flux.to(self.device, dtype_from_name(self.dtype))
        config = self.flux_config()
        model = Flux(config)
        if self.kind == "random":
            init_random_(model, self.seed)
        elif self.kind == "reference":
            if not self.weights:
                raise DiffractError("[model] kind = 'reference' needs weights = '<file>.safetensors'")
            state = load_file(self.weights)
            missing, unexpected = model.load_state_dict(state, strict=False)
            if missing or unexpected:
                raise DiffractError(
                    f"{self.weights} does not fit [model] flux = {self.flux!r}: missing {sorted(missing)[:5]}, "
                    f"unexpected {sorted(unexpected)[:5]}; set [model] flux to the weights' size"
                )
        return model.to(self.device, dtype_from_name(self.dtype)).eval().requires_grad_(False)

    def describe(self) -> dict[str, Any]:
        if self.kind == "toy":
            return {"family": "flux.1-toy", "kind": "toy", "weights": self.weights or "embedded",
                    "flux": self.flux_config().to_dict()}
        return {"family": "flux.1", "kind": self.kind, "weights": self.weights, "seed": self.seed,
                "flux": self.flux_config().to_dict()}


@dataclass(frozen=True)
class EncoderSpec:
    kind: str = "hashing"  # prompts -> conditioning; "hashing": a fixed random vector per word;
    #                        "toy": the toy's own text encoder ([model] kind = "toy")
    tokens: int = 32  # hashing: text tokens per prompt
    seed: int = 0  # hashing: the word vectors' seed

    def __post_init__(self) -> None:
        if self.kind not in ("hashing", "toy"):
            raise SettingsError(f"encoder.kind {self.kind!r} is not 'hashing' or 'toy'")
        if self.tokens < 1:
            raise SettingsError(f"encoder.tokens must be at least 1, got {self.tokens}")

    def build(self, config: FluxConfig, model: ModelSpec) -> PromptEncoder:
        if self.kind == "toy":
            if model.kind != "toy":
                raise DiffractError("[encoder] kind = 'toy' reads prompts for the toy model only: "
                                    "set [model] kind = 'toy'")
            from ..toy.embedded import load_toy

            return load_toy(model.weights).text_encoder.to(model.device)
        return HashingPromptEncoder(config.context_in_dim, config.vec_in_dim, tokens=self.tokens, seed=self.seed)


@dataclass(frozen=True)
class PromptSpec:
    file: str | None = None  # one prompt per line ('#' starts a comment line); adds to `list`
    list: tuple[str, ...] = ()  # prompts written in the config
    validation_fraction: float = 0.05  # chosen by a hash of each prompt's text: the splits never share a prompt

    def __post_init__(self) -> None:
        if not 0.0 <= self.validation_fraction < 1.0:
            raise SettingsError(f"prompts.validation_fraction must lie in [0, 1), got {self.validation_fraction}")

    def split(self) -> PromptSplit:
        prompts = list(self.list) + (read_prompt_file(self.file) if self.file else [])
        if not prompts:
            raise DiffractError("[prompts] is empty: give file = '<one prompt per line>' or list = [...]")
        return split_prompts(prompts, self.validation_fraction)


@dataclass(frozen=True)
class EvaluateSpec:
    sigma_buckets: int = 4  # FVU per sigma bucket: [0, 0.25], (0.25, 0.5], ... for 4
    spliced_prompts: int = 16  # validation prompts generated for the spliced-in test (0: skip it)

    def __post_init__(self) -> None:
        if self.sigma_buckets < 1 or self.spliced_prompts < 0:
            raise SettingsError(f"evaluate.sigma_buckets must be at least 1 and spliced_prompts at least 0, got "
                                f"{self.sigma_buckets} and {self.spliced_prompts}")


@dataclass(frozen=True)
class SweepSpec:
    l1_scales: tuple[float, ...] = (0.25, 0.5, 1.0, 2.0, 4.0)  # multiples of train.l1_img and l1_txt
    sae_l1_scales: tuple[float, ...] | None = None  # the SAEs' own (unset: l1_scales);
    #                                                 an SAE needs a stronger L1 for the same L0
    kinds: tuple[str, ...] = KINDS  # what the sweep trains at each scale
    steps: int | None = None  # training steps of each sweep run (unset: train.steps)

    def __post_init__(self) -> None:
        for name in ("l1_scales", "sae_l1_scales"):
            scales = getattr(self, name)
            if scales is not None and not (scales and all(0 < scale < math.inf for scale in scales)):
                raise SettingsError(f"sweep.{name} must be a non-empty list of positive numbers, got {list(scales)}")
        if not self.kinds or any(kind not in KINDS for kind in self.kinds):
            raise SettingsError(f"sweep.kinds must list some of {list(KINDS)}, got {list(self.kinds)}")
        if self.steps is not None and self.steps < 1:
            raise SettingsError(f"sweep.steps must be at least 1, got {self.steps}")

    def scales(self, kind: str) -> tuple[float, ...]:
        return self.sae_l1_scales if kind == "sae" and self.sae_l1_scales is not None else self.l1_scales


@dataclass(frozen=True)
class RunConfig:
    out: Path
    data: Path
    model: ModelSpec = field(default_factory=ModelSpec)
    encoder: EncoderSpec = field(default_factory=EncoderSpec)
    prompts: PromptSpec = field(default_factory=PromptSpec)
    harvest: HarvestSettings = field(default_factory=HarvestSettings)
    train: TrainSettings = field(default_factory=TrainSettings)
    evaluate: EvaluateSpec = field(default_factory=EvaluateSpec)
    sweep: SweepSpec = field(default_factory=SweepSpec)


def _table(data: dict[str, Any], name: str) -> dict[str, Any]:
    value = data.get(name, {})
    if not isinstance(value, dict):
        raise DiffractError(f"[{name}] must be a table of keys")
    return value


def _spec(cls: type, data: dict[str, Any], name: str) -> Any:
    try:
        values = checked_keys(cls, _table(data, name), name)
        for item in fields(cls):
            if item.name in values and isinstance(values[item.name], list):
                values[item.name] = tuple(values[item.name])
        return cls(**values)
    except (TypeError, ValueError) as exc:
        raise DiffractError(f"config [{name}]: {exc}") from exc


def _harvest(data: dict[str, Any], model: ModelSpec) -> HarvestSettings:
    table = dict(_table(data, "harvest"))
    sites = table.pop("sites", "all")
    if sites != "all":
        if not (isinstance(sites, str) or (isinstance(sites, list) and all(isinstance(site, str) for site in sites))):
            raise DiffractError(f"config [harvest]: harvest.sites = {sites!r:.80} is not a string or a list of strings "
                                "(write e.g. 'img:0-3, txt:0' or 'all')")
        depth = model.flux_config().depth
        available = [(stream, layer) for layer in range(depth) for stream in STREAMS]
        text = sites if isinstance(sites, str) else ",".join(sites)
        try:
            table["sites"] = parse_sites(text, available)
        except DiffractError as exc:
            raise DiffractError(
                f"[harvest] sites = {sites!r} does not fit the model's double blocks 0..{depth - 1} "
                "(write e.g. 'img:0-3, txt:0' or 'all')"
            ) from exc
    return _spec(HarvestSettings, {"harvest": table}, "harvest")


def load_run_config(path: Path) -> RunConfig:
    """Read and check every key (types, ranges, writable folders) before any work starts."""
    path = Path(path)
    fix = "point --config at a TOML (or .yaml) run config; `python -m diffract_core config` prints one"
    try:
        text = read_regular_file(path, max_bytes=MAX_CONFIG_BYTES, fix=fix, error=DiffractError)
    except FileNotFoundError as exc:
        raise DiffractError(f"config file {path} does not exist") from exc
    data = _parse(path, text)
    unknown = sorted(set(data) - TOP_LEVEL)
    if unknown:
        raise DiffractError(f"{path}: unknown table or key(s) {unknown}; valid: {', '.join(sorted(TOP_LEVEL))}")
    base = path.parent
    out = check_destination(base / _folder(data, "out", "run"), "the run folder (config `out`)")
    activations = base / _folder(data, "data", "") if "data" in data else out / "activations"
    model = _spec(ModelSpec, data, "model")
    if model.weights:
        model = replace(model, weights=str(base / model.weights))
    prompts = _spec(PromptSpec, data, "prompts")
    if prompts.file:
        prompts = replace(prompts, file=str(base / prompts.file))
    return RunConfig(
        out=out,
        data=check_destination(activations, "the activations folder (config `data`)"),
        model=model,
        encoder=_spec(EncoderSpec, data, "encoder"),
        prompts=prompts,
        harvest=_harvest(data, model),
        train=_spec(TrainSettings, data, "train"),
        evaluate=_spec(EvaluateSpec, data, "evaluate"),
        sweep=_spec(SweepSpec, data, "sweep"),
    )


def _folder(data: dict[str, Any], key: str, default: str) -> str:
    value = data.get(key, default)
    if not isinstance(value, str) or not value.strip():
        raise DiffractError(f"config {key} = {value!r:.80} is not a folder path: write it as a string, "
                            f'e.g. {key} = "run"')
    return value


def _parse(path: Path, raw: bytes) -> dict[str, Any]:
    try:
        text = raw.decode("utf-8")
        if path.suffix in (".yaml", ".yml"):
            import yaml

            data = yaml.safe_load(text) or {}
        else:
            data = tomllib.loads(text)
    except Exception as exc:  # tomllib and yaml raise their own types; both mean "not parseable"
        raise DiffractError(f"{path} cannot be parsed ({exc}); "
                            "check its syntax (TOML, or YAML for .yaml/.yml)") from exc
    if not isinstance(data, dict):
        raise DiffractError(f"{path} must hold a table of settings at the top level")
    return data


def _field_comments(cls: type) -> dict[str, str]:
    """`name: type = default  # comment` lines of a dataclass's source: the comment per field."""
    pattern = re.compile(r"^\s+(\w+): [^=]+=.*?#\s*(.+)$")
    return {m[1]: m[2] for line in inspect.getsource(cls).splitlines() if (m := pattern.match(line))}


def _toml_value(value: Any) -> str:
    if isinstance(value, tuple):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    return json.dumps(value)


TABLES: tuple[tuple[str, type], ...] = (
    ("model", ModelSpec), ("encoder", EncoderSpec), ("prompts", PromptSpec), ("harvest", HarvestSettings),
    ("train", TrainSettings), ("evaluate", EvaluateSpec), ("sweep", SweepSpec),
)


def default_config_text() -> str:
    """Every key of every table with its default and meaning, as TOML (unset keys commented out)."""
    parts = ['out = "run"  # the run folder: activations/, checkpoint/, metrics.jsonl, transcoders/, ...',
             '# data =  # where activations are harvested (default: out/activations)']
    for table, cls in TABLES:
        comments = _field_comments(cls)
        parts.append(f"\n[{table}]")
        for item in fields(cls):
            default = item.default if item.default is not MISSING else item.default_factory()  # type: ignore[misc]
            comment = f"  # {comments[item.name]}" if item.name in comments else ""
            if default is None:
                parts.append(f"# {item.name} ={comment} (default: unset)")
            else:
                parts.append(f"{item.name} = {_toml_value(default)}{comment}")
    return "\n".join(parts) + "\n"
