"""Images as data: URIs, for pages and payloads that must stand alone."""

from __future__ import annotations

import base64
import io

import torch
from PIL import Image


def png_data_uri(image: torch.Tensor, scale: int = 1) -> str:
    """An image ([3, H, W] or [H, W, 3]; floats in [0, 1] or uint8) as a lossless PNG data: URI,
    enlarged `scale` times without smoothing."""
    if image.shape[0] == 3 and image.shape[-1] != 3:
        image = image.permute(1, 2, 0)
    if image.dtype != torch.uint8:
        image = (image.clamp(0, 1) * 255).round().byte()
    pixels = Image.fromarray(image.contiguous().cpu().numpy())
    if scale != 1:
        pixels = pixels.resize((pixels.width * scale, pixels.height * scale), Image.NEAREST)
    buffer = io.BytesIO()
    pixels.save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")
