"""What colour an image token shows, named with the eleven basic colour terms (Berlin & Kay).

Each term's prototype is the centroid of that name in the xkcd colour survey (Munroe, 2010). A
pixel takes the term whose prototype is nearest in CIELAB (sRGB, D65); a token takes the term most
of its pixels have, pooled onto the token grid as `spatial.mask_to_token_weights` pools a mask.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..spatial import Grid, check_aspect, check_grid

COLOUR_TERMS: dict[str, str] = {
    "black": "000000", "white": "ffffff", "grey": "929591", "red": "e50000", "orange": "f97306", "yellow": "ffff14",
    "green": "15b01a", "blue": "0343df", "purple": "7e1e9c", "pink": "ff81c0", "brown": "653700",
}
COLOUR_NAMES: tuple[str, ...] = tuple(COLOUR_TERMS)

_SRGB_TO_XYZ = torch.tensor([[0.4124564, 0.3575761, 0.1804375],
                             [0.2126729, 0.7151522, 0.0721750],
                             [0.0193339, 0.1191920, 0.9503041]], dtype=torch.float64)
_WHITE_D65 = torch.tensor([0.95047, 1.0, 1.08883], dtype=torch.float64)


def _linear(srgb: torch.Tensor) -> torch.Tensor:
    """sRGB in [0, 1] -> linear light (the sRGB transfer curve undone)."""
    return torch.where(srgb <= 0.04045, srgb / 12.92, ((srgb + 0.055) / 1.055) ** 2.4)


_LINEAR_OF_BYTE = _linear(torch.arange(256, dtype=torch.float64) / 255)


def srgb_to_lab(rgb: torch.Tensor) -> torch.Tensor:
    """[..., 3] sRGB bytes (0..255, integer dtype) -> [..., 3] CIELAB, in float64."""
    xyz = _LINEAR_OF_BYTE[rgb.long()] @ _SRGB_TO_XYZ.T / _WHITE_D65
    delta = 6 / 29
    f = torch.where(xyz > delta**3, xyz.clamp(min=0) ** (1 / 3), xyz / (3 * delta**2) + 4 / 29)
    return torch.stack([116 * f[..., 1] - 16, 500 * (f[..., 0] - f[..., 1]), 200 * (f[..., 1] - f[..., 2])], -1)


_PROTOTYPES_LAB = srgb_to_lab(torch.tensor([[int(code[i : i + 2], 16) for i in (0, 2, 4)]
                                            for code in COLOUR_TERMS.values()]))


def colour_term(rgb: tuple[int, int, int]) -> str:
    """The basic colour term of one sRGB colour (0..255)."""
    return COLOUR_NAMES[int(torch.cdist(srgb_to_lab(torch.tensor([rgb])), _PROTOTYPES_LAB).argmin())]


def pixel_colours(images: torch.Tensor) -> torch.Tensor:
    """long [B, H, W]: each pixel's index in COLOUR_NAMES, for uint8 images [B, 3, H, W]."""
    lab = srgb_to_lab(images.permute(0, 2, 3, 1)).float()
    distances = torch.cdist(lab.reshape(-1, 3), _PROTOTYPES_LAB.float())
    return distances.argmin(-1).reshape(lab.shape[:-1])


def token_colours(images: torch.Tensor, grid: Grid) -> torch.Tensor:
    """long [B, rows * cols]: the colour term most pixels of each image token have (one image at a
    time: the colour distances take 88 bytes a pixel)."""
    rows, cols = check_grid(grid)
    check_aspect(images.shape[-2], images.shape[-1], grid, "image")
    terms = []
    for image in images:
        one_hot = F.one_hot(pixel_colours(image[None]), len(COLOUR_NAMES)).permute(0, 3, 1, 2).float()
        terms.append(F.adaptive_avg_pool2d(one_hot, (rows, cols)).argmax(1).reshape(rows * cols))
    return torch.stack(terms)
