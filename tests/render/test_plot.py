import math

import pytest
from PIL import Image

from diffract_core.render.plot import SERIES_COLOURS, ChartLayout, chart_layout, line_chart, side_by_side

# Two sparsity sweeps (L0, FVU) whose points lie well apart, so no marker hides another.
SWEEP = {
    "layer 6": [(64.0, 0.15), (8.0, 0.42), (256.0, 0.07), (16.0, 0.31)],  # unsorted on purpose
    "layer 12": [(8.0, 0.62), (32.0, 0.40), (128.0, 0.25)],
}
LABELS = {"title": "FVU vs L0", "x_label": "L0", "y_label": "FVU"}


def _chart(series=SWEEP, **kwargs) -> Image.Image:
    return line_chart(series, **LABELS, **kwargs)


def _pixel(image: Image.Image, layout: ChartLayout, x: float, y: float) -> tuple[int, int, int]:
    column, row = layout.to_pixel(x, y)
    return image.getpixel((round(column), round(row)))


@pytest.mark.parametrize("log_x", [False, True])
def test_every_point_is_drawn_in_its_series_colour(log_x):
    image = _chart(log_x=log_x)
    layout = chart_layout(SWEEP, log_x=log_x)
    for colour, points in zip(SERIES_COLOURS, SWEEP.values()):
        for x, y in points:
            assert _pixel(image, layout, x, y) == colour


def test_the_lines_join_the_points_in_order_of_x():
    image = _chart()
    layout = chart_layout(SWEEP)
    # The midpoint of the segment from x=8 to x=16 is on the line only if the points were sorted by x.
    (ax, ay), (bx, by) = layout.to_pixel(8.0, 0.42), layout.to_pixel(16.0, 0.31)
    assert image.getpixel((round((ax + bx) / 2), round((ay + by) / 2))) == SERIES_COLOURS[0]


def test_the_image_has_the_size_asked_for_on_white():
    image = _chart(size=(500, 300))
    assert image.mode == "RGB" and image.size == (500, 300)
    assert image.getpixel((0, 0)) == (255, 255, 255)


def test_a_larger_y_lands_higher_and_a_larger_x_further_right():
    layout = chart_layout(SWEEP)
    low, high = layout.to_pixel(32.0, 0.1), layout.to_pixel(32.0, 0.5)
    assert high[1] < low[1]
    assert layout.to_pixel(8.0, 0.3)[0] < layout.to_pixel(200.0, 0.3)[0]


def test_every_point_lies_inside_the_plot_box_with_padding():
    layout = chart_layout(SWEEP, log_x=True)
    left, top, right, bottom = layout.plot_box
    assert 0 < left < right < 640 and 0 < top < bottom < 420
    for points in SWEEP.values():
        for x, y in points:
            column, row = layout.to_pixel(x, y)
            assert left < column < right and top < row < bottom
    # ~5% padding: the lowest FVU sits about a twentieth of the box above the bottom edge.
    assert layout.y_range[0] == pytest.approx(0.07 - 0.05 * (0.62 - 0.07))
    assert layout.to_pixel(8.0, 0.07)[1] == pytest.approx(bottom - (bottom - top) / 22)


def test_powers_of_ten_are_equally_spaced_on_a_log_axis():
    layout = chart_layout({"a": [(1.0, 0.5), (100.0, 0.1)]}, log_x=True)
    one, ten, hundred = (layout.to_pixel(x, 0.3)[0] for x in (1.0, 10.0, 100.0))
    assert ten - one == pytest.approx(hundred - ten)
    assert ten - one > 100
    # The same points on a linear axis: 1 and 10 nearly coincide.
    linear = chart_layout({"a": [(1.0, 0.5), (100.0, 0.1)]})
    assert linear.to_pixel(10.0, 0.3)[0] - linear.to_pixel(1.0, 0.3)[0] < ten - one


def test_two_series_get_different_colours_and_the_palette_is_distinct():
    assert SERIES_COLOURS[0] != SERIES_COLOURS[1]
    assert len(set(SERIES_COLOURS)) == len(SERIES_COLOURS)
    assert (255, 255, 255) not in SERIES_COLOURS
    image = _chart()
    layout = chart_layout(SWEEP)
    assert _pixel(image, layout, 8.0, 0.42) != _pixel(image, layout, 8.0, 0.62)


def test_the_chart_has_a_legend_ticks_and_text():
    image = _chart()
    colours = {colour for _, colour in image.getcolors(image.width * image.height)}
    assert set(SERIES_COLOURS[:2]) <= colours
    # Dark ink beyond the plot box: tick labels, axis labels and the title.
    left, top, right, bottom = chart_layout(SWEEP).plot_box
    below = image.crop((left, bottom + 2, right, image.height))
    beside = image.crop((0, top, left - 1, bottom))
    above = image.crop((0, 0, image.width, top - 1))
    for region in (below, beside, above):
        assert region.convert("L").getextrema()[0] < 100


def test_a_log_axis_within_a_decade_ticks_at_one_two_five():
    series = {"a": [(2.0, 0.1), (9.0, 0.2)]}
    image = _chart(series, log_x=True)
    layout = chart_layout(series, log_x=True)
    bottom = layout.plot_box[3]
    shade = {x: sum(image.getpixel((round(layout.to_pixel(x, 0.1)[0]), bottom + 3))) for x in (2.0, 3.0, 4.0, 5.0)}
    assert shade[2.0] < 300 and shade[5.0] < 300
    assert shade[3.0] == shade[4.0] == 3 * 255


def test_the_legend_sits_in_the_empty_top_right_corner():
    image = _chart()
    left, top, right, bottom = chart_layout(SWEEP).plot_box
    # Both sweeps fall to the right, so only the legend's swatches put their colours in the top right quarter.
    corner = image.crop(((left + right) // 2, top + 1, right, (top + bottom) // 2))
    colours = {colour for _, colour in corner.getcolors(corner.width * corner.height)}
    assert set(SERIES_COLOURS[:2]) <= colours


def test_tick_marks_fall_on_powers_of_ten_and_round_values():
    series = {"a": [(1.0, 0.07), (1000.0, 0.62)]}
    image = _chart(series, log_x=True)
    layout = chart_layout(series, log_x=True)
    left, _, _, bottom = layout.plot_box

    def dark(column: float, row: float) -> bool:
        return sum(image.getpixel((round(column), round(row)))) < 300

    for x in (1.0, 10.0, 100.0, 1000.0):
        assert dark(layout.to_pixel(x, 0.3)[0], bottom + 3)
    for x in (2.0, 3.0, 5.0):
        assert not dark(layout.to_pixel(x, 0.3)[0], bottom + 3)
    for y in (0.1, 0.3, 0.6):
        assert dark(left - 3, layout.to_pixel(10.0, y)[1])
    assert not dark(left - 3, layout.to_pixel(10.0, 0.35)[1])


@pytest.mark.parametrize("series", [{"one": [(5.0, 0.5)]}, {"flat": [(1.0, 0.2), (2.0, 0.2), (3.0, 0.2)]}])
@pytest.mark.parametrize("log_x", [False, True])
def test_a_single_point_or_flat_line_still_makes_a_valid_chart(series, log_x):
    layout = chart_layout(series, log_x=log_x)
    assert layout.x_range[0] < layout.x_range[1] and layout.y_range[0] < layout.y_range[1]
    image = _chart(series, log_x=log_x)
    for x, y in next(iter(series.values())):
        column, row = layout.to_pixel(x, y)
        assert all(math.isfinite(v) for v in (column, row))
        assert _pixel(image, layout, x, y) == SERIES_COLOURS[0]


def test_all_equal_x_values_are_padded():
    layout = chart_layout({"a": [(0.0, 0.1), (0.0, 0.9)]})
    assert layout.x_range[0] < 0.0 < layout.x_range[1]


def test_an_empty_series_beside_a_full_one_keeps_its_colour_slot():
    image = _chart({"empty": [], "full": [(1.0, 1.0), (2.0, 2.0)]})
    layout = chart_layout({"empty": [], "full": [(1.0, 1.0), (2.0, 2.0)]})
    assert _pixel(image, layout, 2.0, 2.0) == SERIES_COLOURS[1]


@pytest.mark.parametrize("series", [{}, {"a": [], "b": []}])
def test_nothing_to_plot_is_refused(series):
    with pytest.raises(ValueError, match="nothing to plot"):
        _chart(series)


def test_a_non_positive_x_on_a_log_axis_is_refused():
    with pytest.raises(ValueError, match=r"'bad'.*x = 0\.0.*log x axis needs positive x.*linear axis.*drop the point"):
        _chart({"good": [(1.0, 0.1)], "bad": [(0.0, 0.2)]}, log_x=True)
    assert _chart({"bad": [(0.0, 0.2), (-1.0, 0.3)]}).size == (640, 420)  # fine on a linear axis


@pytest.mark.parametrize("point", [(float("nan"), 0.1), (1.0, float("inf")), (float("-inf"), 0.1)])
def test_a_non_finite_value_is_refused_naming_its_series(point):
    with pytest.raises(ValueError, match=r"'layer 3' has a non-finite value"):
        _chart({"ok": [(1.0, 0.1)], "layer 3": [(2.0, 0.2), point]}, log_x=True)


def test_more_series_than_colours_is_refused():
    series = {f"s{i}": [(float(i + 1), 0.5)] for i in range(len(SERIES_COLOURS) + 1)}
    with pytest.raises(ValueError, match="distinct colours"):
        _chart(series)


def test_a_size_too_small_for_the_text_is_refused():
    with pytest.raises(ValueError, match="no room to plot"):
        _chart(size=(80, 60))


def test_side_by_side_puts_the_images_in_a_row():
    red, blue = Image.new("RGB", (30, 20), (255, 0, 0)), Image.new("RGB", (50, 40), (0, 0, 255))
    row = side_by_side([red, blue], gap=10)
    assert row.size == (30 + 10 + 50, 40)
    assert row.getpixel((0, 0)) == (255, 0, 0) and row.getpixel((29, 19)) == (255, 0, 0)
    assert row.getpixel((35, 5)) == (255, 255, 255)  # the gap
    assert row.getpixel((15, 30)) == (255, 255, 255)  # below the shorter image
    assert row.getpixel((40, 0)) == (0, 0, 255) and row.getpixel((89, 39)) == (0, 0, 255)


def test_side_by_side_of_charts_and_its_errors():
    charts = [_chart(size=(400, 300)), _chart(log_x=True, size=(500, 320))]
    assert side_by_side(charts).size == (400 + 16 + 500, 320)
    with pytest.raises(ValueError, match="no image given"):
        side_by_side([])
    with pytest.raises(ValueError, match="negative"):
        side_by_side(charts, gap=-1)
