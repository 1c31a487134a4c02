"""Does the graph predict what ablating its features does to the real model?

For each of the graph's most influential features, the traced call is re-run through the real
blocks (live attention, LayerNorm and MLPs) with that feature removed from its MLP output in delta
form, y' = y - W_dec[f] * z_f(x), at the positions where it fires; the change of the target is
compared with the graph's prediction: the feature's effect summed over all paths of the graph, with
each downstream feature's edges scaled by how much of its activity changes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch

from ..typed_dicts import checked_keys
from .graph import CircuitGraph, CircuitNode
from .replacement import MlpEdit, ReplacementModel, TargetRow


@dataclass(frozen=True)
class Faithfulness:
    features: list[str]  # node ids, most influential first
    measured: list[float]  # change of the target in the real model
    predicted: list[float]  # the graph's prediction over all paths
    direct: list[float]  # the direct edge alone
    spearman: float
    mean_relative_error: float
    spearman_direct: float
    mean_relative_error_direct: float
    forward_passes: int

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready (an undefined correlation becomes None)."""
        return {key: _finite_or_none(getattr(self, key)) for key in self.__dataclass_fields__}

    @classmethod
    def from_dict(cls, data: dict[str, Any], where: str = "faithfulness") -> Faithfulness:
        """The inverse of `to_dict` (None becomes nan again)."""
        values = {key: float("nan") if value is None else value for key, value in data.items()}
        return cls(**checked_keys(cls, values, where))


def _finite_or_none(value: object) -> object:
    return None if isinstance(value, float) and not math.isfinite(value) else value


def predicted_ablation_effects(graph: CircuitGraph) -> tuple[torch.Tensor, torch.Tensor]:
    """(total, direct) predicted change of the target when each feature node is removed, [N] (0 for
    the other nodes).

    Removing feature j changes a node a by A[a, j] (first order: column j of -A); a change d_b of
    feature b moves a by A[a, b] * d_b / |value_b| (b's edges scale with its activity; a feature of
    value 0 passes nothing on). The sum over paths is (I - M)^-1 applied to the first-order changes,
    with M[a, b] = A[a, b] / |value_b|. Only the target's row of (I - M)^-1 is needed:
    t = e_target (I + M + M^2 + ...), one backward pass through the graph's waves, and then
    total[j] = -(t @ A)[j], in time and memory linear in the edges."""
    adjacency = graph.sparse_adjacency()
    values = torch.tensor([node.value for node in graph.nodes], dtype=torch.float64)
    features = torch.tensor([node.kind == "feature" for node in graph.nodes])
    scale = torch.where(features & (values.abs() > 0), 1.0 / values.abs().clamp(min=1e-30), torch.zeros_like(values))
    start = graph.target_weights()
    paths_to_target = start + adjacency.influence(adjacency.weights * scale[adjacency.sources], start)
    total = -adjacency.row_times(paths_to_target) * features
    direct = -adjacency.row_times(start) * features
    return total, direct


@torch.no_grad()
def check_faithfulness(model: ReplacementModel, graph: CircuitGraph, root: TargetRow, top_k: int = 10) -> Faithfulness:
    """Ablate the `top_k` most influential feature nodes one at a time in the real blocks."""
    influence = graph.influence()
    feature_indices = graph.indices("feature")
    ranked = sorted(feature_indices, key=lambda i: -float(influence[i]))[:top_k]
    total, direct = predicted_ablation_effects(graph)
    clean = float(model.value(root)[0])  # the clean pass already ran the real blocks
    measured = []
    for index in ranked:
        measured.append(float(model.value(root, model.real_forward(_ablation(model, graph.nodes[index])))[0]) - clean)
    predicted = [float(total[i]) for i in ranked]
    direct_only = [float(direct[i]) for i in ranked]
    return Faithfulness(
        features=[graph.nodes[i].id for i in ranked],
        measured=measured,
        predicted=predicted,
        direct=direct_only,
        spearman=spearman(predicted, measured),
        mean_relative_error=mean_relative_error(predicted, measured),
        spearman_direct=spearman(direct_only, measured),
        mean_relative_error_direct=mean_relative_error(direct_only, measured),
        forward_passes=len(ranked),
    )


def _ablation(model: ReplacementModel, node: CircuitNode) -> MlpEdit:
    """Remove `node`'s feature from its MLP's output at its positions: y - W_dec[f] * z_f(x)."""
    site = (node.stream, node.layer)
    transcoder = model.transcoder_at(site)
    positions = node.positions.to(model.device)
    decoder = transcoder.decoder_vectors(node.feature, dtype=model.dtype, device=model.device)

    def ablate(_layer: int, at: tuple, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if at != site:
            return y
        z = transcoder.feature_activation(x[0, positions].to(transcoder.dtype), model.sigma, node.feature)
        y = y.clone()
        y[0, positions] -= z.to(y.dtype)[:, None] * decoder[None, :]
        return y

    return ablate


def _ranks(values: torch.Tensor) -> torch.Tensor:
    """Ranks with ties averaged."""
    order = torch.argsort(values)
    ranks = torch.empty_like(values)
    ranks[order] = torch.arange(len(values), dtype=values.dtype)
    for value in torch.unique(values):
        tied = values == value
        if int(tied.sum()) > 1:
            ranks[tied] = ranks[tied].mean()
    return ranks


def spearman(a: list[float], b: list[float]) -> float:
    """Spearman's rank correlation (nan for fewer than two points or a constant side)."""
    if len(a) < 2:
        return float("nan")
    ra, rb = _ranks(torch.tensor(a, dtype=torch.float64)), _ranks(torch.tensor(b, dtype=torch.float64))
    ra, rb = ra - ra.mean(), rb - rb.mean()
    denominator = float(ra.norm() * rb.norm())
    return float((ra * rb).sum()) / denominator if denominator > 0 else float("nan")


def mean_relative_error(predicted: list[float], measured: list[float]) -> float:
    """mean |predicted - measured| / |measured| over the measured changes that are not zero."""
    pairs = [(p, m) for p, m in zip(predicted, measured) if abs(m) > 1e-12]
    if not pairs:
        return float("nan")
    return sum(abs(p - m) / abs(m) for p, m in pairs) / len(pairs)
