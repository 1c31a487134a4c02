"""A heat table of per-head values: one panel per step, layers down (layer 0 on top), heads across,
all panels on one colour scale (inferno for magnitudes; blue-white-red around 0 for signed effects)
with a colour bar, and the value written in each cell where it fits."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

from ..errors import InputShapeError
from .heatmaps import colorize

BACKGROUND = (250, 250, 247)
INK = (30, 30, 30)
MISSING = (200, 200, 200)
DIVERGING_ANCHORS = ((0.16, 0.35, 0.78), (1.0, 1.0, 1.0), (0.82, 0.24, 0.2))  # lower, 0, raise
MAX_WIDTH = 1600
MARGIN, GAP, LABEL_W, HEADER_H, TITLE_H, BAR_H = 12, 18, 34, 16, 22, 40
VALUE_CELL = 34  # cells at least this wide show their value


def _scale(values: torch.Tensor, diverging: bool) -> tuple[float, float]:
    finite = values[torch.isfinite(values)]
    if not len(finite):
        return 0.0, 1.0
    if diverging:
        bound = float(finite.abs().max()) or 1.0
        return -bound, bound
    low, high = float(finite.min()), float(finite.max())
    return (low, high) if high > low else (low, low + 1.0)


def _colours(values: torch.Tensor, low: float, high: float, diverging: bool) -> np.ndarray:
    unit = ((values.float() - low) / (high - low)).nan_to_num(0.0)
    rgb = colorize(unit, DIVERGING_ANCHORS) if diverging else colorize(unit)
    pixels = (rgb * 255).round().to(torch.uint8).numpy()
    pixels[~torch.isfinite(values).numpy()] = MISSING
    return pixels


def _format(value: float) -> str:
    if not math.isfinite(value):
        return ""
    return f"{value:.2f}" if abs(value) < 100 else f"{value:.0f}"


def render_head_table(values: torch.Tensor, step_titles: Sequence[str], title: str, *,
                      diverging: bool = False) -> torch.Tensor:
    """`values` [steps, layers, heads] as a ComfyUI IMAGE [1, H, W, 3] in [0, 1]."""
    if values.ndim != 3 or values.shape[0] != len(step_titles) or 0 in values.shape:
        raise InputShapeError(f"a head table takes [steps, layers, heads] values with one title per step, got "
                              f"{tuple(values.shape)} and {len(step_titles)} titles")
    steps, layers, heads = values.shape
    cell_w = max(10, min(48, (MAX_WIDTH - 2 * MARGIN) // max(1, heads) - 2))
    cell_h = max(10, min(24, cell_w))
    panel_w, panel_h = LABEL_W + heads * cell_w, HEADER_H * 2 + layers * cell_h
    per_row = max(1, min(steps, (MAX_WIDTH - 2 * MARGIN + GAP) // (panel_w + GAP)))
    panel_rows = -(-steps // per_row)
    width = max(2 * MARGIN + per_row * panel_w + (per_row - 1) * GAP, 360)
    height = MARGIN + TITLE_H + panel_rows * (panel_h + GAP) + BAR_H + MARGIN
    image = Image.new("RGB", (width, height), BACKGROUND)
    draw = ImageDraw.Draw(image)
    font = ImageFont.load_default()
    draw.text((MARGIN, MARGIN), title, fill=INK, font=font)
    low, high = _scale(values, diverging)
    colours = _colours(values, low, high, diverging)
    for step in range(steps):
        left = MARGIN + (step % per_row) * (panel_w + GAP)
        top = MARGIN + TITLE_H + (step // per_row) * (panel_h + GAP)
        draw.text((left + LABEL_W, top), step_titles[step], fill=INK, font=font)
        for head in range(heads):
            if cell_w >= 18 or head % 4 == 0:
                draw.text((left + LABEL_W + head * cell_w + 2, top + HEADER_H), f"h{head}", fill=INK, font=font)
        for layer in range(layers):
            y = top + 2 * HEADER_H + layer * cell_h
            if cell_h >= 12 or layer % 2 == 0:
                draw.text((left, y + (cell_h - 11) / 2), f"L{layer}", fill=INK, font=font)
            for head in range(heads):
                x = left + LABEL_W + head * cell_w
                colour = tuple(int(c) for c in colours[step, layer, head])
                draw.rectangle([x, y, x + cell_w - 2, y + cell_h - 2], fill=colour)
                if cell_w >= VALUE_CELL:
                    ink = INK if sum(colour) > 380 else (250, 250, 250)
                    draw.text((x + 2, y + (cell_h - 13) / 2), _format(float(values[step, layer, head])),
                              fill=ink, font=font)
    _colour_bar(image, draw, font, low, high, diverging, height - MARGIN - BAR_H)
    pixels = np.asarray(image, dtype=np.float32) / 255.0
    return torch.from_numpy(pixels.copy())[None]


def _colour_bar(image: Image.Image, draw: ImageDraw.ImageDraw, font: ImageFont.ImageFont, low: float, high: float,
                diverging: bool, top: int) -> None:
    length = min(320, image.width - 2 * MARGIN)
    ramp = torch.linspace(low, high, length)[None]
    strip = _colours(ramp, low, high, diverging)[0]
    bar = Image.fromarray(np.repeat(strip[None], 12, axis=0))
    image.paste(bar, (MARGIN, top + 14))
    draw.text((MARGIN, top), _format(low), fill=INK, font=font)
    right = _format(high)
    draw.text((MARGIN + length - font.getlength(right), top), right, fill=INK, font=font)
