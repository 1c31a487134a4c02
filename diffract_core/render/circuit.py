"""A picture of a (pruned) circuit: layers bottom to top, text stream left, image stream right,
edges coloured by sign (blue excites, red inhibits) with width by |attribution|."""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

from ..attribution.graph import CircuitGraph

BACKGROUND = (250, 250, 247)
POSITIVE = (40, 90, 200)
NEGATIVE = (210, 60, 50)
KIND_COLOURS = {
    "feature": (60, 60, 70),
    "error": (150, 150, 150),
    "rest": (190, 190, 190),
    "input": (30, 140, 90),
    "bias": (120, 120, 40),
    "target": (230, 140, 20),
}


def render_circuit(graph: CircuitGraph, width: int = 1024, height: int = 768, max_labels: int = 24) -> torch.Tensor:
    """The graph as a ComfyUI IMAGE, [1, height, width, 3] in [0, 1]."""
    image = Image.new("RGB", (width, height), BACKGROUND)
    draw = ImageDraw.Draw(image)
    font = ImageFont.load_default()
    influence = graph.influence()
    influence[graph.target_index] = 1.0
    positions, spacing = _layout(graph, influence, width, height)
    magnitudes = graph.edge_weights.abs()
    scale = float(magnitudes.max()) if len(magnitudes) else 1.0
    order = torch.argsort(magnitudes).tolist()  # strongest drawn last
    for e in order:
        source, target, weight = int(graph.edge_sources[e]), int(graph.edge_targets[e]), float(graph.edge_weights[e])
        strength = abs(weight) / scale if scale > 0 else 0.0
        if strength < 0.02:
            continue
        colour = POSITIVE if weight > 0 else NEGATIVE
        faded = tuple(int(c * strength + b * (1 - strength)) for c, b in zip(colour, BACKGROUND))
        draw.line([positions[source], positions[target]], fill=faded, width=max(1, round(1 + 5 * strength)))
    labelled = set(sorted(range(len(graph.nodes)), key=lambda i: -float(influence[i]))[:max_labels])
    for index, node in enumerate(graph.nodes):
        x, y = positions[index]
        radius = 3 + 9 * min(1.0, float(influence[index]) ** 0.5)
        box = [x - radius, y - radius, x + radius, y + radius]
        colour = KIND_COLOURS[node.kind]
        if node.kind in ("error", "rest"):
            draw.rectangle(box, fill=colour)
        else:
            draw.ellipse(box, fill=colour)
        if node.kind in ("target", "input") or (index in labelled and spacing[index] >= 70):
            text = node.feature_spec if node.kind == "feature" else node.describe()
            draw.text((x + radius + 2, y - 6), text, fill=(20, 20, 20), font=font)
    _legend(draw, graph, font)
    pixels = np.asarray(image, dtype=np.float32) / 255.0
    return torch.from_numpy(pixels.copy())[None]


def _layout(
    graph: CircuitGraph, influence: torch.Tensor, width: int, height: int
) -> tuple[list[tuple[float, float]], list[float]]:
    """Node centres (y: inputs at the bottom, then layers, the target on top; x: text left, image
    right) and the room each node has for a label (its row's strongest node always gets one)."""
    layers = sorted({node.layer for node in graph.nodes if node.layer is not None and node.kind != "target"})
    rows = {layer: i + 1 for i, layer in enumerate(layers)}
    top = len(layers) + 1
    margin_top, margin_bottom = 60, 30

    def row_of(index: int) -> int:
        node = graph.nodes[index]
        if node.kind in ("input", "bias"):
            return 0
        if node.kind == "target":
            return top
        return rows[node.layer]  # type: ignore[index]

    groups: dict[tuple[int, str], list[int]] = {}
    for index, node in enumerate(graph.nodes):
        side = "txt" if node.stream == "txt" else "img"
        groups.setdefault((row_of(index), side), []).append(index)
    positions: list[tuple[float, float]] = [(0.0, 0.0)] * len(graph.nodes)
    spacing = [0.0] * len(graph.nodes)
    for (row, side), members in groups.items():
        members.sort(key=lambda i: -float(influence[i]))
        left, right = (0.04 * width, 0.48 * width) if side == "txt" else (0.52 * width, 0.96 * width)
        y = height - margin_bottom - row * (height - margin_top - margin_bottom) / max(1, top)
        for slot, index in enumerate(members):
            x = left + (right - left) * (slot + 0.5) / len(members)
            positions[index] = (x, y)
            spacing[index] = width if slot == 0 else (right - left) / len(members)
    return positions, spacing


def _legend(draw: ImageDraw.ImageDraw, graph: CircuitGraph, font: ImageFont.ImageFont) -> None:
    meta = graph.metadata
    target = graph.target.label or graph.target.describe()
    traced_at = f"step {meta.step}, sigma {meta.sigma:.3f}" if meta is not None else "untraced"
    scores = meta.scores if meta is not None and meta.scores is not None else None
    quality = (f"replacement {scores.replacement:.2f}, completeness {scores.completeness:.2f}" if scores is not None
               else "no scores")
    lines = [
        f"circuit of {target}  ({traced_at})",
        (f"{len(graph.features())} features, {len(graph.edge_weights)} edges;  {quality};  "
         "text stream left, image stream right"),
    ]
    for i, line in enumerate(lines):
        draw.text((10, 8 + 16 * i), line, fill=(20, 20, 20), font=font)
