"""Which coloured shapes an image shows, and whether it binds the prompt's colours to the right shapes.

Every pixel takes the nearest palette colour (or the background; pixels far from all of them are
ignored); each 4-connected region of one colour is an object; its shape is the one whose ideal
drawing in the region's bounding box overlaps the region best (intersection over union), which is
exact on rendered scenes and degrades gracefully on the ragged shapes a model draws.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field

import torch

from ..errors import InputShapeError
from .scenes import BACKGROUND, COLOURS, SHAPES, parse_prompt, shape_mask

PALETTE = torch.tensor([BACKGROUND, *COLOURS.values()], dtype=torch.float32)  # index 0: background
NAMES = ("background", *COLOURS)


@dataclass(frozen=True)
class DetectedObject:
    colour: str
    shape: str
    box: tuple[int, int, int, int]  # left, top, right, bottom (inclusive)
    area: int
    mask: torch.Tensor = field(repr=False, compare=False)  # bool [H, W]: the object's pixels


def _as_rgb255(image: torch.Tensor) -> torch.Tensor:
    """[3, H, W] uint8, or float in [0, 1] -> float [H, W, 3] in 0..255."""
    if image.dim() != 3 or image.shape[0] != 3:
        raise InputShapeError(
            f"expected one RGB image [3, H, W], got shape {tuple(image.shape)}; for ComfyUI's IMAGE [B, H, W, 3] "
            "pass image[i].permute(2, 0, 1)"
        )
    scale = 1.0 if image.dtype == torch.uint8 else 255.0
    return image.permute(1, 2, 0).float() * scale


def _components(labels: torch.Tensor) -> list[tuple[int, list[tuple[int, int]]]]:
    """4-connected regions of equal non-zero label: (label, pixels)."""
    height, width = labels.shape
    grid = labels.tolist()
    seen = [[False] * width for _ in range(height)]
    regions = []
    for row in range(height):
        for col in range(width):
            label = grid[row][col]
            if label == 0 or seen[row][col]:
                continue
            seen[row][col] = True
            stack, pixels = [(row, col)], []
            while stack:
                r, c = stack.pop()
                pixels.append((r, c))
                for rr, cc in ((r + 1, c), (r - 1, c), (r, c + 1), (r, c - 1)):
                    if 0 <= rr < height and 0 <= cc < width and not seen[rr][cc] and grid[rr][cc] == label:
                        seen[rr][cc] = True
                        stack.append((rr, cc))
            regions.append((label, pixels))
    return regions


def _iou(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a & b).sum()) / max(float((a | b).sum()), 1.0)


def find_objects(image: torch.Tensor, *, tolerance: float = 80.0, min_area: int = 6) -> list[DetectedObject]:
    """The objects in an image, largest first. `tolerance`: how far (RGB, 0..255) a pixel may be
    from its palette colour; `min_area`: smaller regions are noise."""
    pixels = _as_rgb255(image)
    distance = torch.cdist(pixels.reshape(-1, 3), PALETTE).reshape(*pixels.shape[:2], len(PALETTE))
    nearest, labels = distance.min(-1)
    labels = torch.where(nearest <= tolerance, labels, torch.zeros_like(labels))
    found = []
    for label, region in _components(labels):
        if len(region) < min_area:
            continue
        rows = [r for r, _ in region]
        cols = [c for _, c in region]
        box = (min(cols), min(rows), max(cols), max(rows))
        mask = torch.zeros(labels.shape, dtype=torch.bool)
        mask[rows, cols] = True
        shape = max(SHAPES, key=lambda candidate: _iou(mask, shape_mask(candidate, box, *mask.shape)))
        found.append(DetectedObject(NAMES[label], shape, box, len(region), mask))
    return sorted(found, key=lambda obj: -obj.area)


@dataclass(frozen=True)
class BindingScore:
    prompt: str
    expected: tuple[tuple[str, str], ...]
    detected: tuple[DetectedObject, ...]
    correct: int  # expected (colour, shape) pairs present
    binding_error: bool  # a missing pair whose colour and shape both appear, on other objects

    @property
    def score(self) -> float:
        return self.correct / len(self.expected)


def score_binding(image: torch.Tensor, prompt: str, **detect: float) -> BindingScore:
    expected = parse_prompt(prompt)
    detected = find_objects(image, **detect)
    seen = Counter((obj.colour, obj.shape) for obj in detected)
    missing = Counter(expected) - seen
    colours = {obj.colour for obj in detected}
    shapes = {obj.shape for obj in detected}
    return BindingScore(
        prompt=prompt,
        expected=tuple(expected),
        detected=tuple(detected),
        correct=len(expected) - sum(missing.values()),
        binding_error=any(colour in colours and shape in shapes for colour, shape in missing),
    )


@dataclass
class PromptSetScore:
    images: int
    score: float  # mean fraction of the prompts' objects drawn with the right colour and shape
    exact: float  # share of images with every object right
    binding_errors: float  # share of images with a colour on the wrong shape
    per_image: list[BindingScore] = field(default_factory=list)


def score_prompt_set(pairs: Iterable[tuple[str, torch.Tensor]], **detect: float) -> PromptSetScore:
    scores = [score_binding(image, prompt, **detect) for prompt, image in pairs]
    if not scores:
        raise ValueError("no images to score")
    n = len(scores)
    return PromptSetScore(
        images=n,
        score=sum(s.score for s in scores) / n,
        exact=sum(s.correct == len(s.expected) for s in scores) / n,
        binding_errors=sum(s.binding_error for s in scores) / n,
        per_image=scores,
    )
