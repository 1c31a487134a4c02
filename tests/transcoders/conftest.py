import pytest
import torch

from diffract_core.quickstart import random_transcoder
from diffract_core.transcoders import Transcoder


@pytest.fixture
def small_transcoder() -> Transcoder:
    """d_model 16, 96 features, a 16-dim time embedding; random FiLM and biases."""
    return random_transcoder("img", 3, d_model=16, d_features=96, time_dim=16, seed=1)


@pytest.fixture
def activations() -> torch.Tensor:
    return torch.randn(2, 7, 16, generator=torch.Generator().manual_seed(2))
