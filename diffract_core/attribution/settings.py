"""Every knob of a trace, in one value that the circuit's metadata also stores."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Literal

import torch

from ..errors import SettingsError
from ..typed_dicts import checked_keys

ComputeDtype = Literal["float32", "float64"]


@dataclass(frozen=True)
class TraceSettings:
    max_feature_nodes: int = 1000
    batch_size: int = 64  # target rows per backward pass
    update_interval: int = 4  # batches between re-rankings
    max_edges_per_node: int = 4096  # feature edges kept per row; the rest go to the sites' rest nodes
    max_active: int = 128  # features kept per token and site (by pre-activation); the rest count as error
    faithfulness_checks: int = 0  # ablate this many of the most influential features in the real blocks
    dtype: ComputeDtype = "float32"  # of the replacement model's replay
    per_row: bool = False  # one forward + autograd backward per row (the reference method; for comparison)

    def __post_init__(self) -> None:
        for name in ("batch_size", "update_interval", "max_edges_per_node", "max_active"):
            if getattr(self, name) < 1:
                raise SettingsError(f"{name} must be at least 1, got {getattr(self, name)}")
        for name in ("max_feature_nodes", "faithfulness_checks"):
            if getattr(self, name) < 0:
                raise SettingsError(f"{name} must be 0 or more, got {getattr(self, name)}")
        if self.dtype not in ("float32", "float64"):
            raise SettingsError(f"dtype must be 'float32' or 'float64', got {self.dtype!r}")

    @property
    def torch_dtype(self) -> torch.dtype:
        return torch.float64 if self.dtype == "float64" else torch.float32

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any], where: str = "settings") -> TraceSettings:
        """Keys a file leaves out take their defaults (files written before a knob existed)."""
        return cls(**checked_keys(cls, data, where))
