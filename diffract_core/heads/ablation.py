"""Head ablation in delta form: a head's slice of the joint attention output (before `proj`) is set
to zero, in the rows whose sigma is inside the window; every other value is left as it was, so an
ablation that touches nothing, or a head whose output is already zero, changes nothing."""

from __future__ import annotations

import math
import re
from collections.abc import Iterable
from dataclasses import dataclass

import torch

from ..errors import FeatureSpecError, InputShapeError, SettingsError

HeadKey = tuple[int, int]  # (double-block layer, head)
HEADS_HELP = "heads as layer:head, e.g. 2:1, 3:0 (double blocks; separate with commas or spaces)"
_HEAD = re.compile(r"^(\d+):(\d+)$")


def parse_heads(text: str) -> frozenset[HeadKey]:
    """`2:1, 3:0` -> {(2, 1), (3, 0)}."""
    heads = set()
    for part in filter(None, re.split(r"[\s,;]+", text.strip())):
        match = _HEAD.match(part)
        if match is None:
            raise FeatureSpecError(f"{part!r} is not a head; write {HEADS_HELP}")
        heads.add((int(match[1]), int(match[2])))
    if not heads:
        raise FeatureSpecError(f"no head given; write {HEADS_HELP}")
    return frozenset(heads)


def zero_heads(attended: torch.Tensor, heads: Iterable[int], num_heads: int,
               rows: torch.Tensor | None = None) -> torch.Tensor:
    """A copy of an attention output [B, L, heads * head_dim] with the given heads' slices zeroed in
    the rows where `rows` (bool [B]) is true, or in every row; `attended` itself when nothing changes."""
    heads = sorted(set(heads))
    if attended.shape[-1] % num_heads:
        raise InputShapeError(f"an attention output of width {attended.shape[-1]} does not split into {num_heads} "
                              "heads")
    if heads and not 0 <= heads[0] <= heads[-1] < num_heads:
        raise SettingsError(f"heads {heads} are not all among this layer's {num_heads} (0..{num_heads - 1})")
    if not heads or (rows is not None and not bool(rows.any())):
        return attended
    head_mask = torch.zeros(num_heads, dtype=torch.bool, device=attended.device)
    head_mask[heads] = True
    row_mask = (torch.ones(attended.shape[0], dtype=torch.bool, device=attended.device) if rows is None
                else rows.to(attended.device, torch.bool))
    mask = row_mask.view(-1, *[1] * attended.ndim) & head_mask[:, None]  # [B, 1, .., heads, 1]
    split = attended.reshape(*attended.shape[:-1], num_heads, -1)
    return split.masked_fill(mask, 0).reshape(attended.shape)


@dataclass(frozen=True)
class HeadAblation:
    """Zero `heads` (layer, head) of the double blocks while sigma_end <= sigma <= sigma_start."""

    heads: frozenset[HeadKey]
    sigma_start: float = math.inf
    sigma_end: float = 0.0

    def __post_init__(self) -> None:
        if self.sigma_end > self.sigma_start:
            raise SettingsError(f"sigma window is empty: sigma_end {self.sigma_end} > sigma_start {self.sigma_start}")
        negative = sorted(head for head in self.heads if min(head) < 0)
        if negative:
            raise SettingsError(f"head indices start at 0, got {negative}")

    def check(self, depth: int, num_heads: int) -> None:
        """Refuse heads that a model with `depth` double blocks of `num_heads` heads does not have."""
        outside = sorted(head for head in self.heads if head[0] >= depth or head[1] >= num_heads)
        if outside:
            raise SettingsError(f"heads {outside} are outside this model's {depth} double blocks of {num_heads} heads "
                                f"(layers 0..{depth - 1}, heads 0..{num_heads - 1})")

    def heads_at(self, layer: int) -> tuple[int, ...]:
        return tuple(sorted(head for at, head in self.heads if at == layer))

    def active_at(self, sigma: float) -> bool:
        return self.sigma_end <= sigma <= self.sigma_start

    def apply(self, layer: int, attended: torch.Tensor, num_heads: int, sigmas: torch.Tensor) -> torch.Tensor:
        """The layer's attention output [B, L, heads * head_dim] of a call whose rows are at `sigmas` [B]."""
        heads = self.heads_at(layer)
        if not heads:
            return attended
        rows = torch.tensor([self.active_at(float(sigma)) for sigma in sigmas.reshape(-1)])
        if rows.numel() != attended.shape[0]:
            raise InputShapeError(f"{rows.numel()} sigmas for an attention output of {attended.shape[0]} rows")
        return zero_heads(attended, heads, num_heads, None if bool(rows.all()) else rows)
