"""Sampling the toy: prompts + seeded noise -> images, optionally with transcoders patched in to
record features or steer them (the library's `patch_reference_model`)."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import torch

from ..errors import InputShapeError
from ..flux.sampling import euler_sample, flux_sigmas
from ..recording import FeatureRecording, Steering, patch_reference_model
from ..transcoders.transcoder_set import TranscoderSet
from . import codec
from .model import ToyModel

STEPS = 12  # the toy's sampling schedule: FLUX's linear sigmas from 1 to 0 (schnell's, with more steps)
IMAGE_SIZE = 32


def toy_noise(seeds: Sequence[int], size: int = IMAGE_SIZE) -> torch.Tensor:
    """One starting latent per seed, [len(seeds), 16, size/2, size/2], the same whatever the batch."""
    shape = (codec.LATENT_CHANNELS, size // 2, size // 2)
    return torch.stack([torch.randn(shape, generator=torch.Generator().manual_seed(seed)) for seed in seeds])


@torch.no_grad()
def generate(
    model: ToyModel,
    prompts: Sequence[str],
    noise: torch.Tensor,
    *,
    steps: int = STEPS,
    transcoders: TranscoderSet | None = None,
    recording: FeatureRecording | None = None,
    steering: Iterable[Steering] = (),
) -> torch.Tensor:
    """Images [B, 3, H, W] in [0, 1] for `prompts` from `noise` (one prompt per noise row). With
    `transcoders`, the double-block MLPs are patched for the run: `recording` keeps every step's
    features, `steering` (SteeringSpec, CircuitSteering or PerImageSteering) changes them."""
    if len(prompts) != noise.shape[0]:
        raise InputShapeError(f"{len(prompts)} prompts for {noise.shape[0]} noise latents: give one latent per prompt")
    context, pooled = model.text_encoder(list(prompts))
    sigmas = flux_sigmas(steps)
    if transcoders is None:
        return codec.decode(euler_sample(model.flux, noise, context, pooled, sigmas))
    if recording is not None:
        recording.start_run(sigmas)
    with patch_reference_model(model.flux, transcoders, recording=recording, steering=tuple(steering)):
        latents = euler_sample(model.flux, noise, context, pooled, sigmas)
    if recording is not None:
        recording.finish_run()
    return codec.decode(latents)

