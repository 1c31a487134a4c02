"""diffract_core.viewer: the heatmap bytes and the viewer modules joined for standalone pages."""

from __future__ import annotations

import base64

import pytest
import torch

from diffract_core import viewer
from diffract_core.errors import DiffractError


def test_token_maps_are_one_byte_per_token_clamped_to_the_unit_range() -> None:
    encoded = viewer.encode_token_map(torch.tensor([[-1.0, 0.0], [0.5, 2.0]]))
    assert list(base64.b64decode(encoded)) == [0, 0, 128, 255]


def test_the_standalone_script_inlines_every_module_once_in_import_order() -> None:
    script = viewer.standalone_script()
    assert "\nimport " not in script and "\nexport " not in script
    order = [script.index(f"class {name}") for name in ("HeatmapView", "CircuitView")]
    assert script.index("function parseCircuit") < script.index("class CircuitView")
    assert script.index("function createRoot") < min(order)
    assert script.rstrip().endswith("mountStandalone(document);")


def test_a_missing_web_folder_names_the_fix(monkeypatch, tmp_path) -> None:
    monkeypatch.setattr(viewer, "WEB_MODULES", tmp_path / "web" / "diffract")
    with pytest.raises(DiffractError, match="pip install -e"):
        viewer.standalone_script()


def test_the_viewer_check_lists_every_module_and_names_the_fix_for_a_missing_folder(monkeypatch, tmp_path) -> None:
    assert [path.name for path in viewer.check_viewer_files()][-1] == viewer.ENTRY
    monkeypatch.setattr(viewer, "WEB_MODULES", tmp_path / "missing")
    with pytest.raises(DiffractError, match=r"standalone\.js is not in .*missing.*pip install \."):
        viewer.check_viewer_files()


def test_the_viewer_check_names_a_missing_imported_module(monkeypatch, tmp_path) -> None:
    (tmp_path / "standalone.js").write_text('import { a } from "./a.js";\n')
    monkeypatch.setattr(viewer, "WEB_MODULES", tmp_path)
    with pytest.raises(DiffractError, match=r"a\.js is not in"):
        viewer.check_viewer_files()


def test_an_import_cycle_is_refused(monkeypatch, tmp_path) -> None:
    (tmp_path / "standalone.js").write_text('import { a } from "./a.js";\n')
    (tmp_path / "a.js").write_text('import { b } from "./standalone.js";\nexport const a = 1;\n')
    monkeypatch.setattr(viewer, "WEB_MODULES", tmp_path)
    with pytest.raises(DiffractError, match="cycle"):
        viewer.standalone_script()


def test_payloads_carry_atlas_labels_and_cards(labelled_release) -> None:
    from diffract_core.atlas.cards import feature_labels
    from diffract_core.atlas.sampling import sample_recorded
    from diffract_core.attribution.graph import CircuitGraph, CircuitNode
    from diffract_core.features import FeatureRef
    from diffract_core.transcoders import TranscoderSet
    from tests.atlas.tiny_world import SETTINGS, decode, encoder, tiny_model

    transcoders = TranscoderSet.open(labelled_release)
    atlas = transcoders.atlas
    model = tiny_model()
    image_refs = [FeatureRef("img", 0, i) for i in list(atlas.labels(("img", 0)))[:3]]
    recording, _ = sample_recorded(model, encoder(model), transcoders, ["a red circle"], [("img", 0)], SETTINGS, decode)
    payload = viewer.heatmap_payload(recording, image_refs, recording.steps, image=None, atlas=atlas)
    assert payload["labels"] == feature_labels(atlas, image_refs)
    assert viewer.heatmap_payload(recording, image_refs, recording.steps, image=None)["labels"] == {}

    site = max((s for s in atlas.sites if s[0] == "txt"),
               key=lambda s: max(l.confidence for l in atlas.labels(s).values()))
    labels = atlas.labels(site)
    indices = sorted(labels, key=lambda i: -labels[i].confidence)[:2]
    refs = [FeatureRef("txt", site[1], i) for i in indices]
    assert labels[indices[0]].confidence > 0, "the tiny world's atlas is confident about some feature"
    nodes = [CircuitNode("feature", 0, "txt", site[1], indices[0], 1.0),
             CircuitNode("feature", 0, "txt", site[1], indices[1], 1.0, label="mine"),
             CircuitNode("target", 0, "img", 1, 3, 1.0, label="the target")]
    graph = CircuitGraph(nodes, torch.tensor([0, 1]), torch.tensor([2, 2]), torch.tensor([0.5, 0.5]))
    data = viewer.circuit_payload(graph, atlas)
    assert [n["label"] for n in data["nodes"]] == [labels[indices[0]].text, "mine", "the target"]
    assert set(data["features"]) == {str(refs[0]), str(refs[1]), "img:1:3"}  # the target's card too
    assert data["features"]["img:1:3"]["examples"][0]["crop"].startswith("data:image/png;base64,")
    assert viewer.circuit_payload(graph)["features"] == {} and feature_labels(None, refs) == {}
