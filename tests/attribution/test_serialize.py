"""Circuit files: exact round trips, and every kind of malformed file refused with its reason."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import torch

from diffract_core.attribution import TargetSpec, TraceSettings, trace_circuit
from diffract_core.attribution.serialize import (
    CircuitFileError,
    graph_from_dict,
    graph_to_dict,
    load_graph,
    neuronpedia_graph,
    save_graph,
)


@pytest.fixture(scope="module")
def graph(model, transcoders, call):
    return trace_circuit(model.double_blocks, transcoders, call, TargetSpec("img", 2, 7), step=1,
                         settings=TraceSettings(max_feature_nodes=15), check_top_k=4)


def test_round_trip_keeps_nodes_edges_maps_and_metadata(graph, tmp_path: Path) -> None:
    path = save_graph(graph, tmp_path / "c.json")
    loaded = load_graph(path)
    assert [n.id for n in loaded.nodes] == [n.id for n in graph.nodes]
    assert torch.equal(loaded.edge_weights, graph.edge_weights) and torch.equal(loaded.edge_sources, graph.edge_sources)
    for a, b in zip(loaded.nodes, graph.nodes):
        assert torch.equal(a.positions, b.positions) and torch.allclose(a.activations, b.activations, atol=1e-6)
    assert loaded.metadata == json.loads(json.dumps(graph.metadata))
    assert loaded.scores() == pytest.approx(graph.scores())


def _broken(graph, edit):
    data = copy.deepcopy(graph_to_dict(graph))
    edit(data)
    return data


@pytest.mark.parametrize(
    ("edit", "reason"),
    [
        (lambda d: d.update(format="something-else"), "is not a DifFRACT circuit"),
        (lambda d: d.update(version=7), "newer DifFRACT .* update the pack"),
        (lambda d: d.update(extra=1), "unknown top-level keys"),
        (lambda d: d["nodes"][0].update(kind="exec"), "node 0 has kind 'exec'"),
        (lambda d: d["nodes"][0].update(id="feature:img:0:0@9"), "node 0 id .* does not match"),
        (lambda d: d["nodes"][0].update(positions=[1, 2], activations=[1.0]), "positions and activations must be lists of equal length"),
        (lambda d: d["nodes"][0].update(__class__="os.system"), "unknown keys"),
        (lambda d: d["nodes"].append(copy.deepcopy(d["nodes"][0])), "two nodes with the same id"),
        (lambda d: d["edges"]["source"].__setitem__(0, 10**6), "edge sources must be node indices"),
        (lambda d: d["edges"]["weight"].__setitem__(0, "1"), "edge weights must be finite numbers"),
        (lambda d: d["metadata"].pop("sigma"), 'metadata needs "sigma"'),
        (lambda d: d["nodes"].pop(), "exactly one target node"),
    ],
)
def test_malformed_circuits_are_refused(graph, edit, reason) -> None:
    with pytest.raises(CircuitFileError, match=reason):
        graph_from_dict(_broken(graph, edit), source="shared.json")


def test_non_json_numbers_and_garbage_files_are_refused(graph, tmp_path: Path) -> None:
    text = json.dumps(graph_to_dict(graph)).replace('"value": ' + json.dumps(graph.nodes[0].value), '"value": NaN', 1)
    (tmp_path / "nan.json").write_text(text)
    with pytest.raises(CircuitFileError, match="holds NaN"):
        load_graph(tmp_path / "nan.json")
    (tmp_path / "pickle.json").write_bytes(b"\x80\x04\x95")
    with pytest.raises(CircuitFileError, match="not valid JSON"):
        load_graph(tmp_path / "pickle.json")


def test_a_failed_save_leaves_the_old_file(graph, tmp_path: Path) -> None:
    path = save_graph(graph, tmp_path / "c.json")
    before = path.read_bytes()
    graph.metadata["bad"] = float("nan")
    try:
        with pytest.raises(ValueError):
            save_graph(graph, path)
    finally:
        del graph.metadata["bad"]
    assert path.read_bytes() == before and [p.name for p in tmp_path.iterdir()] == ["c.json"]


def test_neuronpedia_export_has_the_viewer_shape(graph) -> None:
    data = neuronpedia_graph(graph, "demo")
    assert set(data) == {"metadata", "qParams", "nodes", "links"}
    assert data["metadata"]["prompt_tokens"][-1] == "[image]" and data["metadata"]["slug"] == "demo"
    fields = {"node_id", "feature", "layer", "ctx_idx", "feature_type", "token_prob", "is_target_logit", "run_idx",
              "reverse_ctx_idx", "jsNodeId", "clerp", "influence", "activation"}
    assert all(set(node) == fields for node in data["nodes"])
    ids = [node["node_id"] for node in data["nodes"]]
    assert len(set(ids)) == len(ids)
    (target,) = [node for node in data["nodes"] if node["is_target_logit"]]
    assert target["feature_type"] == "logit" and "(p=1.000)" in target["clerp"]
    assert {link["source"] for link in data["links"]} <= set(ids) and {link["target"] for link in data["links"]} <= set(ids)
    json.dumps(data, allow_nan=False)
