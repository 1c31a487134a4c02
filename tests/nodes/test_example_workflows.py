"""example_workflows/: UI-format templates whose DifFRACT nodes match the nodes' schemas."""

from __future__ import annotations

import json
from itertools import combinations
from pathlib import Path

import pytest

WORKFLOWS = sorted((Path(__file__).resolve().parents[2] / "example_workflows").glob("*.json"))
WIDGET_TYPES = {"STRING", "INT", "FLOAT", "COMBO", "BOOLEAN"}
TITLE_HEIGHT = 30  # LiteGraph draws a node's title bar above its pos


@pytest.mark.parametrize("path", WORKFLOWS, ids=lambda p: p.name)
def test_workflow_is_consistent_and_matches_our_schemas(pack, models_dir, path: Path) -> None:
    assert path.with_suffix(".jpg").is_file(), "every template ships a same-name .jpg thumbnail"
    workflow = json.loads(path.read_text())
    nodes = {node["id"]: node for node in workflow["nodes"]}
    for link_id, src, src_slot, dst, dst_slot, io_type in workflow["links"]:
        assert link_id in nodes[src]["outputs"][src_slot]["links"]
        assert nodes[dst]["inputs"][dst_slot]["link"] == link_id
        assert nodes[src]["outputs"][src_slot]["type"] == nodes[dst]["inputs"][dst_slot]["type"] == io_type
    pack.nodes.transcoder_folders.register_transcoder_folder()
    schemas = {node.define_schema().node_id: node.define_schema() for node in pack.nodes.NODES}
    ours = [node for node in nodes.values() if node["type"].startswith("Diffract")]
    for node in ours:
        schema = schemas[node["type"]]
        widgets = [spec for spec in schema.inputs if spec.io_type in WIDGET_TYPES]
        sockets = {spec.id: spec.io_type for spec in schema.inputs if spec.io_type not in WIDGET_TYPES}
        assert len(node["widgets_values"]) == len(widgets), node["type"]
        for spec, value in zip(widgets, node["widgets_values"]):
            if spec.io_type == "COMBO" and spec.id not in ("release", "circuit_file"):  # these list the user's files
                assert value in spec.options, (node["type"], spec.id, value)
        assert {i["name"]: i["type"] for i in node["inputs"]} == sockets, node["type"]
        assert [o["type"] for o in node["outputs"]] == [o.io_type for o in schema.outputs], node["type"]


def test_the_templates_together_show_the_pack() -> None:
    used = {node["type"] for path in WORKFLOWS for node in json.loads(path.read_text())["nodes"]}
    assert used >= {
        "DiffractLoadTranscoders", "DiffractRecordFeatures", "DiffractFeatureHeatmaps", "DiffractTopFeatures",
        "DiffractSteerFeature", "DiffractTraceCircuit", "DiffractSteerCircuit", "DiffractSaveCircuit",
    }


@pytest.mark.parametrize("path", WORKFLOWS, ids=lambda p: p.name)
def test_every_stage_is_a_group_with_a_note_and_no_two_nodes_overlap(path: Path) -> None:
    """As saved; tests/comfyui/test_web_widget.py checks the sizes the frontend gives the nodes, after a run too."""
    workflow = json.loads(path.read_text())
    boxes = {node["id"]: (node["pos"][0], node["pos"][1] - TITLE_HEIGHT, node["size"][0],
                          node["size"][1] + TITLE_HEIGHT)
             for node in workflow["nodes"]}
    for (a, (ax, ay, aw, ah)), (b, (bx, by, bw, bh)) in combinations(boxes.items(), 2):
        assert not (ax < bx + bw and bx < ax + aw and ay < by + bh and by < ay + ah), (a, b)
    groups = workflow["groups"]
    assert len(groups) >= 3

    def inside(node_id: int, group: dict) -> bool:
        x, y, w, h = boxes[node_id]
        gx, gy, gw, gh = group["bounding"]
        return gx <= x and gy <= y and x + w <= gx + gw and y + h <= gy + gh

    for node in workflow["nodes"]:
        assert sum(inside(node["id"], group) for group in groups) == 1, f"node {node['id']} is in one stage"
    notes = [node for node in workflow["nodes"] if node["type"] == "Note"]
    assert all(sum(inside(note["id"], group) for note in notes) == 1 for group in groups), "one note per stage"
    assert all(note["widgets_values"][0].strip() for note in notes)
