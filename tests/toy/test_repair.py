"""The binding-repair steps on hand-made scenes and recordings, where the right answer is known."""

from __future__ import annotations

import torch

from diffract_core.recording import FeatureRecording
from diffract_core.recording.recording import RecordKey
from diffract_core.toy import Scene, ShapeObject, render, score_binding
from diffract_core.toy.repair import COLOUR_NAMES, binding_errors, colour_selectivity, compare, wrong_colour_feature
from diffract_core.transcoders.transcoder import SparseCodes

PROMPT = "a yellow circle and a blue square"


def _image(circle: str, square: str) -> torch.Tensor:
    scene = Scene((ShapeObject(circle, "circle", (0, 0, 7, 7)), ShapeObject(square, "square", (8, 8, 15, 15))), size=16)
    return render(scene).float() / 255


def test_a_shape_in_the_wrong_colour_is_the_error_and_its_pixels_the_region() -> None:
    scores = [score_binding(_image("yellow", "blue"), PROMPT), score_binding(_image("blue", "blue"), PROMPT)]
    (error,) = binding_errors(scores)
    assert (error.index, error.shape, error.intended, error.drawn) == (1, "circle", "yellow", "blue")
    assert error.region.shape == (16, 16) and error.region[:8, :8].sum() > 30 and error.region[8:, 8:].sum() == 0


def test_a_fix_that_only_touches_the_object_has_precision_one() -> None:
    before, after = _image("blue", "blue"), _image("yellow", "blue")
    (error,) = binding_errors([score_binding(before, PROMPT)])
    outcome = compare(before, after, error)
    assert outcome.fixed and (outcome.score_before, outcome.score_after) == (0.5, 1.0)
    assert outcome.change_outside == 0.0 and outcome.change_inside > 0 and outcome.precision == 1.0
    unchanged = compare(before, before, error)
    assert not unchanged.fixed and unchanged.change_inside == 0.0


def test_the_wrong_colours_selective_feature_is_found() -> None:
    """Feature 3 fires on blue objects, feature 5 on every token: blue's selective feature is 3."""
    images = [_image("yellow", "blue"), _image("blue", "blue")]
    scores = [score_binding(image, PROMPT) for image in images]
    recording = FeatureRecording(sites=(("img", 0),), k=2)
    recording.start_run((1.0, 0.0))
    recording.note_layout((4, 4), None)
    indices = torch.tensor([3, 5]).expand(2, 16, 2).clone()
    values = torch.zeros(2, 16, 2)
    values[..., 1] = 1.0
    blue_tokens = {0: [10, 11, 14, 15], 1: [0, 1, 4, 5, 10, 11, 14, 15]}  # 4 x 4 px tokens of the blue objects
    for row, tokens in blue_tokens.items():
        values[row, tokens, 0] = 2.0
    recording.add(RecordKey("img", 0, 1.0, 0), SparseCodes(indices, values, d_features=8))
    selectivity = colour_selectivity(recording, scores, layer=0, step=0)
    assert float(selectivity[COLOUR_NAMES.index("blue"), 3]) == 2.0
    assert abs(float(selectivity[COLOUR_NAMES.index("blue"), 5])) < 1e-6
    assert float(selectivity[COLOUR_NAMES.index("yellow"), 3]) < 0
    (error,) = binding_errors(scores)
    assert wrong_colour_feature(recording, error, selectivity, layer=0, step=0) == 3
