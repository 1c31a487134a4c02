"""The binding benchmark: does circuit-guided steering fix the toy's binding errors better than
standard SAE steering, transcoder features chosen without a circuit, random features, or simply
sampling again, at the same dose?

1. Grid: held-out prompts (the swaps of the toy world), one noise seed each, sampled with the image
   MLPs of the double blocks recorded through the transcoders and, in a second pass that draws the
   very same images, the chosen block's through the SAEs; per colour, each feature's mean activation
   on objects of that colour at the chosen step.
2. Errors: each image's object drawn in the other object's colour (or mixed).
3. Arms (`ARMS`): ways to steer the wrong object of each error, each at several doses, every error
   from its own noise. A dose d scales the chosen features by (1 - d) (d = 1 ablates, d > 1
   reverses them); contrastive arms also add d times the right colour's typical activation to its
   own selective features, and "towards correct value" moves the circuit's features to
   (1 - d) z + d v, v their mean on objects drawn in the prompt's colour.
4. Matched dose: an arm's fix rate is read where its mean change inside the object equals a common
   level (linear interpolation between doses, from the no-op at (0, 0)), so arms that change the
   object more do not win by strength alone.
5. Statistics: 95 % bootstrap intervals over errors, and paired bootstrap tests (the same resampled
   errors for both arms) of each circuit arm against SAE steering and against random features.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import torch

from ..attribution import CircuitGraph
from ..attribution.steering import circuit_steering
from ..errors import InvalidDataError, SettingsError
from ..features import FeatureRef
from ..recording import FeatureRecording, PerImageSteering, Steering, SteeringSpec
from ..recording.call_inputs import CallInputs
from ..recording.recording import COND
from ..transcoders.transcoder_set import TranscoderSet
from .binding import BindingScore, score_binding, shuffled_label_binding_errors
from .generate import generate, toy_noise
from .model import ToyModel
from .repair import (
    COLOUR_NAMES,
    BindingError,
    SteeringOutcome,
    activation_in,
    binding_errors,
    compare,
    dense_codes,
    object_tokens,
    trace_wrong_colour,
)
from .scenes import held_out_prompts

Release = str  # "transcoders" or "saes"
StatsKey = tuple[Release, int]  # (release, image-stream layer)
Typical = dict[StatsKey, torch.Tensor]  # [colours, features]: mean activation on objects of each colour


@dataclass(frozen=True)
class BenchmarkSettings:
    images: int = 1600  # held-out prompts sampled, one noise seed each
    max_errors: int = 300  # binding errors steered: the first this many, in seed order (all: 0)
    batch: int = 100  # images sampled together
    seed: int = 1
    layer: int = 3  # the site whose features are chosen and traced (img stream)
    step: int = 2  # the sampling step (of 12) whose recording chooses them and whose call is traced
    k: int = 5  # features each arm steers
    budget: int = 100  # features a trace expands
    doses: tuple[float, ...] = (1.0, 4.0, 16.0)  # d > 1 reverses the features: colour resists weaker doses
    random_draws: int = 3  # independent random-feature controls per error
    early_steps: int = 3  # the text-stream variant steers the first this many steps
    per_step: tuple[int, ...] = (0, 2, 4)  # the per-step variant traces and steers each of these steps
    steer_steps: int = 0  # arms steer the first this many sampling steps (0: all of them)
    bootstrap: int = 2000
    record_k: int = 16  # features recorded per token


@dataclass
class ColourStats:
    """Running sums for colour selectivity over a grid sampled in batches: per colour, each
    feature's total on that colour's object tokens, and the token counts."""

    sums: torch.Tensor  # [colours, features]
    tokens: torch.Tensor  # [colours]

    @classmethod
    def empty(cls, features: int) -> ColourStats:
        return cls(torch.zeros(len(COLOUR_NAMES), features, dtype=torch.float64),
                   torch.zeros(len(COLOUR_NAMES), dtype=torch.float64))

    def add(self, recording: FeatureRecording, scores: list[BindingScore], layer: int, step: int) -> None:
        assert recording.image_grid is not None
        dense = dense_codes(recording, ("img", layer), step).double()
        for row, score in enumerate(scores):
            for colour, tokens in object_tokens(score, recording.image_grid):
                if colour is not None:
                    c = COLOUR_NAMES.index(colour)
                    self.sums[c] += dense[row, tokens].sum(0)
                    self.tokens[c] += int(tokens.sum())

    def on_colour(self) -> torch.Tensor:
        """[colours, features]: mean activation on tokens of objects of each colour."""
        return (self.sums / self.tokens.clamp(min=1)[:, None]).float()

    def selectivity(self) -> torch.Tensor:
        """[colours, features]: mean on the colour's object tokens minus the mean on the object tokens
        of every other colour (against objects, not the background: a feature that marks objects of
        any colour is not a colour's feature)."""
        others = (self.sums.sum(0)[None] - self.sums) / (self.tokens.sum() - self.tokens).clamp(min=1)[:, None]
        return (self.on_colour().double() - others).float() * (self.tokens > 0)[:, None]

    def selective(self, colour: str, activity: torch.Tensor, k: int) -> list[int]:
        """Up to k features most selective for `colour` (selectivity times `activity`, a [features]
        activation in an object) among those active there, best first."""
        score = self.selectivity()[COLOUR_NAMES.index(colour)].clamp(min=0) * activity
        top = torch.topk(score, min(k, score.numel()))
        return [int(i) for i, v in zip(top.indices, top.values) if float(v) > 0]


@dataclass
class ErrorCase:
    """One binding error and everything its arms need."""

    error: BindingError
    noise: torch.Tensor  # [1, C, h, w]
    before: torch.Tensor  # [3, H, W]
    activity: dict[Release, torch.Tensor]  # [features]: activation in the object at (layer, step)
    calls: dict[int, CallInputs]  # step -> the image's kept model call
    wrong: dict[Release, list[int]] = field(default_factory=dict)  # features selective for the drawn colour
    right: dict[Release, list[int]] = field(default_factory=dict)  # features selective for the prompt's colour
    random: list[list[int]] = field(default_factory=list)  # random active transcoder features, per draw
    graphs: dict[str, CircuitGraph] = field(default_factory=dict)  # "wrong", "contrast", "step N"


@dataclass(frozen=True)
class Arm:
    name: str
    release: Release
    description: str
    steer: Callable[[ErrorCase, float, BenchmarkSettings, Typical], list[list[Steering]]]
    # -> one steering list per draw (one draw except for the random control)


def _refs(features: Sequence[int], settings: BenchmarkSettings) -> list[FeatureRef]:
    return [FeatureRef("img", settings.layer, f) for f in features]


def _scaled(refs: Sequence[FeatureRef], dose: float, case: ErrorCase, settings: BenchmarkSettings) -> list[Steering]:
    """The features scaled by (1 - dose) inside the object."""
    if not refs:
        return []
    return [SteeringSpec(tuple(refs), "scale", 1.0 - dose, sigma_end=_sigma_end(settings), mask=case.error.region)]


def _boosted(refs: Sequence[FeatureRef], dose: float, case: ErrorCase, settings: BenchmarkSettings,
             typical: Typical, release: Release) -> list[Steering]:
    """The features raised inside the object by dose x their mean activation on objects of the
    prompt's colour."""
    colour = COLOUR_NAMES.index(case.error.intended)
    return [SteeringSpec((ref,), "add", dose * float(typical[release, ref.layer][colour, ref.index]),
                         sigma_end=_sigma_end(settings), mask=case.error.region) for ref in refs]


def _sigma_end(settings: BenchmarkSettings) -> float:
    """The lowest sigma steered: that of the last of `settings.steer_steps` (0: every step)."""
    return _schedule()[settings.steer_steps - 1] if settings.steer_steps else 0.0


def _selective(release: Release, contrastive: bool) -> Callable[..., list[list[Steering]]]:
    def steer(case: ErrorCase, dose: float, settings: BenchmarkSettings, typical: Typical) -> list[list[Steering]]:
        specs = _scaled(_refs(case.wrong[release], settings), dose, case, settings)
        if contrastive:
            specs += _boosted(_refs(case.right[release], settings), dose, case, settings, typical, release)
        return [specs]
    return steer


def _random(case: ErrorCase, dose: float, settings: BenchmarkSettings, typical: Typical) -> list[list[Steering]]:
    return [_scaled(_refs(draw, settings), dose, case, settings) for draw in case.random]


def _circuit(graph: str, *, in_object: bool = False) -> Callable[..., list[list[Steering]]]:
    """The Steer Circuit path: the graph's most influential features, scaled where they fired, at
    every step (`in_object`: its image features inside the object instead)."""
    def steer(case: ErrorCase, dose: float, settings: BenchmarkSettings, typical: Typical) -> list[list[Steering]]:
        traced = case.graphs[graph]
        if in_object:
            refs = top_refs(traced, settings.k, stream="img")
            return [[SteeringSpec(refs, "scale", 1.0 - dose, mask=case.error.region)] if refs else []]
        return [[circuit_steering(traced, f"top {settings.k}", mode="scale", strength=1.0 - dose, steps="all steps")]]
    return steer


def _circuit_towards_correct(case: ErrorCase, dose: float, settings: BenchmarkSettings,
                             typical: Typical) -> list[list[Steering]]:
    """The circuit's k most influential image features moved inside the object towards the value
    they have on objects drawn in the prompt's colour: z' = (1 - d) z + d v (d = 1 sets
    them to it)."""
    refs = top_refs(case.graphs["wrong"], settings.k, stream="img")
    return [_scaled(refs, dose, case, settings) + _boosted(refs, dose, case, settings, typical, "transcoders")]


def _circuit_text_early(case: ErrorCase, dose: float, settings: BenchmarkSettings,
                        typical: Typical) -> list[list[Steering]]:
    """The circuit's most influential text-stream features at the tokens where they fired, over the
    first steps only (where the text decides the colour)."""
    traced = case.graphs["wrong"]
    texts = [str(r) for r in top_refs(traced, settings.k, stream="txt")]
    if not texts:
        return [[]]
    spec = circuit_steering(traced, ", ".join(texts), mode="scale", strength=1.0 - dose, steps="traced step")
    sigmas = _schedule()[: settings.early_steps]
    return [[replace(spec, sigma=float(s)) for s in sigmas]]


def _circuit_per_step(case: ErrorCase, dose: float, settings: BenchmarkSettings,
                      typical: Typical) -> list[list[Steering]]:
    """A circuit traced at each of several steps, each steered at its own step."""
    return [[circuit_steering(case.graphs[f"step {s}"], f"top {settings.k}", mode="scale", strength=1.0 - dose,
                              steps="traced step") for s in settings.per_step]]


def top_refs(graph: CircuitGraph, k: int, *, stream: str) -> tuple[FeatureRef, ...]:
    """The graph's k most influential features of `stream`."""
    influence = graph.influence()
    refs: list[FeatureRef] = []
    for index in sorted(graph.indices("feature"), key=lambda i: -float(influence[i])):
        node = graph.nodes[index]
        ref = node.ref
        if node.stream == stream and ref not in refs:
            refs.append(ref)
        if len(refs) == k:
            break
    return tuple(refs)


def _schedule() -> list[float]:
    from ..flux.sampling import flux_sigmas
    from .generate import STEPS

    return flux_sigmas(STEPS).tolist()


ARMS: tuple[Arm, ...] = (
    Arm("random features", "transcoders", "k transcoder features drawn at random among those active in the object "
        "(several draws), scaled inside the object at every step: the control", _random),
    Arm("SAE selective", "saes", "standard SAE steering: the k SAE features most selective for the wrong colour that "
        "are active in the object, scaled inside the object at every step", _selective("saes", contrastive=False)),
    Arm("SAE contrastive", "saes", "the same, and the k SAE features most selective for the right colour raised by "
        "the dose times their typical activation on objects of that colour", _selective("saes", contrastive=True)),
    Arm("transcoder selective", "transcoders", "the k transcoder features most selective for the wrong colour active "
        "in the object (no circuit), scaled inside the object", _selective("transcoders", contrastive=False)),
    Arm("transcoder contrastive", "transcoders", "the same, and the right colour's k transcoder features raised",
        _selective("transcoders", contrastive=True)),
    Arm("circuit", "transcoders", "Steer Circuit: the wrong colour's circuit (its top transcoder feature summed over "
        "the object), its k most influential features scaled where they fired, at every step", _circuit("wrong")),
    Arm("circuit in object", "transcoders", "the circuit's k most influential image features, scaled inside the "
        "object only", _circuit("wrong", in_object=True)),
    Arm("circuit contrastive", "transcoders", "Steer Circuit on the contrastive target: the wrong colour's feature "
        "minus the right colour's", _circuit("contrast")),
    Arm("circuit contrastive in object", "transcoders", "the contrastive circuit's k most influential image features, "
        "scaled inside the object only", _circuit("contrast", in_object=True)),
    Arm("circuit towards correct value", "transcoders", "the circuit's k most influential image features moved "
        "inside the object towards their mean on objects drawn in the prompt's colour (dose 1 sets them "
        "to it)", _circuit_towards_correct),
    Arm("circuit text, early steps", "transcoders", "the circuit's k most influential text features, at the tokens "
        "where they fired, over the first steps", _circuit_text_early),
    Arm("circuit per step", "transcoders", "a circuit traced at each early step, each steered at its own step",
        _circuit_per_step),
)
CIRCUIT_ARMS = tuple(arm.name for arm in ARMS if arm.name.startswith("circuit"))


def arm_named(name: str) -> Arm:
    for arm in ARMS:
        if arm.name == name:
            return arm
    raise SettingsError(f"no arm named {name!r}; the arms are {[arm.name for arm in ARMS]}")


@dataclass
class ArmResult:
    """Per dose and error (random draws averaged): fixed, change inside and outside, object right."""

    fixed: torch.Tensor  # [doses, errors]
    inside: torch.Tensor
    outside: torch.Tensor
    object_right: torch.Tensor  # the object has its colour, whatever else changed
    empty: int = 0  # errors for which the arm had nothing to steer
    images: list[list[torch.Tensor]] = field(default_factory=list)  # per dose, per error (first draw), if kept


def _outcome_row(outcomes: list[SteeringOutcome]) -> tuple[float, float, float, float]:
    n = len(outcomes)
    return (sum(o.fixed for o in outcomes) / n, sum(o.change_inside for o in outcomes) / n,
            sum(o.change_outside for o in outcomes) / n, sum(o.colour_share >= 0.5 for o in outcomes) / n)


def run_arm(model: ToyModel, releases: dict[Release, TranscoderSet], arm: Arm, cases: list[ErrorCase],
            settings: BenchmarkSettings, typical: Typical, *, keep_images: bool = False) -> ArmResult:
    """Every error steered by `arm` at every dose, from its own noise, batched."""
    shape = (len(settings.doses), len(cases))
    result = ArmResult(torch.zeros(shape), torch.zeros(shape), torch.zeros(shape), torch.zeros(shape))
    for d, dose in enumerate(settings.doses):
        per_case = [arm.steer(case, dose, settings, typical) for case in cases]
        if d == 0:
            result.empty = sum(all(not draw for draw in draws) for draws in per_case)
        draws = max(len(x) for x in per_case)
        outcomes: list[list[SteeringOutcome]] = [[] for _ in cases]
        for draw in range(draws):
            for start in range(0, len(cases), settings.batch):
                chunk = range(start, min(start + settings.batch, len(cases)))
                steering = PerImageSteering(tuple(tuple(per_case[i][draw]) if draw < len(per_case[i]) else ()
                                                  for i in chunk), chunks=frozenset({COND}))
                noise = torch.cat([cases[i].noise for i in chunk])
                images = generate(model, [cases[i].error.prompt for i in chunk], noise,
                                  transcoders=releases[arm.release], steering=[steering])
                for row, i in enumerate(chunk):
                    outcomes[i].append(compare(cases[i].before, images[row], cases[i].error))
                if keep_images and draw == 0:
                    if start == 0:
                        result.images.append([])
                    result.images[-1] += list(images)
        for i, case_outcomes in enumerate(outcomes):
            fixed, inside, outside, right = _outcome_row(case_outcomes)
            (result.fixed[d, i], result.inside[d, i], result.outside[d, i],
             result.object_right[d, i]) = fixed, inside, outside, right
    return result


def at_level(fixed: torch.Tensor, change: torch.Tensor, level: float) -> float:
    """The fix rate where the mean change inside the object reaches `level`: linear between doses,
    starting from the no-op (change 0, fix rate 0); nan when no dose reaches it."""
    xs = [0.0, *change.tolist()]
    ys = [0.0, *fixed.tolist()]
    tolerance = 1e-6 * max(xs)  # float rounding of a mean must not lose the level an arm reaches exactly
    for (x0, y0), (x1, y1) in zip(zip(xs, ys), zip(xs[1:], ys[1:])):
        if x0 - tolerance <= level <= x1 + tolerance and x1 > x0:
            level = min(max(level, x0), x1)
            return y0 + (y1 - y0) * (level - x0) / (x1 - x0)
    return math.nan


def _curve_at(result: ArmResult, level: float, rows: torch.Tensor | None = None) -> float:
    fixed, inside = (result.fixed, result.inside) if rows is None else (result.fixed[:, rows], result.inside[:, rows])
    return at_level(fixed.mean(1), inside.mean(1), level)


def bootstrap_at(results: dict[str, ArmResult], level: float, samples: int, seed: int) -> dict[str, torch.Tensor]:
    """Each arm's matched-dose fix rate on `samples` resamples of the errors (the same resamples
    for every arm, so differences are paired)."""
    errors = next(iter(results.values())).fixed.shape[1]
    generator = torch.Generator().manual_seed(seed)
    draws = [torch.randint(errors, (errors,), generator=generator) for _ in range(samples)]
    return {name: torch.tensor([_curve_at(result, level, rows) for rows in draws]) for name, result in results.items()}


def paired_test(first: torch.Tensor, second: torch.Tensor) -> dict[str, float]:
    """Difference first - second over paired bootstrap resamples: mean, 95 % interval and the
    two-sided bootstrap p-value (twice the smaller share of resamples on either side of 0)."""
    keep = ~(first.isnan() | second.isnan())
    diff = (first - second)[keep]
    if not len(diff):
        return {"difference": math.nan, "ci_low": math.nan, "ci_high": math.nan, "p": math.nan}
    p = 2 * min(float((diff <= 0).float().mean()), float((diff >= 0).float().mean()))
    return {"difference": float(diff.mean()), "ci_low": float(diff.quantile(0.025)),
            "ci_high": float(diff.quantile(0.975)), "p": min(1.0, p)}


@dataclass
class BenchmarkReport:
    settings: BenchmarkSettings
    images: int
    binding_error_rate: float
    shuffled_binding_error_rate: float
    cases: list[ErrorCase]
    results: dict[str, ArmResult]
    baselines: dict[str, ArmResult]  # "none", "re-sample"
    level: float  # the matched change inside the object of the headline
    levels: list[float]
    table: dict[str, dict[str, Any]]
    tests: dict[str, dict[str, float]]
    seconds: dict[str, float]

    def to_json(self) -> dict[str, Any]:
        return {"errors": len(self.cases), "images": self.images, "binding_error_rate": self.binding_error_rate,
                "shuffled_binding_error_rate": self.shuffled_binding_error_rate, "matched_change_inside": self.level,
                "levels": self.levels, "arms": self.table, "tests": self.tests, "seconds": self.seconds,
                "settings": asdict(self.settings),
                "arm_descriptions": {arm.name: arm.description for arm in ARMS}}


@dataclass
class Grid:
    """A sampled grid of prompts: its images, their scores, the errors found and the colour
    statistics of each release."""

    prompts: list[str]
    seeds: list[int]
    images: torch.Tensor
    scores: list[BindingScore]
    cases: list[ErrorCase]
    stats: dict[StatsKey, ColourStats]

    @property
    def binding_error_rate(self) -> float:
        return sum(s.binding_error for s in self.scores) / len(self.scores)

    def shuffled_binding_error_rate(self, seed: int) -> float:
        return shuffled_label_binding_errors(self.prompts, self.images, seed=seed)


def grid_seeds(count: int, seed: int) -> list[int]:
    return [seed * 100_000 + i for i in range(count)]


def collect_cases(model: ToyModel, releases: dict[Release, TranscoderSet], prompts: list[str], seeds: list[int],
                  settings: BenchmarkSettings, log: Callable[[str], None] = print, *,
                  keep_steps: frozenset[int] | None = None) -> Grid:
    """Sample the prompts in batches (one noise seed each), recording the chosen site through every
    release (and every image layer through the transcoders), score them, and keep what the first
    `settings.max_errors` binding errors' arms need (the model calls at `keep_steps`, by default the
    traced step and the per-step variant's)."""
    steps = keep_steps if keep_steps is not None else frozenset({settings.step, *settings.per_step})
    layers = {release: sorted({settings.layer} | ({layer for stream, layer in transcoders.sites if stream == "img"}
                                                  if release == "transcoders" else set()))
              for release, transcoders in releases.items()}
    stats: dict[StatsKey, ColourStats] = {}
    cases: list[ErrorCase] = []
    all_images, all_scores = [], []
    for start in range(0, len(prompts), settings.batch):
        batch_prompts = prompts[start : start + settings.batch]
        noise = toy_noise(seeds[start : start + settings.batch])
        recordings = {}
        images = None
        for release, transcoders in releases.items():
            recording = FeatureRecording(sites=tuple(("img", layer) for layer in layers[release]), k=settings.record_k,
                                         keep_input_steps=steps if release == "transcoders" else frozenset())
            drawn = generate(model, batch_prompts, noise, transcoders=transcoders, recording=recording)
            assert images is None or torch.equal(images, drawn), (
                "recording through another release changed the images: recording must observe only")
            images, recordings[release] = drawn, recording
        assert images is not None
        all_images.append(images)
        scores = [score_binding(image, prompt) for prompt, image in zip(batch_prompts, images)]
        all_scores += scores
        for release, recording in recordings.items():
            for layer in layers[release]:
                key = (release, layer)
                stats.setdefault(key, ColourStats.empty(recording.codes(("img", layer), settings.step).d_features))
                stats[key].add(recording, scores, layer, settings.step)
        for error in binding_errors(scores)[: max(0, settings.max_errors - len(cases))
                                            if settings.max_errors else None]:
            row = error.index
            cases.append(ErrorCase(
                error=replace(error, index=start + row),
                noise=noise[row : row + 1],
                before=images[row],
                activity={release: activation_in(recording, settings.layer, settings.step, row, error.region)
                          for release, recording in recordings.items()},
                calls={s: recordings["transcoders"].call_inputs(s).row(row) for s in sorted(steps)},
            ))
        log(f"[{start + len(batch_prompts)}/{len(prompts)}] binding errors so far: "
            f"{sum(s.binding_error for s in all_scores)} ({len(cases)} kept to steer)")
    return Grid(prompts, seeds, torch.cat(all_images), all_scores, cases, stats)


GRAPHS = ("wrong", "contrast", "per step")


def prepare_cases(model: ToyModel, transcoders: TranscoderSet, cases: list[ErrorCase],
                  stats: dict[StatsKey, ColourStats], settings: BenchmarkSettings,
                  graphs: Sequence[str] = GRAPHS) -> None:
    """Choose each error's features and trace the circuits in `graphs` (in place): the wrong
    colour's ("wrong"), it against the right colour's ("contrast"), and one per step of
    `settings.per_step` ("per step")."""
    at_layer = {release: s for (release, layer), s in stats.items() if layer == settings.layer}
    selectivity = {release: s.selectivity() for release, s in at_layer.items()}
    generator = torch.Generator().manual_seed(settings.seed)
    for case in cases:
        error = case.error
        for release, sel in selectivity.items():
            case.wrong[release] = at_layer[release].selective(error.drawn, case.activity[release], settings.k)
            case.right[release] = torch.topk(sel[COLOUR_NAMES.index(error.intended)], settings.k).indices.tolist()
        active = (case.activity["transcoders"] > 0).nonzero().flatten()
        case.random = [active[torch.randperm(len(active), generator=generator)[: settings.k]].tolist()
                       for _ in range(settings.random_draws)]
        target = (case.wrong["transcoders"][0] if case.wrong["transcoders"]
                  else int(case.activity["transcoders"].argmax()))
        trace = {"model": model, "transcoders": transcoders, "error": error, "feature": target,
                 "layer": settings.layer, "budget": settings.budget}
        if "wrong" in graphs:
            case.graphs["wrong"] = trace_wrong_colour(call=case.calls[settings.step], step=settings.step, **trace)
        if "contrast" in graphs:
            against = next((f for f in case.right["transcoders"] if f != target), None)
            case.graphs["contrast"] = trace_wrong_colour(call=case.calls[settings.step], step=settings.step,
                                                         against=against, **trace)
        if "per step" in graphs:
            for step in settings.per_step:
                case.graphs[f"step {step}"] = (case.graphs["wrong"] if step == settings.step and "wrong" in case.graphs
                                               else trace_wrong_colour(call=case.calls[step], step=step, **trace))
        case.calls.clear()


def run_baseline(model: ToyModel, cases: list[ErrorCase], settings: BenchmarkSettings, *, reseed: bool) -> ArmResult:
    """No steering: the same noise again ("none"), or a new noise seed per error ("re-sample")."""
    result = ArmResult(*(torch.zeros(1, len(cases)) for _ in range(4)))
    for start in range(0, len(cases), settings.batch):
        chunk = cases[start : start + settings.batch]
        noise = (toy_noise([10_000_000 + settings.seed * 100_000 + c.error.index for c in chunk]) if reseed
                 else torch.cat([c.noise for c in chunk]))
        images = generate(model, [c.error.prompt for c in chunk], noise)
        for i, (case, image) in enumerate(zip(chunk, images), start):
            outcome = compare(case.before, image, case.error)
            result.fixed[0, i], result.inside[0, i], result.outside[0, i] = (outcome.fixed, outcome.change_inside,
                                                                             outcome.change_outside)
            result.object_right[0, i] = outcome.colour_share >= 0.5
    return result


def _interval(values: torch.Tensor, samples: int, seed: int) -> tuple[float, float]:
    """95 % bootstrap interval of a mean over errors."""
    generator = torch.Generator().manual_seed(seed)
    means = torch.stack([values[torch.randint(len(values), (len(values),), generator=generator)].mean()
                         for _ in range(samples)])
    return float(means.quantile(0.025)), float(means.quantile(0.975))


HEADLINE_ARMS = ("circuit", "SAE selective", "random features")


def summarise(results: dict[str, ArmResult], baselines: dict[str, ArmResult], settings: BenchmarkSettings
              ) -> tuple[float, list[float], dict[str, dict[str, Any]], dict[str, dict[str, float]]]:
    """The headline level (the largest mean change inside the object that the circuit, SAE and
    random arms all reach), a grid of levels, per arm its matched-dose fix rate with a 95 %
    interval and its raw curve, the baselines as they are, and the paired tests of each circuit
    arm against SAE steering, random features and transcoder features chosen without a circuit."""
    level = min(float(results[name].inside.mean(1).max()) for name in HEADLINE_ARMS if name in results)
    levels = [round(level * f, 4) for f in (0.25, 0.5, 0.75, 1.0)]
    boot = bootstrap_at(results, level, settings.bootstrap, settings.seed)
    table: dict[str, dict[str, Any]] = {}
    for name, result in baselines.items():
        low, high = _interval(result.fixed[0], settings.bootstrap, settings.seed)
        table[name] = {"fixed": float(result.fixed.mean()), "ci_low": low, "ci_high": high,
                       "change_inside": float(result.inside.mean()), "change_outside": float(result.outside.mean()),
                       "object_right": float(result.object_right.mean()), "matched": False}
    for name, result in results.items():
        samples = boot[name][~boot[name].isnan()]
        table[name] = {
            "fixed": _curve_at(result, level),
            "ci_low": float(samples.quantile(0.025)) if len(samples) else math.nan,
            "ci_high": float(samples.quantile(0.975)) if len(samples) else math.nan,
            "change_inside": level,
            "change_outside": at_level(result.outside.mean(1), result.inside.mean(1), level),
            "object_right": at_level(result.object_right.mean(1), result.inside.mean(1), level),
            "fixed_at_levels": {str(x): _curve_at(result, x) for x in levels},
            "dose": at_level(torch.tensor(settings.doses), result.inside.mean(1), level),  # the dose giving that change
            "doses": list(settings.doses),
            "curve": {"fixed": result.fixed.mean(1).tolist(), "change_inside": result.inside.mean(1).tolist(),
                      "change_outside": result.outside.mean(1).tolist(),
                      "object_right": result.object_right.mean(1).tolist()},
            "nothing_to_steer": result.empty,
            "matched": True,
        }
    tests = {}
    for name in CIRCUIT_ARMS:
        for other in ("SAE selective", "SAE contrastive", "random features", "transcoder selective"):
            if name in boot and other in boot:
                tests[f"{name} vs {other}"] = paired_test(boot[name], boot[other])
    return level, levels, table, tests


def run_benchmark(model: ToyModel, releases: dict[Release, TranscoderSet], settings: BenchmarkSettings,
                  arms: Sequence[Arm] = ARMS, log: Callable[[str], None] = print) -> BenchmarkReport:
    seconds: dict[str, float] = {}
    began = time.perf_counter()
    prompts = held_out_prompts(settings.images, seed=settings.seed)
    grid = collect_cases(model, releases, prompts, grid_seeds(len(prompts), settings.seed), settings, log)
    cases, stats = grid.cases, grid.stats
    rate, shuffled = grid.binding_error_rate, grid.shuffled_binding_error_rate(settings.seed)
    seconds["sample, record and score the grid"] = time.perf_counter() - began
    if not cases:
        raise InvalidDataError("the grid holds no binding error: sample more images")
    began = time.perf_counter()
    prepare_cases(model, releases["transcoders"], cases, stats, settings)
    seconds["choose features and trace circuits"] = time.perf_counter() - began
    typical = {key: s.on_colour() for key, s in stats.items()}
    results: dict[str, ArmResult] = {}
    for arm in arms:
        began = time.perf_counter()
        results[arm.name] = run_arm(model, releases, arm, cases, settings, typical)
        seconds[f"steer: {arm.name}"] = time.perf_counter() - began
        log(f"{arm.name}: fixed per dose {[round(x, 3) for x in results[arm.name].fixed.mean(1).tolist()]}, "
            f"change inside {[round(x, 3) for x in results[arm.name].inside.mean(1).tolist()]}")
    began = time.perf_counter()
    baselines = {"none": run_baseline(model, cases, settings, reseed=False),
                 "re-sample": run_baseline(model, cases, settings, reseed=True)}
    seconds["baselines"] = time.perf_counter() - began
    level, levels, table, tests = summarise(results, baselines, settings)
    return BenchmarkReport(settings, settings.images, rate, shuffled, cases, results, baselines, level, levels, table,
                           tests, seconds)
