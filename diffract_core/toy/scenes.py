"""Procedural scenes of one or two flat-coloured shapes on a dark background, and their prompts.

Shapes are drawn without anti-aliasing, so every object pixel has exactly its palette colour and a
scorer can be checked against ground truth exactly. `HELD_OUT` lists colour-shape pairs that
training scenes never contain: prompts with them are where binding errors are expected.
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
# One held-out pair per shape, each with its own colour: the model sees every colour and every shape,
# but never these together.
HELD_OUT: frozenset[tuple[str, str]] = frozenset({("yellow", "circle"), ("purple", "square"), ("orange", "triangle")})


@dataclass(frozen=True)
class ShapeObject:
    colour: str
    shape: str
    box: tuple[int, int, int, int]  # left, top, right, bottom (inclusive pixels)

    @property
    def phrase(self) -> str:
        return f"{'an' if self.colour[0] in 'aeiou' else 'a'} {self.colour} {self.shape}"


@dataclass(frozen=True)
class Scene:
    objects: tuple[ShapeObject, ...]
    size: int = 32

    @property
    def prompt(self) -> str:
        return " and ".join(obj.phrase for obj in self.objects)

    @property
    def held_out(self) -> bool:
        return any((obj.colour, obj.shape) in HELD_OUT for obj in self.objects)


def draw_shape(draw: ImageDraw.ImageDraw, shape: str, box: tuple[int, int, int, int], fill: object) -> None:
    left, top, right, bottom = box
    if shape == "square":
        draw.rectangle(box, fill=fill)
    elif shape == "circle":
        draw.ellipse(box, fill=fill)
    else:
        draw.polygon([((left + right) / 2, top), (right, bottom), (left, bottom)], fill=fill)


def shape_mask(shape: str, box: tuple[int, int, int, int], height: int, width: int) -> torch.Tensor:
    """bool [height, width]: the pixels `render` paints for this shape in this box."""
    image = Image.new("1", (width, height), 0)
    draw_shape(ImageDraw.Draw(image), shape, box, 1)
    return torch.from_numpy(np.asarray(image).copy())


def render(scene: Scene) -> torch.Tensor:
    """The scene as a uint8 image [3, size, size]."""
    image = Image.new("RGB", (scene.size, scene.size), BACKGROUND)
    draw = ImageDraw.Draw(image)
    for obj in scene.objects:
        draw_shape(draw, obj.shape, obj.box, COLOURS[obj.colour])
    return torch.from_numpy(np.asarray(image).copy()).permute(2, 0, 1)


def _overlaps(a: tuple[int, int, int, int], b: tuple[int, int, int, int], gap: int = 2) -> bool:
    return not (a[2] + gap < b[0] or b[2] + gap < a[0] or a[3] + gap < b[1] or b[3] + gap < a[1])


def sample_scene(
    generator: torch.Generator,
    *,
    size: int = 32,
    two_objects: float = 0.5,
    held_out: bool | None = False,
    min_object: int | None = None,
    max_object: int | None = None,
) -> Scene:
    """A random scene. `held_out`: False never uses a HELD_OUT pair (training), True uses at least
    one (the held-out prompt set), None either. Sizes and positions vary; objects never touch."""
    low = min_object or max(6, size // 4)
    high = max_object or max(low, size // 2)
    count = 2 if float(torch.rand((), generator=generator)) < two_objects else 1
    for _ in range(1000):
        objects: list[ShapeObject] = []
        while len(objects) < count:
            colour = list(COLOURS)[int(torch.randint(len(COLOURS), (), generator=generator))]
            shape = SHAPES[int(torch.randint(len(SHAPES), (), generator=generator))]
            side = int(torch.randint(low, high + 1, (), generator=generator))
            left = int(torch.randint(0, size - side + 1, (), generator=generator))
            top = int(torch.randint(0, size - side + 1, (), generator=generator))
            box = (left, top, left + side - 1, top + side - 1)
            if any(_overlaps(box, other.box) for other in objects):
                break
            objects.append(ShapeObject(colour, shape, box))
        scene = Scene(tuple(objects), size)
        if len(objects) == count and (held_out is None or scene.held_out == held_out):
            return scene
    raise DiffractError(f"could not place {count} objects of {low}..{high} px in a {size} px image; lower the sizes")


def phrase(colour: str, shape: str) -> str:
    return ShapeObject(colour, shape, (0, 0, 0, 0)).phrase


def all_prompts() -> list[str]:
    """Every prompt of the toy world: each object alone, and each ordered pair of two different ones."""
    objects = [(colour, shape) for colour in COLOURS for shape in SHAPES]
    single = [phrase(*obj) for obj in objects]
    return single + [f"{phrase(*a)} and {phrase(*b)}" for a in objects for b in objects if a != b]


def held_out_prompts(count: int, seed: int = 0) -> list[str]:
    """`count` prompts that name at least one HELD_OUT pair: a seeded order of all of them, repeated
    in a new order when more are asked for."""
    pool = [p for p in all_prompts() if any(pair in HELD_OUT for pair in parse_prompt(p))]
    chosen: list[str] = []
    round_ = 0
    while len(chosen) < count:
        order = torch.randperm(len(pool), generator=torch.Generator().manual_seed(seed * 1000 + round_))
        chosen += [pool[i] for i in order.tolist()]
        round_ += 1
    return chosen[:count]


_PHRASE = re.compile(r"^an? (\w+) (\w+)$")


def parse_prompt(prompt: str) -> list[tuple[str, str]]:
    """'a red circle and a blue square' -> [('red', 'circle'), ('blue', 'square')]."""
    pairs = []
    for phrase in prompt.strip().lower().split(" and "):
        match = _PHRASE.match(phrase.strip())
        if match is None or match[1] not in COLOURS or match[2] not in SHAPES:
            raise DiffractError(
                f"{phrase!r} is not a toy object; write 'a <colour> <shape>' with a colour in {sorted(COLOURS)} "
                f"and a shape in {list(SHAPES)}, joined by ' and '"
            )
        pairs.append((match[1], match[2]))
    return pairs
