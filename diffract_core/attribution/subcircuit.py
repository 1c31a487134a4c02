"""A circuit as a graph of its own: some of a graph's feature nodes kept, the others folded into
their sites' rest nodes ("features active there but not in the graph"), so that every kept node's
incoming edges still add up to its value and the smaller graph is as exact as the traced one."""

from __future__ import annotations

from collections.abc import Iterable

import torch

from ..errors import DiffractError
from .graph import CircuitGraph, CircuitNode


def keep_features(graph: CircuitGraph, keep: Iterable[int]) -> CircuitGraph:
    """The graph with only the feature nodes `keep` (node indices): every other feature's outgoing
    edges move to the rest node of its site (made where the graph has none) and its incoming edges go.
    Other nodes stay, in their order; a rest node's value is again its direct effect on the target."""
    kept = set(keep)
    features = set(graph.indices("feature"))
    if not kept <= features:
        raise DiffractError(f"nodes {sorted(kept - features)[:10]} are not feature nodes of the circuit")
    rest_of = {(node.stream, node.layer, node.step): i for i, node in enumerate(graph.nodes) if node.kind == "rest"}
    nodes = [node for i, node in enumerate(graph.nodes) if i not in features - kept]
    new_rests = []
    for i in sorted(features - kept):
        node = graph.nodes[i]
        if (node.stream, node.layer, node.step) not in rest_of:
            rest_of[(node.stream, node.layer, node.step)] = -1
            new_rests.append(CircuitNode("rest", node.step, node.stream, node.layer))
    first_input = next(i for i, node in enumerate(nodes) if node.kind in ("input", "bias", "target"))
    nodes[first_input:first_input] = new_rests
    index_of = {node.id: i for i, node in enumerate(nodes)}
    renumber = torch.tensor([index_of.get(node.id, -1) for node in graph.nodes], dtype=torch.long)
    for i in features - kept:
        node = graph.nodes[i]
        renumber[i] = index_of[CircuitNode("rest", node.step, node.stream, node.layer).id]
    sources, targets = renumber[graph.edge_sources], renumber[graph.edge_targets]
    into_kept = torch.tensor([i not in features - kept for i in range(len(graph.nodes))])[graph.edge_targets]
    pairs, pair_of_edge = torch.unique(targets[into_kept] * len(nodes) + sources[into_kept], return_inverse=True)
    weights = torch.zeros(len(pairs), dtype=torch.float64).index_add_(0, pair_of_edge, graph.edge_weights[into_kept])
    nonzero = weights != 0
    smaller = CircuitGraph(nodes, (pairs % len(nodes))[nonzero], (pairs // len(nodes))[nonzero], weights[nonzero],
                           graph.metadata)
    target = smaller.target_index
    for i, node in enumerate(nodes):
        if node.kind == "rest":
            into_target = (smaller.edge_sources == i) & (smaller.edge_targets == target)
            nodes[i] = CircuitNode("rest", node.step, node.stream, node.layer,
                                   value=float(smaller.edge_weights[into_target].sum()))
    return smaller
