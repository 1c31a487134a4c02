"""A simplified circuit's supernodes in the viewer (headless Chromium): each coarsest supernode draws as
one node, a click unfolds it into its members (inner supernodes still folded), "fold" draws it as one
again, and the unfolded set is part of the saved view state."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from diffract_core.attribution import (
    CircuitIntervention,
    SimplifySettings,
    TargetSpec,
    TraceSettings,
    simplify_circuit,
    trace_circuit,
)
from diffract_core.flux import Flux, FluxConfig, init_random_
from diffract_core.quickstart import random_transcoder
from diffract_core.recording import FeatureRecording, patch_reference_model
from diffract_core.toy.report import write_report
from diffract_core.transcoders import TranscoderSet
from diffract_core.viewer import circuit_payload, standalone_script

VIEW = "window.diffract.views[0]"


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A circuit of a tiny random FLUX, simplified by influence to at most 24 features."""
    model = init_random_(Flux(FluxConfig.tiny(depth=4)), seed=0, std=0.05).eval()
    transcoders = TranscoderSet.from_transcoders(
        random_transcoder(stream, layer, d_model=64, d_features=96, time_dim=16, seed=10 * layer + (stream == "txt"))
        for stream in ("img", "txt") for layer in range(4))
    recording = FeatureRecording(sites=tuple(transcoders.sites), k=5, keep_input_steps=frozenset({1}))
    recording.start_run((1.0, 0.75, 0.5, 0.25, 0.0))
    generator = torch.Generator().manual_seed(3)
    config = model.config
    inputs = {"x": torch.randn(1, config.latent_channels, 8, 12, generator=generator),
              "timestep": torch.full((1,), 0.75),
              "context": torch.randn(1, 5, config.context_in_dim, generator=generator),
              "y": torch.randn(1, config.vec_in_dim, generator=generator)}
    with torch.no_grad(), patch_reference_model(model, transcoders, recording=recording):
        model(**inputs)
    call = recording.call_inputs(1)
    graph = trace_circuit(model.double_blocks, transcoders, call, TargetSpec("img", 3, 40), step=1,
                          settings=TraceSettings(max_feature_nodes=40))
    intervention = CircuitIntervention.for_call(model.double_blocks, transcoders, call, graph)
    simplified = simplify_circuit(intervention, SimplifySettings(max_features=24, tolerance=0.0, method="influence"))
    path = tmp_path_factory.mktemp("groups") / "groups.html"
    return write_report(path, "groups", [("circuit", '<div data-diffract-view="circuit" style="height:640px"></div>')],
                        {"circuit": circuit_payload(simplified)}, standalone_script())


def drawn_members(page, supernode: str) -> int:
    """How many of a supernode's members are drawn as nodes of their own (or stand for it)."""
    return page.evaluate(f"""(() => {{ const v = {VIEW}; const s = v.supernodes.find((x) => x.id === {supernode!r});
        return s.members.filter((id) => v.drawn[v.circuit.byId.get(id)]).length; }})()""")


def test_supernodes_fold_into_one_node_and_unfold_on_click(page, report, artifacts) -> None:
    page.goto(report.as_uri())
    page.wait_for_function(f"window.diffract && {VIEW} && {VIEW}.redraws.length > 0")
    roots = page.evaluate(f"{VIEW}.supernodes.filter((s) => s.parent === null).map((s) => s.id)")
    assert roots, "the simplified circuit has supernodes"
    assert page.evaluate(f"{VIEW}.counts.nodes") == page.evaluate(f"{VIEW}.circuit.nodes.length"), "shown whole"
    assert "preservation" in page.locator(".dfx-counts").inner_text()
    assert all(drawn_members(page, root) == 1 for root in roots), "a folded supernode is one node"
    root = max(roots, key=lambda r: page.evaluate(f"{VIEW}.supernodes.find((s) => s.id === {r!r}).members.length"))
    drawn_before = page.evaluate(f"{VIEW}.drawn.reduce((a, b) => a + b, 0)")
    stand_in = page.evaluate(f"""(() => {{ const v = {VIEW}; const s = v.supernodes.find((x) => x.id === {root!r});
        return s.members.map((id) => v.circuit.byId.get(id)).find((i) => v.drawn[i]); }})()""")
    page.locator("[data-diffract-view=circuit]").screenshot(path=str(artifacts / "circuit-groups-folded.png"))
    point = page.evaluate(f"{VIEW}.clientPoint({stand_in})")
    page.mouse.click(point["x"], point["y"])
    page.wait_for_function(f"{VIEW}.state.expanded.includes({root!r})")
    assert drawn_members(page, root) > 1
    assert page.evaluate(f"{VIEW}.drawn.reduce((a, b) => a + b, 0)") > drawn_before
    children = page.evaluate(f"{VIEW}.supernodes.filter((s) => s.parent === {root!r}).map((s) => s.id)")
    assert all(drawn_members(page, child) == 1 for child in children), "inner supernodes stay folded"
    page.locator("[data-diffract-view=circuit]").screenshot(path=str(artifacts / "circuit-groups-unfolded.png"))
    page.locator("[data-diffract-view=circuit] .dfx-pins button", has_text="fold").first.click()
    page.wait_for_function(f"{VIEW}.state.expanded.length === 0")
    assert drawn_members(page, root) == 1
    assert page.evaluate(f"{VIEW}.drawn.reduce((a, b) => a + b, 0)") == drawn_before
