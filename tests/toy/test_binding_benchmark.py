"""The binding benchmark's statistics: matched-dose interpolation, bootstrap intervals and paired tests."""

from __future__ import annotations

import math

import pytest
import torch

from diffract_core.toy.binding_benchmark import ArmResult, at_level, bootstrap_at, paired_test


def test_the_fix_rate_is_read_at_a_matched_change_from_the_no_op() -> None:
    fixed = torch.tensor([0.2, 0.6, 0.8])
    change = torch.tensor([0.1, 0.3, 0.5])
    assert at_level(fixed, change, 0.05) == pytest.approx(0.1)  # between the no-op (0, 0) and the first dose
    assert at_level(fixed, change, 0.2) == pytest.approx(0.4)
    assert at_level(fixed, change, 0.5) == pytest.approx(0.8)
    assert math.isnan(at_level(fixed, change, 0.6))  # no dose reaches it


def _arm(fixed: list[list[float]], inside: list[list[float]]) -> ArmResult:
    f, i = torch.tensor(fixed), torch.tensor(inside)
    return ArmResult(f, i, torch.zeros_like(f), f.clone())


def test_an_arm_that_fixes_more_at_the_same_change_wins_its_paired_test() -> None:
    errors = 200
    generator = torch.Generator().manual_seed(0)
    strong = (torch.rand(2, errors, generator=generator) < torch.tensor([[0.4], [0.8]])).float()
    weak = (torch.rand(2, errors, generator=generator) < torch.tensor([[0.1], [0.3]])).float()
    inside = torch.tensor([[0.1], [0.2]]).expand(2, errors)
    results = {"strong": _arm(strong.tolist(), inside.tolist()), "weak": _arm(weak.tolist(), inside.tolist())}
    boot = bootstrap_at(results, 0.2, samples=300, seed=0)
    assert boot["strong"].shape == (300,)
    test = paired_test(boot["strong"], boot["weak"])
    assert test["difference"] > 0.3 and test["ci_low"] > 0 and test["p"] < 0.01
    same = paired_test(boot["weak"], boot["weak"])
    assert same["difference"] == 0.0 and same["p"] == 1.0


def test_a_stronger_arm_does_not_win_by_dose_alone() -> None:
    """Arm B doubles A's dose and doubles its change: at matched change they fix the same."""
    errors = 50
    a = _arm([[0.2] * errors, [0.4] * errors], [[0.1] * errors, [0.2] * errors])
    b = _arm([[0.4] * errors, [0.6] * errors], [[0.2] * errors, [0.3] * errors])
    assert at_level(a.fixed.mean(1), a.inside.mean(1), 0.2) == pytest.approx(at_level(b.fixed.mean(1), b.inside.mean(1),
                                                                                      0.2))
