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

from ..errors import DiffractError
from ..transcoders.config import STREAMS, Stream
from ..transcoders.transcoder_set import SiteKey
from .graph import CircuitGraph, CircuitNode, NodeKind
from .pass_memory import free_bytes, rows_that_fit
from .replacement import ReplacementModel, RowEdges, TargetRow
from .settings import TraceSettings

_ROWS_AT_ONCE = 1 << 24  # elements of the [rows, features] matrix that picks the rows' top edges


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


class SourceIds:
    """Every source of a trace as one integer: the distinct kept features of all sites first (site by
    site), then per site its error and rest terms, then the inputs and the bias. Rows of the graph are
    (ids, weights) tensors over this space, so edges never become Python objects."""

    def __init__(self, model: ReplacementModel) -> None:
        self.sites: list[SiteKey] = list(model.sites)
        self.index = {site: i for i, site in enumerate(self.sites)}
        site_features = [model.sites[site].features.cpu() for site in self.sites]
        sizes = torch.tensor([len(f) for f in site_features], dtype=torch.long)
        self.offset = dict(zip(self.sites, (torch.cumsum(sizes, 0) - sizes).tolist()))  # each site's first id
        self.features = int(sizes.sum())
        self.site_of = torch.repeat_interleave(torch.arange(len(self.sites)), sizes)  # [features]
        self.feature_of = torch.cat([torch.zeros(0, dtype=torch.long), *site_features])  # [features]
        self.size = self.features + 2 * len(self.sites) + len(STREAMS) + 1

    def error(self, site: SiteKey) -> int:
        return self.features + self.index[site]

    def rest(self, site_index: int | torch.Tensor) -> int | torch.Tensor:
        return self.features + len(self.sites) + site_index

    def input(self, stream: Stream) -> int:
        return self.features + 2 * len(self.sites) + STREAMS.index(stream)

    @property
    def bias(self) -> int:
        return self.size - 1

    def key(self, source: int) -> tuple[Stream, int, int]:
        """(stream, layer, feature) of a feature id."""
        stream, layer = self.sites[int(self.site_of[source])]
        return stream, layer, int(self.feature_of[source])


@dataclass
class _Row:
    source: int  # the expanded feature's id (-1: the target)
    value: float
    ids: torch.Tensor  # [E] long: its sources' ids (kept features, errors, rests, inputs, bias)
    weights: torch.Tensor  # [E] float64: their direct effects


class CircuitTracer:
    def __init__(self, model: ReplacementModel, settings: TraceSettings | None = None) -> None:
        self.model = model
        self.settings = settings or TraceSettings()
        self.ids = SourceIds(model)
        self._rows: list[_Row] = []
        self._root_edges: RowEdges | None = None
        self._positions: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
        self.rows_per_pass = 1 if self.settings.per_row else rows_that_fit(
            model, self.settings.batch_size, free_bytes(model.device))

    def trace(self, root: RootTarget, *, step: int, progress: ProgressCallback | None = None) -> CircuitGraph:
        """The graph, without metadata (`trace_circuit` adds it)."""
        (root_edges,) = self._compute([root.row])
        self._root_edges = root_edges
        self._rows = self._edge_rows([-1], [float(self.model.value(root.row)[0])], [root_edges])
        expanded = torch.zeros(self.ids.size, dtype=torch.bool)
        budget = self.settings.max_feature_nodes
        count = 0
        while count < budget:
            ranked = self._rank_candidates(expanded)
            if not len(ranked):
                break
            queue = ranked[: min(self._round_size(budget), budget - count)].tolist()
            for start in range(0, len(queue), self.settings.batch_size):
                batch = queue[start : start + self.settings.batch_size]
                edges = self._compute([self._feature_row(source) for source in batch])
                self._rows += self._edge_rows(batch, [self._feature_value(source) for source in batch], edges)
                expanded[batch] = True
                count += len(batch)
                if progress is not None:
                    progress(count, budget)
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
        """The rows' edges, `rows_per_pass` rows per pass; a pass that runs out of memory is retried
        with half the rows (and `rows_per_pass` stays halved)."""
        if self.settings.per_row:
            return [self.model.attribute_autograd(row) for row in rows]
        edges: list[RowEdges] = []
        while len(edges) < len(rows):
            piece = rows[len(edges) : len(edges) + self.rows_per_pass]
            try:
                edges += self.model.attribute(piece)
                continue
            except torch.OutOfMemoryError:
                pass  # retried below, once the failed pass's tensors are released with the exception
            if self.rows_per_pass == 1:
                raise DiffractError(
                    f"one target row does not fit in the memory free on {self.model.device}: trace a smaller image, "
                    "lower max_active, or free memory (unload other models)"
                )
            self.rows_per_pass //= 2
            if self.model.device.type == "cuda":
                torch.cuda.empty_cache()
        return edges

    def _feature_positions(self, source: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(positions, activations) where a feature fires among its site's kept features."""
        if source in self._positions:
            return self._positions[source]
        stream, layer, feature = self.ids.key(source)
        sources = self.model.sites[(stream, layer)]
        hits = (sources.indices == feature) & (sources.values > 0)
        activations = (sources.values * hits).sum(-1)
        positions = torch.nonzero(hits.any(-1)).flatten()
        self._positions[source] = (positions, activations[positions])
        return self._positions[source]

    def _feature_row(self, source: int) -> TargetRow:
        stream, layer, feature = self.ids.key(source)
        positions, _ = self._feature_positions(source)
        weights = torch.zeros(self.model.tokens(stream), dtype=self.model.dtype, device=self.model.device)
        weights[positions] = 1.0
        return self.model.feature_row(stream, layer, feature, weights)

    def _feature_value(self, source: int) -> float:
        return float(self._feature_positions(source)[1].double().sum())

    def _edge_rows(self, sources: list[int], values: list[float], edges: list[RowEdges]) -> list[_Row]:
        """The rows of one pass: for each, its top `max_edges_per_node` feature edges, the other
        features summed into their sites' rest terms, the error terms, the inputs and the bias.
        The choice runs on the model's device for many rows at once; only the kept edges leave it."""
        ids, device = self.ids, self.model.device
        site_of = ids.site_of.to(device)
        out: list[_Row] = []
        per_chunk = max(1, _ROWS_AT_ONCE // max(1, ids.features))
        for start in range(0, len(edges), per_chunk):
            chunk = edges[start : start + per_chunk]
            totals = torch.zeros(len(chunk), ids.features, dtype=torch.float64, device=device)
            for r, row in enumerate(chunk):
                for site, effects in row.features.items():
                    offset = ids.offset[site]
                    totals[r, offset : offset + len(effects)] = effects
            kept = torch.zeros_like(totals, dtype=torch.bool)
            if ids.features:
                cap = min(ids.features, self.settings.max_edges_per_node)
                kept.scatter_(1, torch.topk(totals.abs(), cap, dim=1).indices, True)
            kept &= totals != 0
            beyond = torch.where(kept, 0.0, totals)
            sites = len(ids.sites)
            rests = torch.zeros(len(chunk), sites, dtype=torch.float64, device=device).index_add_(1, site_of, beyond)
            folded = torch.zeros(len(chunk), sites, dtype=torch.float64, device=device).index_add_(
                1, site_of, (beyond != 0).double()) > 0
            for r, row in enumerate(chunk):
                features, rest_sites = torch.nonzero(kept[r]).flatten(), torch.nonzero(folded[r]).flatten()
                others = self._other_sources(row)
                out.append(_Row(
                    sources[start + r],
                    values[start + r],
                    torch.cat([features.cpu(), ids.rest(rest_sites.cpu()), others[0]]),
                    torch.cat([totals[r, features], rests[r, rest_sites], others[1].to(device)]).cpu(),
                ))
        return out

    def _other_sources(self, edges: RowEdges) -> tuple[torch.Tensor, torch.Tensor]:
        """(ids, weights) of a row's bias, error and input sources."""
        ids = [self.ids.bias, *(self.ids.error(site) for site in edges.errors),
               *(self.ids.input(stream) for stream in edges.inputs)]
        parts = [*edges.errors.values(), *edges.inputs.values()]
        sums = torch.stack([part.double().sum() for part in parts]).cpu() if parts else torch.zeros(0)
        weights = torch.cat([torch.tensor([edges.bias], dtype=torch.float64), sums.double()])
        return torch.tensor(ids, dtype=torch.long), weights

    # --- ranking ---------------------------------------------------------------------------------

    def _rank_candidates(self, expanded: torch.Tensor) -> torch.Tensor:
        """Unexpanded feature ids by their influence on the target through the rows so far: the
        normalised rows as one sparse matrix, applied to the influence carried down from the target
        until no expanded feature passes any on."""
        row_of_row = torch.repeat_interleave(torch.arange(len(self._rows)),
                                             torch.tensor([len(row.ids) for row in self._rows]))
        columns = torch.cat([row.ids for row in self._rows])
        weights = torch.cat([row.weights for row in self._rows]).abs()
        totals = torch.zeros(len(self._rows), dtype=torch.float64).index_add_(0, row_of_row, weights)
        weights = weights / torch.where(totals == 0, 1.0, totals)[row_of_row]
        row_of_source = torch.full((self.ids.size,), -1, dtype=torch.long)
        row_of_source[torch.tensor([row.source for row in self._rows[1:]], dtype=torch.long)] = torch.arange(
            1, len(self._rows))
        passing = row_of_source >= 0  # sources that are rows pass their influence on
        carried = torch.zeros(len(self._rows), dtype=torch.float64)
        carried[0] = 1.0
        influence = torch.zeros(self.ids.size, dtype=torch.float64)
        for _ in range(len(self._rows) + 1):
            reached = torch.zeros(self.ids.size, dtype=torch.float64).index_add_(
                0, columns, weights * carried[row_of_row])
            influence += reached
            carried = torch.zeros(len(self._rows), dtype=torch.float64).index_add_(
                0, row_of_source[passing], reached[passing])
            if not carried.any():
                break
        scores = influence[: self.ids.features]
        open_ = (scores > 0) & ~expanded[: self.ids.features]
        candidates = torch.nonzero(open_).flatten()
        order = torch.sort(scores[candidates], descending=True, stable=True).indices
        return candidates[order]

    # --- the graph -------------------------------------------------------------------------------

    def _build_graph(self, root: RootTarget, step: int) -> CircuitGraph:
        ids = self.ids
        root_edges = self._root_edges
        assert root_edges is not None
        node_of = torch.full((ids.size,), -1, dtype=torch.long)  # each source id's node
        nodes: list[CircuitNode] = []
        for row in self._rows[1:]:
            stream, layer, feature = ids.key(row.source)
            positions, activations = self._feature_positions(row.source)
            node_of[row.source] = len(nodes)
            nodes.append(CircuitNode("feature", step, stream, layer, feature, row.value, positions.cpu(),
                                     activations.float().cpu()))
        columns = torch.cat([row.ids for row in self._rows])
        unexpanded = torch.nonzero((columns < ids.features) & (node_of[columns] < 0)).flatten()
        columns[unexpanded] = ids.rest(ids.site_of[columns[unexpanded]])  # features left out: their sites' rest
        used = torch.zeros(ids.size, dtype=torch.bool)
        used[columns] = True
        for kind in ("error", "rest"):
            for stream, layer in sorted(ids.sites, key=lambda site: (site[1], site[0])):
                site_index = ids.index[(stream, layer)]
                source = ids.error((stream, layer)) if kind == "error" else int(ids.rest(site_index))
                if used[source]:
                    node_of[source] = len(nodes)
                    per_position = root_edges.errors.get((stream, layer)) if kind == "error" else None
                    nodes.append(self._source_node(kind, step, stream, layer, per_position))
        for stream in STREAMS:
            node_of[ids.input(stream)] = len(nodes)
            nodes.append(self._source_node("input", step, stream, None, root_edges.inputs.get(stream)))
        node_of[ids.bias] = len(nodes)
        nodes.append(CircuitNode("bias", step))
        target = len(nodes)
        nodes.append(
            CircuitNode(
                "target", step, root.row.stream, root.row.layer, root.feature, self._rows[0].value,
                root.positions.cpu(), root.weights.float().cpu(), root.label,
            )
        )
        row_nodes = torch.tensor([target, *(int(node_of[row.source]) for row in self._rows[1:])], dtype=torch.long)
        lengths = torch.tensor([len(row.ids) for row in self._rows])
        targets = torch.repeat_interleave(row_nodes, lengths)
        sources = node_of[columns]
        weights = torch.cat([row.weights for row in self._rows])
        pairs, pair_of_edge = torch.unique(targets * len(nodes) + sources, return_inverse=True)
        summed = torch.zeros(len(pairs), dtype=torch.float64).index_add_(0, pair_of_edge, weights)
        nonzero = summed != 0
        graph = CircuitGraph(nodes, (pairs % len(nodes))[nonzero], (pairs // len(nodes))[nonzero], summed[nonzero])
        into_target = (pairs // len(nodes)) == target
        for source, value in zip((pairs % len(nodes))[into_target].tolist(), summed[into_target].tolist()):
            if nodes[source].kind != "feature":  # a source node's value: its direct effect on the target
                nodes[source].value = value
        return graph

    def _source_node(
        self, kind: NodeKind, step: int, stream: Stream, layer: int | None, per_position: torch.Tensor | None
    ) -> CircuitNode:
        """Error and input nodes keep their per-position effect on the target."""
        if per_position is None:
            return CircuitNode(kind, step, stream, layer)
        positions = torch.nonzero(per_position).flatten()
        return CircuitNode(kind, step, stream, layer, None, 0.0, positions.cpu(), per_position[positions].float().cpu())
