"""Structural similarity of two circuits (the same prompt at two steps, two prompts with the same
error, two models' circuits of one behaviour): Jaccard indices over their features and over the
edges between their supernodes, each also weighted.

Supernodes here are what the two circuits share a name for: by default a node's site (features of
`img:3` are one supernode, each error and rest node its own, inputs, bias and target one each, the
target whatever feature it reads), or the features' labels (`by_label`, an atlas's), so circuits of
different steps, prompts or targets compare. Features compare by (stream, layer, index), whatever
the step.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

from ..features import FeatureRef
from .graph import CircuitGraph, CircuitNode
from .serialize import Labels, node_label

SupernodeKey = Callable[[CircuitNode], str]


@dataclass(frozen=True)
class CircuitSimilarity:
    features: float  # |A ∩ B| / |A ∪ B| of the feature sets (1 when both are empty)
    weighted_features: float  # sum of min / sum of max of each feature's share of influence on the target
    supernode_edges: float  # Jaccard of the (source supernode, target supernode) pairs that carry an edge
    weighted_supernode_edges: float  # the same weighted by each pair's share of the circuit's |edge weight|


def by_site(node: CircuitNode) -> str:
    if node.kind == "feature":
        return f"{node.stream}:{node.layer}"
    if node.kind in ("error", "rest"):
        return f"{node.kind} {node.stream}:{node.layer}"
    return node.kind if node.kind in ("bias", "target") else f"input {node.stream}"


def by_label(labels: Labels) -> SupernodeKey:
    """Features by label (their own, else from `labels`), unlabelled ones by site; other nodes by site."""
    return lambda node: (node_label(node, labels) or by_site(node)) if node.kind == "feature" else by_site(node)


def circuit_similarity(first: CircuitGraph, second: CircuitGraph, supernode: SupernodeKey = by_site
                       ) -> CircuitSimilarity:
    a, b = _feature_shares(first), _feature_shares(second)
    edges_a, edges_b = _supernode_edges(first, supernode), _supernode_edges(second, supernode)
    return CircuitSimilarity(_jaccard(set(a), set(b)), _weighted(a, b), _jaccard(set(edges_a), set(edges_b)),
                             _weighted(edges_a, edges_b))


def _feature_shares(graph: CircuitGraph) -> dict[FeatureRef, float]:
    features = graph.indices("feature")
    if not features:
        return {}
    influence = graph.influence()[features]
    total = float(influence.sum())
    shares: dict[FeatureRef, float] = {}
    for index, value in zip(features, influence.tolist()):
        ref = graph.nodes[index].ref
        shares[ref] = shares.get(ref, 0.0) + (value / total if total > 0 else 1.0 / len(features))
    return shares


def _supernode_edges(graph: CircuitGraph, supernode: SupernodeKey) -> dict[tuple[str, str], float]:
    keys = [supernode(node) for node in graph.nodes]
    magnitudes = graph.edge_weights.abs()
    total = float(magnitudes.sum())
    edges: dict[tuple[str, str], float] = {}
    for source, target, magnitude in zip(graph.edge_sources.tolist(), graph.edge_targets.tolist(),
                                         (magnitudes / total if total > 0 else magnitudes).tolist()):
        if keys[source] != keys[target] and magnitude > 0:
            pair = (keys[source], keys[target])
            edges[pair] = edges.get(pair, 0.0) + magnitude
    return edges


def _jaccard(a: set, b: set) -> float:
    return len(a & b) / len(a | b) if a | b else 1.0


def _weighted(a: Mapping, b: Mapping) -> float:
    keys = set(a) | set(b)
    if not keys:
        return 1.0
    low = sum(min(a.get(k, 0.0), b.get(k, 0.0)) for k in keys)
    high = sum(max(a.get(k, 0.0), b.get(k, 0.0)) for k in keys)
    return low / high if high > 0 else 1.0

