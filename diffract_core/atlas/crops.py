"""Image crops of a feature's best examples, stored as JPEG sprite sheets of square tiles.

A crop is a square window of the final image centred on the tokens where the feature reached half
its peak (at least `crop_tokens` tokens a side, clamped to the image), resized to the tile size.
Tile t lies on sheet t // TILES_PER_SHEET, row-major, TILES_PER_ROW tiles to a row. While a build
cuts them, tiles live in a memory-mapped file in the work folder, so their number does not count
against the build's memory.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from ..spatial import Grid, check_grid

TILES_PER_ROW = 64
TILES_PER_SHEET = TILES_PER_ROW * 64
JPEG_QUALITY = 85
Box = tuple[int, int, int, int]  # first row, first column, last row, last column (tokens, inclusive)


def sheet_name(sheet: int) -> str:
    return f"crops-{sheet:03d}.jpg"


def sheet_count(tiles: int) -> int:
    return -(-tiles // TILES_PER_SHEET)


def crop_window(box: Box, grid: Grid, height: int, width: int, crop_tokens: int) -> tuple[int, int, int]:
    """(top, left, side) in pixels of the square window around `box`."""
    rows, cols = check_grid(grid)
    token_height, token_width = height / rows, width / cols
    first_row, first_col, last_row, last_col = box
    side = max((last_row - first_row + 1) * token_height, (last_col - first_col + 1) * token_width,
               crop_tokens * max(token_height, token_width))
    side = round(min(side, height, width))
    centre_y = (first_row + last_row + 1) / 2 * token_height
    centre_x = (first_col + last_col + 1) / 2 * token_width
    top = min(max(round(centre_y - side / 2), 0), height - side)
    left = min(max(round(centre_x - side / 2), 0), width - side)
    return top, left, side


def cut_crops(image: torch.Tensor, windows: list[tuple[int, int, int]], size: int) -> torch.Tensor:
    """uint8 [len(windows), size, size, 3]: the windows of a uint8 image [3, H, W], each area-averaged
    to size x size (the bins of `adaptive_avg_pool2d`), all at once from the image's summed-area table."""
    table = F.pad(image.double().cumsum(1).cumsum(2), (1, 0, 1, 0))  # [3, H + 1, W + 1]
    width = table.shape[2]
    top, left, side = torch.tensor(windows, dtype=torch.long).reshape(-1, 3).unbind(1)
    bins = torch.arange(size)
    first = (bins[None] * side[:, None]) // size  # [crops, size], relative to the window
    last = -((-(bins[None] + 1) * side[:, None]) // size)
    row0, row1 = (top[:, None] + first)[:, :, None], (top[:, None] + last)[:, :, None]
    col0, col1 = (left[:, None] + first)[:, None, :], (left[:, None] + last)[:, None, :]

    def at(rows: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
        return table.flatten(1)[:, (rows * width + cols).flatten()].reshape(3, len(windows), size, size)

    sums = at(row1, col1) - at(row0, col1) - at(row1, col0) + at(row0, col0)
    means = sums / ((row1 - row0) * (col1 - col0))
    return means.round().to(torch.uint8).permute(1, 2, 3, 0)


class TileStore:
    """uint8 tiles [count, size, size, 3] in a memory-mapped file."""

    def __init__(self, path: Path, count: int, size: int) -> None:
        self.size = size
        self.tiles = np.lib.format.open_memmap(path, mode="w+", dtype=np.uint8, shape=(max(count, 1), size, size, 3))
        self.count = count

    def write_sheets(self, folder: Path) -> list[str]:
        names = []
        for sheet in range(sheet_count(self.count)):
            first = sheet * TILES_PER_SHEET
            tiles = self.tiles[first : min(first + TILES_PER_SHEET, self.count)]
            rows = -(-len(tiles) // TILES_PER_ROW)
            canvas = np.zeros((rows * self.size, TILES_PER_ROW * self.size, 3), dtype=np.uint8)
            for index, tile in enumerate(tiles):
                row, col = divmod(index, TILES_PER_ROW)
                canvas[row * self.size : (row + 1) * self.size, col * self.size : (col + 1) * self.size] = tile
            names.append(sheet_name(sheet))
            # 4:4:4 chroma: tiles are a few pixels wide, and subsampling would bleed colour across them.
            Image.fromarray(canvas).save(folder / names[-1], quality=JPEG_QUALITY, subsampling=0)
        return names


def read_tile(sheet: Image.Image, tile: int, size: int) -> torch.Tensor:
    """uint8 [3, size, size]: tile `tile` (global index) of its sheet."""
    row, col = divmod(tile % TILES_PER_SHEET, TILES_PER_ROW)
    patch = sheet.crop((col * size, row * size, (col + 1) * size, (row + 1) * size)).convert("RGB")
    return torch.from_numpy(np.asarray(patch).copy()).permute(2, 0, 1)
