"""Toy scenes and the binding scorer, checked against the scenes' own ground truth."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from diffract_core.errors import DiffractError, InputShapeError
from diffract_core.toy import (
    COLOURS,
    HELD_OUT,
    SHAPES,
    Scene,
    find_objects,
    parse_prompt,
    render,
    sample_scene,
    score_binding,
    score_prompt_set,
)
from diffract_core.toy.scenes import BACKGROUND


def scenes(count: int, seed: int, **kw: object) -> list[Scene]:
    generator = torch.Generator().manual_seed(seed)
    return [sample_scene(generator, **kw) for _ in range(count)]  # type: ignore[arg-type]


def test_training_scenes_never_hold_a_held_out_pair_and_the_held_out_set_always_does() -> None:
    training = scenes(1000, 0)
    pairs = {(o.colour, o.shape) for s in training for o in s.objects}
    assert not pairs & HELD_OUT
    assert pairs == {(c, s) for c in COLOURS for s in SHAPES} - HELD_OUT  # everything else is seen
    held = scenes(300, 1, held_out=True)
    assert all(any((o.colour, o.shape) in HELD_OUT for o in s.objects) for s in held)
    counts = {len(s.objects) for s in training}
    sizes = {o.box[2] - o.box[0] for s in training for o in s.objects}
    corners = {o.box[:2] for s in training for o in s.objects}
    assert counts == {1, 2} and len(sizes) > 5 and len(corners) > 100


def test_renders_hold_only_palette_colours_and_prompts_round_trip() -> None:
    palette = {BACKGROUND, *COLOURS.values()}
    for scene in scenes(50, 2, size=64):
        image = render(scene)
        assert image.shape == (3, 64, 64) and image.dtype == torch.uint8
        assert {tuple(p) for p in image.reshape(3, -1).T.tolist()} <= palette
        assert parse_prompt(scene.prompt) == [(o.colour, o.shape) for o in scene.objects]
    assert Scene((replace(scene.objects[0], colour="orange"),)).prompt.startswith("an orange ")
    with pytest.raises(DiffractError, match="'a <colour> <shape>'"):
        parse_prompt("a teal circle")


@pytest.mark.parametrize("size", [32, 64])
def test_the_scorer_finds_every_object_of_ground_truth_renders(size: int) -> None:
    cases = scenes(400, 3, size=size, held_out=None)
    right = 0
    for scene in cases:
        result = score_binding(render(scene), scene.prompt)
        truth = sorted((o.colour, o.shape, o.box) for o in scene.objects)
        right += sorted((o.colour, o.shape, o.box) for o in result.detected) == truth
    assert right / len(cases) >= 0.99
    assert any(s.held_out for s in cases) and any(not s.held_out for s in cases)


def test_the_scorer_tolerates_noise_and_float_images() -> None:
    generator = torch.Generator().manual_seed(4)
    cases = scenes(200, 5)
    noisy = [(s.prompt, (render(s) / 255 + 0.04 * torch.randn(3, 32, 32, generator=generator)).clamp(0, 1)) for s in cases]
    result = score_prompt_set(noisy)
    assert result.images == 200 and result.score >= 0.99 and result.binding_errors == 0


def test_swapped_colours_are_binding_errors() -> None:
    checked = 0
    for scene in scenes(200, 6, two_objects=1.0):
        a, b = scene.objects
        if a.colour == b.colour or a.shape == b.shape:
            continue
        swapped = Scene((replace(a, colour=b.colour), replace(b, colour=a.colour)), scene.size)
        result = score_binding(render(swapped), scene.prompt)
        assert result.binding_error and result.correct == 0 and result.score == 0.0
        checked += 1
    assert checked > 50
    blank = torch.zeros(3, 32, 32, dtype=torch.uint8)
    assert find_objects(blank) == [] and not score_binding(blank, "a red circle").binding_error
    with pytest.raises(InputShapeError, match=r"\[3, H, W\].*permute"):
        find_objects(torch.zeros(1, 32, 32, 3))


def test_a_prompt_set_score_aggregates_per_image_scores() -> None:
    good = scenes(3, 7, two_objects=1.0)
    pairs = [(s.prompt, render(s)) for s in good] + [(good[0].prompt, torch.zeros(3, 32, 32, dtype=torch.uint8))]
    result = score_prompt_set(pairs)
    assert result.score == pytest.approx(3 / 4) and result.exact == pytest.approx(3 / 4)
    with pytest.raises(ValueError, match="no images"):
        score_prompt_set([])
