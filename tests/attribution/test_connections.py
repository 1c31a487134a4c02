"""Virtual weights (input-invariant connections) and the split of graph edges into their direct
residual share and their share through attention."""

from __future__ import annotations

import copy
import dataclasses

import pytest
import torch

from diffract_core.attribution import ReplacementModel, TargetSpec, TraceSettings, trace_circuit
from diffract_core.attribution.circuit import replay_model
from diffract_core.attribution.connections import VirtualWeights
from diffract_core.attribution.edge_paths import split_edges
from diffract_core.attribution.modulation import ResidualModulation, conditioning_vector
from diffract_core.errors import DiffractError, GraphStructureError, SettingsError, SiteNotLoadedError
from diffract_core.features import FeatureRef
from diffract_core.quickstart import random_transcoder
from diffract_core.transcoders import TranscoderSet
from diffract_core.transcoders import transcoder as transcoder_module

from .conftest import model_inputs


@pytest.fixture(scope="module")
def graph(model, transcoders, call):
    return trace_circuit(model.double_blocks, transcoders, call, TargetSpec("img", 3, 7), step=1,
                         settings=TraceSettings(max_feature_nodes=40, batch_size=8, dtype="float64"))


@pytest.fixture(scope="module")
def replay(model, transcoders, call, graph):
    return replay_model(graph, model.double_blocks, transcoders, call)


@pytest.fixture(scope="module")
def paths(graph, replay):
    return split_edges(graph, replay, rows_per_pass=7)


@pytest.fixture(scope="module")
def weights(model, transcoders, call):
    modulation = ResidualModulation.from_blocks(model.double_blocks, call.vec, dtype=torch.float64)
    return VirtualWeights(transcoders, modulation, call.sigma, dtype=torch.float64)


def _reading_weights(node, tokens: int) -> torch.Tensor:
    """The positions a node's row reads, with their weights: 1 for features, the target's own weights."""
    weights = torch.zeros(tokens, dtype=torch.float64)
    weights[node.positions] = 1.0 if node.kind == "feature" else node.activations.double()
    return weights


def test_direct_share_of_feature_edges_is_activation_times_virtual_weight_times_ln_factor(
        graph, replay, paths, weights) -> None:
    # The replacement model forms a target's direction (W_enc * (1 + FiLM scale)) in fp32 even in a float64
    # trace, so an edge that cancels within the product is off by up to 1e-5 of itself: compare each edge
    # against the largest direct edge into the same node.
    scale = torch.zeros(len(graph.nodes), dtype=torch.float64).scatter_reduce_(
        0, graph.edge_targets, paths.direct.abs(), "amax")
    checked = 0
    for edge in range(len(graph.edge_weights)):
        source, target = graph.nodes[int(graph.edge_sources[edge])], graph.nodes[int(graph.edge_targets[edge])]
        if source.kind != "feature":
            continue
        activation = torch.zeros(replay.tokens(source.stream), dtype=torch.float64)
        activation[source.positions] = source.activations.double()
        ln_factor = replay.layers[target.layer].streams[target.stream].inv2[0, :, 0].double()
        exposure = float((activation * _reading_weights(target, len(activation)) * ln_factor).sum())
        expected = exposure * weights.between(source.ref, target.ref)
        assert abs(float(paths.direct[edge]) - expected) <= 1e-6 * float(scale[graph.edge_targets[edge]])
        checked += 1
    assert checked > 100
    attention = paths.through_attention[paths.direct != 0]
    assert float(attention.abs().max()) > 0, "edges within a stream also pass attention"


def test_direct_share_of_error_edges_is_the_error_through_gate_and_ln_factor(graph, replay, paths) -> None:
    target = graph.target
    reads = _reading_weights(target, replay.tokens("img"))
    row = replay.feature_row(target.stream, target.layer, target.feature, reads)
    constants = replay.layers[target.layer].streams["img"]
    reading = (constants.inv2[0] * row.weights[:, None]) * (1 + constants.scale2[0]) * row.direction
    reading = reading - reading.mean(-1, keepdim=True)
    checked = 0
    for edge in torch.nonzero(graph.edge_targets == graph.target_index).flatten().tolist():
        source = graph.nodes[int(graph.edge_sources[edge])]
        if source.kind != "error":
            continue
        gate = replay.layers[source.layer].streams[source.stream].gate2[0]
        expected = 0.0 if source.stream != "img" else float(
            (reading * gate * replay.sites[(source.stream, source.layer)].error).sum())
        assert float(paths.direct[edge]) == pytest.approx(expected, rel=1e-9, abs=1e-12)
        checked += 1
    assert checked >= 4


def test_edges_between_streams_have_no_direct_share(graph, paths) -> None:
    streams = [node.stream for node in graph.nodes]
    between = [edge for edge, (s, t) in enumerate(zip(graph.edge_sources.tolist(), graph.edge_targets.tolist()))
               if streams[s] is not None and streams[s] != streams[t]]
    assert len(between) > 10
    assert float(paths.direct[between].abs().max()) == 0.0, "the streams meet only in attention"
    assert float(paths.through_attention[between].abs().min()) > 0


def test_every_edge_is_its_direct_part_plus_its_part_through_attention(graph, paths) -> None:
    torch.testing.assert_close(paths.direct + paths.through_attention, graph.edge_weights, rtol=1e-12, atol=1e-15)
    assert 0.0 < paths.direct_share() < 1.0
    into_target = graph.edge_targets == graph.target_index
    assert paths.direct_share(into_target) == pytest.approx(
        float(paths.direct[into_target].abs().sum())
        / float((paths.direct[into_target].abs() + paths.through_attention[into_target].abs()).sum()))


def test_leaving_attention_out_is_a_model_whose_attention_writes_nothing(model, transcoders, call) -> None:
    silent = copy.deepcopy(model)
    for block in silent.double_blocks:
        for attention in (block.img_attn, block.txt_attn):
            attention.proj.weight.data.zero_()
    replay = ReplacementModel(silent.double_blocks, transcoders, call, last_layer=3, dtype=torch.float64)
    weights = torch.zeros(replay.tokens("img"), dtype=torch.float64)
    weights[[2, 5]] = 1.0
    rows = [replay.feature_row("img", 3, 7, weights), replay.feature_row("txt", 2, 4, torch.ones(5))]
    for full, direct in zip(replay.attribute(rows), replay.attribute(rows, through_attention=False)):
        for part in ("features", "errors", "inputs"):
            assert getattr(full, part).keys() == getattr(direct, part).keys()
            for key, value in getattr(full, part).items():
                torch.testing.assert_close(getattr(direct, part)[key], value, rtol=1e-12, atol=1e-15)


def test_a_graph_and_another_call_do_not_mix(model, transcoders, call, graph) -> None:
    with pytest.raises(GraphStructureError, match="is not the traced one .*give the kept inputs of step 1"):
        replay_model(graph, model.double_blocks, transcoders, dataclasses.replace(call, sigma=0.5))
    shifted = dataclasses.replace(call, img=call.img * 1.5)
    with pytest.raises(GraphStructureError, match="or not the traced call"):
        split_edges(graph, replay_model(graph, model.double_blocks, transcoders, shifted))
    contrast = trace_circuit(model.double_blocks, transcoders, call, TargetSpec("img", 3, 7, against=8), step=1,
                             settings=TraceSettings(max_feature_nodes=5, dtype="float64"))
    with pytest.raises(GraphStructureError, match="a contrastive target"):
        split_edges(contrast, replay_model(contrast, model.double_blocks, transcoders, call))


def test_modulation_from_the_blocks_is_the_replacement_models(model, call, replay) -> None:
    from_blocks = ResidualModulation.from_blocks(model.double_blocks, call.vec, dtype=torch.float64)
    frozen = ResidualModulation.from_replacement(replay)
    for site in frozen.gates:
        torch.testing.assert_close(from_blocks.gate(site), frozen.gate(site))
        torch.testing.assert_close(from_blocks.gain(site), frozen.gain(site))


def test_conditioning_vector_is_the_vec_the_model_computes(model, call) -> None:
    vec = conditioning_vector(model, call.sigma, model_inputs(model, call.sigma)["y"])
    torch.testing.assert_close(vec, call.vec.float(), rtol=1e-5, atol=1e-6)
    assert not torch.allclose(conditioning_vector(model, call.sigma), vec), "no pooled vector: a zero one"


def _dense(transcoders, modulation, sigma: float, source: int, target: int) -> torch.Tensor:
    """[F_source, F_target] every virtual weight between two img sites, as one dense product."""
    decoder = transcoders[("img", source)].W_dec.detach().double() * modulation.gate(("img", source))
    reader = transcoders[("img", target)]
    film, _ = reader.film(torch.tensor([sigma]))
    reading = (1 + film[0].double()) * modulation.gain(("img", target)) * reader.W_enc.detach().double()
    return decoder @ (reading - reading.mean(-1, keepdim=True)).T


def test_top_connections_agree_with_the_dense_matrix(transcoders, call, weights, monkeypatch) -> None:
    monkeypatch.setattr(transcoder_module, "ROWS_PER_CHUNK", 7)  # many chunks over the 96 features
    dense = {layer: _dense(transcoders, weights.modulation, call.sigma, layer, 3) for layer in range(3)}
    target = FeatureRef("img", 3, 11)
    for layer, matrix in dense.items():
        torch.testing.assert_close(weights.into(target, layer), matrix[:, 11])
    column = torch.cat([dense[layer][:, 11] for layer in range(3)])
    expected = torch.topk(column.abs(), 6).indices
    upstream = weights.upstream(target, k=6)
    assert [(c.source.layer, c.source.index) for c in upstream] == [(int(i) // 96, int(i) % 96) for i in expected]
    assert [c.weight for c in upstream] == pytest.approx(column[expected].tolist())
    source = FeatureRef("img", 1, 40)
    torch.testing.assert_close(weights.out_of(source, 3), dense[1][40])
    downstream = weights.downstream(source, k=4, layers=[3])
    assert [c.target.index for c in downstream] == torch.topk(dense[1][40].abs(), 4).indices.tolist()
    assert all(c.source == source for c in downstream)


def test_bad_pairs_and_missing_transcoders_are_refused_with_the_fix(model, transcoders, call, weights) -> None:
    with pytest.raises(SettingsError, match="img:1 and txt:3 are in different streams.*two features of one stream"):
        weights.between(FeatureRef("img", 1, 0), FeatureRef("txt", 3, 0))
    with pytest.raises(SettingsError, match="source layer 3 is not before the target layer 1.*swap"):
        weights.between(FeatureRef("img", 3, 0), FeatureRef("img", 1, 0))
    with pytest.raises(SettingsError, match="source layer 2 is not before the target layer 2"):
        weights.upstream(FeatureRef("img", 2, 0), layers=[2])
    partial = TranscoderSet.from_transcoders(transcoders[("img", layer)] for layer in (0, 3))
    missing = VirtualWeights(partial, weights.modulation, call.sigma)
    with pytest.raises(SiteNotLoadedError, match=r"no transcoder for img:1; this set holds \[img: 0, 3\]: load that"):
        missing.into(FeatureRef("img", 3, 0), 1)
    assert [c.source.layer for c in missing.upstream(FeatureRef("img", 3, 0), k=50)] == [0] * 50
    saes = TranscoderSet.from_transcoders(random_transcoder("img", layer, kind="sae", d_model=64, d_features=96,
                                                            time_dim=16) for layer in (0, 1))
    with pytest.raises(SettingsError, match="holds an SAE.*load the transcoder release"):
        VirtualWeights(saes, weights.modulation, call.sigma).between(FeatureRef("img", 0, 0), FeatureRef("img", 1, 0))
    few = ResidualModulation.from_blocks(model.double_blocks, call.vec, layers=[0, 1], streams=["img"])
    assert sorted(few.gates) == [("img", 0), ("img", 1)]
    with pytest.raises(SettingsError, match=r"read for layers \[0, 1\], not img:3.*layers="):
        VirtualWeights(transcoders, few, call.sigma).between(FeatureRef("img", 0, 0), FeatureRef("img", 3, 0))
    with pytest.raises(DiffractError, match="layer 4 is past this model's 4 double blocks"):
        ResidualModulation.from_blocks(model.double_blocks, call.vec, layers=[4])
