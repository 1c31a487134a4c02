"""The running statistics of one site during an atlas build: dense arrays over the site's features,
updated one sampled batch at a time, and merged exactly.

Exact in any order. Recorded activations are fp16, so each is a whole multiple of 2^-24: counted in
those units (`to_fixed`) as int64, sums are exact whatever the order of addition; maxima are
order-free; a feature's top examples are one per prompt, ordered by (activation descending, prompt
index ascending), a total order. So the statistics of any split of the batches, merged, equal those
of one pass over all of them, bit for bit: a resumed build and a build sharded across ranks give
the one-process result.

An example is a prompt: its activation is the feature's peak over every token and step of that
prompt, at the first step (then token) where the peak occurs. For image features the example also
keeps the bounding box of the tokens where the feature reaches half its peak at that step.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass

import torch

from ..errors import InputShapeError
from ..recording import FeatureRecording
from ..spatial import Grid, check_grid
from ..training.evaluation import sigma_bucket_edges
from ..transcoders.transcoder import SparseCodes
from .colours import COLOUR_NAMES, token_colours
from .prompts import PromptSet

FIXED_ONE = 2**24  # fp16 values are whole multiples of 2^-24
Layout = dict[str, tuple[tuple[int, ...], torch.dtype]]
TOP_FIELDS = ("top_value", "top_prompt", "top_step", "top_token", "top_box")
_FAR = torch.iinfo(torch.int64).max


def to_fixed(values: torch.Tensor) -> torch.Tensor:
    """Activations (fp16 values, in any float dtype) as exact int64 counts of 2^-24."""
    return (values.double() * FIXED_ONE).round().long()


def from_fixed(values: torch.Tensor) -> torch.Tensor:
    return values.double() / FIXED_ONE


def sigma_bucket(sigma: float, buckets: int) -> int:
    """The bucket of `sigma`: [0, 1/b], (1/b, 2/b], ... as the evaluation's FVU per sigma bucket."""
    inner = torch.tensor(sigma_bucket_edges(buckets)[1:-1], dtype=torch.float64)
    return int(torch.bucketize(torch.tensor(float(sigma), dtype=torch.float64), inner, right=False))


def token_cells(grid: Grid, cells: int) -> torch.Tensor:
    """long [rows * cols]: the cell (of a cells x cells pooling of the image) each image token lies in."""
    rows, cols = check_grid(grid)
    row = torch.arange(rows).repeat_interleave(cols) * cells // rows
    col = torch.arange(cols).repeat(rows) * cells // cols
    return row * cells + col


@dataclass(frozen=True)
class Dimensions:
    d_features: int
    buckets: int
    top_n: int
    vocabulary: int  # tracked prompt words; text tokens add OTHER and PAD
    cells: int  # region cells per side

    def layout(self, stream: str) -> Layout:
        """Every array of a site's statistics: name -> (shape, dtype)."""
        f, b, n, v = self.d_features, self.buckets, self.top_n, self.vocabulary
        i64, i32 = torch.int64, torch.int32
        layout: Layout = {
            "tokens": ((b,), i64),  # token positions seen per bucket (all of them, firing or not)
            "fired": ((f, b), i64),  # tokens where the feature was in the top k with a positive value
            "mass": ((f, b), i64),  # sum of its activations there, fixed point
            "peak": ((f, b), torch.float32),
            "top_value": ((f, n), torch.float32),  # -1: no example
            "top_prompt": ((f, n), i32),  # -1: no example
            "top_step": ((f, n), i32),
            "top_token": ((f, n), i32),
            "prompts": ((1,), i64),
            "prompts_fired": ((f,), i64),  # prompts in which it fired at all
            "prompt_mass": ((f,), i64),  # sum over prompts of its peak, fixed point
            "word_prompts": ((v,), i64),  # prompts containing each word
            "word_mass": ((f, v), i64),  # sum over prompts containing each word of the feature's peak
        }
        if stream == "txt":
            layout["token_count"] = ((v + 2,), i64)  # text positions seen with each string
            layout["token_mass"] = ((f, v + 2), i64)
        else:
            c, r = len(COLOUR_NAMES), self.cells**2
            layout["top_box"] = ((f, n, 4), i32)  # first row, first column, last row, last column
            layout["colour_count"] = ((c,), i64)  # image tokens seen of each colour
            layout["colour_mass"] = ((f, c), i64)
            layout["cell_count"] = ((r,), i64)
            layout["cell_mass"] = ((f, r), i64)
        return layout

    def state_bytes(self, stream: str) -> int:
        return sum(torch.Size(shape).numel() * dtype.itemsize for shape, dtype in self.layout(stream).values())


@dataclass(frozen=True)
class BatchContext:
    """What every site needs besides its own codes: who the batch's prompts are and what their
    words, text positions and image tokens show."""

    prompt_ids: torch.Tensor  # long [P]: indices into the prompt set
    words: torch.Tensor  # bool [P, vocabulary]
    token_ids: torch.Tensor | None  # long [P, text tokens]: each text position's string
    colours: torch.Tensor | None  # long [P, image tokens]: each image token's colour term (None: no images)
    grid: Grid | None  # (rows, cols) of image tokens

    @classmethod
    def of(cls, prompt_set: PromptSet, ids: Sequence[int], recording: FeatureRecording, images: torch.Tensor | None,
           streams: Collection[str]) -> BatchContext:
        """The context of a sampled batch (`images`: its final images as uint8, or None)."""
        grid = recording.image_grid
        token_ids = None
        if "txt" in streams and recording.text_tokens is not None:
            token_ids = prompt_set.token_ids(ids, recording.text_tokens)
        colours = token_colours(images, grid) if images is not None and grid is not None and "img" in streams else None
        return cls(torch.tensor(list(ids), dtype=torch.long), prompt_set.word_presence(ids), token_ids, colours, grid)


SiteCall = tuple[int, int, SparseCodes]  # (step, sigma bucket, codes [P, tokens, k]) of one model call


class SiteStatistics:
    """A site's statistics so far (`Dimensions.layout` names every array)."""

    def __init__(self, stream: str, dimensions: Dimensions, arrays: dict[str, torch.Tensor]) -> None:
        self.stream = stream
        self.dimensions = dimensions
        self.arrays = arrays

    @classmethod
    def empty(cls, stream: str, dimensions: Dimensions) -> SiteStatistics:
        arrays = {name: torch.zeros(shape, dtype=dtype) for name, (shape, dtype) in dimensions.layout(stream).items()}
        arrays["top_value"].fill_(-1)
        arrays["top_prompt"].fill_(-1)
        return cls(stream, dimensions, arrays)

    def add(self, calls: Sequence[SiteCall], context: BatchContext) -> None:
        """Take one batch's model calls at this site (every step of the same prompts)."""
        arrays, buckets = self.arrays, self.dimensions.buckets
        prompts = len(context.prompt_ids)
        entries = []
        for step, bucket, codes in calls:
            indices, values = codes.indices.long(), codes.values.float()
            if indices.shape[0] != prompts:
                raise InputShapeError(f"codes of {indices.shape[0]} images for a batch of {prompts} prompts")
            arrays["tokens"][bucket] += indices.shape[0] * indices.shape[1]
            p, t, j = torch.nonzero(values > 0, as_tuple=True)
            feature, value = indices[p, t, j], values[p, t, j]
            fixed = to_fixed(value)
            flat = feature * buckets + bucket
            arrays["fired"].view(-1).index_add_(0, flat, torch.ones_like(flat))
            arrays["mass"].view(-1).index_add_(0, flat, fixed)
            arrays["peak"].view(-1).scatter_reduce_(0, flat, value, "amax")
            self._add_token_mass(p, t, feature, fixed, context, indices.shape[1])
            entries.append((p, t, feature, value, torch.full_like(p, step)))
        if entries:
            self._add_prompts(*(torch.cat(column) for column in zip(*entries)), context, calls[0][2].indices.shape[1])

    def _add_token_mass(self, p: torch.Tensor, t: torch.Tensor, feature: torch.Tensor, fixed: torch.Tensor,
                        context: BatchContext, tokens: int) -> None:
        arrays = self.arrays
        if self.stream == "txt":
            if context.token_ids is None or context.token_ids.shape[1] != tokens:
                raise InputShapeError(f"text codes cover {tokens} positions but the batch's token strings do not")
            strings = arrays["token_count"].numel()
            arrays["token_count"] += torch.bincount(context.token_ids.flatten(), minlength=strings)
            arrays["token_mass"].view(-1).index_add_(0, feature * strings + context.token_ids[p, t], fixed)
            return
        if context.grid is None or context.grid[0] * context.grid[1] != tokens:
            raise InputShapeError(f"image codes cover {tokens} tokens, which do not fit the grid {context.grid}")
        cells = token_cells(context.grid, self.dimensions.cells)
        regions = arrays["cell_count"].numel()
        arrays["cell_count"] += torch.bincount(cells, minlength=regions) * len(context.prompt_ids)
        arrays["cell_mass"].view(-1).index_add_(0, feature * regions + cells[t], fixed)
        if context.colours is not None:
            colours = len(COLOUR_NAMES)
            arrays["colour_count"] += torch.bincount(context.colours.flatten(), minlength=colours)
            arrays["colour_mass"].view(-1).index_add_(0, feature * colours + context.colours[p, t], fixed)

    def _add_prompts(self, p: torch.Tensor, t: torch.Tensor, feature: torch.Tensor, value: torch.Tensor,
                     step: torch.Tensor, context: BatchContext, tokens: int) -> None:
        """Per prompt: the feature's peak and where it is; then the prompt-level sums and the top lists."""
        arrays, features, prompts = self.arrays, self.dimensions.d_features, len(context.prompt_ids)
        key = p * features + feature
        peak = torch.zeros(prompts * features).scatter_reduce_(0, key, value, "amax")
        at_peak = value == peak[key]
        position = (step * tokens + t)[at_peak]
        first = torch.full((prompts * features,), _FAR).scatter_reduce_(0, key[at_peak], position, "amin")
        fired = peak > 0
        first = torch.where(fired, first, 0)
        peak_fixed = to_fixed(peak).view(prompts, features)
        arrays["prompts"] += prompts
        arrays["prompts_fired"] += fired.view(prompts, features).sum(0)
        arrays["prompt_mass"] += peak_fixed.sum(0)
        arrays["word_prompts"] += context.words.sum(0)
        # Integers below 2^53 (fp16 in 2^-24 units, at most 4096 prompts): float64 products and sums are exact.
        arrays["word_mass"] += (peak_fixed.T.double() @ context.words.double()).round().long()

        def by_feature(column: torch.Tensor) -> torch.Tensor:
            return column.view(prompts, features, *column.shape[1:]).transpose(0, 1).to(torch.int32)

        candidates = {
            "top_value": torch.where(fired, peak, -1.0).view(prompts, features).T,
            "top_prompt": by_feature(
                torch.where(fired.view(prompts, features), context.prompt_ids[:, None], -1).flatten()),
            "top_step": by_feature(first // tokens),
            "top_token": by_feature(first % tokens),
        }
        if self.stream == "img":
            candidates["top_box"] = by_feature(self._boxes(key, t, step, value, peak, first // tokens, fired, context))
        self._merge_top(candidates)

    @staticmethod
    def _boxes(key: torch.Tensor, t: torch.Tensor, step: torch.Tensor, value: torch.Tensor, peak: torch.Tensor,
               peak_step: torch.Tensor, fired: torch.Tensor, context: BatchContext) -> torch.Tensor:
        """[P * F, 4]: the box of tokens at the peak's step where the feature reaches half its peak."""
        assert context.grid is not None
        cols = context.grid[1]
        near = (step == peak_step[key]) & (2 * value >= peak[key])
        rows_at, cols_at, keys = (t[near] // cols), (t[near] % cols), key[near]
        size = peak.numel()
        box = torch.stack([
            torch.full((size,), _FAR).scatter_reduce_(0, keys, rows_at, "amin"),
            torch.full((size,), _FAR).scatter_reduce_(0, keys, cols_at, "amin"),
            torch.full((size,), -1).scatter_reduce_(0, keys, rows_at, "amax"),
            torch.full((size,), -1).scatter_reduce_(0, keys, cols_at, "amax"),
        ], -1)
        return torch.where(fired[:, None], box, 0)

    def _merge_top(self, candidates: dict[str, torch.Tensor]) -> None:
        """Keep the top_n of the current list and the candidates: activation descending, then prompt."""
        arrays, n = self.arrays, self.dimensions.top_n
        merged = {name: torch.cat([arrays[name], candidates[name]], 1) for name in TOP_FIELDS if name in arrays}
        order = torch.argsort(merged["top_prompt"], dim=1, stable=True)
        by_value = torch.argsort(-merged["top_value"].gather(1, order), dim=1, stable=True)
        order = order.gather(1, by_value)[:, :n]
        for name, column in merged.items():
            index = order if column.dim() == 2 else order[..., None].expand(-1, -1, column.shape[2])
            torch.gather(column, 1, index, out=arrays[name])  # in place: the arrays keep their memory all build long

    def merge(self, other: SiteStatistics) -> None:
        """Add the statistics of other batches (disjoint from this one's)."""
        for name, array in self.arrays.items():
            if name == "peak":
                torch.maximum(array, other.arrays[name], out=array)
            elif name not in TOP_FIELDS:
                array += other.arrays[name]
        self._merge_top({name: other.arrays[name] for name in TOP_FIELDS if name in other.arrays})
