"""From a binding error to a steered image: the toy's end-to-end use of recording, attribution and
steering, shared by the demo and the binding benchmark.

1. `binding_errors`: images where a shape the prompt asked for came out in another colour.
2. `colour_selectivity`: per colour, how much more each image feature fires on objects of that
   colour than elsewhere, measured on the recorded grid itself (the scorer labels the objects).
3. `trace_wrong_colour`: the wrong colour's most selective feature inside the wrong object is the
   target; its circuit is traced over the object's region at one step.
4. `circuit_steering_for` / `circuit_in_object_steering_for` / `feature_steering_for`: the
   circuit's top features where they fired, its top image features inside the object only, or the
   target feature alone inside the object, scaled by the same strength at the same steps (the
   traced step, or every step: the model re-derives a colour at every step, so one step rarely
   suffices); `random_steering_for`, the control, as many random features active in the object.
5. `compare`: re-score the steered image and measure how much changed outside the object.
`repair` runs steps 3 to 5 for one error.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..attribution import CircuitGraph, TargetSpec, TraceSettings, trace_circuit
from ..attribution.steering import CircuitSteering, StepChoice, circuit_steering
from ..features import FeatureRef
from ..recording import FeatureRecording, SteeringSpec
from ..spatial import mask_to_token_weights
from ..transcoders.transcoder_set import TranscoderSet
from .binding import BindingScore, DetectedObject, score_binding
from .generate import generate
from .model import ToyModel
from .scenes import COLOURS

COLOUR_NAMES = tuple(COLOURS)


@dataclass(frozen=True)
class BindingError:
    index: int  # the image's row in the grid
    prompt: str
    shape: str
    intended: str  # the colour the prompt gave this shape
    drawn: str  # the colour it came out in
    region: torch.Tensor  # float [H, W]: the wrongly coloured object's pixels

    def describe(self) -> str:
        return f"{self.prompt!r}: the {self.shape} came out {self.drawn} instead of {self.intended}"


def binding_errors(scores: list[BindingScore]) -> list[BindingError]:
    """Each image's first prompt object drawn in another colour (right shape, wrong colour)."""
    found = []
    for index, score in enumerate(scores):
        present = {(obj.colour, obj.shape) for obj in score.detected}
        for colour, shape in score.expected:
            if (colour, shape) in present:
                continue
            wrong = [obj for obj in score.detected if obj.shape == shape and obj.colour != colour
                     and (obj.colour, obj.shape) not in set(score.expected)]
            if wrong:
                obj = wrong[0]
                found.append(BindingError(index, score.prompt, shape, colour, obj.colour, obj.mask.float()))
                break
    return found


def token_masks(objects: tuple[DetectedObject, ...], grid: tuple[int, int]) -> list[torch.Tensor]:
    """Each object's image tokens: bool [rows * cols], a token counting when half its pixels are the object's."""
    return [mask_to_token_weights(obj.mask.float(), grid) >= 0.5 for obj in objects]


def dense_codes(recording: FeatureRecording, layer: int, step: int) -> torch.Tensor:
    """The recorded image features at one site and step, dense: [batch, tokens, features]."""
    codes = recording.codes(("img", layer), step)
    dense = torch.zeros(*codes.indices.shape[:2], codes.d_features)
    return dense.scatter_add_(-1, codes.indices.long(), codes.values.float())


def colour_selectivity(recording: FeatureRecording, scores: list[BindingScore], layer: int, step: int) -> torch.Tensor:
    """[colours, features]: mean activation on tokens of objects of that colour minus the mean on every
    other token of the grid (colours in COLOUR_NAMES order; 0 for a colour the grid never drew)."""
    assert recording.image_grid is not None
    dense = dense_codes(recording, layer, step)
    selectivity = torch.zeros(len(COLOUR_NAMES), dense.shape[-1])
    for c, colour in enumerate(COLOUR_NAMES):
        inside = torch.zeros(dense.shape[:2], dtype=torch.bool)
        for row, score in enumerate(scores):
            for obj, tokens in zip(score.detected, token_masks(score.detected, recording.image_grid)):
                if obj.colour == colour:
                    inside[row] |= tokens
        if inside.any():
            selectivity[c] = dense[inside].mean(0) - dense[~inside].mean(0)
    return selectivity


def wrong_colour_feature(recording: FeatureRecording, error: BindingError, selectivity: torch.Tensor,
                         layer: int, step: int) -> int:
    """The feature most selective for the drawn (wrong) colour among those active inside the object."""
    assert recording.image_grid is not None
    weights = mask_to_token_weights(error.region, recording.image_grid)
    region_activation = (dense_codes(recording, layer, step)[error.index] * weights[:, None]).sum(0)
    score = selectivity[COLOUR_NAMES.index(error.drawn)].clamp(min=0) * region_activation
    if float(score.max()) <= 0:
        score = region_activation  # nothing colour-selective fires there: the object's strongest feature
    return int(score.argmax())


def trace_wrong_colour(model: ToyModel, transcoders: TranscoderSet, recording: FeatureRecording, error: BindingError,
                       feature: int, *, layer: int, step: int, budget: int) -> CircuitGraph:
    """The circuit of `feature` summed over the wrong object's region, at `step` of the recorded run."""
    call = recording.call_inputs(step).row(error.index)
    target = TargetSpec("img", layer, feature, "region", region=error.region)
    return trace_circuit(model.flux.double_blocks, transcoders, call, target, step=step,
                         settings=TraceSettings(max_feature_nodes=budget), check_top_k=8)


def circuit_steering_for(graph: CircuitGraph, top: int, strength: float, steps: StepChoice) -> CircuitSteering:
    """The circuit's `top` most influential features scaled by `strength` where they fired."""
    return circuit_steering(graph, f"top {top}", mode="scale", strength=strength, steps=steps)


def _window(steps: StepChoice, sigma: float) -> dict[str, float]:
    """SteeringSpec's sigma window: the traced step's sigma only, or (no window) every step."""
    return {"sigma_start": sigma, "sigma_end": sigma} if steps == "traced step" else {}


def circuit_in_object_steering_for(graph: CircuitGraph, error: BindingError, top: int, strength: float,
                                   steps: StepChoice) -> SteeringSpec:
    """The circuit's `top` most influential image-stream features, steered inside the object only
    (the same footing as the single feature and the random control)."""
    influence = graph.influence()
    refs: list[FeatureRef] = []
    for index in sorted(graph.indices("feature"), key=lambda i: -float(influence[i])):
        node = graph.nodes[index]
        ref = FeatureRef(node.stream, node.layer, node.feature)  # type: ignore[arg-type]
        if node.stream == "img" and ref not in refs:
            refs.append(ref)
        if len(refs) == top:
            break
    return SteeringSpec(tuple(refs), "scale", strength, mask=error.region, **_window(steps, float(graph.metadata["sigma"])))


def feature_steering_for(graph: CircuitGraph, error: BindingError, strength: float, steps: StepChoice) -> SteeringSpec:
    """The target feature alone, scaled by the same strength at the same steps, inside the object."""
    target = graph.metadata["target"]["feature"]
    stream, layer, index = target.split(":")
    return SteeringSpec((FeatureRef(stream, int(layer), int(index)),), "scale", strength,  # type: ignore[arg-type]
                        mask=error.region, **_window(steps, float(graph.metadata["sigma"])))


@dataclass(frozen=True)
class SteeringOutcome:
    fixed: bool  # the prompt's object is now drawn in its colour
    score_before: float
    score_after: float
    change_inside: float  # mean |after - before| over the object's pixels (0..1 per channel)
    change_outside: float  # the same over every other pixel

    @property
    def precision(self) -> float:
        """Share of the image's change that falls on the target object (per pixel, inside against outside)."""
        total = self.change_inside + self.change_outside
        return self.change_inside / total if total > 0 else 1.0


def compare(before: torch.Tensor, after: torch.Tensor, error: BindingError) -> SteeringOutcome:
    """Score a steered image [3, H, W] against the unsteered one."""
    scored_before = score_binding(before, error.prompt)
    scored_after = score_binding(after, error.prompt)
    inside = error.region.bool()
    change = (after - before).abs().mean(0)
    present = {(obj.colour, obj.shape) for obj in scored_after.detected}
    return SteeringOutcome(
        fixed=(error.intended, error.shape) in present,
        score_before=scored_before.score,
        score_after=scored_after.score,
        change_inside=float(change[inside].mean()) if inside.any() else 0.0,
        change_outside=float(change[~inside].mean()) if (~inside).any() else 0.0,
    )


@dataclass(frozen=True)
class RepairSettings:
    layer: int = 3  # the traced feature's double block (the toy's last)
    step: int = 2  # the traced sampling step (of 12): colour is decided early
    budget: int = 150  # features the trace expands
    top: int = 5  # circuit features steered
    strength: float = -3.0  # the steered features' scale (0 ablates; negative reverses them)
    steps: StepChoice = "all steps"  # steer at the traced step only, or at every step


@dataclass
class Repair:
    error: BindingError
    feature: int  # the traced wrong-colour feature at img:{layer}
    graph: CircuitGraph
    after: dict[str, torch.Tensor]  # steering name -> the steered image [3, H, W]
    outcomes: dict[str, SteeringOutcome]


def random_steering_for(recording: FeatureRecording, error: BindingError, settings: RepairSettings,
                        generator: torch.Generator) -> SteeringSpec:
    """The control: `top` features drawn at random among those active in the object at the traced
    step and layer, scaled like the circuit's, at the same steps, inside the object."""
    assert recording.image_grid is not None
    weights = mask_to_token_weights(error.region, recording.image_grid)
    active = ((dense_codes(recording, settings.layer, settings.step)[error.index] * weights[:, None]).sum(0) > 0)
    candidates = active.nonzero().flatten()
    chosen = candidates[torch.randperm(len(candidates), generator=generator)[: settings.top]].tolist()
    return SteeringSpec(tuple(FeatureRef("img", settings.layer, f) for f in chosen), "scale", settings.strength,
                        mask=error.region, **_window(settings.steps, recording.schedule[settings.step]))


def repair(model: ToyModel, transcoders: TranscoderSet, recording: FeatureRecording, error: BindingError,
           selectivity: torch.Tensor, noise: torch.Tensor, before: torch.Tensor, settings: RepairSettings,
           control: torch.Generator | None = None) -> Repair:
    """Trace the error's wrong colour and steer its circuit, and the traced feature alone, from the
    image's own noise ([1, C, h, w]); `before` is the image as recorded. With `control`, also steer
    as many random features active in the object (drawn with that generator)."""
    feature = wrong_colour_feature(recording, error, selectivity, settings.layer, settings.step)
    graph = trace_wrong_colour(model, transcoders, recording, error, feature, layer=settings.layer,
                               step=settings.step, budget=settings.budget)
    specs: dict[str, SteeringSpec | CircuitSteering] = {
        "circuit": circuit_steering_for(graph, settings.top, settings.strength, settings.steps),
        "circuit in object": circuit_in_object_steering_for(graph, error, settings.top, settings.strength, settings.steps),
        "single feature": feature_steering_for(graph, error, settings.strength, settings.steps),
    }
    if control is not None:
        specs["random features"] = random_steering_for(recording, error, settings, control)
    after = {name: generate(model, [error.prompt], noise, transcoders=transcoders, steering=[spec])[0]
             for name, spec in specs.items()}
    return Repair(error, feature, graph, after, {name: compare(before, image, error) for name, image in after.items()})
