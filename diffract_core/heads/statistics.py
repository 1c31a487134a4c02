"""Statistics over images for head measurements: bootstrap intervals of means, a two-sample
permutation test (two prompt sets), a paired sign-flip test (the same prompts and seeds with and
without an intervention), and Benjamini-Hochberg adjustment for testing many heads at once.

Every function works on the first dimension (the images) and on every trailing entry at once; the
resamples are drawn from a seeded generator, so results repeat exactly.
"""

from __future__ import annotations

import torch

from ..errors import InvalidDataError, SettingsError

_MAX_ELEMENTS = 1 << 24  # resampled values held at once


def _check(values: torch.Tensor, what: str, least: int = 2) -> torch.Tensor:
    if values.ndim < 1 or values.shape[0] < least:
        raise InvalidDataError(f"{what} needs at least {least} values along the first dimension, got "
                               f"shape {tuple(values.shape)}")
    return values.double()


def _resamples(count: int, per_chunk: int) -> list[int]:
    """Sizes of the chunks `count` resamples are drawn in, each holding at most _MAX_ELEMENTS values."""
    size = max(1, _MAX_ELEMENTS // max(1, per_chunk))
    return [min(size, count - start) for start in range(0, count, size)]


def bootstrap_interval(values: torch.Tensor, *, samples: int = 2000, level: float = 0.95,
                       seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(mean, low, high) over dim 0: the percentile bootstrap interval of the mean at `level`."""
    values = _check(values, "a bootstrap interval")
    if not 0 < level < 1 or samples < 1:
        raise SettingsError(f"level must be in (0, 1) and samples at least 1, got {level} and {samples}")
    generator = torch.Generator().manual_seed(seed)
    n = values.shape[0]
    means = []
    for size in _resamples(samples, values.numel()):
        draws = torch.randint(n, (size, n), generator=generator)
        means.append(values[draws.to(values.device)].mean(1))
    stacked = torch.cat(means)
    tail = (1 - level) / 2
    return values.mean(0), stacked.quantile(tail, dim=0), stacked.quantile(1 - tail, dim=0)


def permutation_test(first: torch.Tensor, second: torch.Tensor, *, permutations: int = 5000,
                     seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """(mean(first) - mean(second), two-sided p) over dim 0, by permuting the set labels; p counts
    the observed split among the permutations ((1 + as extreme) / (1 + permutations))."""
    first, second = _check(first, "a permutation test", 1), _check(second, "a permutation test", 1)
    if first.shape[1:] != second.shape[1:]:
        raise InvalidDataError(f"the two sets differ in shape beyond the first dimension: {tuple(first.shape)} "
                               f"and {tuple(second.shape)}")
    pooled = torch.cat((first, second))
    n, n_first = pooled.shape[0], first.shape[0]
    observed = first.mean(0) - second.mean(0)
    generator = torch.Generator().manual_seed(seed)
    extreme = torch.zeros_like(observed)
    tolerance = 1e-12 * observed.abs().clamp(min=1.0)  # equal splits count as extreme despite rounding
    for size in _resamples(permutations, pooled.numel()):
        order = torch.argsort(torch.rand(size, n, generator=generator), dim=1).to(pooled.device)
        shuffled = pooled[order]
        difference = shuffled[:, :n_first].mean(1) - shuffled[:, n_first:].mean(1)
        extreme += (difference.abs() >= observed.abs() - tolerance).sum(0)
    return observed, (1 + extreme) / (1 + permutations)


def paired_sign_flip_test(differences: torch.Tensor, *, permutations: int = 5000,
                          seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """(mean difference, two-sided p) over dim 0 of paired differences (treated - control per
    image), by flipping each pair's sign at random; for 0/1 outcomes this is McNemar's exact test
    approached by sampling."""
    differences = _check(differences, "a paired test", 1)
    n = differences.shape[0]
    observed = differences.mean(0)
    generator = torch.Generator().manual_seed(seed)
    extreme = torch.zeros_like(observed)
    tolerance = 1e-12 * observed.abs().clamp(min=1.0)
    for size in _resamples(permutations, differences.numel()):
        signs = torch.randint(2, (size, n), generator=generator).double().mul_(2).sub_(1).to(differences.device)
        flipped = (signs.view(size, n, *[1] * (differences.ndim - 1)) * differences).mean(1)
        extreme += (flipped.abs() >= observed.abs() - tolerance).sum(0)
    return observed, (1 + extreme) / (1 + permutations)


def fdr_adjust(p_values: torch.Tensor) -> torch.Tensor:
    """Benjamini-Hochberg adjusted p-values, over every entry of `p_values` (any shape)."""
    flat = p_values.double().flatten()
    if not len(flat):
        return p_values.double()
    order = torch.argsort(flat)
    ranked = flat[order] * len(flat) / torch.arange(1, len(flat) + 1, dtype=torch.float64)
    adjusted = torch.flip(torch.cummin(torch.flip(ranked, [0]), 0).values, [0]).clamp(max=1.0)
    out = torch.empty_like(flat)
    out[order] = adjusted
    return out.view(p_values.shape)
