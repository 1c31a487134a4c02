"""The sinusoidal embedding of the timestep that conditions a transcoder."""

from __future__ import annotations

import math

import torch

from .config import TimeEmbeddingSpec


def sinusoidal_embedding(t: torch.Tensor, spec: TimeEmbeddingSpec) -> torch.Tensor:
    """Embed a flat float tensor of timesteps (t = sigma) as [sin(t w_k)..., cos(t w_k)...], in fp32.

    The operations and their order follow diffusers' `get_timestep_embedding` (defaults
    `flip_sin_to_cos=False, downscale_freq_shift=1`), so the result is bit-identical to what the
    released transcoders saw in training.
    """
    half = spec.dim // 2
    exponent = -math.log(spec.max_period) * torch.arange(half, dtype=torch.float32, device=t.device)
    exponent = exponent / (half - spec.freq_shift)
    angles = t.reshape(-1, 1).float() * torch.exp(exponent)[None, :]
    return torch.cat([torch.sin(angles), torch.cos(angles)], dim=-1)
