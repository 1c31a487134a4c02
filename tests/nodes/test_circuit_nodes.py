"""Trace Circuit, Steer Circuit, Save Circuit and Load Circuit through the fake ComfyUI surface."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch


@pytest.fixture
def output_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    import folder_paths

    monkeypatch.setattr(folder_paths, "output_directory", str(tmp_path / "output"))
    (tmp_path / "output").mkdir()
    return tmp_path / "output"


@pytest.fixture
def traced(pack, patcher, transcoders, sampler):
    import comfy.model_management
    import fake_runtime

    model, recording = fake_runtime.run_node(
        pack.nodes.RecordFeatures, model=patcher, transcoders=transcoders, keep_inputs_at_steps="1"
    ).args
    latent = sampler(model)
    output = fake_runtime.run_node(
        pack.nodes.TraceCircuit,
        model=model,
        recording=recording,
        transcoders=transcoders,
        samples={"samples": latent},
        target="img:1:7",
        step=1,
        max_feature_nodes=40,
        batch_size=16,
        faithfulness_checks=5,
    )
    return model, recording, output, list(comfy.model_management.loaded)


def test_trace_circuit_says_when_memory_allows_fewer_rows_than_batch_size(pack, core, patcher, transcoders, sampler,
                                                                       monkeypatch, caplog) -> None:
    import fake_runtime

    model, recording = fake_runtime.run_node(
        pack.nodes.RecordFeatures, model=patcher, transcoders=transcoders, keep_inputs_at_steps="1"
    ).args
    latent = sampler(model)
    monkeypatch.setattr(core.attribution.tracer, "free_bytes", lambda device: 0)
    with caplog.at_level("WARNING"):
        graph, _ = fake_runtime.run_node(
            pack.nodes.TraceCircuit, model=model, recording=recording, transcoders=transcoders,
            samples={"samples": latent}, target="img:1:7", step=1, max_feature_nodes=10, batch_size=16,
        ).args
    assert graph.metadata.passes.rows_per_pass == 1
    assert "1 target row(s) per backward pass instead of batch_size 16" in caplog.text


def test_trace_circuit_returns_an_exact_graph_a_picture_and_a_small_payload(pack, traced, core, transcoders) -> None:
    output = traced[2]
    graph, picture = output.args
    assert graph.metadata.step == 1 and graph.metadata.sigma == 0.75
    assert graph.metadata.target.feature == "img:1:7"
    assert float(graph.conservation().max()) < 1e-5
    features = len(graph.features())
    assert 0 < features <= 40
    # the clean forward; the target's row, then rows in batches of 16
    assert graph.metadata.passes == core.attribution.Passes(forward=1, backward=1 + -(-features // 16),
                                                            rows_per_pass=16)
    assert graph.metadata.faithfulness.forward_passes == 5  # one per ablated feature
    assert graph.metadata.pruning == core.attribution.Pruning(node_threshold=0.8, edge_threshold=0.98)
    assert picture.shape == (1, 768, 1024, 3) and 0 <= float(picture.min()) and float(picture.max()) <= 1
    sites = [site for site in transcoders.sites if site[1] <= 1]  # the last load request: the MODEL, then the
    request = traced[3][-len(sites) - 1:]  # transcoders of every site up to the target's layer
    assert request[0] is traced[0] and [p.model.transcoder.config.site.key for p in request[1:]] == sites
    (payload,) = output.ui["diffract_circuit"]
    assert len(json.dumps(payload)) < 8000
    status, body = pack.nodes.circuit_store.lookup(payload["id"])
    assert status == 200 and len(body["nodes"]) == len(graph.nodes)
    assert pack.nodes.circuit_store.lookup("../../etc/passwd")[0] == 400
    assert pack.nodes.circuit_store.lookup("0" * 32)[0] == 404
    assert "images" not in output.ui, "the widget replaces the in-node preview; the picture is the graph output"


def test_trace_refuses_a_region_of_another_aspect_at_the_node(pack, traced, transcoders, core) -> None:
    import fake_runtime

    model, recording, *_ = traced
    latent = {"samples": torch.zeros(1, 16, 8, 12)}
    with pytest.raises(core.errors.InputShapeError, match=r"target's region is 100x10 \(WxH\).*different aspect ratio"):
        fake_runtime.run_node(pack.nodes.TraceCircuit, model=model, recording=recording, transcoders=transcoders,
                              samples=latent, target="img:1:7", target_mode="region", step=1,
                              region=torch.ones(1, 10, 100))


def test_trace_refuses_a_step_whose_inputs_were_not_kept(pack, patcher, transcoders, sampler, core) -> None:
    import fake_runtime

    model, recording = fake_runtime.run_node(pack.nodes.RecordFeatures, model=patcher, transcoders=transcoders).args
    latent = sampler(model)
    with pytest.raises(core.errors.DiffractError, match="did not keep the model inputs of step 1: add 1"):
        fake_runtime.run_node(
            pack.nodes.TraceCircuit, model=model, recording=recording, transcoders=transcoders,
            samples={"samples": latent}, target="img:1:7", step=1,
        )


def test_region_target_traces_the_strongest_feature_inside_the_mask(pack, traced, transcoders) -> None:
    import fake_runtime

    model, recording, *_ = traced
    mask = torch.zeros(64, 96)
    mask[:, :48] = 1.0
    graph, _ = fake_runtime.run_node(
        pack.nodes.TraceCircuit, model=model, recording=recording, transcoders=transcoders,
        samples={"samples": None}, target="img:1", target_mode="strongest_in_region", region=mask, step=1,
        max_feature_nodes=10, faithfulness_checks=0,
    ).args
    target = graph.target
    columns = (target.positions % 6).tolist()
    assert columns and max(columns) < 3  # only tokens in the left half
    assert float(graph.conservation().max()) < 1e-5


def test_steer_circuit_scale_one_is_bit_identical_and_ablation_changes_the_image(
    pack, traced, patcher, transcoders, sampler
) -> None:
    import fake_runtime

    output = traced[2]
    graph = output.args[0]
    baseline = sampler(patcher)
    same = fake_runtime.run_node(pack.nodes.SteerCircuit, model=patcher, transcoders=transcoders, circuit=graph,
                                 strength=1.0).args[0]
    assert torch.equal(sampler(same), baseline)
    ablated = fake_runtime.run_node(
        pack.nodes.SteerCircuit, model=patcher, transcoders=transcoders, circuit=graph, mode="ablate", nodes="top 3"
    ).args[0]
    assert not torch.equal(sampler(ablated), baseline)
    assert patcher.object_patches == {}


def test_save_then_load_round_trips_and_strangers_files_are_refused(pack, traced, output_dir, core) -> None:
    import fake_runtime

    graph = traced[2].args[0]
    (path,) = fake_runtime.run_node(pack.nodes.SaveCircuit, circuit=graph).args
    assert path == "diffract/circuit_00001_.json"
    (exported,) = fake_runtime.run_node(pack.nodes.SaveCircuit, circuit=graph, format="neuronpedia").args
    viewer = json.loads((output_dir / exported).read_text())
    assert set(viewer) == {"metadata", "qParams", "nodes", "links"}
    outside = output_dir.parent / "elsewhere.json"
    outside.write_text((output_dir / path).read_text())
    (output_dir / "diffract" / "link.json").symlink_to(outside)  # a link out of the output folder is not listed
    assert pack.nodes.circuit_files.saved_circuits() == [path]
    with pytest.raises(core.attribution.serialize.CircuitFileError, match="not a circuit file"):
        pack.nodes.LoadCircuit.execute("diffract/link.json")
    schema = pack.nodes.LoadCircuit.define_schema()
    assert schema.inputs[0].options == [path]
    (loaded,) = fake_runtime.run_node(pack.nodes.LoadCircuit, circuit_file=path).args
    assert [n.id for n in loaded.nodes] == [n.id for n in graph.nodes]
    assert torch.equal(loaded.edge_weights, graph.edge_weights)

    bad = output_dir / "diffract" / "bad.json"
    bad.write_text(json.dumps({"format": "diffract-circuit", "version": 1, "metadata": {}, "nodes": [], "edges": {}}))
    with pytest.raises(core.attribution.serialize.CircuitFileError, match='metadata needs "step"'):
        pack.nodes.LoadCircuit.execute("diffract/bad.json")
    with pytest.raises(core.attribution.serialize.CircuitFileError,
                       match="not a circuit file in ComfyUI's output folder"):
        pack.nodes.LoadCircuit.execute("../outside.json")


def test_a_circuit_whose_positions_exceed_its_tokens_is_refused_by_load_not_by_steer(
    pack, traced, output_dir, core
) -> None:
    import fake_runtime

    graph = traced[2].args[0]
    (path,) = fake_runtime.run_node(pack.nodes.SaveCircuit, circuit=graph).args
    data = json.loads((output_dir / path).read_text())
    feature = next(node for node in data["nodes"] if node["kind"] == "feature" and node["stream"] == "img")
    feature["positions"][0] = data["metadata"]["image_tokens"] + 100
    (output_dir / "diffract" / "shifted.json").write_text(json.dumps(data))
    with pytest.raises(core.attribution.serialize.CircuitFileError,
                       match="positions must be token indices of its stream"):
        fake_runtime.run_node(pack.nodes.LoadCircuit, circuit_file="diffract/shifted.json")
