"""The toy's latent codec inverts exactly and has FLUX's latent shape."""

from __future__ import annotations

import pytest
import torch

from diffract_core.errors import InputShapeError
from diffract_core.toy import render, sample_scene
from diffract_core.toy.codec import BASIS, SCALE, SHIFT, decode, encode


def test_encode_then_decode_gives_the_image_back() -> None:
    generator = torch.Generator().manual_seed(0)
    images = torch.stack([render(sample_scene(generator)) for _ in range(4)])
    latents = encode(images)
    assert latents.shape == (4, 16, 16, 16)
    restored = (decode(latents) * 255).round().to(torch.uint8)
    assert torch.equal(restored, images)
    raw = latents / SCALE + SHIFT  # what ComfyUI's LATENT holds
    assert torch.equal((decode(raw, raw=True) * 255).round().to(torch.uint8), images)
    torch.testing.assert_close(BASIS @ BASIS.T, torch.eye(12), atol=1e-6, rtol=0)


def test_decode_projects_any_latent_onto_images() -> None:
    noise = torch.randn(2, 16, 8, 8, generator=torch.Generator().manual_seed(1))
    images = decode(noise)
    assert images.shape == (2, 3, 16, 16) and 0 <= float(images.min()) and float(images.max()) <= 1


def test_bad_shapes_name_the_expected_layout() -> None:
    with pytest.raises(InputShapeError, match=r"\[B, 3, H, W\] with even"):
        encode(torch.zeros(1, 3, 31, 32))
    with pytest.raises(InputShapeError, match=r"\[B, 16, h, w\]"):
        decode(torch.zeros(1, 4, 8, 8))
