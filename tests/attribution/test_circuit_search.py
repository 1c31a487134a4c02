"""The masked graph against hand computations, and the differentiable search against the top-k-by-
influence circuit of the same size, both measured by real intervention on the tiny model."""

from __future__ import annotations

import pytest
import torch

from diffract_core.attribution import (
    CircuitIntervention,
    SearchSettings,
    TargetSpec,
    TraceSettings,
    find_circuit,
    search_circuits,
    trace_circuit,
)
from diffract_core.attribution.circuit_search import budgets_up_to, choose, top_influence
from diffract_core.attribution.graph import CircuitGraph, CircuitNode, edge_list
from diffract_core.attribution.masked_graph import MaskedGraph
from diffract_core.errors import DiffractError, SettingsError


def _chain() -> CircuitGraph:
    """input -> f0 (value 2) -> f1 (value 3) -> target (4); bias -> f1; error -> target; f0 -> target; rest -> f1."""
    nodes = [
        CircuitNode("feature", 0, "img", 0, 1, value=2.0),
        CircuitNode("feature", 0, "img", 1, 2, value=3.0),
        CircuitNode("error", 0, "img", 1),
        CircuitNode("rest", 0, "img", 0),
        CircuitNode("input", 0, "img"),
        CircuitNode("bias", 0),
        CircuitNode("target", 0, "img", 2, 5, value=4.0),
    ]
    edges = [(4, 0, 2.0), (0, 1, 2.0), (5, 1, 0.5), (3, 1, 0.5), (1, 6, 3.0), (2, 6, 0.5), (0, 6, 0.5)]
    return CircuitGraph(nodes, *edge_list(edges))


def test_the_masked_graph_scales_edges_by_activity_and_removes_rest_nodes() -> None:
    masked = MaskedGraph(_chain())
    both, only_f1, only_f0, neither = masked.target(torch.tensor([[1.0, 1.0], [0.0, 1.0], [1.0, 0.0], [0.0, 0.0]]))
    # f1's input without the rest node: 2 + 0.5 = 2.5 of its 3, so its edge to the target gives 3 * 2.5 / 3
    assert float(both) == pytest.approx(2.5 + 0.5 + 0.5)
    assert float(only_f1) == pytest.approx(3 * 0.5 / 3 + 0.5)  # f1 keeps only the bias edge
    assert float(only_f0) == pytest.approx(0.5 + 0.5)
    assert float(neither) == pytest.approx(0.5)
    mask = torch.tensor([[0.5, 1.0]], dtype=torch.float64, requires_grad=True)
    half = masked.target(mask)
    half.sum().backward()
    assert float(half.detach()) == pytest.approx(3 * 1.5 / 3 + 0.5 + 0.25)
    # target = (2 m0 + 0.5) m1 + 0.5 + 0.5 m0
    assert mask.grad.tolist() == [pytest.approx([2 * 1.0 + 0.5, 2 * 0.5 + 0.5])]


def test_the_relu_stops_a_feature_pushed_below_zero() -> None:
    graph = _chain()
    graph.edge_weights[3] = -2.5  # the rest node takes 2.5 off f1, the bias adds 3.5: f1 still sums to 3
    graph.edge_weights[2] = 3.5
    masked = MaskedGraph(graph)
    assert float(masked.target(torch.tensor([[1.0, 1.0]]))) == pytest.approx(3 * 5.5 / 3 + 0.5 + 0.5)
    graph.edge_weights[1] = -4.0  # f0 -> f1 now drives f1 below zero
    assert float(MaskedGraph(graph).target(torch.tensor([[1.0, 1.0]]))) == pytest.approx(0.5 + 0.5)


@pytest.fixture(scope="module")
def traced(model, transcoders, call) -> tuple[CircuitGraph, CircuitIntervention]:
    graph = trace_circuit(model.double_blocks, transcoders, call, TargetSpec("img", 3, 40), step=1,
                          settings=TraceSettings(max_feature_nodes=40))
    return graph, CircuitIntervention.for_call(model.double_blocks, transcoders, call, graph)


def test_the_search_beats_the_most_influential_features_of_the_same_size(traced) -> None:
    graph, intervention = traced
    found = find_circuit(intervention, 10, settings=SearchSettings(steps=150, rounds=1))
    size = len(found.features)
    assert 1 <= size <= 10 and found.features == sorted(found.features)
    assert found.preservation == pytest.approx(intervention.preservation(found.features))
    baseline = intervention.preservation(top_influence(graph)[:size])
    assert abs(1 - found.preservation) < 0.15
    assert abs(1 - found.preservation) < abs(1 - baseline) - 0.2, (found.preservation, baseline)


def test_budgets_cap_the_circuits_and_bad_settings_are_refused(traced) -> None:
    graph, _ = traced
    result = search_circuits(graph, [1, 3], SearchSettings(steps=30))
    assert len(result.circuits[1]) == 1 and 1 <= len(result.circuits[3]) <= 3
    assert set(result.predicted) == {1, 3}
    assert budgets_up_to(30) == [30, 15, 8, 4, 2, 1]
    with pytest.raises(SettingsError, match="budgets must be 1 or more"):
        search_circuits(graph, [0])
    with pytest.raises(SettingsError, match="one goal per budget"):
        search_circuits(graph, [1, 2], goals=[1.0])
    with pytest.raises(SettingsError, match="learning_rate must be positive"):
        SearchSettings(learning_rate=0)
    empty = CircuitGraph([CircuitNode("bias", 0), CircuitNode("target", 0, "img", 1, 2, value=1.0)],
                         *edge_list([(0, 1, 1.0)]))
    with pytest.raises(DiffractError, match="no feature node to search over"):
        search_circuits(empty, [1])
    with pytest.raises(DiffractError, match="no circuit was measured"):
        choose({}, 0.1)


def test_choose_takes_the_smallest_circuit_within_tolerance_else_the_closest() -> None:
    assert choose({(1, 2, 3): 0.97, (4,): 0.5, (5, 6): 1.08}, 0.1).features == [5, 6]
    assert choose({(1, 2, 3): 0.97, (4,): 0.5, (5, 6): 1.3}, 0.1).features == [1, 2, 3]
    assert choose({(1,): 0.5, (5, 6): 1.3}, 0.1).features == [5, 6]


def test_the_search_runs_where_the_host_runs_nodes_under_inference_mode(traced) -> None:
    """ComfyUI executes nodes inside torch.inference_mode(), with graphs made there: the search keeps
    its own autograd and finds the same circuits."""
    graph, _ = traced
    settings = SearchSettings(steps=30)
    expected = search_circuits(graph, [3], settings)
    with torch.inference_mode():
        inference_graph = CircuitGraph(graph.nodes, graph.edge_sources.clone(), graph.edge_targets.clone(),
                                       graph.edge_weights.clone(), graph.metadata)
        found = search_circuits(inference_graph, [3], settings)
    assert found.circuits == expected.circuits
    assert found.predicted == pytest.approx(expected.predicted)
