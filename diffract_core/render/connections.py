"""A feature's strongest virtual-weight connections, as a text table and as a picture: the
features that write into it from earlier layers (upstream) and those it writes into (downstream),
each with a bar by signed weight (blue raises, red lowers, as in the circuit picture)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import torch
from PIL import Image, ImageDraw

from ..attribution.connections import Connection, FeatureConnections
from ..features import FeatureRef
from .circuit import NEGATIVE, POSITIVE
from .plot import BACKGROUND, GRID, INK, LABEL_SIZE, TITLE_SIZE, _font, _line_height, _text_width, fit_text

WIDTH = 720
PAD = 12
BAR_WIDTH = 220  # both signs: the zero line sits in the middle
LABEL_WIDTH = 220
_SIDES = ("upstream", "downstream")


def _other(side: str, connection: Connection) -> FeatureRef:
    return connection.source if side == "upstream" else connection.target


def _sides(connections: FeatureConnections) -> dict[str, Sequence[Connection]]:
    return {"upstream": connections.upstream, "downstream": connections.downstream}


def format_connections(connections: FeatureConnections, labels: Mapping[str, str] | None = None) -> str:
    """A fixed-width table: one line per connection under a header, upstream rows first; with
    `labels` (feature spec -> label, e.g. the atlas's) a label column."""
    columns = ("direction", "feature", "virtual weight", *(("label",) if labels is not None else ()))
    cells = [
        [side, str(_other(side, c)), f"{c.weight:+.4g}",
         *((labels.get(str(_other(side, c)), "-"),) if labels is not None else ())]
        for side, side_connections in _sides(connections).items() for c in side_connections
    ]
    widths = [max([len(name), *(len(row[i]) for row in cells)]) for i, name in enumerate(columns)]

    def line(row: Sequence[str]) -> str:
        return "  ".join(c.rjust(w) if i == 2 else c.ljust(w) for i, (c, w) in enumerate(zip(row, widths))).rstrip()

    title = (f"virtual weights of {connections.feature} at sigma {connections.sigma:g} "
             "(per unit activation, LayerNorm factor 1)")
    lines = [title, line(columns), "  ".join("-" * w for w in widths), *(line(row) for row in cells)]
    if not cells:
        lines.append("(no transcoder of this stream before or after this layer)")
    return "\n".join(lines)


def render_connections(connections: FeatureConnections, labels: Mapping[str, str] | None = None) -> torch.Tensor:
    """The connections as an image: float [H, W, 3] in [0, 1] (a ComfyUI IMAGE without its batch axis)."""
    feature, sides = connections.feature, _sides(connections)
    title_font, font = _font(TITLE_SIZE), _font(LABEL_SIZE)
    line, title_line = _line_height(font) + 6, _line_height(title_font) + 8
    shown = [side for side in _SIDES if sides[side]]
    rows = sum(len(sides[side]) for side in shown)
    height = PAD + 2 * title_line + len(shown) * title_line + max(rows, 1) * line + PAD
    image = Image.new("RGB", (WIDTH, height), BACKGROUND)
    draw = ImageDraw.Draw(image)
    heading = f"{feature}" + (f": {labels[str(feature)]}" if labels and str(feature) in labels else "")
    draw.text((PAD, PAD), fit_text(heading, title_font, WIDTH - 2 * PAD), fill=INK, font=title_font)
    draw.text((PAD, PAD + title_line), f"virtual weights at sigma {connections.sigma:g}: blue raises, red lowers",
              fill=INK, font=font)
    y = PAD + 2 * title_line
    biggest = max((abs(c.weight) for side in shown for c in sides[side]), default=0.0) or 1.0
    middle = WIDTH - PAD - BAR_WIDTH // 2
    for side in shown:
        draw.text((PAD, y + 4), "from earlier layers (upstream)" if side == "upstream"
                  else "into later layers (downstream)", fill=INK, font=title_font)
        y += title_line
        draw.line([(middle, y), (middle, y + len(sides[side]) * line)], fill=GRID, width=1)
        for connection in sides[side]:
            other = _other(side, connection)
            name = str(other) + (f"  {labels[str(other)]}" if labels and str(other) in labels else "")
            draw.text((PAD, y), fit_text(name, font, LABEL_WIDTH + 140), fill=INK, font=font)
            value = f"{connection.weight:+.3g}"
            draw.text((middle - BAR_WIDTH // 2 - 8 - _text_width(font, value), y), value, fill=INK, font=font)
            length = round(abs(connection.weight) / biggest * (BAR_WIDTH // 2))
            left, right = (middle, middle + length) if connection.weight > 0 else (middle - length, middle)
            draw.rectangle([left, y + 2, right, y + line - 4], fill=POSITIVE if connection.weight > 0 else NEGATIVE)
            y += line
    if not shown:
        draw.text((PAD, y), "no transcoder of this stream before or after this layer", fill=INK, font=font)
    return torch.from_numpy(np.asarray(image).copy()).float() / 255
