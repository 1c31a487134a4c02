"""Heads clustered into roles on synthetic profiles with and without structure."""

from __future__ import annotations

import pytest
import torch

from diffract_core.errors import InvalidDataError
from diffract_core.heads import METRICS, HeadProfile, classify_heads


def profile_of(entropy: torch.Tensor, locality: torch.Tensor, text: torch.Tensor) -> HeadProfile:
    """[layers, heads] traits, the same for 3 images and 2 steps, plus a little seeded noise."""
    generator = torch.Generator().manual_seed(0)
    shape = (3, 2, *entropy.shape)

    def noisy(value: torch.Tensor) -> torch.Tensor:
        return value.double().expand(shape) + 0.01 * torch.randn(shape, generator=generator, dtype=torch.float64)

    values = {name: torch.zeros(shape, dtype=torch.float64) for name in METRICS}
    values |= {"entropy_img_img": noisy(entropy), "locality": noisy(locality), "text_focus": noisy(text)}
    return HeadProfile(values, torch.zeros(*shape, 4, dtype=torch.float64), (0, 1), (1.0, 0.5))


def test_three_clear_groups_become_three_named_roles() -> None:
    # layer 0: sharp and near; layers 1-2: broad and far; layer 3: reads the text
    entropy = torch.tensor([[1.0, 1.0], [3.0, 3.0], [3.0, 3.0], [2.0, 2.0]])
    locality = torch.tensor([[1.0, 1.0], [4.0, 4.0], [4.0, 4.0], [2.5, 2.5]])
    text = torch.tensor([[0.1, 0.1], [0.1, 0.1], [0.1, 0.1], [0.6, 0.6]])
    roles = classify_heads(profile_of(entropy, locality, text))
    assert len(roles.names) == 3 and max(roles.silhouettes, key=roles.silhouettes.get) == 3
    assert roles.role_of((0, 1)) == "local" and roles.role_of((2, 0)) == "diffuse"
    assert roles.role_of((3, 0)) == "text-reading"
    described = roles.to_dict()
    assert {role["name"]: role["heads"] for role in described["roles"]}["text-reading"] == ["3:0", "3:1"]
    assert set(described["silhouettes"]) == {"2", "3", "4", "5", "6"}


def test_heads_without_structure_share_one_role() -> None:
    flat = torch.full((4, 2), 2.0)
    roles = classify_heads(profile_of(flat, flat, flat / 10))
    assert roles.names == ("undifferentiated",) and bool((roles.assignment == 0).all())
    assert max(roles.silhouettes.values()) < 0.25


def test_a_profile_with_missing_values_is_refused() -> None:
    entropy = torch.tensor([[float("nan"), 1.0]])
    with pytest.raises(InvalidDataError, match="non-finite values"):
        classify_heads(profile_of(entropy, entropy, entropy))
