"""Attribution graphs: nodes, sparse edges, influence, pruning and circuit-tracer's scores.

Nodes are transcoder features (stream, layer, feature, step) with their per-position activations
kept, one error node per MLP site (what its transcoder does not explain), one "rest" node per site
(features that are active there but not in the graph), one input node per stream, one bias node
(every constant: encoder and decoder biases, FiLM and modulation shifts, attention biases) and the
target. Edges point from source to target and carry the direct effect; every expanded node's
incoming edges sum to its value.

Influence, pruning and the replacement / completeness scores follow circuit-tracer: the adjacency
matrix has one row per target node, rows are normalised by their total |weight|, and a node's
influence is the sum over paths of products of normalised weights to the target. The bias node
counts with the inputs (an explained, constant source); error and rest nodes are the unexplained part.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

import torch

from ..errors import GraphStructureError, SettingsError
from ..features import FeatureRef
from ..transcoders.config import Stream
from .adjacency import SparseAdjacency

if TYPE_CHECKING:
    import networkx as nx

    from .metadata import CircuitMetadata

NodeKind = Literal["feature", "error", "rest", "input", "bias", "target"]
NODE_KINDS: tuple[NodeKind, ...] = ("feature", "error", "rest", "input", "bias", "target")
UNEXPLAINED: tuple[NodeKind, ...] = ("error", "rest")
TERMINAL: tuple[NodeKind, ...] = ("input", "bias")
HAS_LAYER: tuple[NodeKind, ...] = ("feature", "target", "error", "rest")  # the site's layer
HAS_FEATURE: tuple[NodeKind, ...] = ("feature", "target")


@dataclass
class CircuitNode:
    """One node; which of stream, layer and feature it has is fixed by its kind (checked on creation):
    features and the target have all three, error and rest nodes a site (stream and layer), inputs a
    stream, the bias none."""

    kind: NodeKind
    step: int
    stream: Stream | None = None
    layer: int | None = None
    feature: int | None = None
    value: float = 0.0  # features: summed activation; target: its value; sources: their total effect on the target
    positions: torch.Tensor = field(default_factory=lambda: torch.zeros(0, dtype=torch.long))
    activations: torch.Tensor = field(default_factory=lambda: torch.zeros(0))  # per position, aligned with positions
    label: str = ""

    def __post_init__(self) -> None:
        wanted = (self.kind != "bias", self.kind in HAS_LAYER, self.kind in HAS_FEATURE)
        present = (self.stream is not None, self.layer is not None, self.feature is not None)
        if self.kind not in NODE_KINDS or wanted != present:
            raise GraphStructureError(
                f"a {self.kind!r} node has stream/layer/feature {self.stream}/{self.layer}/{self.feature}: "
                "features and the target need all three, error and rest nodes stream and layer, "
                "inputs a stream, the bias none"
            )

    @property
    def ref(self) -> FeatureRef:
        """The feature of a feature or target node."""
        if self.stream is None or self.layer is None or self.feature is None:
            raise GraphStructureError(f"a {self.kind} node has no feature (only feature and target nodes do)")
        return FeatureRef(self.stream, self.layer, self.feature)

    @property
    def id(self) -> str:
        if self.kind in ("feature", "target"):
            return f"{self.kind}:{self.stream}:{self.layer}:{self.feature}@{self.step}"
        if self.kind in ("error", "rest"):
            return f"{self.kind}:{self.stream}:{self.layer}@{self.step}"
        if self.kind == "input":
            return f"input:{self.stream}@{self.step}"
        return f"bias@{self.step}"

    @property
    def feature_spec(self) -> str | None:
        """`img:12:40684` for feature and target nodes."""
        return str(self.ref) if self.kind in HAS_FEATURE else None

    def describe(self) -> str:
        if self.kind == "feature":
            return f"{self.feature_spec} (step {self.step})"
        if self.kind == "target":
            return f"target {self.label or self.feature_spec}"
        if self.kind == "error":
            return f"{self.stream} L{self.layer} error"
        if self.kind == "rest":
            return f"{self.stream} L{self.layer} other features"
        if self.kind == "input":
            return f"{self.stream} input"
        return "biases"


@dataclass(frozen=True)
class Pruned:
    node_mask: torch.Tensor  # [N] bool
    edge_mask: torch.Tensor  # [E] bool
    influence: torch.Tensor  # [N] each node's influence on the target (the target itself: 1)


@dataclass
class CircuitGraph:
    nodes: list[CircuitNode]
    edge_sources: torch.Tensor  # [E] long, node indices
    edge_targets: torch.Tensor  # [E] long
    edge_weights: torch.Tensor  # [E] float64
    metadata: CircuitMetadata | None = None  # what `trace_circuit` or a circuit file says about the graph

    def __post_init__(self) -> None:
        self.edge_sources = self.edge_sources.long()
        self.edge_targets = self.edge_targets.long()
        self.edge_weights = self.edge_weights.double()

    # --- structure -------------------------------------------------------------------------------

    def require_metadata(self) -> CircuitMetadata:
        """The metadata, which graphs traced by `trace_circuit` and read from files carry."""
        if self.metadata is None:
            raise GraphStructureError("this circuit has no metadata (step, sigma, tokens): trace it with "
                                      "trace_circuit or load it from a circuit file")
        return self.metadata

    @property
    def target_index(self) -> int:
        return next(i for i, node in enumerate(self.nodes) if node.kind == "target")

    @property
    def target(self) -> CircuitNode:
        return self.nodes[self.target_index]

    def indices(self, *kinds: NodeKind) -> list[int]:
        return [i for i, node in enumerate(self.nodes) if node.kind in kinds]

    def features(self) -> list[CircuitNode]:
        return [node for node in self.nodes if node.kind == "feature"]

    def adjacency(self, edge_mask: torch.Tensor | None = None) -> torch.Tensor:
        """[N, N] float64: row = target node, column = source node."""
        n = len(self.nodes)
        matrix = torch.zeros(n, n, dtype=torch.float64)
        keep = slice(None) if edge_mask is None else edge_mask
        matrix.index_put_((self.edge_targets[keep], self.edge_sources[keep]), self.edge_weights[keep], accumulate=True)
        return matrix

    def expanded(self) -> list[int]:
        """Nodes whose incoming edges were computed: the target and every feature."""
        return self.indices("feature", "target")

    def conservation(self) -> torch.Tensor:
        """|value - sum(incoming edges)| / |value| of every expanded node (in `expanded()` order)."""
        incoming = torch.zeros(len(self.nodes), dtype=torch.float64).index_add_(0, self.edge_targets, self.edge_weights)
        expanded = self.expanded()
        values = torch.tensor([self.nodes[i].value for i in expanded], dtype=torch.float64)
        return (values - incoming[expanded]).abs() / values.abs().clamp(min=1e-12)

    def target_weights(self) -> torch.Tensor:
        weights = torch.zeros(len(self.nodes), dtype=torch.float64)
        weights[self.target_index] = 1.0
        return weights

    # --- influence, pruning, scores --------------------------------------------------------------

    def sparse_adjacency(self, edge_mask: torch.Tensor | None = None) -> SparseAdjacency:
        """The edges as a sparse adjacency (GraphStructureError if they form a cycle or chain implausibly deep)."""
        keep = slice(None) if edge_mask is None else edge_mask
        return SparseAdjacency.build(len(self.nodes), self.edge_sources[keep], self.edge_targets[keep],
                                     self.edge_weights[keep])

    def influence(self, edge_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Each node's total normalised influence on the target (circuit-tracer's node influence)."""
        adjacency = self.sparse_adjacency(edge_mask)
        return adjacency.influence(adjacency.normalized(), self.target_weights())

    def prune(self, node_threshold: float = 0.8, edge_threshold: float = 0.98) -> Pruned:
        """circuit-tracer's pruning: keep the nodes holding `node_threshold` of the total influence and
        the edges holding `edge_threshold` of the edge influence, then drop nodes left without an
        outgoing edge (features and error nodes) or an incoming edge (features). The target, inputs
        and bias always stay."""
        for name, value in (("node_threshold", node_threshold), ("edge_threshold", edge_threshold)):
            if not 0.0 <= value <= 1.0:
                raise SettingsError(f"{name} must be between 0 and 1, got {value}")
        adjacency = self.sparse_adjacency()
        weights = self.target_weights()
        influence = adjacency.influence(adjacency.normalized(), weights)
        node_mask = influence >= find_threshold(influence, node_threshold)
        always = torch.tensor([node.kind in ("target", *TERMINAL) for node in self.nodes])
        node_mask |= always
        pruned = torch.where(node_mask[adjacency.targets] & node_mask[adjacency.sources], adjacency.weights, 0.0)
        normalized = adjacency.normalized(pruned)
        edge_scores = normalized * (adjacency.influence(normalized, weights) + weights)[adjacency.targets]
        keep = (edge_scores >= find_threshold(edge_scores, edge_threshold)) & (pruned != 0)
        features = torch.tensor([node.kind == "feature" for node in self.nodes])
        needs_out = torch.tensor([node.kind in ("feature", *UNEXPLAINED) for node in self.nodes])
        _drop_dangling(adjacency, keep, node_mask, always, features, needs_out)
        full = influence.clone()
        full[self.target_index] = 1.0
        return Pruned(node_mask, keep[adjacency.pair_of_edge], full)

    def scores(self) -> tuple[float, float]:
        """(replacement score, completeness score) as circuit-tracer defines them."""
        adjacency = self.sparse_adjacency()
        normalized = adjacency.normalized()
        weights = self.target_weights()
        influence = adjacency.influence(normalized, weights)
        unexplained = self.indices(*UNEXPLAINED)
        explained = float(influence[self.indices(*TERMINAL)].sum())
        lost = float(influence[unexplained].sum())
        replacement = explained / (explained + lost) if explained + lost > 0 else 0.0
        from_unexplained = torch.zeros(len(self.nodes), dtype=torch.bool)
        from_unexplained[unexplained] = True
        pairs = from_unexplained[adjacency.sources]
        into_target = torch.zeros(len(self.nodes), dtype=torch.float64)
        non_error = 1 - into_target.index_add_(0, adjacency.targets[pairs], normalized[pairs])
        output_influence = influence + weights
        completeness = float((non_error * output_influence).sum() / output_influence.sum())
        return replacement, completeness

    def to_networkx(self) -> nx.DiGraph:
        """The graph for networkx's own tools (paths, communities, centrality): nodes keyed by id with
        their kind, step, stream, layer, feature, value and label; one edge per (source, target) pair
        with the summed weight."""
        import networkx as nx

        exported = nx.DiGraph()
        for node in self.nodes:
            exported.add_node(node.id, kind=node.kind, step=node.step, stream=node.stream, layer=node.layer,
                              feature=node.feature, value=node.value, label=node.label)
        count = len(self.nodes)
        pairs, pair_of_edge = torch.unique(self.edge_targets * count + self.edge_sources, return_inverse=True)
        summed = torch.zeros(len(pairs), dtype=torch.float64).index_add_(0, pair_of_edge, self.edge_weights)
        ids = [node.id for node in self.nodes]
        exported.add_weighted_edges_from(
            (ids[source], ids[target], weight)
            for source, target, weight in zip((pairs % count).tolist(), (pairs // count).tolist(), summed.tolist())
        )
        return exported

    def subgraph(self, pruned: Pruned) -> CircuitGraph:
        """The graph with only the kept nodes and edges (indices renumbered)."""
        kept = torch.nonzero(pruned.node_mask).flatten()
        renumber = torch.full((len(self.nodes),), -1, dtype=torch.long)
        renumber[kept] = torch.arange(len(kept))
        mask = pruned.edge_mask & pruned.node_mask[self.edge_sources] & pruned.node_mask[self.edge_targets]
        return CircuitGraph(
            [self.nodes[i] for i in kept.tolist()],
            renumber[self.edge_sources[mask]],
            renumber[self.edge_targets[mask]],
            self.edge_weights[mask],
            self.metadata,
        )


def _drop_dangling(adjacency: SparseAdjacency, keep: torch.Tensor, node_mask: torch.Tensor, always: torch.Tensor,
                   features: torch.Tensor, needs_out: torch.Tensor) -> None:
    """Drop (in place) nodes left without a kept outgoing edge (`needs_out`) or incoming edge
    (`features`), and their edges, until none is left. Each round touches only the edges of the
    nodes it drops, so the whole cascade costs time linear in the edges."""
    keep &= node_mask[adjacency.targets] & node_mask[adjacency.sources]
    ones = torch.ones(len(keep), dtype=torch.long)
    outgoing = torch.zeros(adjacency.size, dtype=torch.long).index_add_(0, adjacency.sources[keep], ones[keep])
    incoming = torch.zeros(adjacency.size, dtype=torch.long).index_add_(0, adjacency.targets[keep], ones[keep])
    candidates = torch.arange(adjacency.size)
    while True:
        dangling = node_mask[candidates] & ~always[candidates] & (
            (needs_out[candidates] & (outgoing[candidates] == 0)) | (features[candidates] & (incoming[candidates] == 0))
        )
        dropped = candidates[dangling]
        if len(dropped) == 0:
            return
        node_mask[dropped] = False
        touched = torch.cat([adjacency.pairs_of(dropped, adjacency.by_source),
                             adjacency.pairs_of(dropped, adjacency.by_target)])
        touched = torch.unique(touched[keep[touched]])
        keep[touched] = False
        outgoing.index_add_(0, adjacency.sources[touched], -ones[touched])
        incoming.index_add_(0, adjacency.targets[touched], -ones[touched])
        candidates = torch.unique(torch.cat([adjacency.sources[touched], adjacency.targets[touched]]))


def find_threshold(scores: torch.Tensor, threshold: float) -> torch.Tensor:
    """The score above which the kept scores hold `threshold` of the total."""
    ordered = torch.sort(scores.flatten(), descending=True).values
    total = ordered.sum()
    if total <= 0:
        return ordered[0] if len(ordered) else torch.tensor(0.0)
    cumulative = torch.cumsum(ordered, dim=0) / total
    index = min(int(torch.searchsorted(cumulative, torch.tensor(threshold, dtype=cumulative.dtype))), len(ordered) - 1)
    return ordered[index]


def edge_list(rows: Iterable[tuple[int, int, float]]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(sources, targets, weights) tensors from (source, target, weight) triples."""
    sources, targets, weights = [], [], []
    for source, target, weight in rows:
        sources.append(source)
        targets.append(target)
        weights.append(weight)
    return (
        torch.tensor(sources, dtype=torch.long),
        torch.tensor(targets, dtype=torch.long),
        torch.tensor(weights, dtype=torch.float64),
    )
