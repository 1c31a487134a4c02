"""What a traced circuit knows about itself: the call it explains (step, sigma, chunk, tokens), its
target, the settings it was traced with, what it cost, how exact and complete it is, the optional
faithfulness check and the pruning a user chose. One typed value with one serialiser: `to_dict` is
the "metadata" object of a circuit file (and of the viewer's payload), `from_dict` reads it back,
checking every section's keys and types. Keys this version does not know are kept in `extra` and
written back unchanged."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields, is_dataclass
from typing import Any

from ..errors import SettingsError
from ..typed_dicts import checked_keys
from .faithfulness import Faithfulness
from .settings import TraceSettings

SCHEMA_NOTE = "edges point source -> target; every expanded node's incoming edges sum to its value"


@dataclass(frozen=True)
class TargetInfo:
    feature: str  # "img:12:40684"
    mode: str  # how the target reads the feature: argmax, position, region, ...
    label: str
    value: float


@dataclass(frozen=True)
class Passes:
    forward: int
    backward: int
    rows_per_pass: int = 0  # rows per backward pass the trace ran with: batch_size, or fewer where memory was short


@dataclass(frozen=True)
class Conservation:
    max_relative_residual: float
    mean_relative_residual: float
    nodes_checked: int


@dataclass(frozen=True)
class Scores:
    replacement: float
    completeness: float


@dataclass(frozen=True)
class Pruning:
    node_threshold: float
    edge_threshold: float


def _record(cls: type) -> Callable[[dict[str, Any], str], Any]:
    return lambda data, where: cls(**checked_keys(cls, data, where))


_SECTIONS: dict[str, Callable[[dict[str, Any], str], Any]] = {
    "target": _record(TargetInfo),
    "settings": TraceSettings.from_dict,
    "passes": _record(Passes),
    "conservation": _record(Conservation),
    "scores": _record(Scores),
    "faithfulness": Faithfulness.from_dict,
    "pruning": _record(Pruning),
}

@dataclass(frozen=True)
class CircuitMetadata:
    step: int
    sigma: float
    text_tokens: tuple[str, ...]
    image_tokens: int
    image_grid: tuple[int, int] | None = None
    chunk: str | None = None  # "cond" or "uncond"
    target: TargetInfo | None = None
    settings: TraceSettings | None = None
    passes: Passes | None = None
    rows: int | None = None  # rows computed: the target's and one per expanded feature
    seconds: float | None = None
    conservation: Conservation | None = None
    scores: Scores | None = None
    features_beyond_max_active: dict[str, float] = field(default_factory=dict)  # site -> share of activity
    faithfulness: Faithfulness | None = None
    pruning: Pruning | None = None
    note: str = SCHEMA_NOTE
    extra: dict[str, Any] = field(default_factory=dict)  # keys of a newer or foreign writer, kept verbatim

    @property
    def tokens(self) -> dict[str, int]:
        """Token positions per stream."""
        return {"img": self.image_tokens, "txt": len(self.text_tokens)}

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON values; unset sections are left out."""
        data: dict[str, Any] = {}
        for item in fields(self):
            value = getattr(self, item.name)
            if item.name == "extra" or value is None:
                continue
            if is_dataclass(value):
                value = value.to_dict() if hasattr(value, "to_dict") else asdict(value)
            elif isinstance(value, tuple):
                value = list(value)
            data[item.name] = value
        return {**data, **self.extra}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> CircuitMetadata:
        """SettingsError names the first key whose value does not fit."""
        known = {item.name for item in fields(cls)} - {"extra"}
        values = {key: value for key, value in data.items() if key in known}
        for name, parse in _SECTIONS.items():
            if values.get(name) is not None:
                values[name] = parse(_object(values[name], name), name)
        for name in ("text_tokens", "image_grid"):
            if isinstance(values.get(name), list):
                values[name] = tuple(values[name])
        checked = checked_keys(cls, values, "metadata")
        if not math.isfinite(checked["sigma"]):
            raise SettingsError("metadata.sigma must be a finite number")
        return cls(**checked, extra={key: value for key, value in data.items() if key not in known})


def _object(value: Any, where: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise SettingsError(f"metadata.{where} must be an object, not {type(value).__name__}")
    return value
