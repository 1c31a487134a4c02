"""Circuit files: exact round trips, and every kind of malformed file refused with its reason."""

from __future__ import annotations

import copy
import json
import os
import stat
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from diffract_core.attribution import CircuitGraph, TargetSpec, TraceSettings, serialize, trace_circuit
from diffract_core.attribution.adjacency import MAX_DEPTH
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
                         settings=TraceSettings(max_feature_nodes=15, faithfulness_checks=4))


def test_round_trip_keeps_nodes_edges_maps_and_metadata(graph, tmp_path: Path) -> None:
    path = save_graph(graph, tmp_path / "c.json")
    loaded = load_graph(path)
    assert [n.id for n in loaded.nodes] == [n.id for n in graph.nodes]
    assert torch.equal(loaded.edge_weights, graph.edge_weights) and torch.equal(loaded.edge_sources, graph.edge_sources)
    for a, b in zip(loaded.nodes, graph.nodes):
        assert torch.equal(a.positions, b.positions) and torch.allclose(a.activations, b.activations, atol=1e-6)
    assert loaded.metadata == graph.metadata and loaded.metadata.faithfulness.forward_passes == 4
    assert loaded.scores() == pytest.approx(graph.scores())


def _previous_save(graph, labels=None) -> str:
    """What save_graph wrote before it streamed: the whole document in one json.dumps."""
    return json.dumps(graph_to_dict(graph, labels), allow_nan=False, separators=(",", ":"))


@pytest.mark.parametrize("chunk", [7, serialize.EDGE_CHUNK])
def test_the_streamed_file_has_the_bytes_of_the_previous_format(graph, chunk, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(serialize, "EDGE_CHUNK", chunk)  # 7: every column spans several chunks and ends in a part
    assert graph.edge_weights.numel() % 7 != 0
    labels = {graph.features()[0].feature_spec: "labelled"}
    text = save_graph(graph, tmp_path / "c.json", labels).read_text(encoding="utf-8")
    assert text == _previous_save(graph, labels)
    assert json.loads(text) == graph_to_dict(graph, labels)


def test_a_graph_without_edges_or_metadata_streams_like_the_previous_format(tmp_path: Path) -> None:
    no_edges = torch.zeros(0, dtype=torch.long)
    bare = CircuitGraph(graph_from_dict(_star(1)).nodes, no_edges, no_edges, no_edges.double())
    assert save_graph(bare, tmp_path / "bare.json").read_text(encoding="utf-8") == _previous_save(bare)


def test_a_non_finite_edge_weight_fails_the_streamed_save_and_leaves_no_file(graph, tmp_path: Path) -> None:
    weights = graph.edge_weights.clone()
    weights[-1] = float("inf")
    broken = CircuitGraph(graph.nodes, graph.edge_sources, graph.edge_targets, weights, graph.metadata)
    with pytest.raises(ValueError, match="Out of range float values are not JSON compliant"):
        save_graph(broken, tmp_path / "c.json")
    assert list(tmp_path.iterdir()) == []


def test_metadata_keeps_keys_it_does_not_know_and_refuses_mistyped_sections(graph, tmp_path: Path) -> None:
    data = graph_to_dict(graph)
    data["metadata"]["from_another_tool"] = {"run": 3}
    (tmp_path / "extra.json").write_text(json.dumps(data))
    loaded = load_graph(tmp_path / "extra.json")
    assert loaded.metadata.extra == {"from_another_tool": {"run": 3}}
    assert graph_to_dict(loaded)["metadata"] == data["metadata"]
    data["metadata"]["scores"] = {"replacement": "high", "completeness": 0.5}
    (tmp_path / "mistyped.json").write_text(json.dumps(data))
    with pytest.raises(CircuitFileError, match=r"scores.replacement = 'high' is not a number"):
        load_graph(tmp_path / "mistyped.json")


def test_files_written_before_a_knob_existed_take_its_default(graph, tmp_path: Path) -> None:
    data = graph_to_dict(graph)
    for knob in ("update_interval", "faithfulness_checks", "per_row"):
        del data["metadata"]["settings"][knob]
    (tmp_path / "old.json").write_text(json.dumps(data))
    expected = replace(graph.metadata.settings, faithfulness_checks=0)  # how many checks ran is not in such a file
    assert load_graph(tmp_path / "old.json").metadata.settings == expected


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
        (lambda d: d["nodes"][0].update(positions=[1, 2], activations=[1.0]),
         "positions and activations must be lists of equal length"),
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
    broken = CircuitGraph(graph.nodes, graph.edge_sources, graph.edge_targets, graph.edge_weights,
                          replace(graph.metadata, extra={"bad": float("nan")}))
    with pytest.raises(ValueError):
        save_graph(broken, path)
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
    assert ({link["source"] for link in data["links"]} <= set(ids)
            and {link["target"] for link in data["links"]} <= set(ids))
    json.dumps(data, allow_nan=False)


def _star(nodes: int, **metadata: object) -> dict:
    """A hand-written circuit file: `nodes` features, each fed by the input and feeding the target."""
    rows = [{"kind": "feature", "step": 0, "stream": "img", "layer": 1, "feature": i, "value": 1.0,
             "positions": [i % 4], "activations": [1.0]} for i in range(nodes)]
    rows += [{"kind": "input", "step": 0, "stream": "img"}, {"kind": "bias", "step": 0},
             {"kind": "target", "step": 0, "stream": "img", "layer": 2, "feature": 0, "value": 1.0}]
    sources = [nodes] * nodes + list(range(nodes))
    targets = list(range(nodes)) + [nodes + 2] * nodes
    return {"format": "diffract-circuit", "version": 1,
            "metadata": {"step": 0, "sigma": 0.5, "image_grid": [2, 2], "text_tokens": ["a"], "image_tokens": 4,
                         **metadata},
            "nodes": rows, "edges": {"source": sources, "target": targets, "weight": [1.0] * (2 * nodes)}}


@pytest.mark.parametrize(
    ("edit", "reason"),
    [
        (lambda d: d["edges"]["source"].append(d["edges"]["target"][-1]) or d["edges"]["target"].append(0)
         or d["edges"]["weight"].append(1.0), r"edges form a cycle \(node \d+ is on it"),
        (lambda d: d["nodes"][0].update(positions=[4], activations=[1.0]),
         r"node 0 positions must be token indices of its stream, 0\.\.3"),
        (lambda d: d["nodes"][-1].update(stream="txt", positions=[1], activations=[1.0]),
         r"positions must be .* 0\.\.0"),
        (lambda d: d["metadata"].update(note="x" * 2_000_000),
         r"metadata.note is a string of 2000000 characters, more than 10000"),
        (lambda d: d["metadata"].update(target={"label": "y" * 20_000}), "metadata.target.label is a string of 20000"),
        (lambda d: d["metadata"].update(notes=["z" * 9_000] * 200), "more than 1000000 characters of text"),
        (lambda d: d["metadata"].update(image_grid=[3, 3]),
         r'"image_grid" must be null or \[rows, cols\] with rows \* cols'),
    ],
)
def test_hostile_circuits_are_refused_at_load(edit, reason, tmp_path: Path) -> None:
    data = _star(3)
    edit(data)
    (tmp_path / "shared.json").write_text(json.dumps(data))
    with pytest.raises(CircuitFileError, match=reason):
        load_graph(tmp_path / "shared.json")


def test_deep_nesting_is_refused_without_recursion(tmp_path: Path) -> None:
    for depth in (10_000, 100_000):
        (tmp_path / "deep.json").write_text('{"metadata": ' + "[" * depth + "]" * depth + "}")
        with pytest.raises(CircuitFileError, match=f"deep.json nests {depth + 1} levels deep"):
            load_graph(tmp_path / "deep.json")


def test_chains_deeper_than_any_circuit_are_refused(tmp_path: Path) -> None:
    count = MAX_DEPTH + 10
    data = _star(count)  # rewired: input -> feature 0 -> feature 1 -> ... -> the last feature -> target
    data["edges"] = {"source": [count, *range(count)], "target": [*range(count), count + 2],
                     "weight": [1.0] * (count + 1)}
    (tmp_path / "chain.json").write_text(json.dumps(data))
    with pytest.raises(CircuitFileError, match=f"edges chain more than {MAX_DEPTH} nodes deep"):
        load_graph(tmp_path / "chain.json")


def test_a_large_circuit_loads_prunes_and_scores_in_linear_memory(tmp_path: Path) -> None:
    """20,000 nodes in a 1 MB file: a dense N x N adjacency would need 3.2 GB."""
    path = tmp_path / "large.json"
    path.write_text(json.dumps(_star(20_000), separators=(",", ":")))
    assert path.stat().st_size < 3 * 2**20
    script = (
        "import resource, sys\nfrom diffract_core.attribution.serialize import load_graph\n"
        f"graph = load_graph({str(path)!r})\n"
        "influence = graph.influence()\npruned = graph.prune()\nscores = graph.scores()\n"
        "print(round(float(influence[:20000].sum()), 6), int(pruned.node_mask.sum()), round(scores[0], 6))\n"
        "peak = [line for line in open('/proc/self/status') if line.startswith('VmHWM')][0].split()[1]\n"
        "print(int(peak) // 1024)\n"
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300, check=False)
    assert out.returncode == 0, out.stderr
    summary, peak_mib = out.stdout.split("\n")[:2]
    assert summary.split()[0] == "1.0" and summary.split()[2] == "1.0"
    assert int(peak_mib) < 1500, f"peak memory {peak_mib} MiB"


def test_saved_circuits_are_readable_by_others(graph, tmp_path: Path) -> None:
    previous = os.umask(0o022)
    try:
        path = save_graph(graph, tmp_path / "c.json")
    finally:
        os.umask(previous)
    assert stat.S_IMODE(path.stat().st_mode) == 0o644


def _feature_specs(graph) -> list[str]:
    return list(dict.fromkeys(n.feature_spec for n in graph.nodes if n.kind == "feature"))


def test_feature_labels_fill_node_labels_and_a_nodes_own_label_wins(graph) -> None:
    first, second = _feature_specs(graph)[:2]
    own = copy.deepcopy(graph)
    labelled = next(n for n in own.nodes if n.feature_spec == second and n.kind == "feature")
    labelled.label = "my reading"
    nodes = graph_to_dict(own, {first: "red (image, steps 0-3)", second: "atlas reading"})["nodes"]
    by_spec = {(n["kind"], f'{n["stream"]}:{n["layer"]}:{n["feature"]}', n["id"]): n["label"] for n in nodes}
    assert all(label == "red (image, steps 0-3)" for (kind, spec, _), label in by_spec.items()
               if kind == "feature" and spec == first)
    assert by_spec[("feature", second, labelled.id)] == "my reading"
    target = next(n for n in nodes if n["kind"] == "target")
    assert target["label"] == graph.nodes[graph.indices("target")[0]].label, "a target keeps its own label"
    loaded = graph_from_dict(graph_to_dict(own, {first: "red"}))
    assert {n.label for n in loaded.nodes if n.feature_spec == first and n.kind == "feature"} == {"red"}


def test_the_neuronpedia_export_carries_labels_as_clerps(graph) -> None:
    specs = _feature_specs(graph)
    labels = {spec: f"label of {spec}" for spec in specs}
    exported = neuronpedia_graph(graph, "labelled", labels=labels)
    features = [n for n in exported["nodes"] if n["feature_type"] == "cross layer transcoder"]
    assert features and all(n["clerp"].startswith("label of ") for n in features)
    bare = neuronpedia_graph(graph, "bare")
    assert all(" L" in n["clerp"] and "#" in n["clerp"]
               for n in bare["nodes"] if n["feature_type"] == "cross layer transcoder")
