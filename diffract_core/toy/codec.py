"""The toy's "VAE": an exact, fixed linear map between RGB images and FLUX-shaped latents.

Each 2x2 patch of an RGB image in [-1, 1] (12 numbers) becomes 16 latent channels through a fixed
matrix with orthonormal rows, so a 32 px image is a 16-channel 16x16 latent, which FLUX patchifies
into 64 tokens of 64 channels, as a real FLUX latent. Decoding applies the transpose, which inverts
encoding exactly (and projects any other latent onto the image space). The model works on latents
in ComfyUI's FLUX convention: (latent - SHIFT) * SCALE.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..errors import InputShapeError

LATENT_CHANNELS = 16
SCALE, SHIFT = 0.3611, 0.1159  # ComfyUI's latent_formats.Flux, so a ComfyUI Flux model samples the same space


def _basis(seed: int = 0) -> torch.Tensor:
    """[12, 16] with orthonormal rows, the same on every machine."""
    generator = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(LATENT_CHANNELS, 12, generator=generator, dtype=torch.float64))
    return q.T.float().contiguous()


BASIS = _basis()


def encode(images: torch.Tensor) -> torch.Tensor:
    """uint8 [B, 3, H, W] (or float in [0, 1]) -> latents [B, 16, H/2, W/2] in the model's space."""
    if images.dim() != 4 or images.shape[1] != 3 or images.shape[-1] % 2 or images.shape[-2] % 2:
        raise InputShapeError(f"expected RGB images [B, 3, H, W] with even H and W, got {tuple(images.shape)}")
    pixels = images.float() / 255 if images.dtype == torch.uint8 else images.float()
    patches = F.pixel_unshuffle(pixels * 2 - 1, 2)  # [B, 12, H/2, W/2]
    raw = torch.einsum("bphw,pc->bchw", patches, BASIS.to(patches.device))
    return (raw - SHIFT) * SCALE


def decode(latents: torch.Tensor, *, raw: bool = False) -> torch.Tensor:
    """Latents [B, 16, h, w] in the model's space (or ComfyUI's LATENT, `raw=True`) -> float RGB
    images [B, 3, 2h, 2w] in [0, 1]."""
    if latents.dim() != 4 or latents.shape[1] != LATENT_CHANNELS:
        raise InputShapeError(f"expected toy latents [B, {LATENT_CHANNELS}, h, w], got {tuple(latents.shape)}")
    values = latents.float() if raw else latents.float() / SCALE + SHIFT
    patches = torch.einsum("bchw,pc->bphw", values, BASIS.to(values.device))
    return ((F.pixel_shuffle(patches, 2) + 1) / 2).clamp(0, 1)
