"""What a traced circuit knows about itself: the call it explains (step, sigma, chunk, tokens), its
target, the settings it was traced with, what it cost, how exact and complete it is, the optional
faithfulness check, the pruning a user chose and, for a simplified circuit, its preservation and
supernodes. One typed value with one serialiser: `to_dict` is the "metadata" object of a circuit
file (and of the viewer's payload), `from_dict` reads it back, checking every section's keys and
types. Keys this version does not know are kept in `extra` and written back unchanged."""

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


@dataclass(frozen=True)
class Preservation:
    """How much of its target a simplified circuit keeps in the real model (attribution.preservation)."""

    method: str  # how the features were chosen: "search" or "influence"
    score: float  # the circuit's preservation: 1 = the traced graph's features, 0 = none
    features: int  # features kept
    traced_features: int  # feature nodes of the graph it was simplified from
    tolerance: float  # the circuit is the smallest found within this of 1, if any is
    circuit_value: float  # the target with the circuit's features only
    full_value: float  # with the traced graph's
    empty_value: float  # with none
    clean_value: float  # unedited
    curve: tuple[tuple[int, float], ...] = ()  # (features, preservation) of every circuit measured, by size

    @classmethod
    def from_dict(cls, data: dict[str, Any], where: str = "preservation") -> Preservation:
        checked = checked_keys(cls, data, where)
        return cls(**{**checked, "curve": tuple(tuple(point) for point in checked.get("curve", ()))})


@dataclass(frozen=True)
class Supernode:
    """A group of a circuit's nodes at one level of its hierarchy (attribution.hierarchy)."""

    id: str
    name: str
    level: int  # 1: the finest grouping; higher levels group coarser
    parent: str | None  # the supernode of the next level up that holds this one
    members: tuple[str, ...]  # ids of every node inside it

    @classmethod
    def from_dict(cls, data: dict[str, Any], where: str = "supernode") -> Supernode:
        checked = checked_keys(cls, data, where)
        return cls(**{**checked, "members": tuple(checked["members"])})


def _supernodes(value: Any, where: str) -> tuple[Supernode, ...]:
    if not isinstance(value, list):
        raise SettingsError(f"metadata.{where} must be a list, not {type(value).__name__}")
    return tuple(Supernode.from_dict(_object(item, f"{where}[{i}]"), f"{where}[{i}]") for i, item in enumerate(value))


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
    "preservation": Preservation.from_dict,
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
    preservation: Preservation | None = None  # set by simplify_circuit
    supernodes: tuple[Supernode, ...] | None = None  # the circuit's hierarchy, coarsest first (simplify_circuit)
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
                value = [asdict(item) if is_dataclass(item) else item for item in value]
            data[item.name] = _lists(value)
        return {**data, **self.extra}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> CircuitMetadata:
        """SettingsError names the first key whose value does not fit."""
        known = {item.name for item in fields(cls)} - {"extra"}
        values = {key: value for key, value in data.items() if key in known}
        for name, parse in _SECTIONS.items():
            if values.get(name) is not None:
                values[name] = parse(_object(values[name], name), name)
        if values.get("supernodes") is not None:
            values["supernodes"] = _supernodes(values["supernodes"], "supernodes")
        for name in ("text_tokens", "image_grid"):
            if isinstance(values.get(name), list):
                values[name] = tuple(values[name])
        checked = checked_keys(cls, values, "metadata")
        if not math.isfinite(checked["sigma"]):
            raise SettingsError("metadata.sigma must be a finite number")
        return cls(**checked, extra={key: value for key, value in data.items() if key not in known})


def _lists(value: Any) -> Any:
    """Tuples, at any depth, as the lists JSON reads back."""
    if isinstance(value, (tuple, list)):
        return [_lists(item) for item in value]
    if isinstance(value, dict):
        return {key: _lists(item) for key, item in value.items()}
    return value


def _object(value: Any, where: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise SettingsError(f"metadata.{where} must be an object, not {type(value).__name__}")
    return value
