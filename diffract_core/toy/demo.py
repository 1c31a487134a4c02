"""`python -m diffract_core demo --out DIR`: the whole pipeline on the embedded toy, in minutes on a CPU.

Generate a grid of held-out prompts with every double-block MLP recorded, score binding, pick a
binding error, trace the circuit of the wrong colour inside the wrongly coloured object, steer
that circuit, re-score, and write DIR/report.html (with the images, the circuit's JSON and PNG).
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..attribution.serialize import graph_to_dict
from ..features import FeatureRef
from ..recording import FeatureRecording
from ..render.heatmaps import blend
from ..spatial import token_map_to_image
from ..transcoders.transcoder_set import TranscoderSet
from ..viewer import heatmap_payload, standalone_script
from .binding import score_prompt_set
from .embedded import load_toy, open_toy_transcoders
from .generate import STEPS, generate, toy_noise
from .model import ToyModel
from .repair import BindingError, Repair, RepairSettings, SteeringOutcome, binding_errors, colour_selectivity, repair
from .report import figure, png_data_uri, table, write_report
from .scenes import held_out_prompts


@dataclass(frozen=True)
class DemoSettings:
    images: int = 96  # held-out prompts in the grid, one seed each
    seed: int = 0  # the grid's prompt choice and noise
    max_errors: int = 24  # binding errors traced and steered (the first fixed one is shown in full)
    top_k: int = 16  # features recorded per token
    repair: RepairSettings = field(default_factory=RepairSettings)


@dataclass
class DemoResult:
    out: Path
    report: Path
    grid_score: float
    repairs: list[Repair] = field(default_factory=list)
    shown: Repair | None = None
    seconds: dict[str, float] = field(default_factory=dict)


def run_demo(out: Path, settings: DemoSettings = DemoSettings(), *, model: ToyModel | None = None,
             transcoders: TranscoderSet | None = None) -> DemoResult:
    """The demo with the embedded toy and its transcoders (or the given ones)."""
    out.mkdir(parents=True, exist_ok=True)
    clock = _Clock()
    model = model or load_toy()
    transcoders = transcoders or open_toy_transcoders()
    fix = settings.repair
    prompts = held_out_prompts(settings.images, seed=settings.seed)
    noise = toy_noise([settings.seed * 10_000 + i for i in range(len(prompts))])
    recording = FeatureRecording(sites=tuple(transcoders.sites), k=settings.top_k, keep_input_steps=frozenset({fix.step}))
    images = generate(model, prompts, noise, transcoders=transcoders, recording=recording)
    grid = score_prompt_set(zip(prompts, images))
    clock.lap("generate and record the grid")

    errors = binding_errors(grid.per_image)[: settings.max_errors]
    sections = [("What this is", _intro(settings)), ("1. The grid and its binding score", _grid_html(prompts, images, grid))]
    data: dict[str, Any] = {"settings": asdict(settings), "grid": {"score": grid.score, "exact": grid.exact,
                                                                  "binding_errors": grid.binding_errors}}
    if not errors:
        advice = "<p>Every held-out prompt came out right for these seeds; try another <code>--seed</code>.</p>"
        sections.append(("2. No binding error", advice))
        report = write_report(out / "report.html", "DifFRACT demo on the toy FLUX", sections, data)
        return DemoResult(out, report, grid.score, seconds=clock.laps)

    selectivity = colour_selectivity(recording, grid.per_image, fix.layer, fix.step)
    control = torch.Generator().manual_seed(settings.seed)
    repairs = [repair(model, transcoders, recording, error, selectivity, noise[error.index : error.index + 1],
                      images[error.index], fix, control=control) for error in errors]
    clock.lap(f"trace and steer {len(repairs)} binding errors")

    shown = next((r for r in repairs if r.outcomes["circuit"].fixed),
                 next((r for r in repairs if any(o.fixed for o in r.outcomes.values())), repairs[0]))
    ref = FeatureRef("img", fix.layer, shown.feature)
    before = images[shown.error.index]
    before_uri = png_data_uri(before)
    sections += [
        ("2. The binding error", _error_html(shown.error, before, ref, len(repairs))),
        ("3. The wrong colour's feature, step by step", _heatmaps_html(recording, ref, shown.error.index, before)),
        ("4. Its circuit", _circuit_html(shown.graph)),
        ("5. Steering it", _steering_html(before, shown, fix)),
        ("6. Every binding error of the grid", _all_repairs_html(repairs)),
    ]
    graph_data = graph_to_dict(shown.graph)
    (out / "circuit.json").write_text(json.dumps(graph_data) + "\n")
    data |= {"error": asdict(shown.error) | {"region": None}, "feature": str(ref), "circuit": graph_data,
             "viewer": {"image": before_uri},
             "heatmaps": heatmap_payload(recording, _heatmap_features(shown.graph, ref), recording.steps, image=before_uri,
                                         batch_index=shown.error.index),
             "repairs": [{"error": r.error.describe(), "feature": r.feature,
                          "outcomes": {name: asdict(o) | {"precision": o.precision} for name, o in r.outcomes.items()}}
                         for r in repairs]}
    sections.append(("Timings", table(["phase", "seconds"], [(k, f"{v:.1f}") for k, v in clock.laps.items()])))
    report = write_report(out / "report.html", "DifFRACT demo on the toy FLUX", sections, data, standalone_script())
    return DemoResult(out, report, grid.score, repairs, shown, clock.laps)


def _heatmap_features(graph: Any, target: FeatureRef, extra: int = 5) -> list[FeatureRef]:
    """The target and the circuit's most influential image features, for the heatmap viewer."""
    influence = graph.influence()
    ranked = sorted((i for i, n in enumerate(graph.nodes) if n.kind == "feature" and n.stream == "img"),
                    key=lambda i: -float(influence[i]))
    refs = [target]
    for i in ranked:
        ref = FeatureRef("img", graph.nodes[i].layer, graph.nodes[i].feature)
        if ref not in refs:
            refs.append(ref)
        if len(refs) > extra:
            break
    return refs


class _Clock:
    def __init__(self) -> None:
        self.laps: dict[str, float] = {}
        self.start = time.perf_counter()

    def lap(self, name: str) -> None:
        now = time.perf_counter()
        self.laps[name] = now - self.start
        self.start = now


def _intro(settings: DemoSettings) -> str:
    return (f"<p>The embedded toy FLUX (the FLUX.1 architecture at 3 M parameters) draws coloured shapes, with the "
            f"right colours but ragged outlines. It never saw the held-out pairs (yellow circle, purple square, "
            f"orange triangle) in training. {settings.images} prompts naming them are sampled in {STEPS} steps with "
            f"transcoders on all 8 double-block MLPs recording every step; a binding error is a shape the prompt "
            f"asked for drawn in another colour.</p>")


def _grid_html(prompts: list[str], images: torch.Tensor, grid: Any) -> str:
    figures = "".join(
        figure(image, f"{prompt} ({'ok' if s.score == 1 else f'{s.correct}/{len(s.expected)}'})", scale=3)
        for prompt, image, s in zip(prompts, images, grid.per_image)
    )
    return (table(["images", "binding score", "all objects right", "binding errors"],
                  [(grid.images, f"{grid.score:.3f}", f"{grid.exact:.3f}", f"{grid.binding_errors:.3f}")]) + figures)


def _error_html(error: BindingError, before: torch.Tensor, ref: FeatureRef, traced: int) -> str:
    region = before * (0.35 + 0.65 * error.region)
    return (f"<p class='bad'>{error.describe()}.</p>" + figure(before, "as generated", 8)
            + figure(region, "the object's region (the trace target)", 8)
            + f"<p>Target: <code>{ref}</code>, the image feature at double block {ref.layer} that fires most "
              f"selectively on {error.drawn} objects across the grid and is active in this object. The demo traced "
              f"and steered {traced} binding error(s) of the grid (section 6) and shows the first that circuit "
              f"steering fixed (else the first that any steering fixed, else the first).</p>")


def _heatmaps_html(recording: FeatureRecording, ref: FeatureRef, index: int, image: torch.Tensor) -> str:
    assert recording.image_grid is not None
    maps = torch.stack([recording.feature_map(ref, step)[index] for step in recording.steps])
    peak = float(maps.max()) or 1.0
    pixels = image.permute(1, 2, 0)
    figures = "".join(
        figure(blend(pixels, token_map_to_image(m / peak, recording.image_grid, image.shape[1:]), 0.8),
               f"step {step} (sigma {recording.schedule[step]:.2f})", 4)
        for step, m in zip(recording.steps, maps)
    )
    return (f"<p><code>{ref}</code> on the generated image at every step (one scale for all steps).</p>" + figures
            + "<p>The same maps, with the circuit's strongest image features, in the heatmap viewer:</p>"
            + '<div data-diffract-view="heatmaps" style="height:420px;max-width:560px"></div>')


def _circuit_html(graph: Any) -> str:
    meta = graph.metadata
    faith = meta.get("faithfulness", {})
    rows = [(n.describe(), f"{float(i):.3f}") for n, i in
            sorted(zip(graph.nodes, graph.influence().tolist()), key=lambda pair: -pair[1])[:12]
            if n.kind == "feature"]
    return (f"<p>Traced at step {meta['step']} (sigma {meta['sigma']:.3f}) over the object's region: "
            f"{len(graph.features())} features, {len(graph.edge_weights)} edges; replacement score "
            f"{meta['scores']['replacement']:.3f}, completeness {meta['scores']['completeness']:.3f}; "
            f"faithfulness (ablating the top features in the real model): Spearman {faith.get('spearman', float('nan')):.2f}. "
            f"The full graph is in <code>circuit.json</code>. Hover a node for its heatmap on the image, click to focus "
            f"it, Ctrl/Cmd-click to pin, G to group the pins, drag on the image to keep the features active there; "
            f"pins, groups and labels stay in this browser.</p>"
            '<div data-diffract-view="circuit" style="height:640px"></div>'
            "<noscript>The interactive graph needs JavaScript.</noscript>"
            + table(["most influential features", "influence"], rows))


def _steering_html(before: torch.Tensor, shown: Repair, fix: RepairSettings) -> str:
    figures = figure(before, "before", 8) + "".join(figure(image, f"after: {name}", 8) for name, image in shown.after.items())
    where = "at the traced step" if fix.steps == "traced step" else "at every step"
    return (f"<p>The circuit's top {fix.top} features at the tokens where they fired (circuit), its top {fix.top} "
            f"image features inside the object only (circuit in object), the target feature alone inside the object "
            f"(single feature), or {fix.top} random features active in the object (the control), scaled by "
            f"{fix.strength:g} {where}; same noise, same prompt.</p>" + figures + _outcome_table([(name, o) for name, o in shown.outcomes.items()]))


def _outcome_table(rows: list[tuple[str, SteeringOutcome]]) -> str:
    return table(["steering", "fixed", "binding score", "mean change inside the object", "mean change elsewhere",
                  "precision"],
                 [(name, "yes" if o.fixed else "no", f"{o.score_before:.2f} -> {o.score_after:.2f}",
                   f"{o.change_inside:.3f}", f"{o.change_outside:.3f}", f"{o.precision:.2f}") for name, o in rows])


def fixed_counts(repairs: list[Repair]) -> dict[str, int]:
    return {name: sum(r.outcomes[name].fixed for r in repairs) for name in repairs[0].outcomes}


def _all_repairs_html(repairs: list[Repair]) -> str:
    rows = [(f"{r.error.describe()} [{r.graph.metadata['target']['feature']}]: {name}", o)
            for r in repairs for name, o in r.outcomes.items()]
    counts = ", ".join(f"{name} {count}" for name, count in fixed_counts(repairs).items())
    return (f"<p>Errors fixed, of {len(repairs)}: {counts}. The random features are the control: as many features "
            f"active in the object, drawn at random and steered the same way.</p>" + _outcome_table(rows))


def summary(result: DemoResult) -> str:
    lines = [f"report: {result.report}", f"grid binding score: {result.grid_score:.3f}"]
    if result.shown is None:
        lines.append("no binding error in this grid")
    else:
        counts = ", ".join(f"{name} {count}" for name, count in fixed_counts(result.repairs).items())
        lines.append(f"binding errors traced and steered: {len(result.repairs)}; fixed by steering: {counts}")
        lines.append(f"shown: {result.shown.error.describe()}")
        for name, outcome in result.shown.outcomes.items():
            lines.append(f"  steered ({name}): fixed {outcome.fixed}, score {outcome.score_before:.2f} -> "
                         f"{outcome.score_after:.2f}, precision {outcome.precision:.2f}")
    lines.append("time: " + ", ".join(f"{k} {v:.1f} s" for k, v in result.seconds.items()))
    return "\n".join(lines)
