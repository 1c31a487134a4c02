"""Behaviour preservation by real intervention: its anchors (the full graph 1, the empty circuit 0 and
the MLPs reduced to bias and error term), the curve, and refusals of a call the circuit does not fit."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from diffract_core.attribution import CircuitIntervention, TargetSpec, TraceSettings, trace_circuit
from diffract_core.attribution.graph import CircuitGraph, CircuitNode
from diffract_core.errors import DiffractError


@pytest.fixture(scope="module")
def graph(model, transcoders, call) -> CircuitGraph:
    return trace_circuit(model.double_blocks, transcoders, call, TargetSpec("img", 3, 40), step=1,
                         settings=TraceSettings(max_feature_nodes=40))


@pytest.fixture(scope="module")
def intervention(model, transcoders, call, graph) -> CircuitIntervention:
    return CircuitIntervention.for_call(model.double_blocks, transcoders, call, graph)


def test_the_full_graph_keeps_all_and_the_empty_circuit_nothing(intervention, graph) -> None:
    features = graph.indices("feature")
    assert intervention.preservation(features) == pytest.approx(1.0, abs=1e-6)
    assert intervention.preservation([]) == pytest.approx(0.0, abs=1e-6)
    assert intervention.values.clean == pytest.approx(graph.target.value, rel=1e-5)
    assert abs(intervention.values.full - intervention.values.empty) > 0.1  # the anchors differ: the test can fail


def test_the_empty_circuit_is_each_mlp_reduced_to_its_decoder_bias_and_error_term(intervention, transcoders) -> None:
    model = intervention.model

    def bias_and_error(layer: int, site: tuple, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if layer >= model.last_layer:
            return y
        transcoder = transcoders[site]
        return y - transcoder(x, model.sigma) + transcoder.b_dec

    expected = float(model.value(intervention.root, model.real_forward(bias_and_error))[0])
    assert intervention.values.empty == pytest.approx(expected, rel=1e-5, abs=1e-6)


def test_a_circuit_keeps_its_features_everywhere_and_removes_the_rest(intervention, graph) -> None:
    influence = graph.influence()
    ranking = sorted(graph.indices("feature"), key=lambda i: -float(influence[i]))
    curve = intervention.curve(ranking, [0, 5, len(ranking)])
    assert [size for size, _ in curve] == [0, 5, len(ranking)]
    assert curve[0][1] == pytest.approx(0.0, abs=1e-6) and curve[-1][1] == pytest.approx(1.0, abs=1e-6)
    assert curve[1][1] != pytest.approx(curve[0][1], abs=1e-3)


def test_a_call_or_node_the_circuit_does_not_fit_is_refused(model, transcoders, call, graph, intervention) -> None:
    nodes = list(graph.nodes)
    target = nodes[graph.target_index]
    nodes[graph.target_index] = CircuitNode("target", target.step, target.stream, target.layer, target.feature,
                                            target.value + 1.0, target.positions, target.activations)
    shifted = CircuitGraph(nodes, graph.edge_sources, graph.edge_targets, graph.edge_weights, graph.metadata)
    with pytest.raises(DiffractError, match="reads .* in this call but .* in the circuit"):
        CircuitIntervention(intervention.model, shifted)
    other_step = replace(graph.metadata, step=2, sigma=0.5)
    with pytest.raises(DiffractError, match=r"this call is at sigma 0.75 but the circuit was traced at step 2"):
        CircuitIntervention.for_call(model.double_blocks, transcoders, call,
                                     CircuitGraph(graph.nodes, graph.edge_sources, graph.edge_targets,
                                                  graph.edge_weights, other_step))
    with pytest.raises(DiffractError, match="is not a feature node"):
        intervention.preservation([graph.target_index])
