"""`python -m diffract_core demo --out DIR`: the whole pipeline on the embedded toy, in under a minute on a CPU.

Sample a grid of held-out prompts with the transcoders (and the SAEs) recording, score binding,
take binding errors, trace the circuit of the wrong colour inside the wrongly coloured object,
steer it the way the binding benchmark found best, and, on the same error at the same dose,
standard SAE steering; write DIR/report.html and DIR/circuit.json. The report tells the story
first (the error, before and after, what was steered and how, which steering won), then shows the
grid with its errors marked, the feature step by step, the circuit, the benchmark, every steered
error and a glossary of every figure it shows.
"""

from __future__ import annotations

import html
import json
import math
import os
import re
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..atlas.cards import feature_labels
from ..attribution.serialize import graph_to_dict
from ..attribution.steering import CircuitSteering
from ..errors import DestinationError
from ..features import FeatureRef
from ..file_writing import prepare_destination
from ..flux.sampling import flux_sigmas
from ..recording import FeatureRecording, Steering, SteeringSpec
from ..render.heatmaps import blend
from ..render.images import png_data_uri
from ..spatial import token_map_to_image
from ..transcoders.transcoder_set import TranscoderSet
from ..viewer import check_viewer_files, circuit_payload, circuit_refs, heatmap_payload, standalone_script
from .binding import MIN_SHAPE_IOU, MIXED, MOSTLY, BindingScore, ObjectScore
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
from .repair import OUTSIDE_LIMIT, WHOLE, BindingError, SteeringOutcome, compare
from .report import anchor, figure, glossary_html, table, term, write_report
from .scenes import USUAL_COLOURS, held_out_prompts

BENCHMARK_RESULTS = ASSETS / "binding-benchmark.json"
SAE_ARM = "SAE selective"
REPORT_FILES = ("report.html", "circuit.json")
TITLE = "DifFRACT demo on the toy FLUX"
BIG = 10  # the before / after images: 32 px shown at 320 px
THUMB = 3  # the grid's images: 96 px

GLOSSARY: dict[str, str] = {
    "binding error": (
        f"an object of a two-object prompt drawn in its own shape (its pixels overlap the ideal drawing "
        f"of that shape by at least {MIN_SHAPE_IOU} intersection over union) but with at least "
        f"{100 * MOSTLY:.0f} % of its pixels in the other object's colour, "
        f"or with at least {100 * MIXED:.0f} % of them "
        f"in each of the two colours (mixed). An object's pixels are the coloured pixels of its half of the "
        "image, each taking the nearest of the six palette colours."
    ),
    "binding errors": "the share of the images that hold at least one binding error.",
    "all objects right": (
        "the share of the images in which every object of the prompt is right: drawn in its own "
        f"shape, with at least {100 * MOSTLY:.0f} % of its pixels in its own colour, and no binding error."
    ),
    "binding errors, shuffled prompts (control)": (
        "the share of the images with a binding error when each image is scored against another image's prompt (a "
        "seeded shuffle that never gives an image a prompt of its own text): what a model that ignored which colour "
        "goes with which shape would score."
    ),
    "dose": (
        "how hard an arm steers: d multiplies the steered features by 1 - d (d = 1 removes them, d > 1 reverses "
        "them); arms that raise features add d times their typical value on objects of the prompt's colour. The demo "
        "steers each arm at the dose at which, in the benchmark, its mean change inside the object reached the "
        "level common to all arms (the matched dose)."
    ),
    "fixed": (
        f"after steering, the object is right (its own shape, at least {100 * MOSTLY:.0f} % of its pixels in the "
        f"prompt's colour, no binding error) and in the same half of the image, the prompt's colour covers at "
        f"least {100 * WHOLE:.0f} % of the ideal drawing of its shape, the other object is still right if it was "
        f"right before, and the change elsewhere is at most {OUTSIDE_LIMIT}."
    ),
    "objects right": (
        "how many of the prompt's two objects are right (own shape, mostly own colour, no binding "
        "error), in the generated image → in the steered one."
    ),
    "share of the object in its colour": "after steering, the share of the object's pixels that have the colour the "
    "prompt gave it.",
    "change inside the object": (
        "the mean absolute difference between the steered and the generated image (RGB "
        "channels in 0..1) over the object's pixels as first drawn and its ideal shape."
    ),
    "change elsewhere": "the same mean over every other pixel of the image.",
    "step": f"a sampling step, 0 to {STEPS - 1}: the toy draws an image in {STEPS} steps, from noise to the picture.",
    "sigma": "the noise level at a step: 1 is pure noise, 0 the finished image (the model receives t = sigma).",
    "influence": (
        "a node's total effect on the traced feature: the sum, over every path from the node to it, of the "
        "product of the edges' normalised weights (an edge's |weight| over the total |weight| into its "
        "target node)."
    ),
    "replacement score": (
        "of the influence that reaches the traced feature from sources, the share that comes from "
        "the inputs and constants rather than from error nodes (what the transcoders do not "
        "explain) or from active features left out of the graph."
    ),
    "completeness": (
        "per node, the share of its direct inputs (by |weight|) that come from features, inputs and "
        "constants rather than from error or left-out nodes, averaged over the nodes weighted by their "
        "influence."
    ),
    "fix rate": (
        "the share of the benchmark's errors fixed, read where the arm's mean change inside the object equals "
        "the level common to all arms (linear between the doses it tried); none and re-sample as measured."
    ),
    "95 % interval": "2.5th to 97.5th percentile over bootstrap resamples of the errors.",
    "change inside": "the mean change inside the object at which the fix rate is read (as measured for none and "
    "re-sample).",
    "change outside": "the mean change elsewhere at that point.",
    "object has its colour": (
        f"the share of the errors after which at least {100 * MOSTLY:.0f} % of the object's pixels have "
        "the prompt's colour, fixed or not."
    ),
}


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
    rows = {
        name: row
        for name, row in results["arms"].items()
        if name.startswith("circuit") and not math.isnan(row["fixed"])
    }
    name = max(rows, key=lambda n: rows[n]["fixed"])
    return name, float(rows[name]["dose"])


def prepare_report_folder(out: Path, what: str = "the demo's output folder") -> Path:
    """Create `out` (and its parents) for the report, or raise DestinationError naming what is in
    the way: a file where the folder should be, a read-only folder, or a folder (or a read-only
    file) where one of the report's files should be. `what` names the folder in the message."""
    prepare_destination(out, what)
    for name in REPORT_FILES:
        path = out / name
        if path.exists() and not path.is_file():
            raise DestinationError(
                f"{path} is not a file, and the demo writes its {name} there: move it away, or "
                "choose another output folder"
            )
        if path.exists() and not os.access(path, os.W_OK):
            raise DestinationError(
                f"{path} is read-only for this user, and the demo replaces it: make it writable, or "
                "choose another output folder"
            )
    return out


def _graphs_for(arm: str) -> tuple[str, ...]:
    """The circuits an arm steers, and the wrong colour's, which the report shows."""
    return ("wrong", *(("contrast",) if "contrastive" in arm else ()), *(("per step",) if "per step" in arm else ()))


def run_demo(
    out: Path,
    settings: DemoSettings = DemoSettings(),
    *,
    model: ToyModel | None = None,
    transcoders: TranscoderSet | None = None,
    saes: TranscoderSet | None = None,
) -> DemoResult:
    """The demo with the embedded toy and its dictionaries (or the given ones)."""
    prepare_report_folder(out)  # fail now, not after sampling
    check_viewer_files()
    clock = _Clock()
    model = model or load_toy()
    releases = {"transcoders": transcoders or open_toy_transcoders(), "saes": saes or open_toy_saes()}
    bench = settings.benchmark
    results = benchmark_results()
    arm_name, dose = best_circuit_arm(results)
    doses = {arm_name: dose, SAE_ARM: float(results["arms"][SAE_ARM]["dose"]) if results else dose}
    prompts = held_out_prompts(settings.images, seed=settings.seed)
    graphs = _graphs_for(arm_name)
    steps = frozenset({bench.step, *(bench.per_step if "per step" in graphs else ())})
    grid = collect_cases(
        model, releases, prompts, grid_seeds(len(prompts), settings.seed), bench, log=lambda _: None, keep_steps=steps
    )
    clock.lap("sample, record and score the grid")

    # Errors where the other object came out right first: one steered object is then a whole fix.
    cases = sorted(
        grid.cases,
        key=lambda c: (
            not grid.scores[c.error.index]
            .objects[
                1 - [o.expected for o in grid.scores[c.error.index].objects].index((c.error.intended, c.error.shape))
            ]
            .right
        ),
    )
    cases = cases[: settings.max_errors]
    result = DemoResult(out, out / "report.html", grid, arm_name, dose, cases, seconds=clock.laps)
    if not cases:
        result.report = write_report(
            out / "report.html",
            TITLE,
            [
                (
                    "No binding error",
                    ("<p>Every held-out prompt came out right for these seeds; try another <code>--seed</code>.</p>"),
                )
            ],
            {"settings": asdict(settings)},
        )
        return result
    prepare_cases(model, releases["transcoders"], cases, grid.stats, bench, graphs=graphs)
    clock.lap(f"choose features and trace {len(cases)} circuits")

    typical = {key: s.on_colour() for key, s in grid.stats.items()}
    steered: dict[str, ArmResult] = {}
    for name, arm_dose in doses.items():
        steered[name] = run_arm(
            model,
            releases,
            arm_named(name),
            cases,
            BenchmarkSettings(**{**asdict(bench), "doses": (arm_dose,)}),
            typical,
            keep_images=True,
        )
        result.outcomes[name] = [compare(c.before, image, c.error) for c, image in zip(cases, steered[name].images[0])]
    clock.lap("steer: the circuit and the SAE features, every error")
    fixed = [i for i, o in enumerate(result.outcomes[arm_name]) if o.fixed]
    result.shown = fixed[0] if fixed else 0
    shown = cases[result.shown]
    steering = {
        name: _Steered(
            arm_dose,
            steered[name].images[0][result.shown],
            arm_named(name).steer(shown, arm_dose, bench, typical)[0],
            releases[arm_named(name).release],
        )
        for name, arm_dose in doses.items()
    }
    result.report = _write(out, settings, result, model, releases["transcoders"], steering, results, clock)
    return result


@dataclass
class _Steered:
    """One arm on the shown error: its dose, the image it gave, what it changed, and the dictionary it steered."""

    dose: float
    image: torch.Tensor
    specs: list[Steering]
    release: TranscoderSet


def _write(
    out: Path,
    settings: DemoSettings,
    result: DemoResult,
    model: ToyModel,
    transcoders: TranscoderSet,
    steering: dict[str, _Steered],
    results: dict[str, Any] | None,
    clock: _Clock,
) -> Path:
    assert result.shown is not None
    case = result.cases[result.shown]
    graph = case.graphs["wrong"]
    ref = graph.target.ref
    # The heatmaps need every step of this image's recording: sample it again with their sites recorded.
    shown = [ref, *[r for r in top_refs(graph, 6, stream="img") if r != ref][:5]]  # and the circuit's strongest
    recording = FeatureRecording(sites=tuple(dict.fromkeys(r.site for r in shown)), k=settings.benchmark.record_k)
    generate(model, [case.error.prompt], case.noise, transcoders=transcoders, recording=recording)
    atlas = transcoders.atlas  # the shipped toy atlas: the features' labels and top examples
    labels = feature_labels(atlas, circuit_refs(graph))
    score = result.grid.scores[case.error.index]
    fixed_here = result.outcomes[result.arm][result.shown].fixed
    sections = [
        (
            "The binding error, and the fix" if fixed_here else "The binding error, and steering that did not fix it",
            _error_html(case, score, result, steering),
        ),
        (
            "What was steered, and how",
            _steering_html(case, ref, feature_labels(atlas, [ref]), graph, steering, settings.benchmark.k),
        ),
        ("Which steering won", _verdict_html(result, results)),
        ("The grid", _grid_html(result.grid, [c.error.index for c in result.cases], case.error.index, settings.seed)),
        ("Why: the wrong colour's feature, step by step", _heatmaps_html(recording, ref, case)),
        ("Its circuit", _circuit_html(graph, labels)),
        ("The benchmark: which steering fixes binding errors?", _benchmark_html(results)),
        ("Every error the demo steered", _all_html(result)),
    ]
    payload = circuit_payload(graph, atlas)
    (out / "circuit.json").write_text(json.dumps(graph_to_dict(graph, labels)) + "\n")
    before_uri = png_data_uri(case.before)
    data: dict[str, Any] = {
        "settings": asdict(settings),
        "arm": result.arm,
        "dose": result.dose,
        "grid": {"images": len(result.grid.prompts), "binding_errors": result.grid.binding_error_rate},
        "error": case.error.describe(),
        "feature": str(ref),
        "circuit": payload,
        "viewer": {"image": before_uri},
        "heatmaps": heatmap_payload(recording, shown, recording.steps, image=before_uri, atlas=atlas),
        "outcomes": {
            name: [asdict(o) | {"precision": o.precision} for o in rows] for name, rows in result.outcomes.items()
        },
    }
    clock.lap("write the report")
    sections += [
        ("Glossary", "<p>Every figure of this report, defined.</p>" + glossary_html(GLOSSARY)),
        (
            "Timings",
            "<p>Wall-clock seconds of each phase of this run.</p>"
            + table(["phase", "seconds"], [(k, f"{v:.1f}") for k, v in clock.laps.items()]),
        ),
    ]
    lead = _lead_html(case, result, results) + _contents([heading for heading, _ in sections])
    return write_report(out / "report.html", TITLE, sections, data, standalone_script(), lead=lead)


class _Clock:
    def __init__(self) -> None:
        self.laps: dict[str, float] = {}
        self.start = time.perf_counter()

    def lap(self, name: str) -> None:
        now = time.perf_counter()
        self.laps[name] = now - self.start
        self.start = now


def _pct(value: float) -> str:
    return "n/a" if value is None or math.isnan(value) else f"{100 * value:.1f}\u00a0%"  # no break before %


def _num(value: float, digits: int) -> str:
    return "n/a" if math.isnan(value) else f"{value:.{digits}f}"


def _g(text: str) -> str:
    return term(text, GLOSSARY)


def _badge(fixed: bool) -> str:
    return "<span class='badge good'>fixed</span>" if fixed else "<span class='badge bad'>not fixed</span>"


def _contents(headings: list[str]) -> str:
    return "<nav>Contents: " + "".join(f'<a href="#{anchor(h)}">{html.escape(h)}</a>' for h in headings) + "</nav>"


def _lead_html(case: ErrorCase, result: DemoResult, results: dict[str, Any] | None) -> str:
    error = case.error
    return (
        f"<p class='lead'>The toy was asked for <b>{html.escape(error.prompt)}</b>, and the {error.shape} "
        f"<b>{_went_wrong(error)}</b>: a {_g('binding error')}. DifFRACT traced the {error.drawn} "
        f"feature inside the {error.shape} back through the model and steered its circuit ({result.arm}); standard "
        f"SAE steering is the comparison.</p><p><b>Result.</b> {_run_verdict(result)} "
        f"{_benchmark_verdict(results)[0]}</p>"
    )


def _run_verdict(result: DemoResult) -> str:
    """Which arm fixed more of this run's errors, in a sentence."""
    fixed = {name: sum(o.fixed for o in rows) for name, rows in result.outcomes.items()}
    (first, a), (second, b) = sorted(fixed.items(), key=lambda kv: -kv[1])
    n = len(result.cases)
    if a == b == 0:
        return f"In this run neither steering fixed {'the error' if n == 1 else f'any of the {n} errors'} they steered."
    if a == b:
        return f"In this run {first} and {second} each fixed {a} of {n} steered errors: a tie."
    return f"In this run <b>{first} won</b>: it fixed {a} of {n} steered errors, {second} {b}."


def _went_wrong(error: BindingError) -> str:
    if error.kind == "other colour":
        return f"came out {error.drawn} instead of {error.intended}"
    return f"came out {error.intended} mixed with {error.drawn}"


def _drawn(obj: ObjectScore) -> str:
    """What the scorer found where an object of the prompt should be, e.g. 'a circle on the left, 100 % red'."""
    found = obj.found
    if found.colour is None:
        return f"nothing on the {found.slot}"
    colours = sorted(found.shares.items(), key=lambda kv: -kv[1])
    mix = " and ".join(f"{100 * share:.0f} % {colour}" for colour, share in colours if share >= MIXED) or (
        f"{100 * colours[0][1]:.0f} % {colours[0][0]}"
    )
    return f"a {found.shape or 'shape the scorer does not recognise'} on the {found.slot}, {mix}"


def _error_html(case: ErrorCase, score: BindingScore, result: DemoResult, steering: dict[str, _Steered]) -> str:
    assert result.shown is not None
    error = case.error
    other = next(o.expected[1] for o in score.objects if o.expected != (error.intended, error.shape))
    facts = (
        "<table class='facts'>"
        f"<tr><th>The prompt asked for</th><td>{html.escape(error.prompt)}</td></tr>"
        f"<tr><th>What came out</th><td>{'; '.join(_drawn(o) for o in score.objects)} (share of each object's "
        f"pixels in each colour)</td></tr>"
        f"<tr><th>The {_g('binding error')}</th><td class='bad'>the {error.shape} {_went_wrong(error)}: "
        f"{error.drawn} is the colour "
        f"the prompt gave the {other}</td></tr></table>"
    )
    images = figure(
        case.before,
        "as generated",
        BIG,
        "big",
        f" <span class='badge bad'>{html.escape(error.drawn)} {html.escape(error.shape)}</span>",
    )
    for name, steered in steering.items():
        outcome = result.outcomes[name][result.shown]
        images += figure(steered.image, f"{name}, dose {steered.dose:.2f} ", BIG, "big", _badge(outcome.fixed))
    usual = ", ".join(f"{s}s are usually {' or '.join(c)}" for s, c in USUAL_COLOURS.items())
    return (
        facts
        + f"<div>{images}</div>"
        + f"<p>Left: the image as generated. Middle: the same noise with the circuit steered ({result.arm}). "
        f"Right: the same noise with standard SAE steering. Each arm steers at the benchmark's matched "
        f"{_g('dose')}. The toy never saw this pair of objects in training ({usual}), so it drew the "
        f"{error.shape} in the colour the words usually bind to.</p>"
        + _outcome_table([(name, result.outcomes[name][result.shown]) for name in steering])
    )


def _step_of(sigma: float) -> int:
    schedule = flux_sigmas(STEPS).tolist()
    return min(range(len(schedule)), key=lambda i: abs(schedule[i] - sigma))


def _change(mode: str, strength: float) -> str:
    if mode == "ablate":
        return "set to 0"
    if mode == "scale":
        return f"multiplied by {strength:.2f} (1 - dose" + (": reversed)" if strength < 0 else ")")
    return f"raised by {strength:.3f}" if mode == "add" else f"set to {strength:.3f}"


def _spec_row(spec: Steering, labels: dict[str, str]) -> tuple[str, str, str, str]:
    """(features, how they change, at which steps, where in the image)."""
    assert isinstance(spec, CircuitSteering | SteeringSpec)
    features = ", ".join(f"{ref} ({labels[str(ref)]})" if str(ref) in labels else str(ref) for ref in spec.features)
    if isinstance(spec, CircuitSteering):
        when = "every step" if spec.sigma is None else f"step {_step_of(spec.sigma)} (sigma {spec.sigma:.2f}) only"
        return features, _change(spec.mode, spec.strength), when, "the tokens where the circuit found each active"
    every = math.isinf(spec.sigma_start) and spec.sigma_end == 0
    when = "every step" if every else f"while sigma is from {spec.sigma_end:.2f} to {spec.sigma_start:.2f}"
    return (
        features,
        _change(spec.mode, spec.strength),
        when,
        "inside the object" if spec.mask is not None else "every image token",
    )


def _described(description: str, k: int) -> str:
    """An arm's description, escaped and capitalised, with its number of features in place of k."""
    text = re.sub(r"\bk\b", str(k), description)
    return html.escape(text[:1].upper() + text[1:])


def _steering_html(
    case: ErrorCase, ref: FeatureRef, ref_label: dict[str, str], graph: Any, steering: dict[str, _Steered], k: int
) -> str:
    error, meta = case.error, graph.require_metadata()
    label = f" ({html.escape(ref_label[str(ref)])})" if str(ref) in ref_label else ""
    region = case.before * (0.35 + 0.65 * error.region)
    parts = [
        "<div class='side'>" + figure(region, f"the {error.shape}'s pixels: where the feature is traced", 4),
        (
            f"<p>The traced feature is <code>{ref}</code>{label}: of the toy's transcoder features at double block "
            f"{ref.layer}, the one most selective for {error.drawn} objects across the grid that is active in this "
            f"{error.shape}. Its circuit was traced at {_g('step')} {meta.step} ({_g('sigma')} {meta.sigma:.2f}) "
            f"over the {error.shape}'s pixels: {len(graph.features())} features, {len(graph.edge_weights)} edges "
            f"(see <a href='#{anchor('Its circuit')}'>its circuit</a>). Each arm below changes the activations "
            "of its features from the same noise; the images are above.</p></div>"
        ),
    ]
    for name, steered in steering.items():
        arm = arm_named(name)
        labels = feature_labels(steered.release.atlas, [r for spec in steered.specs for r in spec.features])
        rows = [_spec_row(spec, labels) for spec in steered.specs]
        parts.append(
            f"<h3>{html.escape(name)}, {_g('dose')} {steered.dose:.2f}</h3><p>{_described(arm.description, k)}."
            f" It steers features of the toy's {_RELEASES[arm.release]}"
            f"{' (labels from their feature atlas)' if labels else ''}.</p>"
            + (
                table(["features", "activations", "steps", "where"], rows)
                if rows
                else "<p>It found nothing to steer on this error.</p>"
            )
        )
    return "".join(parts)


_RELEASES = {"transcoders": "transcoders", "saes": "SAEs"}


def _benchmark_verdict(results: dict[str, Any] | None) -> tuple[str, str]:
    """(the benchmark's verdict, its test of the best circuit arm against SAE steering), as HTML."""
    if results is None:
        return "No benchmark figures ship with this copy.", ""
    matched = {name: row for name, row in results["arms"].items() if row["matched"] and not math.isnan(row["fixed"])}
    winner = max(matched, key=lambda n: matched[n]["fixed"])
    best_circuit = max((n for n in matched if n.startswith("circuit")), key=lambda n: matched[n]["fixed"])
    row = matched[winner]
    interval = f"{_g('95 % interval')} {_pct(row['ci_low'])} to {_pct(row['ci_high'])}"
    if row["ci_low"] > 0:
        verdict = (
            f"In the benchmark ({results['errors']} errors), at the same change inside the object, <b>{winner} "
            f"fixed the most binding errors: {_pct(row['fixed'])}</b> ({interval})."
        )
    elif row["fixed"] > 0:
        verdict = (
            f"In the benchmark ({results['errors']} errors), <b>no steering reliably fixed binding errors</b> "
            f"at the same change inside the object: the highest {_g('fix rate')}, {winner}'s, is "
            f"{_pct(row['fixed'])} ({interval})."
        )
    else:
        verdict = (
            f"In the benchmark ({results['errors']} errors), <b>no steering fixed a binding error</b> at the "
            "same change inside the object: every arm, the circuit's included, is at 0 %."
        )
    test = results["tests"].get(f"{best_circuit} vs {SAE_ARM}")
    if test is None:
        return verdict, ""
    wins = test["ci_low"] > 0
    return verdict, (
        f"The best circuit arm ({best_circuit}) against standard SAE steering ({SAE_ARM}): "
        f"{100 * test['difference']:+.1f} percentage points of fix rate (95 % interval "
        f"{100 * test['ci_low']:+.1f} to {100 * test['ci_high']:+.1f} over paired bootstrap resamples of "
        f"the errors; two-sided bootstrap p = {test['p']:.3f}): "
        + ("<b>circuit steering wins.</b>" if wins else "<b>circuit steering does not beat SAE steering here.</b>")
    )


def _verdict_html(result: DemoResult, results: dict[str, Any] | None) -> str:
    verdict, test = _benchmark_verdict(results)
    rows = [
        (name, f"{sum(o.fixed for o in outcomes)} of {len(outcomes)}") for name, outcomes in result.outcomes.items()
    ]
    return (
        f"<p>{_run_verdict(result)} Per arm (<a href='#{anchor('Every error the demo steered')}'>every steered "
        "error</a>):</p>"
        + table(["steering", "errors fixed"], rows)
        + f"<p>{verdict} {test} See <a href='#{anchor('The benchmark: which steering fixes binding errors?')}'>the "
        "benchmark</a> for every arm.</p>"
    )


def _benchmark_html(results: dict[str, Any] | None) -> str:
    if results is None:
        return (
            "<p>No benchmark figures ship with this copy: run <code>python benchmarks/toy_binding.py --json "
            f"{BENCHMARK_RESULTS.name}</code>.</p>"
        )
    arms = results["arms"]
    rows = [
        (
            name + (f" (nothing to steer for {row['nothing_to_steer']} errors)" if row.get("nothing_to_steer") else ""),
            _pct(row["fixed"]),
            f"{_pct(row['ci_low'])} to {_pct(row['ci_high'])}",
            _num(row["change_inside"], 3),
            _num(row["change_outside"], 4),
            _pct(row["object_right"]),
        )
        for name, row in sorted(
            arms.items(), key=lambda kv: -(kv[1]["fixed"] if not math.isnan(kv[1]["fixed"]) else -1)
        )
    ]
    descriptions = results.get("arm_descriptions", {})
    return (
        "<p>"
        + " ".join(_benchmark_verdict(results))
        + "</p>"
        + f"<p>{results['errors']} binding errors from {results['images']} held-out images ({_g('binding errors')} "
        f"in {_pct(results['binding_error_rate'])} of them; {_pct(results['shuffled_binding_error_rate'])} when "
        f"each image is scored against another image's prompt). Every arm steers each error from its own noise "
        f"at several doses, and is read where its mean change inside the object equals "
        f"{results['matched_change_inside']:.3f}; none (the same noise again) and re-sample (a new noise) are as "
        "they are.</p>"
        + table(
            ["arm", "fix rate", "95 % interval", "change inside", "change outside", "object has its colour"],
            rows,
            GLOSSARY,
        )
        + "<details><summary>What each arm does</summary><dl class='glossary'>"
        + "".join(
            f"<dt>{html.escape(name)}</dt><dd>{_described(text, results['settings']['k'])}.</dd>"
            for name, text in descriptions.items()
        )
        + "</dl></details>"
        + "<p>From <code>benchmarks/toy_binding.py</code> (committed figures, not this run).</p>"
    )


def _heatmaps_html(recording: FeatureRecording, ref: FeatureRef, case: ErrorCase) -> str:
    assert recording.image_grid is not None
    maps = torch.stack([recording.feature_map(ref, step)[0] for step in recording.steps])
    peak = float(maps.max()) or 1.0
    pixels = case.before.permute(1, 2, 0)
    figures = "".join(
        figure(
            blend(pixels, token_map_to_image(m / peak, recording.image_grid, case.before.shape[1:]), 0.8),
            f"step {step} (sigma {recording.schedule[step]:.2f})",
            4,
        )
        for step, m in zip(recording.steps, maps)
    )
    colour = case.error.drawn
    return (
        f"<p><code>{ref}</code>, the traced feature (most selective for {colour} objects), on the generated image "
        f"at every {_g('step')} ({_g('sigma')} in brackets); brighter is stronger, on one scale for all steps.</p>"
        + figures
        + "<p>The same maps, with the circuit's strongest image features, in the heatmap viewer:</p>"
        + '<div data-diffract-view="heatmaps" style="height:420px;max-width:560px"></div>'
    )


def _circuit_html(graph: Any, labels: dict[str, str]) -> str:
    meta = graph.require_metadata()
    scores = meta.scores
    assert scores is not None, "trace_circuit scores every graph"
    rows = [
        (n.describe(), labels.get(n.feature_spec, "unclear"), f"{float(i):.3f}")
        for n, i in sorted(zip(graph.nodes, graph.influence().tolist()), key=lambda pair: -pair[1])[:12]
        if n.kind == "feature"
    ]
    features = [n for n in graph.nodes if n.kind == "feature"]
    labelled = sum(n.feature_spec in labels for n in features)
    return (
        f"<p>Traced at {_g('step')} {meta.step} ({_g('sigma')} {meta.sigma:.3f}) over the object's region: "
        f"{len(graph.features())} features, {len(graph.edge_weights)} edges; {_g('replacement score')} "
        f"{scores.replacement:.3f}, {_g('completeness')} {scores.completeness:.3f} (1 would "
        f"be fully explained by features); {labelled} of {len(features)} feature nodes carry a label from the "
        f"toy's feature atlas. The full graph is in <code>circuit.json</code>. Hover a node for its heatmap on the "
        "image, click to focus it, Ctrl/Cmd-click to pin, G to group the pins, drag on the image to keep the "
        "features active there; pins, groups and labels stay in this browser's storage.</p>"
        '<div data-diffract-view="circuit" style="height:640px"></div>'
        "<noscript>The interactive graph needs JavaScript.</noscript>"
        + table(["most influential features", "atlas label", "influence"], rows, GLOSSARY)
    )


def _thumb(prompt: str, image: torch.Tensor, score: BindingScore, *, steered: bool, shown: bool) -> str:
    status = (
        "binding error"
        if score.binding_error
        else "all right"
        if score.score == 1
        else (f"{score.correct} of {len(score.objects)} right")
    )
    kind = "error" if score.binding_error else "right" if score.score == 1 else ""
    marks = [mark for mark, on in (("&#9650; steered", steered), ("shown at the top", shown)) if on]
    return figure(
        image,
        f"{prompt} ({status})",
        THUMB,
        f"{kind}{' shown' if shown else ''}",
        "".join(f"<br><span class='mark'>{mark}</span>" for mark in marks),
    )


def _grid_html(grid: Grid, steered: list[int], shown: int, seed: int) -> str:
    n = len(grid.prompts)
    errors = sum(s.binding_error for s in grid.scores)
    exact = sum(s.score == 1 for s in grid.scores)
    shuffled = grid.shuffled_binding_error_rate(seed)
    facts = "".join(
        f"<tr><th>{_g(name)}</th><td><b>{value}</b></td><td>{html.escape(GLOSSARY[name])}</td></tr>"
        for name, value in (
            ("binding errors", f"{_pct(errors / n)} ({errors} of {n})"),
            ("all objects right", f"{_pct(exact / n)} ({exact} of {n})"),
            ("binding errors, shuffled prompts (control)", _pct(shuffled)),
        )
    )
    legend = (
        "<ul class='legend'>"
        f"<li><i class='error'></i>red outline: the image holds a {_g('binding error')}</li>"
        "<li><i class='right'></i>green outline: every object right</li>"
        "<li><i></i>no outline: another mistake (a shape not recognised, or a third colour)</li>"
        "<li><i class='error shown'></i>double outline: the error shown at the top</li>"
        f"<li><span class='mark'>&#9650; steered</span>: one of the {len(steered)} errors the demo traced and "
        "steered</li></ul>"
    )
    thumbs = "".join(
        _thumb(prompt, image, s, steered=i in steered, shown=i == shown)
        for i, (prompt, image, s) in enumerate(zip(grid.prompts, grid.images, grid.scores))
    )
    return (
        f"<p>{n} held-out prompts (each object in the other's usual colour, a pair the toy never saw), one noise "
        f"seed each, {STEPS} sampling steps.</p>"
        f"<table class='facts'>{facts}</table>{legend}<div class='thumbs'>{thumbs}</div>"
    )


def _outcome_table(rows: list[tuple[str, SteeringOutcome]]) -> str:
    return table(
        [
            "steering",
            "fixed",
            "objects right",
            "share of the object in its colour",
            "change inside the object",
            "change elsewhere",
        ],
        [
            (
                name,
                "yes" if o.fixed else "no",
                f"{2 * o.score_before:.0f} → {2 * o.score_after:.0f} of 2",
                _pct(o.colour_share),
                f"{o.change_inside:.3f}",
                f"{o.change_outside:.4f}",
            )
            for name, o in rows
        ],
        GLOSSARY,
    )


def _all_html(result: DemoResult) -> str:
    rows = [
        (f"{case.error.describe()} [{case.graphs['wrong'].target.feature_spec}]: {name}", outcomes[i])
        for i, case in enumerate(result.cases)
        for name, outcomes in result.outcomes.items()
    ]
    counts = ", ".join(f"{name} {sum(o.fixed for o in rows_)}" for name, rows_ in result.outcomes.items())
    return (
        f"<p>Errors fixed, of {len(result.cases)}: {counts}. Each row: the prompt, what went wrong, the traced "
        "feature in brackets, and the steering.</p>" + _outcome_table(rows)
    )


def summary(result: DemoResult) -> str:
    errors = sum(s.binding_error for s in result.grid.scores)
    lines = [
        f"report: {result.report}",
        (
            f"grid: {len(result.grid.prompts)} held-out images, {errors} with a binding error "
            f"({100 * result.grid.binding_error_rate:.1f} %: an object drawn in the other object's colour, or mixed)"
        ),
    ]
    if result.shown is None:
        lines.append("no binding error in this grid")
    else:
        counts = ", ".join(f"{name} {sum(o.fixed for o in rows)}" for name, rows in result.outcomes.items())
        lines.append(f"binding errors traced and steered: {len(result.cases)}; fixed: {counts}")
        lines.append(f"shown: {result.cases[result.shown].error.describe()}")
    lines.append("time: " + ", ".join(f"{k} {v:.1f} s" for k, v in result.seconds.items()))
    return "\n".join(lines)
