"""Redraw time of the circuit viewer in headless Chromium: a synthetic circuit of N nodes and E edges
(default 5,000 / 50,000, every node and edge drawn) against the demo-sized baseline (166 nodes),
while panning and zooming. Prints ms per redraw and the ratio to the baseline.

    python benchmarks/viewer_redraw.py [--nodes 5000] [--edges 50000] [--frames 60]
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import tempfile
from pathlib import Path

from diffract_core.toy.report import write_report
from diffract_core.viewer import standalone_script


def synthetic_circuit(nodes: int, edges: int, seed: int = 0, layers: int = 19) -> dict:
    """A valid circuit dict: one target on top, features over `layers` layers in both streams, every
    edge going from a lower layer to a higher one (or to the target)."""
    rng = random.Random(seed)
    grid = (32, 32)
    rows = [{"id": "target:img:18:0@0", "kind": "target", "step": 0, "stream": "img", "layer": layers - 1, "feature": 0,
             "value": 1.0, "positions": [0], "activations": [1.0], "label": ""},
            {"id": "input:img@0", "kind": "input", "step": 0, "stream": "img", "layer": None, "feature": None,
             "value": 1.0, "positions": [], "activations": [], "label": ""},
            {"id": "bias@0", "kind": "bias", "step": 0, "stream": None, "layer": None, "feature": None, "value": 1.0,
             "positions": [], "activations": [], "label": ""}]
    seen = set()
    while len(rows) < nodes:
        stream, layer, feature = rng.choice(["img", "txt"]), rng.randrange(layers - 1), rng.randrange(65536)
        if (stream, layer, feature) in seen:
            continue
        seen.add((stream, layer, feature))
        positions = sorted(rng.sample(range(grid[0] * grid[1] if stream == "img" else 256), 6))
        rows.append({"id": f"feature:{stream}:{layer}:{feature}@0", "kind": "feature", "step": 0, "stream": stream,
                     "layer": layer, "feature": feature, "value": 1.0, "positions": positions,
                     "activations": [rng.random() for _ in positions], "label": ""})
    layer_of = [layers if r["kind"] == "target" else -1 if r["layer"] is None else r["layer"] for r in rows]
    ordered = sorted(range(len(rows)), key=lambda i: layer_of[i])
    first_above = {layer: next(k for k, i in enumerate(ordered) if layer_of[i] > layer)
                   for layer in set(layer_of) - {layers}}
    first_at = {layer: next(k for k, i in enumerate(ordered) if layer_of[i] >= layer) for layer in set(layer_of)}
    pairs = set()
    for node in range(1, len(rows)):  # every node feeds something above and is fed from below: nothing is pruned
        pairs.add((node, ordered[rng.randrange(first_above[layer_of[node]], len(ordered))]))
        if rows[node]["kind"] == "feature":  # pruning drops features that nothing feeds
            pairs.add((ordered[rng.randrange(first_at[layer_of[node]])], node))
    while len(pairs) < edges:
        a, b = rng.randrange(len(rows)), rng.randrange(len(rows))
        if layer_of[a] < layer_of[b]:
            pairs.add((a, b))
    source, target = zip(*sorted(pairs))
    return {"format": "diffract-circuit", "version": 1,
            "metadata": {"step": 0, "sigma": 1.0, "image_grid": list(grid),
                         "text_tokens": [f"t{i}" for i in range(256)], "image_tokens": grid[0] * grid[1],
                         "pruning": {"node_threshold": 1.0, "edge_threshold": 1.0}},
            "nodes": rows, "edges": {"source": list(source), "target": list(target),
                                     "weight": [rng.choice([-1, 1]) * rng.random() for _ in source]}}


def measure(page, path: Path, frames: int) -> dict:
    page.goto(path.as_uri())
    page.wait_for_function("window.diffract && window.diffract.views.length && window.diffract.views[0].redraws.length")
    return page.evaluate(f"""(() => {{ const v = window.diffract.views[0];
        const times = [];
        const started = performance.now();
        for (let i = 0; i < {frames}; i++) {{
            v.pan = {{ x: (i % 10) * 12, y: (i % 7) * 9 }};
            v.zoomAt(400, 300, i % 2 ? 1.1 : 1 / 1.1);
            times.push(v.drawNow());
        }}
        const t0 = performance.now(); v.setThresholds(v.state.nodeThreshold, v.state.edgeThreshold);
        const prune = performance.now() - t0;
        times.sort((a, b) => a - b);
        return {{ nodes: v.counts.nodes, edges: v.counts.drawnEdges, median: times[Math.floor(times.length / 2)],
                  p90: times[Math.floor(times.length * 0.9)], prune_ms: prune,
                  wall: performance.now() - started }}; }})()""")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--nodes", type=int, default=5000)
    parser.add_argument("--edges", type=int, default=50000)
    parser.add_argument("--frames", type=int, default=60)
    parser.add_argument("--chromium", default=shutil.which("chromium") or shutil.which("chromium-browser"))
    args = parser.parse_args()
    from playwright.sync_api import sync_playwright

    script = standalone_script()
    folder = Path(tempfile.mkdtemp(prefix="viewer-redraw-"))
    pages = {}
    for name, (n, e) in {"baseline": (166, 1700), "large": (args.nodes, args.edges)}.items():
        pages[name] = write_report(folder / f"{name}.html", name,
                                   [("circuit", '<div data-diffract-view="circuit" style="height:700px"></div>')],
                                   {"circuit": synthetic_circuit(n, e)}, script)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=args.chromium, args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1400, "height": 900})
        results = {name: measure(page, path, args.frames) for name, path in pages.items()}
        browser.close()
    base, large = results["baseline"], results["large"]
    print(json.dumps(results, indent=1))
    print(f"baseline ({base['nodes']} nodes, {base['edges']} edges): {base['median']:.2f} ms per redraw (median), "
          f"p90 {base['p90']:.2f}")
    print(f"large ({large['nodes']} nodes, {large['edges']} edges): {large['median']:.2f} ms per redraw (median), "
          f"p90 {large['p90']:.2f}, {1000 / large['median']:.0f} redraws/s; "
          f"{large['median'] / base['median']:.1f}x the baseline")
    print(f"re-prune on the slider: {large['prune_ms']:.0f} ms (baseline {base['prune_ms']:.1f} ms)")
    shutil.rmtree(folder)
    if large["nodes"] < args.nodes or large["edges"] < args.edges:
        raise SystemExit(f"only {large['nodes']} nodes and {large['edges']} edges were drawn, not all of them")


if __name__ == "__main__":
    main()
