"""The heat table of per-head values."""

from __future__ import annotations

import pytest
import torch

from diffract_core.errors import InputShapeError
from diffract_core.render.head_table import MISSING, render_head_table


def test_heat_table_is_an_image_with_one_panel_per_step() -> None:
    values = torch.rand(3, 4, 2)
    values[1, 2, 1] = float("nan")
    image = render_head_table(values, ["step 0", "step 1", "step 2"], "entropy")
    assert image.ndim == 4 and image.shape[0] == 1 and image.shape[-1] == 3
    assert 0 <= float(image.min()) and float(image.max()) <= 1
    pixels = (image[0] * 255).round().to(torch.uint8)
    grey = (pixels == torch.tensor(MISSING, dtype=torch.uint8)).all(-1)
    assert int(grey.sum()) > 100, "the missing cell is drawn grey"


def test_signed_values_use_a_scale_centred_on_zero() -> None:
    values = torch.tensor([[[-2.0, 0.0, 1.0]]])
    image = render_head_table(values, ["step 0"], "effect", diverging=True)
    pixels = (image[0] * 255).round().to(torch.int32)
    white = (pixels >= 250).all(-1).sum()
    blue = ((pixels[..., 2] > 150) & (pixels[..., 0] < 80)).sum()
    assert int(white) > 300 and int(blue) > 300


def test_mismatched_titles_are_refused() -> None:
    with pytest.raises(InputShapeError, match="one title per step"):
        render_head_table(torch.zeros(2, 1, 1), ["step 0"], "entropy")
