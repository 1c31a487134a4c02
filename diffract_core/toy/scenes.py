"""The toy world: one or two flat-coloured shapes on a dark background, and their prompts.

Layout. A 32 px image holds one object in the centre (18 px) or two objects side by side (14 px,
in a left and a right slot). Sizes and places are fixed, so the toy can learn to draw each shape
cleanly; which of the two objects goes left is random and not said by the prompt, so the model
must bind each colour to its shape through the words themselves.

Co-occurrence. Each shape has two usual colours (`USUAL_COLOURS`). In two-object training scenes
both objects have their usual colour most of the time (`USUAL_SHARE`); otherwise any colours are
drawn, except the `held-out` combinations: the swaps of the usual pairs, such as "a blue circle and
a red square" (the same words as the frequent "a red circle and a blue square", bound the other
way). A model that leans on which words occur together, rather than on which word goes with which
shape, draws them swapped: a binding error, as text-to-image models make them. Three objects are
never drawn alone in training (`NEVER_ALONE`), the held-out single-object prompts.

Shapes are drawn without anti-aliasing, so every object pixel has exactly its palette colour and
the scorer can be checked against ground truth exactly.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image, ImageDraw

from ..errors import DiffractError

COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "green": (40, 180, 60),
    "blue": (50, 90, 230),
    "yellow": (235, 215, 40),
    "purple": (150, 60, 200),
    "orange": (245, 140, 30),
}
SHAPES: tuple[str, ...] = ("circle", "square", "triangle")
BACKGROUND = (16, 16, 16)
SIZE = 32
USUAL_COLOURS: dict[str, tuple[str, str]] = {"circle": ("red", "yellow"), "square": ("blue", "green"),
                                             "triangle": ("purple", "orange")}
USUAL_SHARE = 0.5  # two-object training scenes whose objects both have a usual colour
NEVER_ALONE: frozenset[tuple[str, str]] = frozenset({("green", "circle"), ("orange", "square"), ("red", "triangle")})
Box = tuple[int, int, int, int]  # left, top, right, bottom (inclusive pixels)
SLOTS: dict[str, Box] = {"centre": (7, 7, 24, 24), "left": (1, 9, 14, 22), "right": (17, 9, 30, 22)}
SLOT_COLUMNS: dict[str, tuple[int, int]] = {"centre": (0, SIZE), "left": (0, SIZE // 2), "right": (SIZE // 2, SIZE)}

Pair = tuple[str, str]  # (colour, shape)


@dataclass(frozen=True)
class ShapeObject:
    colour: str
    shape: str
    slot: str  # a key of SLOTS

    @property
    def box(self) -> Box:
        return SLOTS[self.slot]

    @property
    def phrase(self) -> str:
        return phrase(self.colour, self.shape)


@dataclass(frozen=True)
class Scene:
    objects: tuple[ShapeObject, ...]  # in prompt order

    @property
    def prompt(self) -> str:
        return " and ".join(obj.phrase for obj in self.objects)

    @property
    def held_out(self) -> bool:
        return is_held_out([(o.colour, o.shape) for o in self.objects])


def phrase(colour: str, shape: str) -> str:
    return f"{'an' if colour[0] in 'aeiou' else 'a'} {colour} {shape}"


def is_swap(first: Pair, second: Pair) -> bool:
    """Two objects each in a usual colour of the other's shape: a held-out combination."""
    return (first[1] != second[1] and first[0] in USUAL_COLOURS[second[1]]
            and second[0] in USUAL_COLOURS[first[1]])


def is_held_out(pairs: list[Pair]) -> bool:
    """A prompt training never shows: a swap, or a NEVER_ALONE object alone."""
    if len(pairs) == 1:
        return pairs[0] in NEVER_ALONE
    return is_swap(*pairs)


def draw_shape(draw: ImageDraw.ImageDraw, shape: str, box: Box, fill: object) -> None:
    left, top, right, bottom = box
    if shape == "square":
        draw.rectangle(box, fill=fill)
    elif shape == "circle":
        draw.ellipse(box, fill=fill)
    else:
        draw.polygon([((left + right) / 2, top), (right, bottom), (left, bottom)], fill=fill)


def shape_mask(shape: str, box: Box, height: int = SIZE, width: int = SIZE) -> torch.Tensor:
    """bool [height, width]: the pixels `render` paints for this shape in this box."""
    image = Image.new("1", (width, height), 0)
    draw_shape(ImageDraw.Draw(image), shape, box, 1)
    return torch.from_numpy(np.asarray(image).copy())


def render(scene: Scene) -> torch.Tensor:
    """The scene as a uint8 image [3, SIZE, SIZE]."""
    image = Image.new("RGB", (SIZE, SIZE), BACKGROUND)
    draw = ImageDraw.Draw(image)
    for obj in scene.objects:
        draw_shape(draw, obj.shape, obj.box, COLOURS[obj.colour])
    return torch.from_numpy(np.asarray(image).copy()).permute(2, 0, 1)


def _pick(generator: torch.Generator, options: tuple[str, ...] | list[str]) -> str:
    return options[int(torch.randint(len(options), (), generator=generator))]


def sample_scene(generator: torch.Generator, *, two_objects: float = 0.6, usual_share: float = USUAL_SHARE) -> Scene:
    """A training scene: never a held-out prompt. Two objects have different shapes and colours."""
    if float(torch.rand((), generator=generator)) >= two_objects:
        while True:
            pair = (_pick(generator, list(COLOURS)), _pick(generator, SHAPES))
            if pair not in NEVER_ALONE:
                return Scene((ShapeObject(*pair, "centre"),))
    first_shape = _pick(generator, SHAPES)
    second_shape = _pick(generator, [s for s in SHAPES if s != first_shape])
    if float(torch.rand((), generator=generator)) < usual_share:
        first = (_pick(generator, USUAL_COLOURS[first_shape]), first_shape)
        second = (_pick(generator, USUAL_COLOURS[second_shape]), second_shape)
    else:
        while True:
            first = (_pick(generator, list(COLOURS)), first_shape)
            second = (_pick(generator, [c for c in COLOURS if c != first[0]]), second_shape)
            if not is_swap(first, second):
                break
    slots = ("left", "right") if float(torch.rand((), generator=generator)) < 0.5 else ("right", "left")
    return Scene((ShapeObject(*first, slots[0]), ShapeObject(*second, slots[1])))


def scene_for(prompt: str, *, first_slot: str = "left") -> Scene:
    """The ground-truth scene of a prompt: one object in the centre, or the first object in
    `first_slot` ("left" or "right") and the second in the other."""
    pairs = parse_prompt(prompt)
    if len(pairs) == 1:
        return Scene((ShapeObject(*pairs[0], "centre"),))
    if first_slot not in ("left", "right"):
        raise DiffractError(f"first_slot is 'left' or 'right', not {first_slot!r}")
    other = "right" if first_slot == "left" else "left"
    return Scene((ShapeObject(*pairs[0], first_slot), ShapeObject(*pairs[1], other)))


def all_prompts() -> list[str]:
    """Every prompt of the toy world: each object alone, then each ordered pair of objects with
    different shapes and different colours."""
    objects = [(colour, shape) for colour in COLOURS for shape in SHAPES]
    single = [phrase(*obj) for obj in objects]
    return single + [f"{phrase(*a)} and {phrase(*b)}"
                     for a in objects for b in objects if a[0] != b[0] and a[1] != b[1]]


def held_out_prompts(count: int, seed: int = 0, *, objects: int = 2) -> list[str]:
    """`count` held-out prompts with `objects` objects (2: the swaps; 1: NEVER_ALONE objects): a
    seeded order of all of them, repeated in a new order when more are asked for."""
    pool = [p for p in all_prompts() if len(parse_prompt(p)) == objects and is_held_out(parse_prompt(p))]
    return _seeded_cycle(pool, count, seed)


def training_prompts(count: int, seed: int = 0, *, objects: int = 2, usual: bool | None = None) -> list[str]:
    """`count` prompts training scenes can hold, with `objects` objects (for two: only usual-colour
    pairs with `usual=True`, only the others with False, either with None)."""
    pool = [p for p in all_prompts() if len(parse_prompt(p)) == objects and not is_held_out(parse_prompt(p))]
    if objects == 2 and usual is not None:
        pool = [p for p in pool if all(c in USUAL_COLOURS[s] for c, s in parse_prompt(p)) == usual]
    return _seeded_cycle(pool, count, seed)


def _seeded_cycle(pool: list[str], count: int, seed: int) -> list[str]:
    chosen: list[str] = []
    round_ = 0
    while len(chosen) < count:
        order = torch.randperm(len(pool), generator=torch.Generator().manual_seed(seed * 1000 + round_))
        chosen += [pool[i] for i in order.tolist()]
        round_ += 1
    return chosen[:count]


_PHRASE = re.compile(r"^an? (\w+) (\w+)$")


def parse_prompt(prompt: str) -> list[Pair]:
    """'a red circle and a blue square' -> [('red', 'circle'), ('blue', 'square')]."""
    pairs = []
    for part in prompt.strip().lower().split(" and "):
        match = _PHRASE.match(part.strip())
        if match is None or match[1] not in COLOURS or match[2] not in SHAPES:
            raise DiffractError(
                f"{part!r} is not a toy object; write 'a <colour> <shape>' with a colour in {sorted(COLOURS)} "
                f"and a shape in {list(SHAPES)}, joined by ' and '"
            )
        pairs.append((match[1], match[2]))
    if len(pairs) > 2:
        raise DiffractError(f"{prompt!r} names {len(pairs)} objects; the toy draws one or two")
    return pairs
