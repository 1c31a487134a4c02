"""The circuit and heatmap viewers in the demo's standalone report, driven in headless Chromium with a
real circuit traced on the embedded toy: hover, focus, pin, group, prune, region filter and labels."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from diffract_core.attribution.serialize import graph_from_dict
from diffract_core.toy.demo import DemoSettings, run_demo

CIRCUIT = "window.diffract.views.find((v) => v.circuit)"
HEATMAPS = "window.diffract.views.find((v) => v.maps)"


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    result = run_demo(tmp_path_factory.mktemp("demo"), DemoSettings(images=16, max_errors=1))
    assert result.shown is not None, "the fixture grid has no binding error to trace"
    return result.report, json.loads((result.out / "circuit.json").read_text())


def open_report(page, report_path: Path) -> None:
    page.goto(report_path.as_uri())
    page.wait_for_function(f"window.diffract && {CIRCUIT} && {CIRCUIT}.redraws.length > 0")
    page.locator("[data-diffract-view=circuit]").scroll_into_view_if_needed()


def view_state(page) -> dict:
    return page.evaluate(f"structuredClone({CIRCUIT}.state)")


def drawn_features(page) -> list[str]:
    return page.evaluate(f"""(() => {{ const v = {CIRCUIT};
        return v.circuit.nodes.filter((n) => v.nodeMask[n.index] && n.kind === 'feature').map((n) => n.id); }})()""")


def strongest_drawn_features(page, count: int) -> list[int]:
    return page.evaluate(f"""(() => {{ const v = {CIRCUIT};
        return v.circuit.nodes.filter((n) => v.drawn[n.index] && n.kind === 'feature')
          .sort((a, b) => v.influence[b.index] - v.influence[a.index]).slice(0, {count}).map((n) => n.index); }})()""")


def point_of(page, index: int) -> tuple[float, float]:
    point = page.evaluate(f"{CIRCUIT}.clientPoint({index})")
    assert point is not None, f"node {index} is not drawn"
    return point["x"], point["y"]


def canvas_digest(page, selector: str) -> int:
    """A checksum of a canvas's pixels, computed in the page (shipping the pixels out is slow)."""
    return page.evaluate(f"""(() => {{ const c = document.querySelector({selector!r});
        const data = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
        let hash = 0;
        for (let i = 0; i < data.length; i++) hash = (hash * 31 + data[i]) | 0;
        return hash; }})()""")


def image_pixels(page) -> int:
    return canvas_digest(page, "[data-diffract-view=circuit] .dfx-image-canvas")


def test_the_report_mounts_both_viewers_offline(page, report, artifacts) -> None:
    report_path, graph = report
    requests: list[str] = []
    page.on("request", lambda request: requests.append(request.url))
    open_report(page, report_path)
    assert all(url.startswith(("file:", "data:")) for url in requests), f"the report fetched {requests}"
    counts = page.evaluate(f"{CIRCUIT}.counts")
    assert counts["nodes"] > 3 and counts["edges"] > 0
    assert page.evaluate(f"{CIRCUIT}.circuit.nodes.length") == len(graph["nodes"])
    assert page.evaluate(f"{CIRCUIT}.imageReady") is True, "the view's promise resolves once the image is drawn"
    page.locator("[data-diffract-view=circuit]").screenshot(path=str(artifacts / "report-circuit.png"))


def test_the_report_tells_the_story_first(page, report, artifacts) -> None:
    """The error and its before / after images, large and side by side, before the grid; the grid's
    binding errors outlined in red with a legend; every linked term defined on the page."""
    report_path, _ = report
    page.goto(report_path.as_uri())
    assert page.locator("h2").first.inner_text().startswith("The binding error, and ")
    layout = page.evaluate("""(() => {
        const box = (e) => e.getBoundingClientRect();
        const big = [...document.querySelectorAll('figure.big img')].map((img) => ({
            width: box(img).width, top: box(img).top, rendering: getComputedStyle(img).imageRendering }));
        const errors = [...document.querySelectorAll('.thumbs figure.error img')].map((img) => getComputedStyle(img));
        return { big, gridTop: box(document.querySelector('.thumbs')).top,
                 thumbs: document.querySelectorAll('.thumbs figure').length,
                 captions: [...document.querySelectorAll('.thumbs figcaption')].filter(
                     (c) => c.textContent.includes('(binding error)')).length,
                 outlines: errors.map((s) => [s.outlineColor, s.outlineStyle, s.outlineWidth]),
                 legend: document.querySelector('.legend')?.textContent ?? '',
                 undefinedTerms: [...document.querySelectorAll('a.term')].map((a) => a.getAttribute('href'))
                     .filter((href) => !document.getElementById(href.slice(1))) }; })()""")
    big = layout["big"]
    assert len(big) == 3, "as generated, steered by the circuit, steered by the SAE"
    assert all(b["width"] >= 256 and b["rendering"] == "pixelated" for b in big), big
    assert len({b["top"] for b in big}) == 1, "side by side"
    assert max(b["top"] for b in big) < layout["gridTop"]
    assert layout["thumbs"] == 16 and len(layout["outlines"]) == layout["captions"] > 0
    assert all(colour == "rgb(213, 0, 0)" and style != "none" for colour, style, _ in layout["outlines"])
    assert "red outline: the image holds a binding error" in layout["legend"]
    assert layout["undefinedTerms"] == []
    page.screenshot(path=str(artifacts / "report-page.png"), full_page=True)


def test_the_prune_slider_keeps_what_python_keeps(page, report) -> None:
    report_path, graph_data = report
    graph = graph_from_dict(graph_data)
    open_report(page, report_path)
    for node_threshold, edge_threshold in [(0.8, 0.98), (0.5, 0.9), (0.95, 0.999), (0.3, 0.5)]:
        page.evaluate(f"""(() => {{ const root = document.querySelector('[data-diffract-view=circuit]');
            root.querySelector('.dfx-node-threshold').value = {node_threshold};
            root.querySelector('.dfx-edge-threshold').value = {edge_threshold};
            root.querySelector('.dfx-edge-threshold').dispatchEvent(new Event('change')); }})()""")
        expected = graph.prune(node_threshold, edge_threshold)
        shown = page.evaluate(f"Array.from({CIRCUIT}.nodeMask)")
        assert shown == expected.node_mask.int().tolist(), (node_threshold, edge_threshold)
        assert page.evaluate(f"{CIRCUIT}.counts.edges") == int(expected.edge_mask.sum())
    assert view_state(page)["nodeThreshold"] == 0.3


def test_hover_shows_the_feature_and_its_heatmap_on_the_image(page, report, artifacts) -> None:
    report_path, _ = report
    open_report(page, report_path)
    index = page.evaluate(f"""(() => {{ const v = {CIRCUIT};
        return v.circuit.nodes.find((n) =>
            v.drawn[n.index] && n.kind === 'feature' && n.stream === 'img').index; }})()""")
    node = page.evaluate(
        f"(() => {{ const n = {CIRCUIT}.circuit.nodes[{index}]; "
        "return { id: n.id, layer: n.layer, feature: n.feature }; })()"
    )
    before = image_pixels(page)
    page.mouse.move(*point_of(page, index))
    page.wait_for_function(f"{CIRCUIT}.hovered === {index}")
    details = page.locator("[data-diffract-view=circuit] .dfx-details h4").inner_text()
    assert f"img:{node['layer']}:{node['feature']}" in details
    page.wait_for_timeout(50)
    assert image_pixels(page) != before, "hovering an image feature paints its heatmap on the image"
    page.locator("[data-diffract-view=circuit]").screenshot(path=str(artifacts / "report-hover.png"))


def test_click_focuses_a_node_and_lists_its_inputs_and_outputs(page, report) -> None:
    report_path, _ = report
    open_report(page, report_path)
    index = strongest_drawn_features(page, 1)[0]
    page.mouse.click(*point_of(page, index))
    assert page.evaluate(f"{CIRCUIT}.focused") == index
    text = page.locator("[data-diffract-view=circuit] .dfx-details").inner_text()
    assert "inputs:" in text and "outputs:" in text and "inputs: none" not in text


def test_ctrl_click_pins_and_g_groups_the_pins(page, report, artifacts) -> None:
    report_path, _ = report
    open_report(page, report_path)
    first, second = strongest_drawn_features(page, 2)
    drawn_before = page.evaluate(f"{CIRCUIT}.drawn.reduce((a, b) => a + b, 0)")
    for index in (first, second):
        page.keyboard.down("Control")
        page.mouse.click(*point_of(page, index))
        page.keyboard.up("Control")
    ids = page.evaluate(f"[{CIRCUIT}.circuit.nodes[{first}].id, {CIRCUIT}.circuit.nodes[{second}].id]")
    assert view_state(page)["pins"] == ids
    page.keyboard.press("g")
    state = view_state(page)
    assert state["groups"] == [{"name": "group 1", "members": ids}]
    assert page.evaluate(f"{CIRCUIT}.drawn.reduce((a, b) => a + b, 0)") == drawn_before - 1
    page.mouse.move(*point_of(page, first))
    assert "group 1: 2 nodes" in page.locator("[data-diffract-view=circuit] .dfx-details h4").inner_text()
    page.locator("[data-diffract-view=circuit]").screenshot(path=str(artifacts / "report-group.png"))


def test_a_box_on_the_image_keeps_the_features_active_there(page, report, artifacts) -> None:
    report_path, graph_data = report
    graph = graph_from_dict(graph_data)
    rows, cols = graph.metadata.image_grid
    open_report(page, report_path)
    box = page.locator("[data-diffract-view=circuit] .dfx-image-canvas").bounding_box()
    rect = page.evaluate(f"{CIRCUIT}.imageRect")
    cell_w, cell_h = rect["width"] / cols, rect["height"] / rows
    left, top = box["x"] + rect["x"], box["y"] + rect["y"]
    page.mouse.move(left + 0.5 * cell_w, top + 0.5 * cell_h)  # cell (0, 0) ...
    page.mouse.down()
    page.mouse.move(left + 2.5 * cell_w, top + 1.5 * cell_h, steps=4)  # ... to cell (1, 2)
    page.mouse.up()
    cells = {r * cols + c for r in range(2) for c in range(3)}
    assert set(view_state(page)["region"]["cells"]) == cells
    pruned = graph.prune(0.8, 0.98).node_mask
    active = {
        node.id
        for i, node in enumerate(graph.nodes)
        if pruned[i]
        and node.kind == "feature"
        and node.stream == "img"
        and any(int(p) in cells and float(a) != 0 for p, a in zip(node.positions, node.activations))
    }
    shown = set(drawn_features(page))
    assert {f for f in shown if f.startswith("feature:img")} == active
    fed = {
        graph.nodes[int(s)].id
        for s, t in zip(graph.edge_sources, graph.edge_targets)
        if graph.nodes[int(t)].id in active and graph.nodes[int(s)].stream == "txt"
    }
    assert {f for f in shown if f.startswith("feature:txt")} <= fed
    page.locator("[data-diffract-view=circuit]").screenshot(path=str(artifacts / "report-region.png"))
    page.locator("[data-diffract-view=circuit] [data-action=clear-region]").click()
    assert view_state(page)["region"] is None


def test_labels_are_kept_in_the_page_state_across_reloads(page, report) -> None:
    report_path, _ = report
    open_report(page, report_path)
    index = strongest_drawn_features(page, 1)[0]
    page.mouse.click(*point_of(page, index))
    label = page.locator("[data-diffract-view=circuit] input.dfx-label")
    label.fill("red-ness of the square")
    label.press("Enter")
    node_id = page.evaluate(f"{CIRCUIT}.circuit.nodes[{index}].id")
    assert view_state(page)["labels"] == {node_id: "red-ness of the square"}
    page.reload()
    open_report(page, report_path)
    assert view_state(page)["labels"] == {node_id: "red-ness of the square"}
    page.mouse.move(*point_of(page, index))
    page.wait_for_function(f"{CIRCUIT}.hovered === {index}")
    assert page.locator("[data-diffract-view=circuit] input.dfx-label").input_value() == "red-ness of the square"


def test_the_steer_action_names_the_feature(page, report) -> None:
    report_path, _ = report
    open_report(page, report_path)
    index = strongest_drawn_features(page, 1)[0]
    page.mouse.click(*point_of(page, index))
    page.locator("[data-diffract-view=circuit] .dfx-steer").click()
    spec = page.evaluate(
        f"(() => {{ const n = {CIRCUIT}.circuit.nodes[{index}]; "
        "return `${n.stream}:${n.layer}:${n.feature}`; })()"
    )
    assert spec in page.locator(".dfx-steer-note").inner_text()


def test_the_heatmap_viewer_moves_through_features_steps_and_opacity(page, report, artifacts) -> None:
    report_path, _ = report
    open_report(page, report_path)
    viewer = page.locator("[data-diffract-view=heatmaps]")
    viewer.scroll_into_view_if_needed()

    def pixels() -> int:
        return canvas_digest(page, "[data-diffract-view=heatmaps] canvas")

    first = pixels()
    viewer.locator(".dfx-step").fill("11")
    assert page.evaluate(f"{HEATMAPS}.step") == 11
    late = pixels()
    assert late != first
    options = viewer.locator(".dfx-feature option").all_inner_texts()
    assert len(options) >= 2
    viewer.locator(".dfx-feature").select_option(index=1)
    assert page.evaluate(f"{HEATMAPS}.feature") == options[1].split(" ")[0]
    viewer.locator(".dfx-opacity").fill("0")
    plain = pixels()
    viewer.locator(".dfx-opacity").fill("1")
    assert pixels() != plain
    viewer.screenshot(path=str(artifacts / "report-heatmaps.png"))
    maps = page.evaluate(f"{HEATMAPS}.maps.map((m) => [m.feature, m.step, Array.from(m.values)])")
    assert all(0 <= v <= 1 for _, _, values in maps for v in values)
    assert torch.tensor([max(values) for _, _, values in maps]).max() == 1.0
