"""Synthetic activation shards with a sparse ground truth, and small training settings."""

from __future__ import annotations

from pathlib import Path

import pytest

from diffract_core.training.settings import TrainSettings
from diffract_core.training.synthetic import SparseDictionaryMLP

SITE = ("img", 0)


@pytest.fixture(scope="package")
def ground_truth() -> SparseDictionaryMLP:
    return SparseDictionaryMLP(d_model=64, n_features=128, seed=0)


@pytest.fixture(scope="package")
def synthetic_data(tmp_path_factory: pytest.TempPathFactory, ground_truth: SparseDictionaryMLP) -> Path:
    """`train` (32k rows) and `validation` (8k rows) shards for site img:0, and a smaller txt:0."""
    root = tmp_path_factory.mktemp("activations")
    ground_truth.write(root, SITE, 32768, split="train")
    ground_truth.write(root, SITE, 8192, split="validation")
    ground_truth.write(root, ("txt", 0), 8192, split="train")
    return root


def quick_settings(**overrides: object) -> TrainSettings:
    """A few dozen steps: enough to exercise every mechanism, not to converge."""
    base = {"d_features": 128, "steps": 40, "batch_size": 256, "lr": 3e-3, "log_every": 10, "checkpoint_every": 20,
            "dead_after_steps": 10, "resample_every": 10, "resample_until": 1.0}
    return TrainSettings(**{**base, **overrides})
