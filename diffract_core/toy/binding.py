"""What a toy image shows in each slot, and whether it binds the prompt's colours to the right shapes.

Every pixel takes the nearest palette colour (or the background; pixels far from all of them are
ignored). A slot's object is every coloured pixel of its half of the image (the whole image for a
single object); its colour is the most common one, and its shape is the ideal drawing in the slot's
box that overlaps it best (intersection over union), or none when nothing overlaps well enough.

A two-object prompt's objects are matched to the slots by shape, since the prompt does not say
which goes left. A binding error is an object of the prompt drawn with its own shape but in the
other object's colour, or in both colours mixed.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from ..errors import InputShapeError, InvalidDataError
from .scenes import BACKGROUND, COLOURS, SHAPES, SIZE, SLOT_COLUMNS, SLOTS, Pair, parse_prompt, shape_mask

PALETTE = torch.tensor([BACKGROUND, *COLOURS.values()], dtype=torch.float32)  # index 0: background
NAMES = ("background", *COLOURS)
MIN_SHAPE_IOU = 0.6  # below this overlap with every ideal shape, a slot holds no recognisable shape
MOSTLY = 0.5  # an object "is" a colour when at least this share of its pixels has it
MIXED = 0.2  # ... and mixes two colours when each covers at least this share


@dataclass(frozen=True)
class DetectedObject:
    slot: str
    colour: str | None  # the most common colour of its pixels; None for an empty slot
    shares: dict[str, float]  # colour -> share of the object's pixels
    shape: str | None  # None: no ideal shape overlaps it by MIN_SHAPE_IOU
    iou: float  # the overlap with that shape's ideal drawing in the slot's box
    area: int
    mask: torch.Tensor = field(repr=False, compare=False)  # bool [H, W]: the object's pixels

    def share(self, colour: str) -> float:
        return self.shares.get(colour, 0.0)


def _as_rgb255(image: torch.Tensor) -> torch.Tensor:
    """[3, H, W] uint8, or float in [0, 1] -> float [H, W, 3] in 0..255."""
    if image.dim() != 3 or image.shape[0] != 3:
        raise InputShapeError(
            f"expected one RGB image [3, H, W], got shape {tuple(image.shape)}; for ComfyUI's IMAGE [B, H, W, 3] "
            "pass image[i].permute(2, 0, 1)"
        )
    scale = 1.0 if image.dtype == torch.uint8 else 255.0
    return image.permute(1, 2, 0).float() * scale


def colour_labels(image: torch.Tensor, tolerance: float = 80.0) -> torch.Tensor:
    """long [H, W]: each pixel's index in NAMES (0: background, or too far from every colour)."""
    pixels = _as_rgb255(image)
    size = tuple(pixels.shape[:2])
    if size != (SIZE, SIZE):
        raise InputShapeError(f"toy images are {SIZE} x {SIZE} px, got {size[1]} x {size[0]} (W x H)")
    # In numpy: at this size torch's cdist and min reductions cost 30-300x more (thread start-up).
    # squared: [colours, H, W]
    squared = ((pixels.detach().cpu().numpy()[None] - PALETTE.numpy()[:, None, None, :]) ** 2).sum(-1)
    labels = squared.argmin(0)
    near = np.take_along_axis(squared, labels[None], 0)[0] <= tolerance**2
    return torch.from_numpy(np.where(near, labels, 0))


def _ideal_masks(slot: str) -> dict[str, torch.Tensor]:
    return {shape: shape_mask(shape, SLOTS[slot]) for shape in SHAPES}


_IDEAL = {slot: _ideal_masks(slot) for slot in SLOTS}


def detect_slot(labels: torch.Tensor, slot: str) -> DetectedObject:
    """The object in one slot of a labelled image."""
    first, last = SLOT_COLUMNS[slot]
    mask = torch.zeros_like(labels, dtype=torch.bool)
    mask[:, first:last] = labels[:, first:last] > 0
    area = int(mask.sum())
    if area == 0:
        return DetectedObject(slot, None, {}, None, 0.0, 0, mask)
    counts = torch.bincount(labels[mask], minlength=len(NAMES))
    shares = {NAMES[i]: int(counts[i]) / area for i in range(1, len(NAMES)) if counts[i] > 0}
    overlaps = {shape: float((mask & ideal).sum()) / float((mask | ideal).sum())
                for shape, ideal in _IDEAL[slot].items()}
    best = max(overlaps, key=lambda shape: overlaps[shape])
    shape = best if overlaps[best] >= MIN_SHAPE_IOU else None
    return DetectedObject(slot, max(shares, key=lambda c: shares[c]), shares, shape, overlaps[best], area, mask)


def find_objects(image: torch.Tensor, objects: int, *, tolerance: float = 80.0) -> list[DetectedObject]:
    """The object of each slot: the centre for one object, left then right for two."""
    labels = colour_labels(image, tolerance)
    return [detect_slot(labels, slot) for slot in (("centre",) if objects == 1 else ("left", "right"))]


@dataclass(frozen=True)
class ObjectScore:
    expected: Pair
    found: DetectedObject  # the slot matched to it
    right: bool  # its shape, mostly its colour, and no binding error
    binding_error: str | None  # "other colour" or "mixed" (only for a recognisable object), else None


@dataclass(frozen=True)
class BindingScore:
    prompt: str
    objects: tuple[ObjectScore, ...]  # in prompt order

    @property
    def expected(self) -> tuple[Pair, ...]:
        return tuple(o.expected for o in self.objects)

    @property
    def correct(self) -> int:
        return sum(o.right for o in self.objects)

    @property
    def score(self) -> float:
        return self.correct / len(self.objects)

    @property
    def binding_error(self) -> bool:
        return any(o.binding_error is not None for o in self.objects)


def _score_object(expected: Pair, other: Pair | None, found: DetectedObject) -> ObjectScore:
    colour, shape = expected
    own = found.shape == shape
    error = None
    if own and other is not None and other[0] != colour:
        if found.share(other[0]) >= MOSTLY:
            error = "other colour"
        elif found.share(other[0]) >= MIXED and found.share(colour) >= MIXED:
            error = "mixed"
    return ObjectScore(expected, found, own and found.share(colour) >= MOSTLY and error is None, error)


def score_binding(image: torch.Tensor, prompt: str, *, tolerance: float = 80.0) -> BindingScore:
    expected = parse_prompt(prompt)
    found = find_objects(image, len(expected), tolerance=tolerance)
    if len(expected) == 1:
        return BindingScore(prompt, (_score_object(expected[0], None, found[0]),))

    def matches(order: Sequence[DetectedObject]) -> tuple[int, int]:
        return (sum(o.shape == e[1] for o, e in zip(order, expected)),
                sum(o.colour == e[0] for o, e in zip(order, expected)))

    order = found if matches(found) >= matches(found[::-1]) else found[::-1]
    return BindingScore(prompt, (_score_object(expected[0], expected[1], order[0]),
                                 _score_object(expected[1], expected[0], order[1])))


@dataclass
class PromptSetScore:
    images: int
    score: float  # mean share of the prompts' objects drawn right (shape, and mostly the colour)
    exact: float  # share of images with every object right
    binding_errors: float  # share of images with an object in the other's colour or mixed
    per_image: list[BindingScore] = field(default_factory=list)


def score_prompt_set(pairs: Iterable[tuple[str, torch.Tensor]], *, tolerance: float = 80.0) -> PromptSetScore:
    scores = [score_binding(image, prompt, tolerance=tolerance) for prompt, image in pairs]
    if not scores:
        raise InvalidDataError("no images to score")
    n = len(scores)
    return PromptSetScore(
        images=n,
        score=sum(s.score for s in scores) / n,
        exact=sum(s.correct == len(s.objects) for s in scores) / n,
        binding_errors=sum(s.binding_error for s in scores) / n,
        per_image=scores,
    )


def shuffled_label_binding_errors(prompts: Sequence[str], images: torch.Tensor, seed: int = 0) -> float:
    """The control for binding errors: the share of images with a binding error when each is
    scored against another image's prompt (a seeded shuffle in which no image gets a prompt of its
    own text). What a model that ignored how the words are bound would score."""
    n = len(prompts)
    counts = Counter(prompts)
    largest = max(counts.values())
    if len(counts) < 2 or 2 * largest > n:
        raise InvalidDataError(
            "the prompts are too uniform to shuffle: give at least two different prompts, none in a majority"
        )
    generator = torch.Generator().manual_seed(seed)
    names = sorted(counts)
    group = dict(zip(names, torch.randperm(len(names), generator=generator).tolist()))
    noise = torch.rand(n, generator=generator).tolist()
    order = sorted(range(n), key=lambda i: (group[prompts[i]], noise[i]))
    # Shifting a grouped order by the largest group never lands in the same group.
    partner = {order[pos]: order[(pos + largest) % n] for pos in range(n)}
    return sum(score_binding(images[i], prompts[partner[i]]).binding_error for i in range(n)) / n
