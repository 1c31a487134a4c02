"""Bootstrap intervals, permutation tests and FDR adjustment."""

from __future__ import annotations

import pytest
import torch

from diffract_core.errors import InvalidDataError, SettingsError
from diffract_core.heads import bootstrap_interval, fdr_adjust, paired_sign_flip_test, permutation_test


def test_bootstrap_interval_brackets_the_mean_repeats_and_narrows_with_more_data() -> None:
    generator = torch.Generator().manual_seed(0)
    small = torch.randn(40, 3, generator=generator)
    large = torch.randn(400, 3, generator=generator)
    mean, low, high = bootstrap_interval(small, samples=1000, seed=1)
    torch.testing.assert_close(mean, small.double().mean(0))
    assert bool((low < mean).all() and (mean < high).all())
    again = bootstrap_interval(small, samples=1000, seed=1)
    assert all(torch.equal(a, b) for a, b in zip((mean, low, high), again))
    _, low_large, high_large = bootstrap_interval(large, samples=1000, seed=1)
    assert bool(((high_large - low_large) < (high - low)).all())
    # the interval of a mean of n standard normals is about 2 * 1.96 / sqrt(n) wide
    assert float((high_large - low_large).mean()) == pytest.approx(2 * 1.96 / 400**0.5, rel=0.2)


def test_permutation_p_values_are_uniform_under_the_null() -> None:
    generator = torch.Generator().manual_seed(0)
    data = torch.randn(300, 24, generator=generator)  # 300 null experiments as trailing entries: 12 vs 12 draws
    first, second = data[:, :12].T, data[:, 12:].T
    _, p = permutation_test(first, second, permutations=400, seed=2)
    assert p.shape == (300,)
    for level in (0.05, 0.2, 0.5):
        assert float((p <= level).double().mean()) == pytest.approx(level, abs=0.06)
    _, p_flip = paired_sign_flip_test(first - second, permutations=400, seed=3)
    for level in (0.05, 0.2, 0.5):
        assert float((p_flip <= level).double().mean()) == pytest.approx(level, abs=0.06)


def test_permutation_tests_on_deterministic_cases() -> None:
    same = torch.ones(10, 2)
    difference, p = permutation_test(same, same, permutations=99)
    assert float(difference.abs().max()) == 0.0 and float(p.min()) == 1.0
    apart = torch.arange(10.0)[:, None]
    difference, p = permutation_test(apart + 100, apart, permutations=99)
    assert float(difference) == 100.0 and float(p) == pytest.approx(1 / 100)
    difference, p = paired_sign_flip_test(torch.ones(12), permutations=999)
    # only the all-positive and all-negative flips (2 of 4096) are as extreme
    assert float(difference) == 1.0 and float(p) < 0.01
    _, p = paired_sign_flip_test(torch.zeros(12), permutations=99)
    assert float(p) == 1.0


def test_fdr_adjustment_matches_benjamini_hochberg_by_hand() -> None:
    p = torch.tensor([[0.01, 0.04], [0.03, 0.5]])
    # ranks 1..4 of 0.01, 0.03, 0.04, 0.5: 0.04, 0.06, 0.0533, 0.5 -> running minimum from the top
    expected = torch.tensor([[0.04, 0.16 / 3], [0.16 / 3, 0.5]], dtype=torch.float64)
    torch.testing.assert_close(fdr_adjust(p), expected)


def test_bad_input_is_refused_clearly() -> None:
    with pytest.raises(InvalidDataError, match="a bootstrap interval needs at least 2 values"):
        bootstrap_interval(torch.ones(1, 3))
    with pytest.raises(SettingsError, match=r"level must be in \(0, 1\)"):
        bootstrap_interval(torch.ones(5), level=1.5)
    with pytest.raises(InvalidDataError, match="the two sets differ in shape beyond the first dimension"):
        permutation_test(torch.ones(4, 2), torch.ones(4, 3))
    with pytest.raises(InvalidDataError, match="a paired test needs at least 1 values"):
        paired_sign_flip_test(torch.ones(0))
