"""Real-model ablations against the graph's predictions, and circuit steering in delta form."""

from __future__ import annotations

import pytest
import torch

from diffract_core.attribution import TargetSpec, TraceSettings, trace_circuit
from diffract_core.attribution.faithfulness import mean_relative_error, predicted_ablation_effects, spearman
from diffract_core.attribution.graph import CircuitGraph, CircuitNode
from diffract_core.attribution.steering import circuit_steering
from diffract_core.errors import DiffractError, InputShapeError
from diffract_core.features import FeatureRef


@pytest.fixture(scope="module")
def graph(model, transcoders, call):
    return trace_circuit(model.double_blocks, transcoders, call, TargetSpec("img", 3, 7), step=1,
                         settings=TraceSettings(max_feature_nodes=80, faithfulness_checks=12))


def test_rank_statistics() -> None:
    assert spearman([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
    assert spearman([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    assert spearman([1, 1, 2], [1, 2, 3]) == pytest.approx(0.8660254, rel=1e-6)
    assert mean_relative_error([1.1, 1.8], [1.0, 2.0]) == pytest.approx(0.1)


def _random_circuit(size: int, edges: int, seed: int) -> CircuitGraph:
    """Input, bias, error, features (every tenth of value 0) and the target last; edges run from
    lower to higher indices, with repeated (source, target) pairs."""
    generator = torch.Generator().manual_seed(seed)
    values = torch.rand(size, generator=generator, dtype=torch.float64) * 2 + 0.5
    nodes = [CircuitNode("input", 0, "img"), CircuitNode("bias", 0), CircuitNode("error", 0, "img", 0)]
    nodes += [CircuitNode("feature", 0, "img", 1, i, value=0.0 if i % 10 == 0 else float(values[i]))
              for i in range(size - 4)]
    nodes.append(CircuitNode("target", 0, "img", 2, 0, value=1.0))
    pairs = torch.randint(0, size, (edges, 2), generator=generator).sort(dim=1).values
    pairs = pairs[pairs[:, 0] != pairs[:, 1]]
    pairs = torch.cat([pairs, pairs[: edges // 10]])  # duplicates: their weights add up
    weights = torch.randn(len(pairs), generator=generator, dtype=torch.float64) * 0.2
    return CircuitGraph(nodes, pairs[:, 0], pairs[:, 1], weights)


def test_predicted_ablations_equal_the_dense_solve() -> None:
    graph = _random_circuit(size=400, edges=6000, seed=1)
    n = len(graph.nodes)
    adjacency = graph.adjacency()
    values = torch.tensor([node.value for node in graph.nodes], dtype=torch.float64)
    features = torch.tensor([node.kind == "feature" for node in graph.nodes])
    scale = torch.where(features & (values != 0), 1.0 / values.abs(), torch.zeros_like(values))
    first_order = -adjacency * features[None, :]
    identity = torch.eye(n, dtype=torch.float64)
    total_map = torch.linalg.solve(identity - adjacency * scale[None, :], identity)
    expected_total = total_map[graph.target_index] @ first_order
    total, direct = predicted_ablation_effects(graph)
    assert int((expected_total != 0).sum()) > 10 * int((first_order[graph.target_index] != 0).sum())  # paths count
    torch.testing.assert_close(total, expected_total, rtol=0, atol=1e-9)
    torch.testing.assert_close(direct, first_order[graph.target_index], rtol=0, atol=1e-9)


def test_graph_predicts_real_ablations(graph) -> None:
    check = graph.metadata.faithfulness
    assert len(check.measured) == 12 and check.forward_passes == 12
    assert all(abs(m) > 0 for m in check.measured)
    assert check.spearman > 0.8
    assert check.mean_relative_error < 0.6


def test_circuit_steering_acts_only_at_its_step_and_positions(graph, transcoders, call) -> None:
    sparse = min(graph.features(), key=lambda node: len(node.positions))
    spec = circuit_steering(graph, sparse.feature_spec, mode="ablate")
    (ref,) = spec.features
    assert spec.sigma == call.sigma and spec.positions[ref].tolist() == sparse.positions.tolist()
    transcoder = transcoders[ref.site]
    tokens = call.img.shape[1] if ref.stream == "img" else call.txt.shape[1]
    x = torch.randn(1, tokens, 64, generator=torch.Generator().manual_seed(0))  # the feature fires at 4 of them
    delta = spec.delta(transcoder, x, call.sigma)
    outside = [p for p in range(tokens) if p not in set(sparse.positions.tolist())]
    assert delta is not None and outside and float(delta[0, outside].abs().max()) == 0.0
    assert float(delta.abs().max()) > 0
    assert spec.delta(transcoder, x, 0.5) is None
    assert circuit_steering(graph, "top 3", strength=1.0).delta(transcoder, x, call.sigma) is None
    assert circuit_steering(graph, "top 3", steps="all steps").delta(transcoder, x, 0.5) is not None
    with pytest.raises(InputShapeError, match="traced with"):
        spec.delta(transcoder, torch.randn(1, tokens + 1, 64), call.sigma)


def test_node_selection(graph) -> None:
    features = graph.features()
    listed = f"{features[0].feature_spec}, {features[1].feature_spec}"
    assert circuit_steering(graph, listed).features == tuple(
        FeatureRef(n.stream, n.layer, n.feature) for n in features[:2]
    )
    assert len(circuit_steering(graph, "all").features) == len(features)
    with pytest.raises(DiffractError, match="'img:3:999' is not a feature of this circuit"):
        circuit_steering(graph, "img:3:999")
