"""The toy world and its binding scorer, checked against the scenes' own ground truth."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from diffract_core.errors import DiffractError, InputShapeError
from diffract_core.toy import (
    COLOURS,
    SHAPES,
    Scene,
    find_objects,
    is_held_out,
    parse_prompt,
    render,
    sample_scene,
    scene_for,
    score_binding,
    score_prompt_set,
    shuffled_label_binding_errors,
)
from diffract_core.toy.scenes import (
    BACKGROUND,
    NEVER_ALONE,
    USUAL_COLOURS,
    all_prompts,
    held_out_prompts,
    is_swap,
    training_prompts,
)


def scenes(count: int, seed: int, **kw: float) -> list[Scene]:
    generator = torch.Generator().manual_seed(seed)
    return [sample_scene(generator, **kw) for _ in range(count)]


def pairs_of(scene: Scene) -> list[tuple[str, str]]:
    return [(o.colour, o.shape) for o in scene.objects]


def test_training_scenes_never_hold_a_held_out_prompt_and_cover_everything_else() -> None:
    training = scenes(10_000, 0)
    assert not any(is_held_out(pairs_of(s)) for s in training)
    prompts = {s.prompt for s in training}
    assert prompts == {p for p in all_prompts() if not is_held_out(parse_prompt(p))}
    two = [s for s in training if len(s.objects) == 2]
    usual = sum(all(c in USUAL_COLOURS[sh] for c, sh in pairs_of(s)) for s in two) / len(two)
    assert 0.5 < usual < 0.7  # half the two-object scenes by design, plus usual pairs drawn at random
    assert {tuple(o.slot for o in s.objects) for s in two} == {("left", "right"), ("right", "left")}
    assert {len(s.objects) for s in training} == {1, 2}


def test_held_out_prompts_are_the_swaps_and_the_objects_never_drawn_alone() -> None:
    swaps = held_out_prompts(24)
    assert len(set(swaps)) == 24 and all(is_swap(*parse_prompt(p)) for p in swaps)
    assert set(held_out_prompts(100)) == set(swaps)
    # "a blue circle and a red square" is held out; its swap, the usual pair, is not
    assert "a blue circle and a red square" in swaps and "a red circle and a blue square" not in swaps
    singles = held_out_prompts(3, objects=1)
    assert {tuple(parse_prompt(p)[0]) for p in singles} == set(NEVER_ALONE)
    assert not set(training_prompts(200)) & set(swaps)
    assert all(all(c in USUAL_COLOURS[s] for c, s in parse_prompt(p)) for p in training_prompts(20, usual=True))


def test_renders_hold_only_palette_colours_and_prompts_round_trip() -> None:
    palette = {BACKGROUND, *COLOURS.values()}
    for scene in scenes(50, 2):
        image = render(scene)
        assert image.shape == (3, 32, 32) and image.dtype == torch.uint8
        assert {tuple(p) for p in image.reshape(3, -1).T.tolist()} <= palette
        assert parse_prompt(scene.prompt) == pairs_of(scene)
    assert scene_for("an orange circle").prompt == "an orange circle"
    with pytest.raises(DiffractError, match="'a <colour> <shape>'"):
        parse_prompt("a teal circle")
    with pytest.raises(DiffractError, match="one or two"):
        parse_prompt("a red circle and a blue square and a green triangle")


def _every_layout() -> list[tuple[str, Scene]]:
    cases = []
    for prompt in all_prompts():
        if len(parse_prompt(prompt)) == 1:
            cases.append((prompt, scene_for(prompt)))
        else:
            cases += [(prompt, scene_for(prompt, first_slot=slot)) for slot in ("left", "right")]
    return cases


def test_the_scorer_is_exact_on_every_prompt_of_the_world_in_both_layouts() -> None:
    cases = _every_layout()
    assert any(is_held_out(parse_prompt(p)) for p, _ in cases)
    results = [score_binding(render(scene), prompt) for prompt, scene in cases]
    assert all(r.score == 1.0 and not r.binding_error for r in results)
    for (_, scene), result in zip(cases, results):
        slots = {o.expected: o.found.slot for o in result.objects}
        assert slots == {(o.colour, o.shape): o.slot for o in scene.objects}


def test_the_scorer_tolerates_noise_and_float_images() -> None:
    generator = torch.Generator().manual_seed(4)
    cases = scenes(200, 5)
    noisy = [(s.prompt, (render(s) / 255 + 0.04 * torch.randn(3, 32, 32, generator=generator)).clamp(0, 1))
             for s in cases]
    result = score_prompt_set(noisy)
    assert result.images == 200 and result.score >= 0.99 and result.binding_errors == 0


def test_an_object_in_the_other_colour_or_mixed_is_a_binding_error() -> None:
    prompt = "a blue circle and a red square"
    scene = scene_for(prompt)
    circle, square = scene.objects
    swapped = render(Scene((replace(circle, colour="red"), replace(square, colour="blue"))))
    result = score_binding(swapped, prompt)
    assert result.binding_error and result.correct == 0
    assert [o.binding_error for o in result.objects] == ["other colour", "other colour"]
    leaked = render(Scene((replace(circle, colour="red"), square)))
    assert [o.binding_error for o in score_binding(leaked, prompt).objects] == ["other colour", None]
    mixed = render(scene).clone()
    top = mixed[:, :15, :16]  # the upper rows of the circle: about 40 % of it
    mixed[:, :15, :16] = torch.where((top != 16).any(0), torch.tensor(COLOURS["red"], dtype=torch.uint8)[:, None, None],
                                     top)
    (circle_score, square_score) = score_binding(mixed, prompt).objects
    assert circle_score.binding_error == "mixed" and not circle_score.right and square_score.right
    wrong_colour = render(Scene((replace(circle, colour="green"), square)))  # not the other object's colour
    assert not score_binding(wrong_colour, prompt).binding_error
    blank = torch.zeros(3, 32, 32, dtype=torch.uint8)
    assert [o.colour for o in find_objects(blank, 2)] == [None, None] and not score_binding(blank, prompt).binding_error
    with pytest.raises(InputShapeError, match=r"\[3, H, W\].*permute"):
        find_objects(torch.zeros(1, 32, 32, 3), 1)
    with pytest.raises(InputShapeError, match="32 x 32"):
        score_binding(torch.zeros(3, 64, 64), prompt)


def test_the_shuffled_label_control_is_low_for_a_model_that_binds_by_the_words() -> None:
    """Images that swap every held-out prompt's colours: all binding errors under their own
    prompts, fewer under another image's prompt (some remain: every swapped image shows usual pairs,
    and so does half of what any other swap prompt asks)."""
    prompts = held_out_prompts(48)
    images = []
    for prompt in prompts:
        a, b = scene_for(prompt).objects
        images.append(render(Scene((replace(a, colour=b.colour), replace(b, colour=a.colour)))))
    images = torch.stack(images)
    own = score_prompt_set(zip(prompts, images)).binding_errors
    shuffled = shuffled_label_binding_errors(prompts, images, seed=0)
    assert own == 1.0 and 0.2 < shuffled < 0.8
    with pytest.raises(ValueError, match="too uniform"):
        shuffled_label_binding_errors(["a red circle"] * 3, images[:3])


def test_a_prompt_set_score_aggregates_per_image_scores() -> None:
    good = [s for s in scenes(20, 7, two_objects=1.0)][:3]
    pairs = [(s.prompt, render(s)) for s in good] + [(good[0].prompt, torch.zeros(3, 32, 32, dtype=torch.uint8))]
    result = score_prompt_set(pairs)
    assert result.score == pytest.approx(3 / 4) and result.exact == pytest.approx(3 / 4)
    with pytest.raises(ValueError, match="no images"):
        score_prompt_set([])


@pytest.mark.parametrize("shape", SHAPES)
def test_each_shape_is_told_from_the_others(shape: str) -> None:
    prompt = f"a red {shape}"
    result = score_binding(render(scene_for(prompt)), prompt)
    assert result.objects[0].found.shape == shape and result.objects[0].found.iou == 1.0
