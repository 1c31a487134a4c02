"""example_workflows/: UI-format templates whose DifFRACT nodes match the nodes' schemas."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

WORKFLOWS = sorted((Path(__file__).resolve().parents[2] / "example_workflows").glob("*.json"))
WIDGET_TYPES = {"STRING", "INT", "FLOAT", "COMBO", "BOOLEAN"}


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
