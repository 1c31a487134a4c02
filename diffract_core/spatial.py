"""Between pixels and image tokens: masks onto the token grid, token maps back to pixels.

Image-stream token t sits at grid row t // cols, column t % cols (row-major), and the grid covers the
whole generated image, so a mask or image lines up with the tokens only if it has the grid's aspect ratio.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F

from .errors import InputShapeError

Grid = tuple[int, int]  # (rows, cols)
UpsampleMode = Literal["nearest", "bilinear"]
UPSAMPLE_MODES: tuple[UpsampleMode, ...] = ("nearest", "bilinear")

PIXELS_PER_TOKEN = 16  # FLUX: 8x VAE downsampling, then 2x2 patches
MAX_MASK_ASPECT = 16  # a mask this much wider than tall (or taller than wide) fits no image anyone samples


def check_grid(grid: Grid) -> tuple[int, int]:
    """(rows, cols) as positive ints, or InputShapeError."""
    rows, cols = (int(v) for v in grid)
    if rows < 1 or cols < 1:
        raise InputShapeError(f"token grid {grid} is empty: a grid is (rows, cols) with both at least 1")
    return rows, cols


def check_aspect(height: int, width: int, grid: Grid, what: str) -> None:
    """Refuse a picture whose aspect ratio is more than one token off the grid's."""
    rows, cols = check_grid(grid)
    cols_at_this_height = width * rows / height
    rows_at_this_width = height * cols / width
    if abs(cols_at_this_height - cols) <= 1 and abs(rows_at_this_width - rows) <= 1:
        return
    fit_height = max(1, round(width * rows / cols))
    raise InputShapeError(
        f"the {what} is {width}x{height} (WxH) but the image tokens form a {cols}x{rows} grid (cols x rows), "
        f"a different aspect ratio: draw the {what} on the generated image "
        f"({cols * PIXELS_PER_TOKEN}x{rows * PIXELS_PER_TOKEN} for this grid) or resize it to {width}x{fit_height}"
    )


def mask_plane(mask: torch.Tensor, what: str = "mask") -> torch.Tensor:
    """The [H, W] picture of a MASK ([H, W] or [1, H, W]), or InputShapeError."""
    if mask.dim() == 3:
        if mask.shape[0] != 1:
            raise InputShapeError(
                f"the {what} holds {mask.shape[0]} masks (a MASK batch), but a region is one mask: "
                "pass a single mask (pick one from the batch, or combine them into one first)"
            )
        mask = mask[0]
    if mask.dim() != 2 or mask.numel() == 0:
        raise InputShapeError(
            f"the {what} has shape {tuple(mask.shape)}, but a MASK is [H, W] or [1, H, W]: "
            "connect a ComfyUI MASK output"
        )
    return mask


def check_mask_proportions(mask: torch.Tensor, what: str = "mask") -> None:
    """Refuse, before any grid is known, a MASK that can fit no generated image: a side under 2 px, or
    one side more than MAX_MASK_ASPECT times the other. The aspect against the real grid is checked
    when the mask meets it (mask_to_token_weights)."""
    height, width = mask_plane(mask, what).shape
    if min(height, width) >= 2 and max(height, width) <= MAX_MASK_ASPECT * min(height, width):
        return
    raise InputShapeError(
        f"the {what} is {width}x{height} (WxH), too thin to be a picture of any generated image (a side under 2 px "
        f"or more than {MAX_MASK_ASPECT}:1): draw the {what} on the generated image, or resize it to the size of "
        "the image you sample (e.g. 1024x1024 for a square FLUX image)"
    )


def mask_to_token_weights(mask: torch.Tensor, grid: Grid, what: str = "mask") -> torch.Tensor:
    """A MASK ([H, W] or [1, H, W]) area-averaged onto the token grid: [rows * cols] floats in [0, 1].
    `what` names the mask in errors (e.g. the node input it came from)."""
    rows, cols = check_grid(grid)
    plane = mask_plane(mask, what)
    height, width = plane.shape
    check_aspect(height, width, (rows, cols), what)
    pooled = F.adaptive_avg_pool2d(plane.float().clamp(0, 1)[None, None], (rows, cols))
    return pooled.reshape(rows * cols).clamp(0, 1)


def token_map_to_image(
    values: torch.Tensor, grid: Grid, size: tuple[int, int], mode: UpsampleMode = "nearest"
) -> torch.Tensor:
    """Token values ([rows * cols] or [B, rows * cols]) upsampled to pixels: [H, W] or [B, H, W]."""
    rows, cols = check_grid(grid)
    if values.dim() not in (1, 2) or values.shape[-1] != rows * cols:
        raise InputShapeError(
            f"token values of shape {tuple(values.shape)} do not fit a {rows}x{cols} grid: "
            f"pass [{rows * cols}] or [batch, {rows * cols}] values, one per image token"
        )
    if mode not in UPSAMPLE_MODES:
        raise InputShapeError(f"upsampling mode {mode!r} is unknown: use one of {', '.join(UPSAMPLE_MODES)}")
    height, width = (int(v) for v in size)
    if height < 1 or width < 1:
        raise InputShapeError(f"image size {size} is empty: pass (H, W) with both at least 1")
    batch = values.reshape(-1, 1, rows, cols).float()
    if mode == "nearest":
        # nearest-exact centres the sampling, so sizes that are not grid multiples split blocks evenly
        upsampled = F.interpolate(batch, size=(height, width), mode="nearest-exact")
    else:
        upsampled = F.interpolate(batch, size=(height, width), mode="bilinear", align_corners=False)
    upsampled = upsampled[:, 0]
    return upsampled[0] if values.dim() == 1 else upsampled
