"""The line chart of online kNN curves (ssmix/visualize/curves.py): axes from the data, points where the
frame maps them, the reference line, and errors for nothing to draw."""

import pytest

from ssmix.visualize.curves import (
    MARGINS,
    PALETTE,
    REFERENCE,
    SIZE,
    Series,
    chart_frame,
    line_chart,
    tick_step,
)

MOCO = Series("mocov2", [(2.0, 76.9), (4.0, 79.2), (10.0, 80.0)])
CUTMIX = Series("mocov2_cutmix", [(2.0, 77.5), (4.0, 78.1), (10.0, 79.3)])


@pytest.mark.parametrize("span, step", [(5.0, 1.0), (20.0, 5.0), (0.3, 0.05), (3.2, 0.5), (80.0, 10.0)])
def test_tick_step_is_the_smallest_1_2_5_step_with_at_most_8_ticks(span, step):
    assert tick_step(span) == pytest.approx(step)


def test_frame_pads_y_to_whole_ticks_holds_the_reference_and_starts_epochs_at_zero():
    frame = chart_frame([MOCO, CUTMIX], reference=80.1)
    # y from 76.9 to 80.1 (the reference): span 3.2 -> step 0.5 -> [76.5, 80.5]
    assert frame.y_step == pytest.approx(0.5)
    assert frame.y_range == pytest.approx((76.5, 80.5))
    assert frame.x_range == (0.0, 10.0)
    left, top, right, bottom = MARGINS
    assert frame.box == (left, top, SIZE[0] - right, SIZE[1] - bottom)
    assert frame.to_pixel(0.0, 76.5) == pytest.approx((left, SIZE[1] - bottom))
    assert frame.to_pixel(10.0, 80.5) == pytest.approx((SIZE[0] - right, top))
    assert frame.to_pixel(5.0, 78.5) == pytest.approx(
        ((left + SIZE[0] - right) / 2, (top + SIZE[1] - bottom) / 2)
    )


def test_chart_draws_each_series_dots_in_its_colour_and_the_dashed_reference():
    image = line_chart(
        [MOCO, CUTMIX], "online kNN", "epoch", "kNN top-1 (%)", reference=(80.1, "random init")
    )
    assert image.size == SIZE
    frame = chart_frame([MOCO, CUTMIX], reference=80.1)
    for series, colour in zip((MOCO, CUTMIX), PALETTE):
        for x, y in series.points:
            px, py = frame.to_pixel(x, y)
            assert image.getpixel((round(px), round(py))) == colour, (series.label, x)
    rx, ry = frame.to_pixel(0.0, 80.1)
    assert image.getpixel((round(rx) + 4, round(ry))) == REFERENCE  # inside the first dash
    assert image.getpixel((round(rx) + 11, round(ry))) != REFERENCE  # the first gap


def test_chart_without_points_or_with_too_many_series_says_so():
    with pytest.raises(ValueError, match="no points"):
        line_chart([Series("empty", [])], "t", "x", "y")
    with pytest.raises(ValueError, match="at most"):
        line_chart([MOCO] * (len(PALETTE) + 1), "t", "x", "y")
