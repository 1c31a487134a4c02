"""Whole graphs: every node conserves, batching changes nothing, the budget and the target modes."""

from __future__ import annotations

import copy

import pytest
import torch

from diffract_core.attribution import CircuitTracer, Passes, ReplacementModel, TargetSpec, TraceSettings, trace_circuit
from diffract_core.attribution.pass_memory import rows_that_fit
from diffract_core.errors import DiffractError
from diffract_core.transcoders import TranscoderSet


@pytest.fixture(scope="module")
def graph(model, transcoders, call):
    return trace_circuit(model.double_blocks, transcoders, call, TargetSpec("img", 3, 7), step=1,
                         settings=TraceSettings(max_feature_nodes=60, batch_size=8))


def test_every_expanded_node_conserves_in_fp32(graph) -> None:
    residuals = graph.conservation()
    assert len(residuals) == len(graph.features()) + 1
    assert float(residuals.max()) < 1e-5
    assert graph.metadata.conservation.max_relative_residual == pytest.approx(float(residuals.max()))
    bias = graph.indices("bias")[0]
    assert any(int(s) == bias for s in graph.edge_sources), "constants enter through the bias node"


def test_nodes_keep_positions_and_ids_do_not_collide(graph) -> None:
    ids = [node.id for node in graph.nodes]
    assert len(set(ids)) == len(ids)
    kinds = {node.kind for node in graph.nodes}
    assert {"feature", "error", "input", "bias", "target"} <= kinds
    for node in graph.features():
        assert len(node.positions) == len(node.activations) > 0
        assert float(node.activations.sum()) == pytest.approx(node.value, rel=1e-5)
    assert graph.target.positions.tolist() and graph.target.label.startswith("img:3:7 at image token")
    assert graph.metadata.passes.forward == 1  # the clean replay; the backward passes give the bias
    assert len(graph.features()) == 60


def test_batched_graph_equals_the_one_row_per_pass_graph(model, transcoders, call, graph) -> None:
    single = trace_circuit(model.double_blocks, transcoders, call, TargetSpec("img", 3, 7), step=1,
                           settings=TraceSettings(max_feature_nodes=60, batch_size=8, per_row=True))
    assert [n.id for n in single.nodes] == [n.id for n in graph.nodes]
    assert single.metadata.passes == Passes(forward=2 + 61, backward=61, rows_per_pass=1)
    assert graph.metadata.passes.backward < 20
    order = lambda g: torch.argsort(g.edge_targets * 10_000 + g.edge_sources)
    torch.testing.assert_close(single.edge_weights[order(single)], graph.edge_weights[order(graph)], rtol=1e-6,
                               atol=1e-7)


def test_region_and_position_targets(model, transcoders, call) -> None:
    mask = torch.zeros(64, 96)
    mask[:32, :] = 1.0  # the top half: image-token rows 0 and 1 of 4
    region = trace_circuit(model.double_blocks, transcoders, call,
                           TargetSpec("img", 2, None, "strongest_in_region", region=mask),
                           step=1, settings=TraceSettings(max_feature_nodes=20))
    assert max(region.target.positions.tolist()) < 12
    assert float(region.conservation().max()) < 1e-5
    at = trace_circuit(model.double_blocks, transcoders, call, TargetSpec("txt", 2, 5, "position", position=3), step=1,
                       settings=TraceSettings(max_feature_nodes=5))
    assert at.target.positions.tolist() == [3] and at.target.label == "txt:2:5 at txt token 3"
    with pytest.raises(DiffractError, match="outside the 5 txt tokens"):
        trace_circuit(model.double_blocks, transcoders, call, TargetSpec("txt", 2, 5, "position", position=9), step=1)
    corner = torch.zeros(64, 96)
    corner[:16, :16] = 1.0  # image token 0 only
    lrm = ReplacementModel(model.double_blocks, transcoders, call, last_layer=2)
    z, _ = transcoders[("img", 2)].encode(lrm.mlp_inputs[("img", 2)][0, :1], call.sigma)
    silent, strongest = int(torch.nonzero(z[0] == 0)[0]), int(torch.argmax(z[0]))
    with pytest.raises(DiffractError, match=f"does not fire inside the region at this step; "
                                            f"the strongest feature there is img:2:{strongest}"):
        trace_circuit(model.double_blocks, transcoders, call, TargetSpec("img", 2, silent, "region", region=corner),
                      step=1)
    with pytest.raises(DiffractError, match="needs a MASK region"):
        TargetSpec("img", 2, 3, "region")


def test_a_contrastive_target_is_the_difference_of_two_features_and_conserves(model, transcoders, call) -> None:
    settings = TraceSettings(max_feature_nodes=10)
    target = lambda feature, against=None: TargetSpec("img", 3, feature, "position", position=5, against=against)
    first = trace_circuit(model.double_blocks, transcoders, call, target(7), step=1, settings=settings)
    second = trace_circuit(model.double_blocks, transcoders, call, target(9), step=1, settings=settings)
    contrast = trace_circuit(model.double_blocks, transcoders, call, target(7, against=9), step=1, settings=settings)
    assert contrast.target.value == pytest.approx(first.target.value - second.target.value, rel=1e-5, abs=1e-6)
    assert float(contrast.conservation().max()) < 1e-5
    assert contrast.target.label == "img:3:7 at image token 5 (row 0, col 5) minus img:3:9"
    with pytest.raises(DiffractError, match="another feature of the same site"):
        target(7, against=7)


def test_a_small_budget_is_still_ranked_through_the_graph(model, transcoders, call, monkeypatch) -> None:
    """64 nodes in batches of 16 fill one round of update_interval (4) batches; they are ranked before
    every batch instead, without more passes."""
    rankings = []
    rank = CircuitTracer._rank_candidates
    monkeypatch.setattr(CircuitTracer, "_rank_candidates",
                        lambda self, done: rankings.append(int(done.sum())) or rank(self, done))
    graph = trace_circuit(model.double_blocks, transcoders, call, TargetSpec("img", 3, 7), step=1,
                          settings=TraceSettings(max_feature_nodes=64, batch_size=16))
    assert rankings == [0, 16, 32, 48]
    assert graph.metadata.passes.backward == 1 + 4 and len(graph.features()) == 64


def test_rows_per_pass_fit_the_free_memory(model, transcoders, call) -> None:
    lrm = ReplacementModel(model.double_blocks, transcoders, call, last_layer=2)
    per_row, fixed = lrm.pass_bytes_per_row(), lrm.pass_fixed_bytes()
    assert per_row == 3 * (5 + 24) * 64 * 4
    assert rows_that_fit(lrm, 64, None) == 64
    assert rows_that_fit(lrm, 64, int((fixed + 10 * per_row) / 0.8) + 1) == 10
    assert rows_that_fit(lrm, 64, 0) == 1


def test_a_pass_out_of_memory_is_retried_with_half_the_rows(model, transcoders, call, graph, monkeypatch) -> None:
    attribute = ReplacementModel.attribute
    sizes = []

    def short_of_memory(self, rows):
        sizes.append(len(rows))
        if len(rows) > 3:
            raise torch.OutOfMemoryError("CUDA out of memory (simulated)")
        return attribute(self, rows)

    monkeypatch.setattr(ReplacementModel, "attribute", short_of_memory)
    halved = trace_circuit(model.double_blocks, transcoders, call, TargetSpec("img", 3, 7), step=1,
                           settings=TraceSettings(max_feature_nodes=60, batch_size=8))
    assert sizes[:4] == [1, 8, 4, 2] and max(sizes[4:]) == 2
    assert halved.metadata.passes.rows_per_pass == 2 and graph.metadata.passes.rows_per_pass == 8
    assert [n.id for n in halved.nodes] == [n.id for n in graph.nodes]
    torch.testing.assert_close(halved.edge_weights, graph.edge_weights, rtol=1e-6, atol=1e-7)
    monkeypatch.setattr(ReplacementModel, "attribute",
                        lambda self, rows: (_ for _ in ()).throw(torch.OutOfMemoryError("simulated")))
    with pytest.raises(DiffractError, match="one target row does not fit in the memory free"):
        trace_circuit(model.double_blocks, transcoders, call, TargetSpec("img", 3, 7), step=1)


def test_fp8_transcoders_trace_exactly(model, transcoders, call) -> None:
    """With fp8 weights the replacement model reads the dequantised rows, so the graph still conserves."""
    fp8 = TranscoderSet.from_transcoders(copy.deepcopy(transcoders[site]).quantise_fp8() for site in transcoders.sites)
    graph = trace_circuit(model.double_blocks, fp8, call, TargetSpec("img", 3, 7), step=1,
                          settings=TraceSettings(max_feature_nodes=30, batch_size=8))
    assert len(graph.features()) == 30
    assert float(graph.conservation().max()) < 1e-5


def test_host_memory_free_for_a_pass_counts_the_droppable_page_cache(monkeypatch, tmp_path) -> None:
    from diffract_core.attribution import pass_memory

    meminfo = tmp_path / "meminfo"
    meminfo.write_text("MemTotal:       24000000 kB\nMemFree:         1000000 kB\nMemAvailable:   18000000 kB\n")
    monkeypatch.setattr(pass_memory, "open", lambda path, **kwargs: meminfo.open(**kwargs), raising=False)
    assert pass_memory.free_bytes(torch.device("cpu")) == 18000000 * 1024
