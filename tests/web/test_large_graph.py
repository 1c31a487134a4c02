"""A 5,000-node / 50,000-edge circuit in the viewer: everything is drawn, pan and zoom redraw it,
and the time per redraw is written to test-artifacts/web/redraw.json (benchmarks/viewer_redraw.py
prints the ratio to a small graph; tests never assert wall-clock times)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

from diffract_core.toy.report import write_report
from diffract_core.viewer import standalone_script

BENCHMARK = Path(__file__).resolve().parents[2] / "benchmarks" / "viewer_redraw.py"


def _benchmark():
    spec = importlib.util.spec_from_file_location("viewer_redraw", BENCHMARK)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_five_thousand_nodes_and_fifty_thousand_edges_pan_and_zoom(page, tmp_path, artifacts) -> None:
    bench = _benchmark()
    data = bench.synthetic_circuit(5000, 50_000)
    path = write_report(tmp_path / "large.html", "large",
                        [("circuit", '<div data-diffract-view="circuit" style="height:700px"></div>')],
                        {"circuit": data}, standalone_script())
    result = bench.measure(page, path, frames=30)
    assert result["nodes"] == 5000 and result["edges"] == 50_000
    before = page.evaluate("window.diffract.views[0].pan")
    page.mouse.move(500, 400)
    page.mouse.wheel(0, -300)
    page.mouse.down()
    page.mouse.move(300, 300, steps=5)
    page.mouse.up()
    assert page.evaluate("window.diffract.views[0].pan") != before
    (artifacts / "redraw.json").write_text(json.dumps(result, indent=1))
    page.screenshot(path=str(artifacts / "large-graph.png"))
