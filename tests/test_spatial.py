import pytest
import torch

from diffract_core.errors import InputShapeError
from diffract_core.spatial import check_mask_proportions, mask_to_token_weights, token_map_to_image

GRID = (4, 6)  # rows, cols: a 96x64 (WxH) image at 16 px per token


def _grid_weights(weights: torch.Tensor) -> torch.Tensor:
    return weights.reshape(GRID)


def test_top_left_quarter_selects_those_tokens() -> None:
    mask = torch.zeros(64, 96)
    mask[:32, :48] = 1
    weights = mask_to_token_weights(mask, GRID)
    expected = torch.zeros(GRID)
    expected[:2, :3] = 1
    assert weights.shape == (24,)
    assert torch.equal(_grid_weights(weights), expected)


def test_partial_coverage_is_area_averaged() -> None:
    mask = torch.zeros(1, 64, 96)
    mask[0, 16:24, 32:48] = 1  # the top half of token (1, 2)
    mask[0, 0:16, 0:4] = 0.5  # a quarter of token (0, 0) at half strength
    weights = _grid_weights(mask_to_token_weights(mask, GRID))
    assert weights[1, 2].item() == pytest.approx(0.5)
    assert weights[0, 0].item() == pytest.approx(0.125)
    assert weights.sum().item() == pytest.approx(0.625)


@pytest.mark.parametrize("size", [(8, 12), (1024, 1536), (64, 100), (3, 5)])
def test_any_resolution_with_the_grid_aspect_is_accepted(size: tuple[int, int]) -> None:
    weights = mask_to_token_weights(torch.ones(size), GRID)
    assert torch.allclose(weights, torch.ones(24))


def test_values_outside_unit_range_are_clamped() -> None:
    weights = mask_to_token_weights(torch.full((64, 96), 3.0), GRID)
    assert torch.equal(weights, torch.ones(24))


def test_mask_with_another_aspect_is_refused() -> None:
    with pytest.raises(InputShapeError, match=r"mask is 64x64 \(WxH\).*6x4 grid.*draw the mask on the generated image"):
        mask_to_token_weights(torch.ones(64, 64), GRID)
    with pytest.raises(InputShapeError, match=r"96x64 for this grid\) or resize it to 64x43"):
        mask_to_token_weights(torch.ones(64, 64), GRID)


def test_mask_batch_is_refused() -> None:
    with pytest.raises(InputShapeError, match="holds 2 masks.*pass a single mask"):
        mask_to_token_weights(torch.ones(2, 64, 96), GRID)
    with pytest.raises(InputShapeError, match=r"\[H, W\] or \[1, H, W\]"):
        mask_to_token_weights(torch.ones(1, 1, 64, 96), GRID)


def test_errors_name_where_the_mask_came_from() -> None:
    with pytest.raises(InputShapeError, match=r"the mask input of Steer Feature is 64x64 \(WxH\)"):
        mask_to_token_weights(torch.ones(64, 64), GRID, "mask input of Steer Feature")
    with pytest.raises(InputShapeError, match="the region input holds 2 masks"):
        mask_to_token_weights(torch.ones(2, 64, 96), GRID, "region input")


@pytest.mark.parametrize("shape", [(1000, 1), (1, 1000), (1, 1), (1, 16, 257), (257, 16)])
def test_masks_that_fit_no_image_are_refused_before_any_grid(shape: tuple[int, ...]) -> None:
    height, width = shape[-2:]
    with pytest.raises(InputShapeError, match=rf"the mask input is {width}x{height} \(WxH\), too thin.*resize it"):
        check_mask_proportions(torch.ones(shape), "mask input")


@pytest.mark.parametrize("shape", [(16, 64), (2, 2), (1, 16, 256), (1024, 1024), (512, 1536)])
def test_masks_of_any_plausible_aspect_pass_before_the_grid_is_known(shape: tuple[int, ...]) -> None:
    check_mask_proportions(torch.ones(shape))


def test_nearest_upsampling_fills_exactly_one_block() -> None:
    values = torch.zeros(24)
    values[1 * 6 + 2] = 0.7
    image = token_map_to_image(values, GRID, (64, 96))
    expected = torch.zeros(64, 96)
    expected[16:32, 32:48] = 0.7
    assert torch.equal(image, expected)


def test_batched_values_and_mask_round_trip() -> None:
    values = torch.rand(3, 24)
    images = token_map_to_image(values, GRID, (64, 96))
    assert images.shape == (3, 64, 96)
    for b in range(3):
        assert torch.allclose(mask_to_token_weights(images[b], GRID), values[b])


def test_bilinear_keeps_a_constant_map_constant() -> None:
    image = token_map_to_image(torch.full((24,), 0.25), GRID, (40, 60), mode="bilinear")
    assert image.shape == (40, 60)
    assert torch.allclose(image, torch.full((40, 60), 0.25))


def test_bad_token_values_are_refused() -> None:
    with pytest.raises(InputShapeError, match=r"do not fit a 4x6 grid: pass \[24\]"):
        token_map_to_image(torch.zeros(25), GRID, (64, 96))
    with pytest.raises(InputShapeError, match="unknown: use one of nearest, bilinear"):
        token_map_to_image(torch.zeros(24), GRID, (64, 96), mode="bicubic")  # type: ignore[arg-type]
