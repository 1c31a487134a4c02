"""From a binding error to a steered image: the toy's use of recording, attribution and steering,
shared by the demo and the binding benchmark.

1. `binding_errors`: images where an object of the prompt came out in the other object's colour
   (or in both colours mixed).
2. `object_tokens`, `dense_codes`, `activation_in`: which image tokens each scored object covers,
   and what the recorded features do there (the benchmark's colour statistics build on them).
3. `trace_wrong_colour`: that feature's circuit, summed over the object's region at one step
   (optionally against the right colour's feature: a contrastive target).
4. `compare`: what a steered image changed, and whether the error is fixed: the object now has the
   prompt's colour over most of its own pixels (not a relabelled fragment), the other object is
   still right if it was (in a swap both objects are wrong, and one error is steered at a time),
   and the image outside the object barely changed.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..attribution import CircuitGraph, TargetSpec, TraceSettings, trace_circuit
from ..recording import FeatureRecording
from ..recording.call_inputs import CallInputs
from ..spatial import mask_to_token_weights
from ..transcoders.transcoder_set import TranscoderSet
from .binding import NAMES, BindingScore, colour_labels, score_binding
from .model import ToyModel
from .scenes import COLOURS, SLOTS, shape_mask

COLOUR_NAMES = tuple(COLOURS)
OUTSIDE_LIMIT = 0.03  # a fix may change the image outside the object by at most this (mean |change|, 0..1)
WHOLE = 0.5  # a fixed object covers at least this share of its ideal shape in its own colour


@dataclass(frozen=True)
class BindingError:
    index: int  # the image's row in the grid
    prompt: str
    shape: str
    intended: str  # the colour the prompt gave this shape
    drawn: str  # the other object's colour, which it came out in (or which it mixes in)
    kind: str  # "other colour" or "mixed"
    slot: str  # where the object is: "left" or "right"
    region: torch.Tensor  # float [H, W]: the object's pixels as drawn

    def describe(self) -> str:
        how = "came out" if self.kind == "other colour" else "came out mixed with"
        return f"{self.prompt!r}: the {self.shape} {how} {self.drawn} instead of {self.intended}"


def binding_errors(scores: list[BindingScore]) -> list[BindingError]:
    """Each image's first object with a binding error."""
    found = []
    for index, score in enumerate(scores):
        for number, obj in enumerate(score.objects):
            if obj.binding_error is None:
                continue
            other = score.objects[1 - number].expected[0]
            colour, shape = obj.expected
            found.append(BindingError(index, score.prompt, shape, colour, other, obj.binding_error, obj.found.slot,
                                      obj.found.mask.float()))
            break
    return found


def object_tokens(score: BindingScore, grid: tuple[int, int]) -> list[tuple[str | None, torch.Tensor]]:
    """Each detected object's colour and tokens (bool [rows * cols]; a token counts when half its
    pixels are the object's)."""
    return [(o.found.colour, mask_to_token_weights(o.found.mask.float(), grid) >= 0.5)
            for o in score.objects if o.found.area]


def dense_codes(recording: FeatureRecording, stream_layer: tuple[str, int], step: int) -> torch.Tensor:
    """The recorded features at one site and step, dense: [batch, tokens, features]."""
    codes = recording.codes(stream_layer, step)  # type: ignore[arg-type]
    dense = torch.zeros(*codes.indices.shape[:2], codes.d_features)
    return dense.scatter_add_(-1, codes.indices.long(), codes.values.float())


def activation_in(recording: FeatureRecording, layer: int, step: int, index: int, region: torch.Tensor) -> torch.Tensor:
    """[features]: each image feature's activation summed over a region (weighted by its token cover)."""
    assert recording.image_grid is not None
    weights = mask_to_token_weights(region, recording.image_grid)
    return (dense_codes(recording, ("img", layer), step)[index] * weights[:, None]).sum(0)


def trace_wrong_colour(model: ToyModel, transcoders: TranscoderSet, call: CallInputs, error: BindingError,
                       feature: int, *, layer: int, step: int, budget: int, against: int | None = None) -> CircuitGraph:
    """The circuit of `feature` summed over the wrong object's region in `call` (the error's image
    at `step`, e.g. `recording.call_inputs(step).row(error.index)`); with `against`, of `feature`
    minus that feature (the wrong colour against the right one)."""
    target = TargetSpec("img", layer, feature, "region", region=error.region, against=against)
    return trace_circuit(model.flux.double_blocks, transcoders, call, target, step=step,
                         settings=TraceSettings(max_feature_nodes=budget))


@dataclass(frozen=True)
class SteeringOutcome:
    fixed: bool  # the object now has its colour, whole; the other object kept; little else changed
    colour_share: float  # the object's share of pixels in the prompt's colour, after
    score_before: float
    score_after: float
    change_inside: float  # mean |after - before| over the object's region (0..1 per channel)
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
    target = next(o for o in scored_after.objects if o.expected == (error.intended, error.shape))
    other = next(o for o in scored_after.objects if o is not target)
    other_before = next(o for o in scored_before.objects if o.expected == other.expected)
    ideal = shape_mask(error.shape, SLOTS[error.slot])
    in_colour = colour_labels(after) == NAMES.index(error.intended)
    whole = float((in_colour & ideal).sum()) / float(ideal.sum())
    inside = error.region.bool() | ideal
    change = (after.float() - before.float()).abs().mean(0)
    change_outside = float(change[~inside].mean())
    fixed = (target.found.slot == error.slot and target.right and whole >= WHOLE
             and (other.right or not other_before.right) and change_outside <= OUTSIDE_LIMIT)
    return SteeringOutcome(
        fixed=fixed,
        colour_share=target.found.share(error.intended),
        score_before=scored_before.score,
        score_after=scored_after.score,
        change_inside=float(change[inside].mean()),
        change_outside=change_outside,
    )

