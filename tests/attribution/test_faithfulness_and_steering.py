"""Real-model ablations against the graph's predictions, and circuit steering in delta form."""

from __future__ import annotations

import pytest
import torch

from diffract_core.attribution import TargetSpec, TraceSettings, trace_circuit
from diffract_core.attribution.faithfulness import mean_relative_error, spearman
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
