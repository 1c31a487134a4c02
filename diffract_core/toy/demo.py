"""`python -m diffract_core demo --out DIR`: the whole pipeline on the embedded toy, in under a minute on a CPU.

Sample a grid of held-out prompts with the transcoders (and the SAEs) recording, score binding,
take binding errors, trace the circuit of the wrong colour inside the wrongly coloured object,
steer it the way the binding benchmark found best, and, on the same error at the same dose,
standard SAE steering; write DIR/report.html (the fix first, then the benchmark's verdict, the
feature step by step, the circuit, the grid) and DIR/circuit.json.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..atlas.cards import feature_labels
from ..attribution.serialize import graph_to_dict
from ..features import FeatureRef, parse_features
from ..recording import FeatureRecording
from ..render.heatmaps import blend
from ..render.images import png_data_uri
from ..spatial import token_map_to_image
from ..transcoders.transcoder_set import TranscoderSet
from ..viewer import check_viewer_files, circuit_payload, circuit_refs, heatmap_payload, standalone_script
from .binding_benchmark import (
    ArmResult,
    BenchmarkSettings,
    ErrorCase,
    Grid,
    arm_named,
    collect_cases,
    grid_seeds,
    prepare_cases,
    run_arm,
    top_refs,
)
from .embedded import ASSETS, load_toy, open_toy_saes, open_toy_transcoders
from .generate import STEPS, generate
from .model import ToyModel
from .repair import SteeringOutcome, compare
from .report import figure, table, write_report
from .scenes import USUAL_COLOURS, held_out_prompts

BENCHMARK_RESULTS = ASSETS / "binding-benchmark.json"
SAE_ARM = "SAE selective"


@dataclass(frozen=True)
class DemoSettings:
    images: int = 48  # held-out prompts in the grid, one seed each
    seed: int = 0  # the grid's prompt choice and noise
    max_errors: int = 8  # binding errors traced and steered (the first the circuit fixes is shown)
    benchmark: BenchmarkSettings = field(default_factory=lambda: BenchmarkSettings(batch=64))


@dataclass
class DemoResult:
    out: Path
    report: Path
    grid: Grid
    arm: str  # the circuit arm the demo steers with
    dose: float
    cases: list[ErrorCase] = field(default_factory=list)
    outcomes: dict[str, list[SteeringOutcome]] = field(default_factory=dict)  # arm -> per case
    shown: int | None = None  # index into cases
    seconds: dict[str, float] = field(default_factory=dict)


def benchmark_results(path: Path = BENCHMARK_RESULTS) -> dict[str, Any] | None:
    """The committed figures of `benchmarks/toy_binding.py` (None if they are not there)."""
    return json.loads(path.read_text()) if path.is_file() else None


def best_circuit_arm(results: dict[str, Any] | None) -> tuple[str, float]:
    """The circuit arm with the highest fix rate at the benchmark's matched dose, and that dose
    (Steer Circuit's path at full ablation when no benchmark figures exist)."""
    if results is None:
        return "circuit", 1.0
    rows = {name: row for name, row in results["arms"].items() if name.startswith("circuit") and not math.isnan(row["fixed"])}
    name = max(rows, key=lambda n: rows[n]["fixed"])
    return name, float(rows[name]["dose"])


def _graphs_for(arm: str) -> tuple[str, ...]:
    """The circuits an arm steers, and the wrong colour's, which the report shows."""
    return ("wrong", *(("contrast",) if "contrastive" in arm else ()), *(("per step",) if "per step" in arm else ()))


def run_demo(out: Path, settings: DemoSettings = DemoSettings(), *, model: ToyModel | None = None,
             transcoders: TranscoderSet | None = None, saes: TranscoderSet | None = None) -> DemoResult:
    """The demo with the embedded toy and its dictionaries (or the given ones)."""
    check_viewer_files()  # the report needs them: fail now, not after sampling
    out.mkdir(parents=True, exist_ok=True)
    clock = _Clock()
    model = model or load_toy()
    releases = {"transcoders": transcoders or open_toy_transcoders(), "saes": saes or open_toy_saes()}
    bench = settings.benchmark
    results = benchmark_results()
    arm_name, dose = best_circuit_arm(results)
    sae_dose = float(results["arms"][SAE_ARM]["dose"]) if results else dose
    prompts = held_out_prompts(settings.images, seed=settings.seed)
    graphs = _graphs_for(arm_name)
    steps = frozenset({bench.step, *(bench.per_step if "per step" in graphs else ())})
    grid = collect_cases(model, releases, prompts, grid_seeds(len(prompts), settings.seed), bench, log=lambda _: None,
                         keep_steps=steps)
    clock.lap("sample, record and score the grid")

    # Errors where the other object came out right first: one steered object is then a whole fix.
    cases = sorted(grid.cases, key=lambda c: not grid.scores[c.error.index].objects[
        1 - [o.expected for o in grid.scores[c.error.index].objects].index((c.error.intended, c.error.shape))].right)
    cases = cases[: settings.max_errors]
    result = DemoResult(out, out / "report.html", grid, arm_name, dose, cases, seconds=clock.laps)
    if not cases:
        result.report = write_report(out / "report.html", "DifFRACT demo on the toy FLUX",
                                     [("No binding error", ("<p>Every held-out prompt came out right for these seeds; "
                                                            "try another <code>--seed</code>.</p>"))],
                                     {"settings": asdict(settings)})
        return result
    prepare_cases(model, releases["transcoders"], cases, grid.stats, bench, graphs=graphs)
    clock.lap(f"choose features and trace {len(cases)} circuits")

    typical = {key: s.on_colour() for key, s in grid.stats.items()}
    steered: dict[str, ArmResult] = {}
    for name, arm_dose in ((arm_name, dose), (SAE_ARM, sae_dose)):
        arm = arm_named(name)
        steered[name] = run_arm(model, releases, arm, cases, BenchmarkSettings(**{**asdict(bench), "doses": (arm_dose,)}),
                                typical, keep_images=True)
        result.outcomes[name] = [compare(c.before, image, c.error) for c, image in zip(cases, steered[name].images[0])]
    clock.lap("steer: the circuit and the SAE features, every error")
    fixed = [i for i, o in enumerate(result.outcomes[arm_name]) if o.fixed]
    result.shown = fixed[0] if fixed else 0
    result.report = _write(out, settings, result, model, releases["transcoders"], steered, results, sae_dose, clock)
    return result


def _write(out: Path, settings: DemoSettings, result: DemoResult, model: ToyModel, transcoders: TranscoderSet,
           steered: dict[str, ArmResult], results: dict[str, Any] | None, sae_dose: float, clock: _Clock) -> Path:
    assert result.shown is not None
    case = result.cases[result.shown]
    graph = case.graphs["wrong"]
    ref = parse_features(graph.metadata["target"]["feature"])[0]
    # The heatmaps need every step of this image's recording: sample it again with their sites recorded.
    shown = [ref, *[r for r in top_refs(graph, 6, stream="img") if r != ref][:5]]  # and the circuit's strongest
    recording = FeatureRecording(sites=tuple(dict.fromkeys(r.site for r in shown)), k=settings.benchmark.record_k)
    generate(model, [case.error.prompt], case.noise, transcoders=transcoders, recording=recording)
    sections = [
        ("The fix" if result.outcomes[result.arm][result.shown].fixed else "The error, and steering that does not fix it",
         _fix_html(case, result, steered, sae_dose)),
        ("Which steering fixes binding errors? The benchmark", _benchmark_html(results)),
        ("Why: the wrong colour's feature, step by step", _heatmaps_html(recording, ref, case)),
        ("Its circuit", _circuit_html(graph, feature_labels(transcoders.atlas, circuit_refs(graph)))),
        ("The grid", _grid_html(result.grid, [c.error.index for c in result.cases], settings.seed)),
        ("Every error the demo steered", _all_html(result)),
    ]
    atlas = transcoders.atlas  # the shipped toy atlas: the features' labels and top examples
    payload = circuit_payload(graph, atlas)
    (out / "circuit.json").write_text(json.dumps(graph_to_dict(graph, feature_labels(atlas, circuit_refs(graph)))) + "\n")
    before_uri = png_data_uri(case.before)
    data: dict[str, Any] = {
        "settings": asdict(settings), "arm": result.arm, "dose": result.dose,
        "grid": {"images": len(result.grid.prompts), "binding_errors": result.grid.binding_error_rate},
        "error": case.error.describe(), "feature": str(ref), "circuit": payload, "viewer": {"image": before_uri},
        "heatmaps": heatmap_payload(recording, shown, recording.steps, image=before_uri,
                                    atlas=atlas),
        "outcomes": {name: [asdict(o) | {"precision": o.precision} for o in rows] for name, rows in result.outcomes.items()},
    }
    clock.lap("write the report")
    sections.append(("Timings", table(["phase", "seconds"], [(k, f"{v:.1f}") for k, v in clock.laps.items()])))
    return write_report(out / "report.html", "DifFRACT demo on the toy FLUX", sections, data, standalone_script())


class _Clock:
    def __init__(self) -> None:
        self.laps: dict[str, float] = {}
        self.start = time.perf_counter()

    def lap(self, name: str) -> None:
        now = time.perf_counter()
        self.laps[name] = now - self.start
        self.start = now


def _pct(value: float) -> str:
    return "n/a" if value is None or math.isnan(value) else f"{100 * value:.1f} %"


def _fix_html(case: ErrorCase, result: DemoResult, steered: dict[str, ArmResult], sae_dose: float) -> str:
    assert result.shown is not None
    error = case.error
    circuit, sae = result.outcomes[result.arm][result.shown], result.outcomes[SAE_ARM][result.shown]
    verdict = lambda o: "fixed" if o.fixed else "not fixed"
    region = case.before * (0.35 + 0.65 * error.region)
    figures = (figure(case.before, "as generated", 8) + figure(steered[result.arm].images[0][result.shown],
               f"{result.arm} (dose {result.dose:.2f}): {verdict(circuit)}", 8)
               + figure(steered[SAE_ARM].images[0][result.shown], f"{SAE_ARM} (dose {sae_dose:.2f}): {verdict(sae)}", 8)
               + figure(region, "the object (where the feature is traced)", 4))
    usual = ", ".join(f"{s}s are usually {' or '.join(c)}" for s, c in USUAL_COLOURS.items())
    return (f"<p class='bad'>{error.describe()}.</p>"
            f"<p>The toy never saw this pair of objects in training ({usual}), so it drew the {error.shape} in the "
            f"colour the words usually bind to. The {error.drawn} feature that fires in the {error.shape} was traced "
            f"back through the model; steering its circuit ({result.arm}) from the same noise gives the middle "
            f"image. The right one is standard SAE steering (the SAE features most selective for {error.drawn} in "
            f"the object) at the dose the benchmark matched to the circuit's change of the object.</p>" + figures
            + _outcome_table([(result.arm, circuit), (SAE_ARM, sae)]))


def _benchmark_html(results: dict[str, Any] | None) -> str:
    if results is None:
        return ("<p>No benchmark figures ship with this copy: run <code>python benchmarks/toy_binding.py --json "
                f"{BENCHMARK_RESULTS.name}</code>.</p>")
    arms = results["arms"]
    matched = {name: row for name, row in arms.items() if row["matched"] and not math.isnan(row["fixed"])}
    winner = max(matched, key=lambda n: matched[n]["fixed"])
    best_circuit = max((n for n in matched if n.startswith("circuit")), key=lambda n: matched[n]["fixed"])
    test = results["tests"].get(f"{best_circuit} vs {SAE_ARM}")
    if matched[winner]["ci_low"] > 0:
        verdict = (f"<p><b>At the same change inside the object, {winner} fixed the most binding errors: "
                   f"{_pct(matched[winner]['fixed'])} (95 % interval {_pct(matched[winner]['ci_low'])} to "
                   f"{_pct(matched[winner]['ci_high'])}).</b> ")
    elif matched[winner]["fixed"] > 0:
        verdict = (f"<p><b>No steering reliably fixed binding errors at the same change inside the object: the "
                   f"highest fix rate, {winner}'s, is {_pct(matched[winner]['fixed'])} (95 % interval "
                   f"{_pct(matched[winner]['ci_low'])} to {_pct(matched[winner]['ci_high'])}).</b> ")
    else:
        verdict = ("<p><b>No steering fixed a binding error at the same change inside the object: every arm, the "
                   "circuit's included, is at 0 %.</b> ")
    if test is not None:
        better = test["ci_low"] > 0
        verdict += (f"The best circuit arm ({best_circuit}) against standard SAE steering: "
                    f"{100 * test['difference']:+.1f} points (95 % interval {100 * test['ci_low']:+.1f} to "
                    f"{100 * test['ci_high']:+.1f}, p = {test['p']:.3f}): "
                    + ("circuit steering wins." if better else "circuit steering does not beat SAE steering here.")
                    + "</p>")
    rows = [(name + (f" (nothing to steer for {row['nothing_to_steer']} errors)" if row.get("nothing_to_steer") else ""),
             _pct(row["fixed"]), f"{_pct(row['ci_low'])} to {_pct(row['ci_high'])}",
             f"{row['change_inside']:.3f}", f"{row['change_outside']:.4f}", _pct(row["object_right"]))
            for name, row in sorted(arms.items(), key=lambda kv: -(kv[1]["fixed"] if not math.isnan(kv[1]["fixed"]) else -1))]
    return (verdict + f"<p>{results['errors']} binding errors from {results['images']} held-out images (binding errors "
            f"in {_pct(results['binding_error_rate'])} of them; {_pct(results['shuffled_binding_error_rate'])} when "
            f"each image is scored against another image's prompt). Every arm steers each error from its own noise "
            f"at several doses, and is read where its mean change inside the object equals "
            f"{results['matched_change_inside']:.3f}; none and re-sample are as they are. Fixed: the object has the "
            f"prompt's colour over most of its shape, the other object is kept, and the rest of the image changes "
            f"by at most 0.03.</p>"
            + table(["arm", "fixed", "95 % interval", "change inside", "change outside", "object has its colour"], rows)
            + "<p>From <code>benchmarks/toy_binding.py</code> (committed figures, not this run).</p>")


def _heatmaps_html(recording: FeatureRecording, ref: FeatureRef, case: ErrorCase) -> str:
    assert recording.image_grid is not None
    maps = torch.stack([recording.feature_map(ref, step)[0] for step in recording.steps])
    peak = float(maps.max()) or 1.0
    pixels = case.before.permute(1, 2, 0)
    figures = "".join(
        figure(blend(pixels, token_map_to_image(m / peak, recording.image_grid, case.before.shape[1:]), 0.8),
               f"step {step} (sigma {recording.schedule[step]:.2f})", 4)
        for step, m in zip(recording.steps, maps)
    )
    colour = case.error.drawn
    return (f"<p><code>{ref}</code>: the image feature at double block {ref.layer} most selective for {colour} "
            f"objects across the grid that is active in this {case.error.shape}, on the generated image at every "
            f"step (one scale for all steps).</p>" + figures
            + "<p>The same maps, with the circuit's strongest image features, in the heatmap viewer:</p>"
            + '<div data-diffract-view="heatmaps" style="height:420px;max-width:560px"></div>')


def _circuit_html(graph: Any, labels: dict[str, str]) -> str:
    meta = graph.metadata
    rows = [(n.describe(), labels.get(n.feature_spec, "unclear"), f"{float(i):.3f}") for n, i in
            sorted(zip(graph.nodes, graph.influence().tolist()), key=lambda pair: -pair[1])[:12]
            if n.kind == "feature"]
    features = [n for n in graph.nodes if n.kind == "feature"]
    labelled = sum(n.feature_spec in labels for n in features)
    return (f"<p>Traced at step {meta['step']} (sigma {meta['sigma']:.3f}) over the object's region: "
            f"{len(graph.features())} features, {len(graph.edge_weights)} edges; replacement score "
            f"{meta['scores']['replacement']:.3f}, completeness {meta['scores']['completeness']:.3f}; {labelled} of "
            f"{len(features)} feature nodes carry a label from the toy's feature atlas. The full graph is "
            f"in <code>circuit.json</code>. Hover a node for its heatmap on the image, click to focus it, Ctrl/Cmd-click "
            f"to pin, G to group the pins, drag on the image to keep the features active there; pins, groups and "
            f"labels stay in this browser's storage.</p>"
            '<div data-diffract-view="circuit" style="height:640px"></div>'
            "<noscript>The interactive graph needs JavaScript.</noscript>"
            + table(["most influential features", "atlas label", "influence"], rows))


def _grid_html(grid: Grid, steered: list[int], seed: int) -> str:
    figures = "".join(
        figure(image, ("[steered] " if i in steered else "") + f"{prompt} ("
               + ("binding error" if s.binding_error else "ok" if s.score == 1 else f"{s.correct}/{len(s.objects)} right")
               + ")", scale=3)
        for i, (prompt, image, s) in enumerate(zip(grid.prompts, grid.images, grid.scores))
    )
    exact = sum(s.score == 1 for s in grid.scores) / len(grid.scores)
    return (f"<p>{len(grid.prompts)} held-out prompts (each object in the other's usual colour), one noise seed each, "
            f"{STEPS} sampling steps. A binding error is an object drawn in the other object's colour, or in both "
            "colours mixed.</p>"
            + table(["images", "all objects right", "binding errors", "binding errors, shuffled prompts (control)"],
                    [(len(grid.prompts), _pct(exact), _pct(grid.binding_error_rate),
                      _pct(grid.shuffled_binding_error_rate(seed)))]) + figures)


def _outcome_table(rows: list[tuple[str, SteeringOutcome]]) -> str:
    return table(["steering", "fixed", "objects right", "share of the object in its colour", "change inside the object",
                  "change elsewhere"],
                 [(name, "yes" if o.fixed else "no", f"{o.score_before:.2f} -> {o.score_after:.2f}",
                   _pct(o.colour_share), f"{o.change_inside:.3f}", f"{o.change_outside:.4f}") for name, o in rows])


def _all_html(result: DemoResult) -> str:
    rows = [(f"{case.error.describe()} [{case.graphs['wrong'].metadata['target']['feature']}]: {name}", outcomes[i])
            for i, case in enumerate(result.cases) for name, outcomes in result.outcomes.items()]
    counts = ", ".join(f"{name} {sum(o.fixed for o in rows_)}" for name, rows_ in result.outcomes.items())
    return f"<p>Errors fixed, of {len(result.cases)}: {counts}.</p>" + _outcome_table(rows)


def summary(result: DemoResult) -> str:
    lines = [f"report: {result.report}",
             f"grid: {len(result.grid.prompts)} held-out images, binding errors {result.grid.binding_error_rate:.3f}"]
    if result.shown is None:
        lines.append("no binding error in this grid")
    else:
        counts = ", ".join(f"{name} {sum(o.fixed for o in rows)}" for name, rows in result.outcomes.items())
        lines.append(f"binding errors traced and steered: {len(result.cases)}; fixed: {counts}")
        lines.append(f"shown: {result.cases[result.shown].error.describe()}")
    lines.append("time: " + ", ".join(f"{k} {v:.1f} s" for k, v in result.seconds.items()))
    return "\n".join(lines)
