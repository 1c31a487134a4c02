"""Rectified-flow sampling for the reference model, as FLUX.1 is sampled.

FLUX is trained on x_sigma = (1 - sigma) x_0 + sigma * noise and predicts the velocity
v = noise - x_0; a first-order (Euler) step is x <- x + (sigma_next - sigma) v. The sigma schedule
is linear in [1, 0] for schnell; dev shifts it towards noise (`shift` > 1, the SD3 form
sigma' = shift * sigma / (1 + (shift - 1) * sigma)).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from ..errors import SettingsError
from .model import Flux


def flux_sigmas(steps: int, shift: float = 1.0) -> Tensor:
    """The `steps + 1` sigmas of a run, from 1 to 0 (schnell with 4 steps: 1, .75, .5, .25, 0)."""
    if steps < 1:
        raise SettingsError(f"steps must be at least 1, got {steps}")
    if shift <= 0:
        raise SettingsError(f"shift must be positive, got {shift}")
    sigmas = torch.linspace(1.0, 0.0, steps + 1, dtype=torch.float64)
    return (shift * sigmas / (1 + (shift - 1) * sigmas)).float()


StepCallback = Callable[[int, float, Tensor], None]


@torch.no_grad()
def euler_sample(
    model: Flux,
    noise: Tensor,
    context: Tensor,
    pooled: Tensor,
    sigmas: Tensor,
    *,
    guidance: float | None = None,
    callback: StepCallback | None = None,
) -> Tensor:
    """Denoise `noise` (B, C, H, W) along `sigmas`; returns the final latent x_0.

    `callback(step, sigma, x)` runs before each model call (the step's input latent)."""
    x = noise.to(sigmas.dtype) * sigmas[0]
    batch = x.shape[0]
    guidance_vector = None
    if model.config.guidance_embed:
        guidance_vector = torch.full((batch,), 3.5 if guidance is None else guidance, device=x.device)
    parameters = next(model.parameters())
    for step in range(len(sigmas) - 1):
        sigma, sigma_next = float(sigmas[step]), float(sigmas[step + 1])
        if callback is not None:
            callback(step, sigma, x)
        timestep = torch.full((batch,), sigma, device=x.device, dtype=parameters.dtype)
        velocity = model(x.to(parameters.dtype), timestep, context, pooled, guidance_vector).to(x.dtype)
        x = x + (sigma_next - sigma) * velocity
    return x
