"""Atlas labels in the viewers, in headless Chromium: a labelled node's hover panel shows its label
and top crops, the graph draws labels, "group by label" folds features sharing one, a user's label
wins, and the heatmap picker lists labels."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from diffract_core.atlas.sampling import sample_recorded
from diffract_core.attribution import CircuitGraph, CircuitMetadata, CircuitNode, Pruning
from diffract_core.features import FeatureRef
from diffract_core.toy.report import write_report
from diffract_core.transcoders import TranscoderSet
from diffract_core.viewer import circuit_payload, heatmap_payload, standalone_script
from tests.atlas.tiny_world import SETTINGS, decode, encoder, tiny_model

CIRCUIT = "window.diffract.views.find((v) => v.circuit)"
HEATMAPS = "window.diffract.views.find((v) => v.maps)"


@pytest.fixture(scope="module")
def page_path(labelled_release: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    transcoders = TranscoderSet.open(labelled_release)
    atlas = transcoders.atlas
    image_site = ("img", 1)
    image_features = list(atlas.labels(image_site))[:3]
    text_site = max((s for s in atlas.sites if s[0] == "txt"),
                    key=lambda s: max(l.confidence for l in atlas.labels(s).values()))
    text_labels = atlas.labels(text_site)
    text_feature = max(text_labels, key=lambda i: text_labels[i].confidence)
    nodes = [CircuitNode("feature", 1, "img", 1, index, 1.0, torch.tensor([0, 5]), torch.tensor([1.0, 0.5]))
             for index in image_features]
    nodes.append(CircuitNode("feature", 1, "txt", text_site[1], text_feature, 1.0, torch.tensor([1]),
                             torch.tensor([1.0])))
    nodes.append(CircuitNode("target", 1, "img", 1, 7, 2.0, torch.tensor([3]), torch.tensor([2.0]), label="the target"))
    nodes.append(CircuitNode("input", 1, "img"))
    count = len(nodes) - 2  # features: fed by the input (node count + 1), feeding the target (node count)
    sources = torch.cat([torch.full((count,), count + 1), torch.arange(count)])
    targets = torch.cat([torch.arange(count), torch.full((count,), count)])
    graph = CircuitGraph(nodes, sources, targets, torch.linspace(1.0, 0.5, 2 * count),
                         CircuitMetadata(step=1, sigma=0.5, text_tokens=("a", "red", "circle", "", "", ""),
                                         image_tokens=24, image_grid=(4, 6), pruning=Pruning(1.0, 1.0)))
    data = circuit_payload(graph, atlas)
    # Two features that share a label, so that "group by label" has something to fold.
    shared = text_labels[text_feature].text
    data["nodes"][0]["label"] = data["nodes"][1]["label"] = shared
    model = tiny_model()
    recording, _ = sample_recorded(model, encoder(model), transcoders, ["a red circle"], [image_site], SETTINGS, decode)
    refs = [FeatureRef("img", 1, index) for index in image_features]
    heatmaps = heatmap_payload(recording, refs, recording.steps, image=None, atlas=atlas)
    path = write_report(tmp_path_factory.mktemp("atlas-page") / "page.html", "labels",
                        [("circuit", '<div data-diffract-view="circuit" style="height:600px"></div>'),
                         ("heatmaps", '<div data-diffract-view="heatmaps" style="height:300px"></div>')],
                        {"circuit": data, "heatmaps": heatmaps}, standalone_script())
    return path, {"text": f"txt:{text_site[1]}:{text_feature}", "label": text_labels[text_feature].text,
                  "shared": shared, "heatmaps": heatmaps}


def _open(page, path: Path) -> None:
    page.goto(path.as_uri())
    page.wait_for_function(f"window.diffract && {CIRCUIT} && {CIRCUIT}.redraws.length > 0")


def _hover(page, spec: str) -> int:
    index = page.evaluate(f"""{CIRCUIT}.circuit.nodes.findIndex((n) =>
        `${{n.stream}}:${{n.layer}}:${{n.feature}}` === {spec!r} && n.kind === 'feature')""")
    point = page.evaluate(f"{CIRCUIT}.clientPoint({index})")
    page.mouse.move(point["x"], point["y"])
    page.wait_for_function(f"{CIRCUIT}.hovered === {index}")
    return index


def test_hovering_a_labelled_node_shows_its_label_and_top_crops(page, page_path, artifacts) -> None:
    path, facts = page_path
    _open(page, path)
    image_spec = page.evaluate(f"(() => {{ const n = {CIRCUIT}.circuit.nodes[2]; "
                               "return `${n.stream}:${n.layer}:${n.feature}`; })()")
    _hover(page, image_spec)
    details = page.locator("[data-diffract-view=circuit] .dfx-details")
    assert "(atlas, confidence" in details.locator(".dfx-auto-label").inner_text()
    crops = details.locator(".dfx-crops img")
    assert crops.count() >= 1
    assert crops.first.get_attribute("src").startswith("data:image/png;base64,")
    assert page.evaluate("(() => { const img = document.querySelector('.dfx-crops img'); "
                         "return img.complete && img.naturalWidth; })()") > 0
    _hover(page, facts["text"])
    assert facts["label"] in details.locator(".dfx-auto-label").inner_text()
    assert details.locator(".dfx-example").count() >= 1
    page.locator("[data-diffract-view=circuit]").screenshot(path=str(artifacts / "atlas-hover.png"))


def test_a_user_label_wins_and_group_by_label_folds_shared_labels(page, page_path) -> None:
    path, facts = page_path
    _open(page, path)
    index = _hover(page, facts["text"])
    assert page.evaluate(f"{CIRCUIT}.circuit.nodes[{index}].label") == facts["label"]
    page.mouse.click(*page.evaluate(f"(() => {{ const p = {CIRCUIT}.clientPoint({index}); return [p.x, p.y]; }})()"))
    page.locator("[data-diffract-view=circuit] input.dfx-label").fill("my reading")
    page.locator("[data-diffract-view=circuit] input.dfx-label").press("Enter")
    page.locator("[data-diffract-view=circuit] [data-action=group-labels]").click()
    groups = page.evaluate(f"structuredClone({CIRCUIT}.state.groups)")
    ids = page.evaluate(f"[{CIRCUIT}.circuit.nodes[0].id, {CIRCUIT}.circuit.nodes[1].id]")
    assert groups == [{"name": facts["shared"], "members": ids}], "the user's label took the text node out of the group"


def test_the_heatmap_picker_lists_labels(page, page_path) -> None:
    path, facts = page_path
    _open(page, path)
    options = page.locator("[data-diffract-view=heatmaps] .dfx-feature option").all_inner_texts()
    labels = facts["heatmaps"]["labels"]
    first = facts["heatmaps"]["maps"][0]["feature"]
    assert options[0] == f"{first} ({labels[first]})"  # the tiny world's image features are broad: "broad, leaning ..."
    assert all(o == (f"{f} ({labels[f]})" if f in labels else f) for o, f in zip(options, dict.fromkeys(
        m["feature"] for m in facts["heatmaps"]["maps"])))
