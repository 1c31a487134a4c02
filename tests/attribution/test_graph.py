"""Influence, pruning and scores on a hand-built graph, checked against the definitions."""

from __future__ import annotations

import pytest
import torch

from diffract_core.attribution.adjacency import GraphStructureError
from diffract_core.attribution.graph import HAS_FEATURE, HAS_LAYER, CircuitGraph, CircuitNode, edge_list
from diffract_core.features import FeatureRef


def _graph() -> CircuitGraph:
    #  input -> f0 -> f1 -> target, error -> target, bias -> f1
    nodes = [
        CircuitNode("feature", 0, "img", 0, 1, value=2.0),
        CircuitNode("feature", 0, "txt", 1, 2, value=3.0),
        CircuitNode("error", 0, "img", 1),
        CircuitNode("input", 0, "img"),
        CircuitNode("bias", 0),
        CircuitNode("target", 0, "img", 2, 5, value=4.0),
    ]
    edges = [(3, 0, 2.0), (0, 1, 2.5), (4, 1, 0.5), (1, 5, 3.0), (2, 5, 1.0)]
    return CircuitGraph(nodes, *edge_list(edges))


def test_a_node_has_exactly_the_fields_of_its_kind() -> None:
    assert CircuitNode("feature", 1, "img", 3, 7).ref == FeatureRef("img", 3, 7)
    for kind, stream, layer, feature in (("feature", "img", 3, None), ("error", "img", 3, 7), ("input", "img", 3, None),
                                         ("bias", "img", None, None), ("target", None, 3, 7), ("other", "img", 3, 7)):
        with pytest.raises(GraphStructureError, match=f"a {kind!r} node has stream/layer/feature"):
            CircuitNode(kind, 1, stream, layer, feature)  # type: ignore[arg-type]
    with pytest.raises(GraphStructureError, match="a error node has no feature"):
        _ = CircuitNode("error", 1, "img", 3).ref


def test_a_hand_built_graph_has_no_metadata_and_says_how_to_get_it() -> None:
    with pytest.raises(GraphStructureError, match="no metadata .* trace it with trace_circuit or load it"):
        _graph().require_metadata()


def test_conservation_and_adjacency() -> None:
    graph = _graph()
    assert graph.conservation().tolist() == [0.0, 0.0, 0.0]
    adjacency = graph.adjacency()
    assert adjacency[5, 1] == 3.0 and adjacency[1, 0] == 2.5 and adjacency.sum() == 9.0


def test_influence_sums_normalised_paths() -> None:
    influence = _graph().influence()
    # target's inputs: f1 3/4, error 1/4; f1's: f0 2.5/3, bias 0.5/3; f0's: input 1
    assert torch.allclose(influence, torch.tensor([0.75 * 2.5 / 3, 0.75, 0.25, 0.75 * 2.5 / 3, 0.75 * 0.5 / 3, 0.0],
                                                  dtype=torch.float64))


def test_scores_follow_circuit_tracer() -> None:
    replacement, completeness = _graph().scores()
    explained = 0.75 * 2.5 / 3 + 0.75 * 0.5 / 3  # input + bias
    assert abs(replacement - explained / (explained + 0.25)) < 1e-12
    # only the target has an error input (a quarter of it); weights: influence + target weight
    influence = _graph().influence() + torch.tensor([0, 0, 0, 0, 0, 1.0], dtype=torch.float64)
    expected = float(((1 - torch.tensor([0, 0, 0, 0, 0, 0.25], dtype=torch.float64)) * influence).sum()
                     / influence.sum())
    assert abs(completeness - expected) < 1e-12


def test_pruning_keeps_the_influential_path_and_always_the_terminals() -> None:
    graph = _graph()
    everything = graph.prune(node_threshold=1.0, edge_threshold=1.0)
    assert everything.node_mask.all() and everything.edge_mask.all()
    tight = graph.prune(node_threshold=0.5, edge_threshold=0.5)
    kept = {graph.nodes[i].id for i in torch.nonzero(tight.node_mask).flatten().tolist()}
    assert {"input:img@0", "bias@0", "target:img:2:5@0", "feature:txt:1:2@0"} <= kept
    sub = graph.subgraph(tight)
    assert len(sub.nodes) == int(tight.node_mask.sum()) and sub.target.kind == "target"


def test_sparse_influence_equals_the_dense_path_sum_on_random_graphs() -> None:
    """influence = w (A + A^2 + ...) = w ((I - A)^-1 - I), A the row-normalised |adjacency| (dense, small)."""
    generator = torch.Generator().manual_seed(0)
    for _ in range(20):
        n = int(torch.randint(4, 40, (1,), generator=generator))
        kinds = ["input", "bias", *["feature"] * (n - 4), "error", "target"]
        nodes = [CircuitNode(kind, 0, None if kind == "bias" else "img", i if kind in HAS_LAYER else None,
                             i if kind in HAS_FEATURE else None, value=1.0)
                 for i, kind in enumerate(kinds)]
        pairs = torch.randint(0, n, (4 * n, 2), generator=generator).sort(dim=1).values  # source < target: acyclic
        pairs = pairs[pairs[:, 0] != pairs[:, 1]]
        weights = torch.randn(len(pairs), generator=generator, dtype=torch.float64)
        graph = CircuitGraph(nodes, pairs[:, 0], pairs[:, 1], weights)
        dense = graph.adjacency().abs()
        normalized = dense / dense.sum(1, keepdim=True).clamp(min=1e-10)
        start = graph.target_weights()
        expected = start @ torch.linalg.inv(torch.eye(n, dtype=torch.float64) - normalized) - start
        assert torch.allclose(graph.influence(), expected, atol=1e-12)


def test_a_cycle_is_refused() -> None:
    graph = _graph()
    graph.edge_sources = torch.cat([graph.edge_sources, torch.tensor([1])])
    graph.edge_targets = torch.cat([graph.edge_targets, torch.tensor([0])])
    graph.edge_weights = torch.cat([graph.edge_weights, torch.tensor([1.0], dtype=torch.float64)])
    with pytest.raises(GraphStructureError, match="edges form a cycle"):
        graph.influence()
