"""A tiny random FLUX (3 double blocks of 2 heads), transcoders on all its MLPs, and the kept
inputs of every step of one two-image sampling run."""

from __future__ import annotations

import pytest
import torch

from diffract_core.flux import Flux, FluxConfig, init_random_
from diffract_core.flux.sampling import euler_sample
from diffract_core.quickstart import random_transcoder
from diffract_core.recording import FeatureRecording, patch_reference_model
from diffract_core.transcoders import TranscoderSet

SIGMAS = torch.tensor([1.0, 0.75, 0.5, 0.25, 0.0])


@pytest.fixture(scope="package")
def model() -> Flux:
    return init_random_(Flux(FluxConfig.tiny(depth=3)), seed=1, std=0.08).eval()


@pytest.fixture(scope="package")
def transcoders(model: Flux) -> TranscoderSet:
    return TranscoderSet.from_transcoders(
        random_transcoder(stream, layer, d_model=64, d_features=96, time_dim=16, seed=10 * layer + (stream == "txt"))
        for stream in ("img", "txt")
        for layer in range(model.config.depth)
    )


@pytest.fixture(scope="package")
def run_inputs(model: Flux) -> dict[str, torch.Tensor]:
    """Noise [2, C, 8, 12] (a 4x6 grid of image tokens), 5 text tokens, pooled vectors."""
    generator = torch.Generator().manual_seed(3)
    cfg = model.config
    return {
        "noise": torch.randn(2, cfg.latent_channels, 8, 12, generator=generator),
        "context": torch.randn(2, 5, cfg.context_in_dim, generator=generator),
        "pooled": torch.randn(2, cfg.vec_in_dim, generator=generator),
    }


@pytest.fixture(scope="package")
def recording(model: Flux, transcoders: TranscoderSet, run_inputs: dict[str, torch.Tensor]) -> FeatureRecording:
    recording = FeatureRecording(sites=tuple(transcoders.sites), k=5, keep_input_steps=frozenset(range(4)))
    recording.start_run(SIGMAS)
    with torch.no_grad(), patch_reference_model(model, transcoders, recording=recording):
        euler_sample(model, run_inputs["noise"], run_inputs["context"], run_inputs["pooled"], SIGMAS)
    recording.finish_run()
    return recording
