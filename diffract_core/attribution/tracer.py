"""Budgeted graph construction: expand the most influential features, many per backward pass.

Starting from the target, every computed row gives the direct effect of each source on one node.
Features are ranked by their influence on the target through the rows computed so far (as
circuit-tracer ranks them), and the best `batch_size` are expanded together in one pass of the
replacement model's transpose, until `max_feature_nodes` are expanded or no candidate is left.

A feature node's value is its summed activation over the positions where it fires; its row reads
its pre-activation at exactly those positions, so its incoming edges sum to that value.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from ..transcoders.config import STREAMS, Stream
from .graph import CircuitGraph, CircuitNode, NodeKind, edge_list
from .replacement import ReplacementModel, RowEdges, TargetRow
from .settings import TraceSettings

FeatureKey = tuple[Stream, int, int]  # (stream, layer, feature)
SourceKey = tuple  # ("feature", stream, layer, f) | ("error"|"rest", stream, layer) | ("input", stream) | ("bias",)


@dataclass
class _Row:
    key: SourceKey
    value: float
    sources: dict[SourceKey, float]


@dataclass
class RootTarget:
    """The target row and how to show it."""

    row: TargetRow
    feature: int
    label: str
    positions: torch.Tensor  # token positions the target reads
    weights: torch.Tensor  # their weights


ProgressCallback = Callable[[int, int], None]  # (features expanded, budget)
MIN_RANKINGS = 4  # rankings per trace, at least, where the budget spans that many batches


class CircuitTracer:
    def __init__(self, model: ReplacementModel, settings: TraceSettings | None = None) -> None:
        self.model = model
        self.settings = settings or TraceSettings()
        self._rows: list[_Row] = []
        self._root_edges: RowEdges | None = None
        self._positions: dict[SourceKey, tuple[torch.Tensor, torch.Tensor]] = {}

    def trace(self, root: RootTarget, *, step: int, progress: ProgressCallback | None = None) -> CircuitGraph:
        """The graph, without metadata (`trace_circuit` adds it)."""
        root_key: SourceKey = ("target",)
        (root_edges,) = self._compute([root.row])
        self._root_edges = root_edges
        self._rows = [_Row(root_key, float(self.model.value(root.row)[0]), self._sources(root_edges, root.row))]
        expanded: set[SourceKey] = set()
        budget = self.settings.max_feature_nodes
        while len(expanded) < budget:
            ranked = self._rank_candidates(expanded)
            if not ranked:
                break
            queue = ranked[: min(self._round_size(budget), budget - len(expanded))]
            for start in range(0, len(queue), self.settings.batch_size):
                batch = queue[start : start + self.settings.batch_size]
                rows = [self._feature_row(key) for key in batch]
                for key, row, edges in zip(batch, rows, self._compute(rows)):
                    self._rows.append(_Row(key, self._feature_value(key), self._sources(edges, row)))
                    expanded.add(key)
                if progress is not None:
                    progress(len(expanded), budget)
        return self._build_graph(root, step)

    def _round_size(self, budget: int) -> int:
        """Features expanded between two rankings: `update_interval` batches, but whole batches small
        enough that even a small budget is ranked MIN_RANKINGS times, so the nodes chosen late follow
        influence through the rows computed early, not only the direct effect on the target."""
        batch = self.settings.batch_size
        spread = -(-budget // MIN_RANKINGS) // batch * batch
        return min(self.settings.update_interval * batch, max(batch, spread))

    # --- rows ------------------------------------------------------------------------------------

    def _compute(self, rows: list[TargetRow]) -> list[RowEdges]:
        if self.settings.per_row:
            return [self.model.attribute_autograd(row) for row in rows]
        return self.model.attribute(rows)

    def _feature_positions(self, key: SourceKey) -> tuple[torch.Tensor, torch.Tensor]:
        """(positions, activations) where a feature fires among its site's kept features."""
        if key in self._positions:
            return self._positions[key]
        _, stream, layer, feature = key
        sources = self.model.sites[(stream, layer)]
        hits = (sources.indices == feature) & (sources.values > 0)
        activations = (sources.values * hits).sum(-1)
        positions = torch.nonzero(hits.any(-1)).flatten()
        self._positions[key] = (positions, activations[positions])
        return self._positions[key]

    def _feature_row(self, key: SourceKey) -> TargetRow:
        _, stream, layer, feature = key
        positions, _ = self._feature_positions(key)
        weights = torch.zeros(self.model.tokens(stream), dtype=self.model.dtype, device=self.model.device)
        weights[positions] = 1.0
        return self.model.feature_row(stream, layer, feature, weights)

    def _feature_value(self, key: SourceKey) -> float:
        return float(self._feature_positions(key)[1].double().sum())

    def _sources(self, edges: RowEdges, row: TargetRow) -> dict[SourceKey, float]:
        """One row's edges by source node; feature edges beyond the row's cap go to rest nodes."""
        sources: dict[SourceKey, float] = {("bias",): self.model.bias(row)}
        for stream, contribution in edges.inputs.items():
            sources[("input", stream)] = float(contribution.double().sum())
        keys, values = [], []
        for site, effects in edges.features.items():
            sources[("error", *site)] = float(edges.errors[site].double().sum())
            indices = self.model.sites[site].indices
            if indices.shape[-1] == 0:
                continue
            totals = torch.zeros(int(indices.max()) + 1, dtype=torch.float64, device=effects.device)
            totals.scatter_add_(0, indices.flatten(), effects.flatten().double())
            nonzero = torch.nonzero(totals).flatten()
            for feature, value in zip(nonzero.tolist(), totals[nonzero].tolist()):
                keys.append(("feature", site[0], site[1], feature))
                values.append(value)
        if values:
            magnitudes = torch.tensor(values).abs()
            kept = torch.topk(magnitudes, min(len(values), self.settings.max_edges_per_node)).indices.tolist()
            kept_set = set(kept)
            for i, (key, value) in enumerate(zip(keys, values)):
                if i in kept_set:
                    sources[key] = value
                else:
                    rest = ("rest", key[1], key[2])
                    sources[rest] = sources.get(rest, 0.0) + value
        return sources

    # --- ranking ---------------------------------------------------------------------------------

    def _rank_candidates(self, expanded: set[SourceKey]) -> list[SourceKey]:
        """Unexpanded features by their influence on the target through the rows so far."""
        columns: dict[SourceKey, int] = {}
        row_index = {row.key: i for i, row in enumerate(self._rows)}
        crow, cols, vals = [0], [], []
        for row in self._rows:
            total = sum(abs(v) for v in row.sources.values()) or 1.0
            for key, value in row.sources.items():
                cols.append(columns.setdefault(key, len(columns)))
                vals.append(abs(value) / total)
            crow.append(len(cols))
        if not cols:
            return []
        row_ids = torch.repeat_interleave(torch.arange(len(self._rows)), torch.tensor(crow).diff())
        col_ids = torch.tensor(cols)
        weights = torch.tensor(vals, dtype=torch.float64)
        # influence flows from the target down the computed rows; a column that is also a row passes it on
        row_of_column = torch.full((len(columns),), -1, dtype=torch.long)
        for key, column in columns.items():
            if key in row_index:
                row_of_column[column] = row_index[key]
        has_row = row_of_column >= 0
        carried = torch.zeros(len(self._rows), dtype=torch.float64)
        carried[0] = 1.0
        influence = torch.zeros(len(columns), dtype=torch.float64)
        for _ in range(len(self._rows) + 1):
            if not carried.any():
                break
            reached = torch.zeros(len(columns), dtype=torch.float64).index_add_(0, col_ids, weights * carried[row_ids])
            influence += reached
            carried = torch.zeros(len(self._rows), dtype=torch.float64).index_add_(
                0, row_of_column[has_row], reached[has_row]
            )
        candidates = [
            (float(influence[column]), key)
            for key, column in columns.items()
            if key[0] == "feature" and key not in expanded and key not in row_index
        ]
        candidates.sort(key=lambda item: -item[0])
        return [key for score, key in candidates if score > 0]

    # --- the graph -------------------------------------------------------------------------------

    def _build_graph(self, root: RootTarget, step: int) -> CircuitGraph:
        expanded = {row.key for row in self._rows[1:]}
        folded_rows = []
        for row in self._rows:
            folded: dict[SourceKey, float] = {}
            for key, value in row.sources.items():
                if key[0] == "feature" and key not in expanded:
                    key = ("rest", key[1], key[2])  # features left out of the graph
                folded[key] = folded.get(key, 0.0) + value
            folded_rows.append(folded)
        used = {key for folded in folded_rows for key in folded}
        root_edges = self._root_edges
        assert root_edges is not None
        nodes: list[CircuitNode] = []
        index: dict[SourceKey, int] = {}
        for row in self._rows[1:]:
            _, stream, layer, feature = row.key
            positions, activations = self._feature_positions(row.key)
            index[row.key] = len(nodes)
            nodes.append(CircuitNode("feature", step, stream, layer, feature, row.value, positions.cpu(),
                                     activations.float().cpu()))
        for kind in ("error", "rest"):
            for stream, layer in sorted(self.model.sites, key=lambda site: (site[1], site[0])):
                if (kind, stream, layer) in used:
                    index[(kind, stream, layer)] = len(nodes)
                    per_position = root_edges.errors.get((stream, layer)) if kind == "error" else None
                    nodes.append(self._source_node(kind, step, stream, layer, per_position))
        for stream in STREAMS:
            index[("input", stream)] = len(nodes)
            nodes.append(self._source_node("input", step, stream, None, root_edges.inputs.get(stream)))
        index[("bias",)] = len(nodes)
        nodes.append(CircuitNode("bias", step))
        index[("target",)] = len(nodes)
        nodes.append(
            CircuitNode(
                "target", step, root.row.stream, root.row.layer, root.feature, self._rows[0].value,
                root.positions.cpu(), root.weights.float().cpu(), root.label,
            )
        )
        triples = [
            (index[key], index[row.key], value)
            for row, folded in zip(self._rows, folded_rows)
            for key, value in folded.items()
            if value != 0.0
        ]
        for key, value in folded_rows[0].items():  # a source node's value: its direct effect on the target
            if key[0] != "feature":
                nodes[index[key]].value = value
        return CircuitGraph(nodes, *edge_list(triples))

    def _source_node(
        self, kind: NodeKind, step: int, stream: Stream, layer: int | None, per_position: torch.Tensor | None
    ) -> CircuitNode:
        """Error and input nodes keep their per-position effect on the target."""
        if per_position is None:
            return CircuitNode(kind, step, stream, layer)
        positions = torch.nonzero(per_position).flatten()
        return CircuitNode(kind, step, stream, layer, None, 0.0, positions.cpu(), per_position[positions].float().cpu())
