"""Crop windows around an example's tokens, and tiles through JPEG sprite sheets and back."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image

from diffract_core.atlas.crops import TILES_PER_ROW, TileStore, crop_window, cut_crops, read_tile


def test_the_window_is_a_square_around_the_box_inside_the_image() -> None:
    grid, height, width = (8, 8), 32, 32  # 4 px tokens
    assert crop_window((3, 3, 4, 4), grid, height, width, crop_tokens=4) == (8, 8, 16)  # centred, 4 tokens a side
    assert crop_window((0, 0, 0, 0), grid, height, width, crop_tokens=4) == (0, 0, 16)  # clamped to the corner
    assert crop_window((1, 0, 6, 2), grid, height, width, crop_tokens=2) == (4, 0, 24)  # the box's longer side
    assert crop_window((0, 0, 7, 7), grid, height, width, crop_tokens=20) == (0, 0, 32)  # never past the image


def test_crops_are_area_averaged_windows() -> None:
    image = torch.arange(3 * 8 * 8, dtype=torch.uint8).reshape(3, 8, 8)
    crops = cut_crops(image, [(0, 0, 4), (2, 4, 4), (0, 0, 2)], 2)
    assert torch.equal(crops[2], image[:, :2, :2].permute(1, 2, 0))  # already the tile's size
    expected = image[:, 2:6, 4:8].float().reshape(3, 2, 2, 2, 2).mean((2, 4)).round().to(torch.uint8)
    assert torch.equal(crops[1], expected.permute(1, 2, 0))


def test_tiles_survive_the_sprite_sheet(tmp_path: Path) -> None:
    image = torch.zeros(3, 32, 32, dtype=torch.uint8)
    image[0, :16] = 200
    image[2, 16:] = 180
    store = TileStore(tmp_path / "tiles.npy", TILES_PER_ROW + 3, 8)
    store.tiles[:] = cut_crops(image, [(tile % 17, 0, 16) for tile in range(store.count)], 8).numpy()
    [name] = store.write_sheets(tmp_path)
    sheet = Image.open(tmp_path / name)
    assert sheet.size == (TILES_PER_ROW * 8, 2 * 8)
    for tile in (0, 16, TILES_PER_ROW + 2):
        expected = torch.from_numpy(np.asarray(store.tiles[tile])).permute(2, 0, 1).int()
        assert (read_tile(sheet, tile, 8).int() - expected).abs().max() <= 24  # JPEG, quality 85
