"""Per-head statistics of one double block's attention pattern, from its queries and keys.

The joint sequence is [txt | img]. Each query's pattern P is the softmax over every key, as FLUX
computes it (scale 1/sqrt(head_dim)). A route (query stream -> key stream) sees P renormalised over
the key stream's tokens: its entropy is that distribution's, averaged over the route's queries.
Locality is the mean distance, in tokens of the patch grid, from an image query to the image keys
it attends to (P renormalised over image keys); text focus is the share of an image query's
attention that lands on text keys, in all and per text token. Entropies are in nats.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ..errors import InputShapeError
from ..spatial import Grid, check_grid

ROUTES = ("img_img", "img_txt", "txt_img", "txt_txt")  # query stream _ key stream
METRICS: tuple[str, ...] = ("entropy", *(f"entropy_{route}" for route in ROUTES), "text_focus", "locality")
METRIC_HELP = {
    "entropy": "entropy of each query's attention over all keys (nats), averaged over every query",
    "entropy_img_img": "image queries' attention over image keys, renormalised: entropy (nats)",
    "entropy_img_txt": "image queries' attention over text keys, renormalised: entropy (nats)",
    "entropy_txt_img": "text queries' attention over image keys, renormalised: entropy (nats)",
    "entropy_txt_txt": "text queries' attention over text keys, renormalised: entropy (nats)",
    "text_focus": "share of image queries' attention on text keys",
    "locality": "mean distance (in image tokens) from an image query to the image keys it attends to",
}
_CHUNK_ELEMENTS = 1 << 24  # logits per chunk of query rows (64 MB in fp32)


@dataclass(frozen=True)
class LayerHeadStats:
    """One layer's statistics: `values[metric]` is [heads] float64; `token_focus` is [heads, text
    tokens], each image query's attention on each text token, averaged over the image queries."""

    values: dict[str, torch.Tensor]
    token_focus: torch.Tensor


def grid_distances(grid: Grid, device: torch.device | str | None = None) -> torch.Tensor:
    """[N, N] Euclidean distances between the N = rows * cols tokens of a row-major grid."""
    rows, cols = check_grid(grid)
    index = torch.arange(rows * cols, device=device)
    points = torch.stack((index // cols, index % cols), dim=-1).float()
    return torch.cdist(points, points)


def _entropy(logits: torch.Tensor) -> torch.Tensor:
    log_p = torch.log_softmax(logits, dim=-1)
    return -(log_p.exp() * log_p).sum(-1)


def layer_head_stats(query: torch.Tensor, key: torch.Tensor, text_tokens: int, grid: Grid) -> LayerHeadStats:
    """Statistics of every head from RMS-normed, rotated queries and keys [1, heads, S_txt + S_img, d]."""
    if query.ndim != 4 or query.shape[0] != 1 or key.shape != query.shape:
        raise InputShapeError(f"queries and keys must be one image's [1, heads, tokens, head_dim], got "
                              f"{tuple(query.shape)} and {tuple(key.shape)}")
    heads, length, dim = query.shape[1:]
    image_tokens = length - text_tokens
    rows, cols = check_grid(grid)
    if text_tokens < 1 or image_tokens != rows * cols:
        raise InputShapeError(
            f"{length} tokens do not split into {text_tokens} text tokens and a {rows}x{cols} image grid "
            f"(at least one text token, and one image token per grid cell; reference latents append more)"
        )
    distances = grid_distances(grid, query.device)
    text = slice(0, text_tokens)
    image = slice(text_tokens, length)
    sums = {name: torch.zeros(heads, dtype=torch.float64, device=query.device) for name in METRICS}
    token_focus = torch.zeros(heads, text_tokens, dtype=torch.float64, device=query.device)
    keys = key[0].transpose(-1, -2)
    step = max(1, _CHUNK_ELEMENTS // (heads * length))
    for start in range(0, length, step):
        stop = min(length, start + step)
        logits = torch.matmul(query[0, :, start:stop], keys).float() / math.sqrt(dim)  # [H, c, S]
        sums["entropy"] += _entropy(logits).sum(-1).double()
        by_key = {"txt": _entropy(logits[..., text]), "img": _entropy(logits[..., image])}
        first_image = max(start, text_tokens) - start  # the chunk's first image query
        for route in ROUTES:
            query_rows = slice(0, first_image) if route.startswith("txt") else slice(first_image, stop - start)
            sums[f"entropy_{route}"] += by_key[route[4:]][:, query_rows].sum(-1).double()
        image_logits = logits[:, first_image:]
        if not image_logits.shape[1]:
            continue
        attention = torch.softmax(image_logits, dim=-1)
        sums["text_focus"] += attention[..., text].sum((-1, -2)).double()
        token_focus += attention[..., text].sum(-2).double()
        within_image = torch.softmax(image_logits[..., image], dim=-1)
        near = distances[max(start, text_tokens) - text_tokens : stop - text_tokens]
        sums["locality"] += (within_image * near).sum((-1, -2)).double()
    counts = {"entropy": length, "text_focus": image_tokens, "locality": image_tokens}
    counts |= {f"entropy_{route}": text_tokens if route.startswith("txt") else image_tokens for route in ROUTES}
    values = {name: sums[name] / counts[name] for name in METRICS}
    return LayerHeadStats(values, token_focus / image_tokens)
