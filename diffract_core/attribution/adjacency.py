"""The edges of an attribution graph as a sparse adjacency: one entry per (target, source) pair
(duplicate edges summed), memory and time linear in the edges, never an N x N matrix.

Influence flows from the target back to the inputs. The pairs are visited in waves: a wave holds
the incoming pairs of nodes whose every outgoing edge has been visited, so one pass over the
pairs sums every path (Kahn's algorithm, run backwards). A graph with a cycle leaves nodes that no
wave reaches, and is refused; so is one deeper than MAX_DEPTH waves (each wave costs a few tensor
operations, and a circuit of FLUX is a few dozen deep), so that no graph makes the pass slow.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..errors import GraphStructureError

MAX_DEPTH = 4096


@dataclass(frozen=True)
class SparseAdjacency:
    size: int  # nodes
    targets: torch.Tensor  # [P] long, one per distinct (target, source) pair
    sources: torch.Tensor  # [P] long
    weights: torch.Tensor  # [P] float64, the summed weights of the pair's edges
    pair_of_edge: torch.Tensor  # [E] long: the pair each edge belongs to
    waves: tuple[torch.Tensor, ...]  # pair indices, wave by wave (see the module's docstring)
    by_source: tuple[torch.Tensor, torch.Tensor, torch.Tensor]  # (order, starts, counts) of the pairs per source
    by_target: tuple[torch.Tensor, torch.Tensor, torch.Tensor]  # the same per target

    @classmethod
    def build(cls, size: int, sources: torch.Tensor, targets: torch.Tensor, weights: torch.Tensor) -> SparseAdjacency:
        keys, pair_of_edge = torch.unique(targets.long() * size + sources.long(), return_inverse=True)
        pair_targets, pair_sources = keys // size, keys % size
        summed = torch.zeros(len(keys), dtype=torch.float64).index_add_(0, pair_of_edge, weights.double())
        by_source = _grouped(pair_sources, size, torch.argsort(pair_sources, stable=True))
        by_target = _grouped(pair_targets, size, torch.arange(len(keys)))  # the keys are sorted by target already
        return cls(size, pair_targets, pair_sources, summed, pair_of_edge,
                   _waves(size, pair_sources, by_target), by_source, by_target)

    def normalized(self, weights: torch.Tensor | None = None) -> torch.Tensor:
        """|w| / (the total |w| into the pair's target), per pair."""
        magnitudes = (self.weights if weights is None else weights).abs()
        totals = torch.zeros(self.size, dtype=torch.float64).index_add_(0, self.targets, magnitudes)
        return magnitudes / totals.clamp(min=1e-10)[self.targets]

    def influence(self, normalized: torch.Tensor, start: torch.Tensor) -> torch.Tensor:
        """start @ (A + A^2 + ...) with A[target, source] = `normalized`: every path's product summed."""
        total = start.clone()
        for wave in self.waves:
            total.index_add_(0, self.sources[wave], total[self.targets[wave]] * normalized[wave])
        return total - start

    def row_times(self, row: torch.Tensor) -> torch.Tensor:
        """row @ A, A[target, source] the summed edge weights: one pass over the pairs."""
        return torch.zeros(self.size, dtype=torch.float64).index_add_(0, self.sources, row[self.targets] * self.weights)

    def pairs_of(self, nodes: torch.Tensor, grouping: tuple[torch.Tensor, torch.Tensor, torch.Tensor]) -> torch.Tensor:
        """The pairs whose source (grouping `by_source`) or target (`by_target`) is one of `nodes`."""
        return _gather(nodes, *grouping)


def _grouped(keys: torch.Tensor, size: int, order: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(order, starts, counts): `keys[order]` ascending, and where each key's run starts in it and how long it is."""
    counts = torch.bincount(keys, minlength=size)
    return order, torch.cumsum(counts, 0) - counts, counts


def _gather(nodes: torch.Tensor, order: torch.Tensor, starts: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
    lengths = counts[nodes]
    total = int(lengths.sum())
    if total == 0:
        return torch.zeros(0, dtype=torch.long)
    block_starts = torch.cumsum(lengths, 0) - lengths
    offsets = torch.repeat_interleave(starts[nodes] - block_starts, lengths) + torch.arange(total)
    return order[offsets]


def _waves(size: int, sources: torch.Tensor,
           by_target: tuple[torch.Tensor, torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, ...]:
    unvisited_out = torch.bincount(sources, minlength=size)
    ready = torch.nonzero(unvisited_out == 0).flatten()
    reached = len(ready)
    waves = []
    while len(ready):
        wave = _gather(ready, *by_target)
        if len(wave) == 0:
            break
        waves.append(wave)
        if len(waves) > MAX_DEPTH:
            raise GraphStructureError(
                f"the graph's edges chain more than {MAX_DEPTH} nodes deep; attribution graphs of FLUX are a few dozen "
                "deep, so this one is damaged or crafted"
            )
        unvisited_out.index_add_(0, sources[wave], torch.full((len(wave),), -1, dtype=torch.long))
        candidates = torch.unique(sources[wave])
        ready = candidates[unvisited_out[candidates] == 0]
        reached += len(ready)
    if reached < size:
        stuck = int(torch.nonzero(unvisited_out > 0).flatten()[0])
        raise GraphStructureError(
            f"the graph's edges form a cycle (node {stuck} is on it or leads into it); attribution edges must run "
            "from the inputs towards the target"
        )
    return tuple(waves)
