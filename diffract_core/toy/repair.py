"""From a binding error to a steered image: the toy's end-to-end use of recording, attribution and
steering, shared by the demo and the binding benchmark.

1. `binding_errors`: images where a shape the prompt asked for came out in another colour.
2. `colour_selectivity`: per colour, how much more each image feature fires on objects of that
   colour than elsewhere, measured on the recorded grid itself (the scorer labels the objects).
3. `trace_wrong_colour`: the wrong colour's most selective feature inside the wrong object is the
   target; its circuit is traced over the object's region at one step.
4. `circuit_steering_for` / `feature_steering_for`: the circuit's top features, or the target
   feature alone, scaled by the same strength at the traced step, where they fired.
5. `compare`: re-score the steered image and measure how much changed outside the object.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..attribution import CircuitGraph, TargetSpec, TraceSettings, trace_circuit
from ..attribution.steering import CircuitSteering, circuit_steering
from ..features import FeatureRef
from ..recording import FeatureRecording, SteeringSpec
from ..spatial import mask_to_token_weights
from ..transcoders.transcoder_set import TranscoderSet
from .binding import BindingScore, DetectedObject, score_binding
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
                       feature: int, *, layer: int, step: int, budget: int = 200) -> CircuitGraph:
    """The circuit of `feature` summed over the wrong object's region, at `step` of the recorded run."""
    call = recording.call_inputs(step).row(error.index)
    target = TargetSpec("img", layer, feature, "region", region=error.region)
    return trace_circuit(model.flux.double_blocks, transcoders, call, target, step=step,
                         settings=TraceSettings(max_feature_nodes=budget), check_top_k=8)


def circuit_steering_for(graph: CircuitGraph, top: int, strength: float) -> CircuitSteering:
    """The circuit's `top` most influential features scaled by `strength` at the traced step, where they fired."""
    return circuit_steering(graph, f"top {top}", mode="scale", strength=strength, steps="traced step")


def feature_steering_for(graph: CircuitGraph, error: BindingError, strength: float) -> SteeringSpec:
    """The target feature alone, scaled by the same strength at the same step, inside the object."""
    target = graph.metadata["target"]["feature"]
    stream, layer, index = target.split(":")
    sigma = float(graph.metadata["sigma"])
    return SteeringSpec((FeatureRef(stream, int(layer), int(index)),), "scale", strength,  # type: ignore[arg-type]
                        sigma_start=sigma, sigma_end=sigma, mask=error.region)


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
