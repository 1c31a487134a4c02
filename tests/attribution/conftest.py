"""A tiny random FLUX (4 double blocks), transcoders on all its MLPs, and one kept model call."""

from __future__ import annotations

import pytest
import torch

from diffract_core.flux import Flux, FluxConfig, init_random_
from diffract_core.quickstart import random_transcoder
from diffract_core.recording import FeatureRecording, patch_reference_model
from diffract_core.recording.call_inputs import CallInputs
from diffract_core.transcoders import TranscoderSet

SCHEDULE = (1.0, 0.75, 0.5, 0.25, 0.0)


@pytest.fixture(scope="package")
def model() -> Flux:
    return init_random_(Flux(FluxConfig.tiny(depth=4)), seed=0, std=0.05).eval()


@pytest.fixture(scope="package")
def transcoders(model: Flux) -> TranscoderSet:
    return TranscoderSet.from_transcoders(
        random_transcoder(stream, layer, d_model=64, d_features=96, time_dim=16, seed=10 * layer + (stream == "txt"))
        for stream in ("img", "txt")
        for layer in range(model.config.depth)
    )


def model_inputs(model: Flux, sigma: float = 0.75) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(3)
    cfg = model.config
    return {
        "x": torch.randn(1, cfg.latent_channels, 8, 12, generator=generator),
        "timestep": torch.full((1,), sigma),
        "context": torch.randn(1, 5, cfg.context_in_dim, generator=generator),
        "y": torch.randn(1, cfg.vec_in_dim, generator=generator),
    }


@pytest.fixture(scope="package")
def call(model: Flux, transcoders: TranscoderSet) -> CallInputs:
    """The kept inputs of step 1 (sigma 0.75) of a recorded call."""
    recording = FeatureRecording(sites=tuple(transcoders.sites), k=5, keep_input_steps=frozenset({1}))
    recording.start_run(SCHEDULE)
    with torch.no_grad(), patch_reference_model(model, transcoders, recording=recording):
        model(**model_inputs(model))
    return recording.call_inputs(1)
