"""Which features fire where: ranked statistics of a recording, inside and outside a region.

Everything works from the sparse top-k codes: only features present in some token's top k are
scored, and their per-token activations are gathered with index_add / scatter_reduce over the
distinct indices present, never densified to [tokens, d_features].
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import torch

from ..errors import DiffractError, InputShapeError
from ..features import FeatureRef
from ..recording import CHUNK_NAMES, COND, FeatureRecording
from ..transcoders.config import STREAMS, Stream
from ..transcoders.transcoder_set import SiteKey, describe_sites
from .heatmaps import check_image_tokens, image_grid_of, site_codes

INSIDE_THRESHOLD = 0.5  # a token is inside a region when at least half of it is masked


@dataclass(frozen=True)
class FeatureStat:
    """One ranked row: an image feature at a step, or a text feature at one prompt position."""

    feature: FeatureRef
    step: int
    token: int | None
    token_label: str | None
    mean_inside: float
    max_inside: float
    mean_outside: float
    max_outside: float
    score: float


@dataclass(frozen=True)
class _Scored:
    """Candidate rows of one (site, step) as tensors, already in ranking order."""

    index: torch.Tensor  # feature indices
    token: torch.Tensor | None  # text positions
    stats: torch.Tensor  # [rows, 5]: mean_in, max_in, mean_out, max_out, score


def _rank(index: torch.Tensor, token: torch.Tensor | None, score: torch.Tensor, n: int) -> torch.Tensor:
    """Positions of the n best rows: score descending, then index and token ascending."""
    if index.numel() == 0:
        return index
    # Only rows scoring at least the n-th best can make the cut; sorting just those is exact and cheap.
    cutoff = torch.topk(score, min(n, score.numel())).values[-1]
    candidates = torch.nonzero(score >= cutoff).squeeze(-1)
    tie_key = index[candidates] if token is None else index[candidates] * (int(token.max()) + 1) + token[candidates]
    order = candidates[torch.argsort(tie_key, stable=True)]
    order = order[torch.argsort(-score[order], stable=True)]
    return order[:n]


def _image_rows(indices: torch.Tensor, values: torch.Tensor, inside: torch.Tensor | None, n: int) -> _Scored:
    """Per-feature statistics over image tokens; `inside` is the region's [tokens] bool mask (None: no region)."""
    tokens = indices.shape[0]
    region = inside is not None
    if inside is None:
        inside = torch.ones(tokens, dtype=torch.bool)
    token_of = torch.arange(tokens).unsqueeze(-1).expand_as(indices)
    present = values > 0  # rows with fewer than k active features pad with zero values
    features, slot = torch.unique(indices[present], return_inverse=True)
    acts, is_inside = values[present], inside[token_of[present]]

    def side_stats(selected: torch.Tensor, count: int) -> tuple[torch.Tensor, torch.Tensor]:
        total = torch.zeros(len(features)).index_add_(0, slot, torch.where(selected, acts, 0.0))
        peak = torch.zeros(len(features)).scatter_reduce_(0, slot, torch.where(selected, acts, 0.0), "amax")
        return total / max(count, 1), peak

    n_inside = int(inside.sum())
    mean_in, max_in = side_stats(is_inside, n_inside)
    mean_out, max_out = side_stats(~is_inside, tokens - n_inside)
    score = mean_in - mean_out if region else max_in
    keep = _rank(features, None, score, n)
    stats = torch.stack([mean_in, max_in, mean_out, max_out, score], dim=-1)
    return _Scored(features[keep], None, stats[keep])


def _text_rows(indices: torch.Tensor, values: torch.Tensor, n: int) -> _Scored:
    """One row per (feature, prompt position) present in the top k."""
    present = values > 0
    position = torch.arange(indices.shape[0]).unsqueeze(-1).expand_as(indices)[present]
    features, acts = indices[present], values[present]
    keep = _rank(features, position, acts, n)
    zeros = torch.zeros_like(acts)
    stats = torch.stack([acts, acts, zeros, zeros, acts], dim=-1)
    return _Scored(features[keep], position[keep], stats[keep])


def _to_stats(
    scored: _Scored, stream: Stream, layer: int, step: int, labels: Sequence[str] | None
) -> list[FeatureStat]:
    rows = []
    tokens = scored.token.tolist() if scored.token is not None else [None] * len(scored.index)
    for index, token, stats in zip(scored.index.tolist(), tokens, scored.stats.tolist()):
        label = labels[token] if labels is not None and token is not None and token < len(labels) else None
        rows.append(FeatureStat(FeatureRef(stream, layer, index), step, token, label, *stats))
    return rows


def _inside_mask(region: torch.Tensor | None, grid: tuple[int, int]) -> torch.Tensor | None:
    if region is None:
        return None
    expected = grid[0] * grid[1]
    if region.dim() != 1 or region.shape[0] != expected:
        raise InputShapeError(
            f"region of shape {tuple(region.shape)} does not fit the {grid[0]}x{grid[1]} image-token grid: "
            f"pass [{expected}] token weights made by mask_to_token_weights(mask, {grid})"
        )
    inside = region.detach().cpu() >= INSIDE_THRESHOLD
    if not inside.any():
        raise DiffractError(
            "the region covers no image token (no token is at least half masked): draw a larger mask"
        )
    return inside


def _selected_steps(recording: FeatureRecording, steps: Iterable[int] | None) -> list[int]:
    recorded = recording.steps
    if not recorded:
        raise DiffractError("this recording holds no steps: run the sampler with Record Features first")
    if steps is None:
        return recorded
    chosen = sorted(set(steps))
    missing = [s for s in chosen if s not in recorded]
    if missing:
        raise DiffractError(
            f"step {', '.join(map(str, missing))} was not recorded; recorded steps: {', '.join(map(str, recorded))}"
        )
    return chosen


def _recorded_pairs(recording: FeatureRecording, chunk: int) -> set[tuple[SiteKey, int]]:
    """(site, step) pairs that hold codes for this chunk."""
    return {(key.site, recording.step_of(key.sigma)) for key in recording.records if key.chunk == chunk}


def top_features(
    recording: FeatureRecording,
    *,
    region: torch.Tensor | None = None,
    streams: Sequence[Stream] = ("img", "txt"),
    layers: Iterable[int] | None = None,
    steps: Iterable[int] | None = None,
    chunk: int = COND,
    batch_index: int = 0,
    n: int = 20,
    token_labels: Sequence[str] | None = None,
) -> list[FeatureStat]:
    """The n highest-scoring rows over the chosen sites and steps.

    Image sites give one row per (feature, step): with a region (token weights from
    mask_to_token_weights), score = mean inside - mean outside; without one, score = max over all
    tokens. Text sites give one row per (feature, step, prompt position) scored by its activation;
    the region does not apply to them. Ties go by stream, layer, step, feature index, then token.
    """
    if n < 1:
        raise DiffractError(f"n = {n} asks for no rows: ask for at least 1")
    unknown = [s for s in streams if s not in STREAMS]
    if unknown:
        raise DiffractError(f"stream {', '.join(map(repr, unknown))} is unknown: use {' and/or '.join(STREAMS)}")
    chosen_layers = None if layers is None else set(layers)
    sites = [s for s in recording.sites if s[0] in streams and (chosen_layers is None or s[1] in chosen_layers)]
    if not sites:
        held = describe_sites(recording.sites)
        raise DiffractError(f"no recorded site matches these streams and layers; this recording holds [{held}]")
    chosen_steps = _selected_steps(recording, steps)
    image_grid = image_grid_of(recording) if any(s[0] == "img" for s in sites) else None
    inside = _inside_mask(region, image_grid) if image_grid is not None else None
    pairs = _recorded_pairs(recording, chunk)
    if not pairs:
        recorded = sorted({key.chunk for key in recording.records})
        raise DiffractError(
            f"nothing was recorded for the {CHUNK_NAMES.get(chunk, chunk)} chunk ({chunk}): "
            f"pick a recorded chunk ({', '.join(map(str, recorded))}; 0 = cond, 1 = uncond)"
        )

    rows: list[FeatureStat] = []
    for stream, layer in sites:
        for step in chosen_steps:
            if ((stream, layer), step) not in pairs:
                continue
            indices, values, _ = site_codes(recording, (stream, layer), step, chunk, batch_index)
            if stream == "txt":
                limit = recording.text_tokens or indices.shape[0]
                scored = _text_rows(indices[:limit], values[:limit], n)
            else:
                assert image_grid is not None
                check_image_tokens((stream, layer), indices.shape[0], image_grid)
                scored = _image_rows(indices, values, inside, n)
            rows.extend(_to_stats(scored, stream, layer, step, token_labels))
    rows.sort(key=_sort_key)
    return rows[:n]


def _sort_key(stat: FeatureStat) -> tuple[float, str, int, int, int, int]:
    f = stat.feature
    return (-stat.score, f.stream, f.layer, stat.step, f.index, -1 if stat.token is None else stat.token)


_COLUMNS = ("feature", "step", "token", "mean in", "max in", "mean out", "max out", "score")
_TEXT_COLUMNS = ("feature", "token", "label")  # read left-aligned; numbers right-aligned


def _token_cell(stat: FeatureStat) -> str:
    if stat.token is None:
        return "-"
    return f"{stat.token} {stat.token_label!r}" if stat.token_label is not None else str(stat.token)


def format_table(stats: Sequence[FeatureStat], labels: Mapping[str, str] | None = None) -> str:
    """A fixed-width text table of the rows, one line each under a header; with `labels` (feature
    spec -> label, e.g. the atlas's), a last column holds each feature's label."""
    columns = _COLUMNS if labels is None else (*_COLUMNS, "label")
    cells = [
        [
            str(s.feature),
            str(s.step),
            _token_cell(s),
            *(f"{v:.4f}" for v in (s.mean_inside, s.max_inside, s.mean_outside, s.max_outside, s.score)),
            *(() if labels is None else (labels.get(str(s.feature), "-"),)),
        ]
        for s in stats
    ]
    widths = [max([len(name), *(len(row[i]) for row in cells)]) for i, name in enumerate(columns)]
    left = [name in _TEXT_COLUMNS for name in columns]

    def line(row: Sequence[str]) -> str:
        return "  ".join(c.ljust(w) if left[i] else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths))).rstrip()

    lines = [line(columns), "  ".join("-" * w for w in widths), *(line(row) for row in cells)]
    if not cells:
        lines.append("(no active features)")
    return "\n".join(lines)
