"""Line charts as PIL images, with Pillow alone (no plotting library), e.g. a sparsity-vs-faithfulness sweep.

A chart maps data to pixels through a :class:`ChartLayout` (ranges padded by 5%, optionally a log x
axis), draws nice round ticks, one polyline per series with a marker at every point, and a legend in
the plot corner that hides the fewest points. `side_by_side` puts several charts in one image.
"""

from __future__ import annotations

import functools
import itertools
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from PIL import Image, ImageDraw, ImageFont, features

from ..errors import InvalidDataError, SettingsError

Series = Mapping[str, Sequence[tuple[float, float]]]
Font = ImageFont.FreeTypeFont | ImageFont.ImageFont

BACKGROUND = (255, 255, 255)
INK = (40, 40, 40)
GRID = (228, 228, 228)
# Okabe-Ito, without its yellow (too faint on white); the first two differ in hue and lightness.
SERIES_COLOURS: tuple[tuple[int, int, int], ...] = (
    (0, 114, 178),  # blue
    (213, 94, 0),  # vermillion
    (0, 158, 115),  # bluish green
    (204, 121, 167),  # reddish purple
    (230, 159, 0),  # orange
    (86, 180, 233),  # sky blue
    (0, 0, 0),  # black
)
PAD_FRACTION = 0.05
MARKER_RADIUS = 4
LINE_WIDTH = 2
TICK_LENGTH = 5
LABEL_SIZE, TITLE_SIZE = 10, 14
MIN_PLOT = (60, 40)


@dataclass(frozen=True)
class ChartLayout:
    """How data coordinates map to pixels in one chart; plot_box is (left, top, right, bottom)."""

    x_range: tuple[float, float]
    y_range: tuple[float, float]
    log_x: bool
    plot_box: tuple[int, int, int, int]

    def to_pixel(self, x: float, y: float) -> tuple[float, float]:
        """The (column, row) of a data point; rows grow downwards, so a larger y gets a smaller row."""
        left, top, right, bottom = self.plot_box
        x0, x1 = self.x_range
        if self.log_x:
            x, x0, x1 = math.log10(x), math.log10(x0), math.log10(x1)
        y0, y1 = self.y_range
        return left + (x - x0) / (x1 - x0) * (right - left), bottom - (y - y0) / (y1 - y0) * (bottom - top)


def chart_layout(series: Series, *, log_x: bool = False, size: tuple[int, int] = (640, 420)) -> ChartLayout:
    """The layout `line_chart` draws `series` with: checked data, padded ranges, and margins for the text."""
    points = _checked_points(series, log_x)
    xs = [x for x, _ in points]
    ys = [y for _, y in points]
    x_range = _padded_log(min(xs), max(xs)) if log_x else _padded(min(xs), max(xs))
    y_range = _padded(min(ys), max(ys))

    width, height = size
    label_font, title_font = _font(LABEL_SIZE), _font(TITLE_SIZE)
    line, title_line = _line_height(label_font), _line_height(title_font)
    widest_y_tick = max(_text_width(label_font, label) for _, label in _ticks(*y_range, log=False))
    left = 8 + line + 8 + widest_y_tick + 3 + TICK_LENGTH
    top = 10 + title_line + 10
    right = width - 20
    bottom = height - (TICK_LENGTH + 3 + line + 8 + line + 8)
    if right - left < MIN_PLOT[0] or bottom - top < MIN_PLOT[1]:
        raise SettingsError(
            f"a {width}x{height} chart leaves no room to plot after the axis labels and title: "
            f"make it at least {width + MIN_PLOT[0] - (right - left)}x{height + MIN_PLOT[1] - (bottom - top)}"
        )
    return ChartLayout(x_range, y_range, log_x, (left, top, right, bottom))


def line_chart(
    series: Series,
    *,
    title: str,
    x_label: str,
    y_label: str,
    log_x: bool = False,
    size: tuple[int, int] = (640, 420),
) -> Image.Image:
    """One polyline per series through its points sorted by x, a marker at every point, and a legend."""
    layout = chart_layout(series, log_x=log_x, size=size)
    image = Image.new("RGB", size, BACKGROUND)
    draw = ImageDraw.Draw(image)
    label_font, title_font = _font(LABEL_SIZE), _font(TITLE_SIZE)
    _draw_axes(image, draw, layout, label_font)

    title_width = _text_width(title_font, title)
    draw.text(((size[0] - title_width) / 2, 10), title, fill=INK, font=title_font)
    left, top, right, bottom = layout.plot_box
    x_label_top = size[1] - 8 - _line_height(label_font)
    draw.text(((left + right - _text_width(label_font, x_label)) / 2, x_label_top), x_label, fill=INK, font=label_font)
    _draw_vertical_text(image, y_label, (8, (top + bottom) / 2), label_font)

    # PIL truncates float coordinates; rounding puts each marker's centre on the pixel nearest its point.
    pixels = {
        name: [_rounded(layout.to_pixel(float(x), float(y))) for x, y in sorted(points, key=lambda p: float(p[0]))]
        for name, points in series.items()
    }
    colours = dict(zip(series, SERIES_COLOURS))
    for name, path in pixels.items():
        if len(path) > 1:
            draw.line(path, fill=colours[name], width=LINE_WIDTH, joint="curve")
    _draw_legend(draw, layout, colours, pixels, label_font)
    for name, path in pixels.items():
        for x, y in path:
            r = MARKER_RADIUS
            draw.ellipse([x - r, y - r, x + r, y + r], fill=colours[name])
    return image


def side_by_side(images: Sequence[Image.Image], gap: int = 16) -> Image.Image:
    """The images in a row, top-aligned on white, `gap` pixels apart."""
    if not images:
        raise InvalidDataError("no image given: pass at least one chart to put side by side")
    if gap < 0:
        raise SettingsError(f"gap {gap} is negative: use 0 or more pixels between the images")
    width = sum(image.width for image in images) + gap * (len(images) - 1)
    row = Image.new("RGB", (width, max(image.height for image in images)), BACKGROUND)
    x = 0
    for image in images:
        row.paste(image.convert("RGB"), (x, 0))
        x += image.width + gap
    return row


def _checked_points(series: Series, log_x: bool) -> list[tuple[float, float]]:
    if len(series) > len(SERIES_COLOURS):
        raise InvalidDataError(
            f"{len(series)} series but only {len(SERIES_COLOURS)} distinct colours: "
            "split them across several charts (side_by_side puts charts in one image)"
        )
    points = []
    for name, data in series.items():
        for i, (x, y) in enumerate(data):
            x, y = float(x), float(y)
            if not (math.isfinite(x) and math.isfinite(y)):
                raise InvalidDataError(
                    f"series {name!r} has a non-finite value at point {i}, ({x}, {y}): drop or fix it"
                )
            if log_x and x <= 0:
                raise InvalidDataError(
                    f"series {name!r} has x = {x} at point {i}, but a log x axis needs positive x: "
                    "use a linear axis (log_x=False) or drop the point"
                )
            points.append((x, y))
    if not points:
        raise InvalidDataError(
            "nothing to plot: every series is empty (or none was given); pass at least one (x, y) point"
        )
    return points


def _padded(lo: float, hi: float) -> tuple[float, float]:
    if lo == hi:  # one point or all-equal values: centre them in a range of their own size
        half = 0.1 * abs(lo) or 1.0
        return lo - half, hi + half
    pad = PAD_FRACTION * (hi - lo)
    return lo - pad, hi + pad


def _padded_log(lo: float, hi: float) -> tuple[float, float]:
    """Pad in decades, so the margins look the same on the log axis; one value gets a decade around it."""
    log_lo, log_hi = math.log10(lo), math.log10(hi)
    pad = PAD_FRACTION * (log_hi - log_lo) if hi > lo else 0.5
    return 10 ** (log_lo - pad), 10 ** (log_hi + pad)


def _ticks(lo: float, hi: float, log: bool) -> list[tuple[float, str]]:
    """(value, label) of about five nice round ticks within [lo, hi]."""
    if log:
        first, last = math.ceil(math.log10(lo)), math.floor(math.log10(hi))
        if last - first >= 2:
            stride = math.ceil((last - first + 1) / 6)
            return [(10.0**e, f"{10.0**e:g}") for e in range(first, last + 1) if e % stride == 0]
        steps = [
            m * 10.0**e
            for e in range(math.floor(math.log10(lo)), math.ceil(math.log10(hi)) + 1)
            for m in (1, 2, 5)
            if lo <= m * 10.0**e <= hi
        ]
        if len(steps) >= 2:
            return [(v, f"{v:g}") for v in steps]
    # The step among 1, 2 and 5 times a power of ten that gives the tick count nearest five (the smaller on ties).
    magnitude = 10.0 ** math.floor(math.log10((hi - lo) / 5))
    candidates = [m * magnitude * 10.0**k for k in (-1, 0, 1) for m in (1, 2, 5)]
    step = min(candidates, key=lambda s: (abs(math.floor(hi / s) - math.ceil(lo / s) + 1 - 5), s))
    values = [k * step for k in range(math.ceil(lo / step), math.floor(hi / step) + 1)]
    return [(v, _format_tick(v, step, max(abs(lo), abs(hi)))) for v in values]


def _format_tick(value: float, step: float, biggest: float) -> str:
    """Fixed point with just the decimals the step needs; %g for very large or small numbers."""
    step_exponent = math.floor(math.log10(step) + 1e-9)
    if step >= 1e-4 and biggest < 1e6:
        return f"{value + 0.0:.{max(0, -step_exponent)}f}"  # + 0.0 turns -0.0 into 0.0
    return f"{value:.{max(1, math.floor(math.log10(biggest)) - step_exponent + 1)}g}"


def _draw_axes(image: Image.Image, draw: ImageDraw.ImageDraw, layout: ChartLayout, font: Font) -> None:
    left, top, right, bottom = layout.plot_box
    line = _line_height(font)
    for value, label in _ticks(*layout.x_range, log=layout.log_x):
        x = round(layout.to_pixel(value, layout.y_range[0])[0])
        draw.line([(x, top), (x, bottom)], fill=GRID)
        draw.line([(x, bottom), (x, bottom + TICK_LENGTH)], fill=INK)
        label_x = min(max(x - _text_width(font, label) / 2, 0), image.width - _text_width(font, label))
        draw.text((label_x, bottom + TICK_LENGTH + 3), label, fill=INK, font=font)
    for value, label in _ticks(*layout.y_range, log=False):
        y = round(layout.to_pixel(layout.x_range[0], value)[1])
        draw.line([(left, y), (right, y)], fill=GRID)
        draw.line([(left - TICK_LENGTH, y), (left, y)], fill=INK)
        label_x = left - TICK_LENGTH - 3 - _text_width(font, label)
        draw.text((label_x, y - line / 2), label, fill=INK, font=font)
    draw.rectangle(layout.plot_box, outline=INK)


def _draw_vertical_text(image: Image.Image, text: str, left_middle: tuple[float, float], font: Font) -> None:
    """Text turned 90 degrees anticlockwise (reads bottom to top), its left edge and middle at the given point."""
    width, height = max(1, _text_width(font, text)), _line_height(font)
    mask = Image.new("L", (width, height), 0)
    ImageDraw.Draw(mask).text((0, 0), text, fill=255, font=font)
    mask = mask.rotate(90, expand=True)
    corner = (round(left_middle[0]), round(left_middle[1] - mask.height / 2))
    image.paste(Image.new("RGB", mask.size, INK), corner, mask)


def _draw_legend(
    draw: ImageDraw.ImageDraw,
    layout: ChartLayout,
    colours: dict[str, tuple[int, int, int]],
    pixels: dict[str, list[tuple[int, int]]],
    font: Font,
) -> None:
    """A box of names in the plot corner that covers the fewest markers (then the least of the lines)."""
    line = _line_height(font)
    row, swatch, pad = line + 6, 22, 6
    box_width = pad + swatch + 6 + max(_text_width(font, name) for name in colours) + pad
    box_height = pad + row * len(colours) - 6 + pad
    left, top, right, bottom = layout.plot_box
    inset = 8
    corners = [
        (right - inset - box_width, top + inset),
        (left + inset, top + inset),
        (right - inset - box_width, bottom - inset - box_height),
        (left + inset, bottom - inset - box_height),
    ]

    def covered(corner: tuple[float, float]) -> float:
        x0, y0 = corner[0] - MARKER_RADIUS, corner[1] - MARKER_RADIUS
        x1, y1 = corner[0] + box_width + MARKER_RADIUS, corner[1] + box_height + MARKER_RADIUS
        inside = 0.0
        for path in pixels.values():
            inside += 10 * sum(x0 <= x <= x1 and y0 <= y <= y1 for x, y in path)
            for (ax, ay), (bx, by) in itertools.pairwise(path):
                samples = [(ax + (bx - ax) * t / 16, ay + (by - ay) * t / 16) for t in range(17)]
                inside += sum(x0 <= x <= x1 and y0 <= y <= y1 for x, y in samples) / 16
        return inside

    box_left, box_top = min(corners, key=covered)  # min keeps the first of equals: top right by preference
    draw.rectangle([box_left, box_top, box_left + box_width, box_top + box_height], fill=BACKGROUND, outline=INK)
    for i, (name, colour) in enumerate(colours.items()):
        y = box_top + pad + i * row + line / 2
        x = box_left + pad
        draw.line([(x, y), (x + swatch, y)], fill=colour, width=LINE_WIDTH)
        r = MARKER_RADIUS - 1
        draw.ellipse([x + swatch / 2 - r, y - r, x + swatch / 2 + r, y + r], fill=colour)
        draw.text((x + swatch + 6, y - line / 2), name, fill=INK, font=font)


@functools.cache
def _font(size: int) -> Font:
    """PIL's default font at `size` points where FreeType can scale it, else PIL's fixed bitmap font."""
    return ImageFont.load_default(size) if features.check("freetype2") else ImageFont.load_default()


def _rounded(point: tuple[float, float]) -> tuple[int, int]:
    return round(point[0]), round(point[1])


def _line_height(font: Font) -> int:
    return math.ceil(font.getbbox("Ag0")[3])


def _text_width(font: Font, text: str) -> int:
    return math.ceil(font.getlength(text))


def fit_text(text: str, font: Font, width: int) -> str:
    """`text`, cut with an ellipsis to fit `width` pixels."""
    if _text_width(font, text) <= width:
        return text
    while text and _text_width(font, text + "…") > width:
        text = text[:-1]
    return text + "…"
