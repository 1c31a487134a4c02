"""How well the toy draws its world: prompt sets of each kind sampled and scored, with 95 % intervals,
and contact sheets to look at."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from PIL import Image, ImageDraw

from .binding import PromptSetScore, score_prompt_set, shuffled_label_binding_errors
from .generate import generate, toy_noise
from .model import ToyModel
from .scenes import held_out_prompts, training_prompts


def prompt_sets(count: int, seed: int = 0) -> dict[str, list[str]]:
    """The toy's prompt sets, `count` prompts each (the NEVER_ALONE singles: a third of that)."""
    return {
        "one object, training": training_prompts(count, seed, objects=1),
        "one object, held out": held_out_prompts(max(3, count // 3), seed, objects=1),
        "two objects, usual colours, training": training_prompts(count, seed, usual=True),
        "two objects, other colours, training": training_prompts(count, seed, usual=False),
        "two objects, held out (swaps)": held_out_prompts(count, seed),
    }


def wilson(successes: float, n: int, z: float = 1.96) -> tuple[float, float]:
    """95 % Wilson score interval of a proportion."""
    if n == 0:
        return math.nan, math.nan
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


@dataclass
class SetQuality:
    name: str
    prompts: list[str]
    images: torch.Tensor
    score: PromptSetScore
    shuffled_binding_errors: float | None  # two-object sets: the shuffled-label control

    def row(self) -> dict[str, object]:
        n = self.score.images
        exact = self.score.exact
        binding = self.score.binding_errors
        return {"set": self.name, "images": n, "objects_right": self.score.score, "all_right": exact,
                "all_right_ci": wilson(exact * n, n), "binding_errors": binding,
                "binding_errors_ci": wilson(binding * n, n), "shuffled_binding_errors": self.shuffled_binding_errors}


def measure_quality(model: ToyModel, count: int, seed: int = 0, batch: int = 100) -> list[SetQuality]:
    """Every prompt set sampled once per prompt (seeded noise) and scored."""
    results = []
    for name, prompts in prompt_sets(count, seed).items():
        noise = toy_noise([seed * 100_000 + i for i in range(len(prompts))])
        images = torch.cat([generate(model, prompts[i : i + batch], noise[i : i + batch])
                            for i in range(0, len(prompts), batch)])
        shuffled = shuffled_label_binding_errors(prompts, images, seed) if "two" in name else None
        results.append(SetQuality(name, prompts, images, score_prompt_set(zip(prompts, images)), shuffled))
    return results


def contact_sheet(images: torch.Tensor, captions: list[str] | None = None, *, scale: int = 4,
                  columns: int = 8) -> Image.Image:
    """Images [B, 3, H, W] in [0, 1] enlarged `scale` times without smoothing, in a grid, each
    with an optional caption under it."""
    count, _, height, width = images.shape
    cell_w, text_h = width * scale, (12 if captions else 0)
    rows = -(-count // columns)
    sheet = Image.new("RGB", (columns * (cell_w + 4) + 4, rows * (height * scale + text_h + 4) + 4), (48, 48, 48))
    draw = ImageDraw.Draw(sheet)
    pixels = (images.clamp(0, 1) * 255).round().byte().permute(0, 2, 3, 1).cpu().numpy()
    for i in range(count):
        left = 4 + (i % columns) * (cell_w + 4)
        top = 4 + (i // columns) * (height * scale + text_h + 4)
        sheet.paste(Image.fromarray(pixels[i]).resize((cell_w, height * scale), Image.NEAREST), (left, top))
        if captions:
            draw.text((left, top + height * scale), captions[i][: cell_w // 6], fill=(230, 230, 230))
    return sheet
