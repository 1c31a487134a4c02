"""Each edge of a traced graph split by the path it takes: along the residual stream alone (the
direct share), or through at least one attention layer (the rest).

The direct shares come from the replacement model's transpose with attention's value path left out
(`ReplacementModel.attribute(..., through_attention=False)`), run for the same rows the tracer ran:
the target's and one per feature node. Between features of one stream the direct share is
activation x virtual weight x LayerNorm factor (see connections.py); between streams it is zero.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..errors import GraphStructureError
from ..transcoders.config import Stream
from ..transcoders.transcoder_set import SiteKey
from .circuit import target_row
from .graph import CircuitGraph
from .pass_memory import free_bytes, rows_that_fit
from .replacement import ReplacementModel, RowEdges, TargetRow


@dataclass(frozen=True)
class EdgePaths:
    """Aligned with the graph's edges ([E] float64 each); direct + through_attention = edge weight."""

    direct: torch.Tensor
    through_attention: torch.Tensor

    def direct_share(self, mask: torch.Tensor | None = None) -> float:
        """sum |direct| / (sum |direct| + sum |through attention|) over the edges in `mask` (default: all);
        0 where those edges carry nothing."""
        keep = slice(None) if mask is None else mask
        direct = float(self.direct[keep].abs().sum())
        total = direct + float(self.through_attention[keep].abs().sum())
        return direct / total if total > 0 else 0.0


@torch.no_grad()
def split_edges(graph: CircuitGraph, model: ReplacementModel, rows_per_pass: int = 64) -> EdgePaths:
    """The direct and through-attention parts of every edge of `graph`, traced on `model` (see
    `circuit.replay_model`), at most `rows_per_pass` rows per backward pass (fewer where memory is short)."""
    expanded = graph.expanded()
    rows = [_row_of(model, graph, i) for i in expanded]
    per_pass = rows_that_fit(model, rows_per_pass, free_bytes(model.device))
    direct_rows: list[RowEdges] = []
    for start in range(0, len(rows), per_pass):
        direct_rows += model.attribute(rows[start : start + per_pass], through_attention=False)
    sources = _SourceNodes(graph, model)
    direct = torch.zeros_like(graph.edge_weights)
    order = torch.argsort(graph.edge_targets, stable=True)
    counts = torch.bincount(graph.edge_targets, minlength=len(graph.nodes))
    starts = torch.cumsum(counts, 0) - counts
    for node_index, edges in zip(expanded, direct_rows):
        incoming = order[starts[node_index] : starts[node_index] + counts[node_index]]
        direct[incoming] = sources.direct_effects(edges, graph.edge_sources[incoming])
    return EdgePaths(direct, graph.edge_weights - direct)


def _row_of(model: ReplacementModel, graph: CircuitGraph, index: int) -> TargetRow:
    """The tracer's row of an expanded node: a feature at its positions with weight 1, the target as it was traced."""
    node = graph.nodes[index]
    if node.kind == "target":
        return target_row(model, graph)
    assert node.stream is not None and node.layer is not None and node.feature is not None
    weights = torch.zeros(model.tokens(node.stream), dtype=model.dtype, device=model.device)
    weights[node.positions] = 1.0
    return model.feature_row(node.stream, node.layer, node.feature, weights)


class _SourceNodes:
    """The graph's source nodes by what they stand for in a row's RowEdges."""

    def __init__(self, graph: CircuitGraph, model: ReplacementModel) -> None:
        self.size = len(graph.nodes)
        self.sites = list(model.sites)
        site_id = {site: i for i, site in enumerate(self.sites)}
        self.feature_site = torch.full((self.size,), -1, dtype=torch.long)  # feature nodes: their site's id
        self.slot = torch.zeros(self.size, dtype=torch.long)  # feature nodes: their index among the site's kept ones
        self.errors: dict[int, SiteKey] = {}
        self.rests: dict[int, SiteKey] = {}
        self.inputs: dict[int, Stream] = {}
        self.bias = -1
        for index, node in enumerate(graph.nodes):
            if node.kind == "feature":
                site = (node.stream, node.layer)
                kept = model.sites[site].features.cpu()  # type: ignore[index]
                at = int(torch.searchsorted(kept, node.feature))
                if at == len(kept) or int(kept[at]) != node.feature:
                    raise GraphStructureError(f"{node.feature_spec} is not among the features this model keeps: "
                                              "rebuild it with replay_model (the graph's max_active and dtype)")
                self.feature_site[index], self.slot[index] = site_id[site], at  # type: ignore[index]
            elif node.kind in ("error", "rest"):
                (self.errors if node.kind == "error" else self.rests)[index] = (node.stream, node.layer)  # type: ignore[assignment]
            elif node.kind == "input":
                self.inputs[index] = node.stream  # type: ignore[assignment]
            elif node.kind == "bias":
                self.bias = index

    def direct_effects(self, edges: RowEdges, sources: torch.Tensor) -> torch.Tensor:
        """[len(sources)] float64: the direct effect on one row of each of its source nodes. A site's
        rest node holds the site's kept features that are not sources of the row in their own right."""
        per_node = torch.zeros(self.size, dtype=torch.float64)
        features = sources[self.feature_site[sources] >= 0]
        rest: dict[SiteKey, float] = {}
        for site, effects in edges.features.items():
            own = features[self.feature_site[features] == self.sites.index(site)]
            per_node[own] = effects.double().cpu()[self.slot[own]]
            rest[site] = float(effects.double().sum() - per_node[own].sum())
        for index, site in self.errors.items():
            if site in edges.errors:
                per_node[index] = float(edges.errors[site].double().sum())
        for index, site in self.rests.items():
            per_node[index] = rest.get(site, 0.0)
        for index, stream in self.inputs.items():
            per_node[index] = float(edges.inputs[stream].double().sum())
        if self.bias >= 0:
            per_node[self.bias] = edges.bias
        return per_node[sources]
