"""A feature's dashboard from its atlas, as one picture and as text: its label, how often and how
strongly it fires in each sigma bucket, the prompt words most associated with it, and its top
examples (image crops, or a text feature's words in context)."""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image, ImageDraw

from ..features import FeatureRef
from ..render.plot import (
    BACKGROUND,
    INK,
    LABEL_SIZE,
    SERIES_COLOURS,
    TITLE_SIZE,
    _font,
    _line_height,
    _text_width,
    fit_text,
)
from .storage import Atlas, Example, FeatureStats

WIDTH = 640
PAD = 12
CROP_SIDE = 96  # crops are drawn this many pixels a side, pixel-sharp
BAR_WIDTH = 240
EXAMPLES = 6


def describe_feature(atlas: Atlas, ref: FeatureRef, examples: int = EXAMPLES) -> str:
    """The dashboard as lines of text (what the Explain Feature node shows)."""
    label, stats = atlas.label(ref), atlas.stats(ref)
    lines = [f"{ref}: {label.text} (confidence {label.confidence:.2f})",
             f"fired in {stats.prompts_fired} of {stats.prompts} prompts", "firing by sigma:"]
    lines += [f"  sigma {bucket}: {_bucket_text(stats, i)}" for i, bucket in enumerate(stats.buckets)]
    words = atlas.words(ref)
    if words:
        lines.append("prompt words: " + ", ".join(f"{word} (z {z:.1f})" for word, z in words))
    lines += ["top examples:", *(f"  {_example_text(example)}" for example in atlas.examples(ref)[:examples])]
    return "\n".join(lines)


def render_dashboard(atlas: Atlas, ref: FeatureRef, examples: int = EXAMPLES) -> torch.Tensor:
    """The dashboard as an image: float [H, W, 3] in [0, 1] (a ComfyUI IMAGE without its batch axis)."""
    label, stats, words = atlas.label(ref), atlas.stats(ref), atlas.words(ref)
    shown = atlas.examples(ref)[:examples]
    title_font, font = _font(TITLE_SIZE), _font(LABEL_SIZE)
    line, title_line = _line_height(font) + 4, _line_height(title_font) + 6
    crops = [example for example in shown if example.crop is not None]
    texts = [example for example in shown if example.crop is None]
    height = (PAD + 2 * title_line + line * (2 + len(stats.buckets) + bool(words) + 1 + len(texts))
              + (CROP_SIDE + 2 * line if crops else 0) + PAD)
    image = Image.new("RGB", (WIDTH, height), BACKGROUND)
    draw = ImageDraw.Draw(image)
    y = PAD
    draw.text((PAD, y), f"{ref}", fill=INK, font=title_font)
    y += title_line
    draw.text((PAD, y), f"{label.text}  (confidence {label.confidence:.2f})", fill=SERIES_COLOURS[0], font=title_font)
    y += title_line
    draw.text((PAD, y), f"fired in {stats.prompts_fired} of {stats.prompts} prompts; firing rate by sigma:",
              fill=INK, font=font)
    y += line
    peak = max(max(stats.firing_rate), 1e-12)
    label_width = max(_text_width(font, f"σ {bucket}") for bucket in stats.buckets) + 8
    for i, bucket in enumerate(stats.buckets):
        draw.text((PAD, y), f"σ {bucket}", fill=INK, font=font)
        left = PAD + label_width
        draw.rectangle((left, y + 2, left + BAR_WIDTH, y + line - 3), outline=(200, 200, 200))
        if stats.firing_rate[i] > 0:
            draw.rectangle((left, y + 2, left + round(BAR_WIDTH * stats.firing_rate[i] / peak), y + line - 3),
                           fill=SERIES_COLOURS[1])
        draw.text((left + BAR_WIDTH + 8, y), _bucket_text(stats, i), fill=INK, font=font)
        y += line
    if words:
        draw.text((PAD, y), "prompt words: " + ", ".join(f"{word} (z {z:.1f})" for word, z in words), fill=INK,
                  font=font)
        y += line
    draw.text((PAD, y + line // 2), "top examples:" if shown else "no examples: it never fired on the atlas's prompts",
              fill=INK, font=font)
    y += line + line // 2
    for i, example in enumerate(crops):
        left = PAD + i * (CROP_SIDE + PAD)
        if left + CROP_SIDE > WIDTH:
            break
        assert example.crop is not None
        tile = Image.fromarray(example.crop.permute(1, 2, 0).contiguous().numpy()).resize((CROP_SIDE, CROP_SIDE),
                                                                                         Image.NEAREST)
        image.paste(tile, (left, y))
        draw.text((left, y + CROP_SIDE + 2), f"{example.activation:.2f} @ step {example.step}", fill=INK, font=font)
        draw.text((left, y + CROP_SIDE + 2 + line), fit_text(example.prompt, font, CROP_SIDE), fill=INK, font=font)
    if crops:
        y += CROP_SIDE + 2 * line
    for example in texts:
        draw.text((PAD, y), fit_text(_example_text(example), font, WIDTH - 2 * PAD), fill=INK, font=font)
        y += line
    return torch.from_numpy(np.asarray(image).copy()).float() / 255


def _bucket_text(stats: FeatureStats, bucket: int) -> str:
    return (f"{100 * stats.firing_rate[bucket]:.1f} % of tokens, mean {stats.mean[bucket]:.3g}, "
            f"max {stats.max[bucket]:.3g}")


def _example_text(example: Example) -> str:
    where = f"'{example.token_string}' in '{' '.join(example.context or ())}'" if example.token_string is not None \
        else f"token {example.token}"
    return f"{example.activation:.3g} at step {example.step}, {where}: {example.prompt}"
