"""The binding-repair steps on hand-made scenes and recordings, where the right answer is known."""

from __future__ import annotations

from dataclasses import replace

import torch

from diffract_core.recording import FeatureRecording
from diffract_core.recording.recording import RecordKey
from diffract_core.toy import Scene, render, scene_for, score_binding
from diffract_core.toy.binding_benchmark import ColourStats
from diffract_core.toy.repair import (
    COLOUR_NAMES,
    OUTSIDE_LIMIT,
    activation_in,
    binding_errors,
    compare,
    object_tokens,
)
from diffract_core.transcoders.transcoder import SparseCodes

PROMPT = "a blue circle and a red square"  # a held-out swap: the circle on the left, the square on the right


def _image(circle: str, square: str) -> torch.Tensor:
    circle_obj, square_obj = scene_for(PROMPT).objects
    return render(Scene((replace(circle_obj, colour=circle), replace(square_obj, colour=square)))).float() / 255


def test_an_object_in_the_other_colour_is_the_error_and_its_pixels_the_region() -> None:
    scores = [score_binding(_image("blue", "red"), PROMPT), score_binding(_image("red", "red"), PROMPT)]
    (error,) = binding_errors(scores)
    assert (error.index, error.shape, error.intended, error.drawn, error.kind, error.slot) == (
        1, "circle", "blue", "red", "other colour", "left")
    assert error.region.shape == (32, 32) and error.region[:, :16].sum() > 100 and error.region[:, 16:].sum() == 0
    assert "came out red instead of blue" in error.describe()


def test_a_whole_fix_that_only_touches_the_object_is_fixed() -> None:
    before, after = _image("red", "red"), _image("blue", "red")
    (error,) = binding_errors([score_binding(before, PROMPT)])
    outcome = compare(before, after, error)
    assert outcome.fixed and (outcome.score_before, outcome.score_after) == (0.5, 1.0)
    assert outcome.change_outside == 0.0 and outcome.change_inside > 0.3 and outcome.precision == 1.0
    assert not compare(before, before, error).fixed


def test_a_fragment_a_broken_neighbour_or_a_changed_background_is_not_a_fix() -> None:
    before = _image("red", "red")
    (error,) = binding_errors([score_binding(before, PROMPT)])
    fragment = _image("blue", "red")
    fragment[:, 9:20, 1:15] = torch.tensor([16 / 255] * 3)[:, None, None]  # most of the circle erased
    assert not compare(before, fragment, error).fixed
    broken = _image("blue", "blue")  # the square turned blue too
    assert not compare(before, broken, error).fixed
    noisy = _image("blue", "red")
    noisy[:, 24:, :] += 4 * OUTSIDE_LIMIT  # the background below the objects changed
    outcome = compare(before, noisy.clamp(0, 1), error)
    assert outcome.change_outside > OUTSIDE_LIMIT and not outcome.fixed


def _recording() -> tuple[FeatureRecording, list]:
    """Feature 3 fires on red objects, feature 5 on every token, feature 6 on the circle's tokens:
    red's selective feature is 3."""
    images = [_image("blue", "red"), _image("red", "red")]
    scores = [score_binding(image, PROMPT) for image in images]
    recording = FeatureRecording(sites=(("img", 0),), k=3)
    recording.start_run((1.0, 0.0))
    recording.note_layout((8, 8), None)  # 4 x 4 px tokens
    indices = torch.tensor([3, 5, 6]).expand(2, 64, 3).clone()
    values = torch.zeros(2, 64, 3)
    values[..., 1] = 1.0
    (_, circle), (_, square) = object_tokens(scores[0], (8, 8))
    values[0, square, 0] = 2.0
    values[1, square | circle, 0] = 2.0
    values[:, circle, 2] = 1.0
    recording.add(RecordKey("img", 0, 1.0, 0), SparseCodes(indices, values, d_features=8))
    return recording, scores


def test_the_wrong_colours_selective_feature_is_found_against_objects_of_other_colours() -> None:
    recording, scores = _recording()
    stats = ColourStats.empty(8)
    stats.add(recording, scores, layer=0, step=0)
    selectivity = stats.selectivity()
    assert float(selectivity[COLOUR_NAMES.index("red"), 3]) == 2.0
    assert abs(float(selectivity[COLOUR_NAMES.index("red"), 5])) < 1e-6  # fires everywhere: no colour's
    assert float(selectivity[COLOUR_NAMES.index("blue"), 3]) < 0
    assert float(selectivity[COLOUR_NAMES.index("red"), 6]) < 0  # a circle feature, and the blue object is a circle
    (error,) = binding_errors(scores)
    activity = activation_in(recording, 0, 0, error.index, error.region)
    assert stats.selective("red", activity, k=3) == [3]
