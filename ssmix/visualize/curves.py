"""A line chart of a metric against epoch (the online kNN monitor's curves), drawn with PIL and the same
font as the mixed-sample figures (no plotting dependency).

:func:`chart_frame` fixes the axes (the data range, padded to whole ticks) and maps data to pixels;
:func:`line_chart` draws the series, an optional dashed reference line (e.g. random init), the ticks,
the axis labels, a title and a legend.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import List, Optional, Sequence, Tuple

from PIL import Image, ImageDraw

from ssmix.visualize.figure import LINE_H, text_font

Colour = Tuple[int, int, int]
#: one colour per series, in order (distinguishable in grey print as well: dark, mid, light)
PALETTE: Tuple[Colour, ...] = ((31, 78, 160), (214, 39, 40), (44, 160, 44), (148, 103, 189), (230, 140, 20))
REFERENCE: Colour = (110, 110, 110)
SIZE = (640, 420)
#: left, top, right, bottom margins around the plotting area, in pixels
MARGINS = (64, 3 * LINE_H + 8, 24, 2 * LINE_H + 16)
POINT_R = 3  # radius of a point's dot


@dataclass(frozen=True)
class Series:
    label: str
    points: Sequence[Tuple[float, float]]  # (x, y), in x order


@dataclass(frozen=True)
class ChartFrame:
    """The plotting area (pixels) and the data range it shows."""

    x_range: Tuple[float, float]
    y_range: Tuple[float, float]
    y_step: float
    box: Tuple[int, int, int, int]  # left, top, right, bottom

    def to_pixel(self, x: float, y: float) -> Tuple[float, float]:
        (x0, x1), (y0, y1) = self.x_range, self.y_range
        left, top, right, bottom = self.box
        px = left + (x - x0) / (x1 - x0) * (right - left)
        py = bottom - (y - y0) / (y1 - y0) * (bottom - top)
        return px, py


def tick_step(span: float, max_ticks: int = 8) -> float:
    """The smallest of 1, 2, 5 x 10^k that puts at most ``max_ticks`` ticks on ``span``."""
    span = max(span, 1e-9)
    base = 10.0 ** math.floor(math.log10(span / max_ticks))
    for factor in (1.0, 2.0, 5.0, 10.0):
        if span / (factor * base) <= max_ticks:
            return factor * base
    return 10.0 * base


def chart_frame(
    series: Sequence[Series], reference: Optional[float] = None, size: Tuple[int, int] = SIZE
) -> ChartFrame:
    """Axes holding every point and the reference: y padded out to whole ticks, x from the first to the
    last x (from 0 when every x is positive, so epoch axes start at the start of training)."""
    xs = [x for s in series for x, _ in s.points]
    ys = [y for s in series for _, y in s.points] + ([reference] if reference is not None else [])
    if not xs or not ys:
        raise ValueError("line_chart: no points to draw (every series is empty)")
    x0, x1 = (0.0 if min(xs) > 0 else min(xs)), max(xs)
    step = tick_step(max(ys) - min(ys) or 1.0)
    y0 = math.floor(min(ys) / step) * step
    y1 = math.ceil(max(ys) / step) * step
    if y1 <= y0:
        y1 = y0 + step
    left, top, right, bottom = MARGINS
    box = (left, top, size[0] - right, size[1] - bottom)
    return ChartFrame((x0, x1 if x1 > x0 else x0 + 1.0), (y0, y1), step, box)


def _dashed(
    draw: ImageDraw.ImageDraw, a: Tuple[float, float], b: Tuple[float, float], colour: Colour
) -> None:
    """A horizontal dashed line from a to b (same y)."""
    x, end, y = a[0], b[0], a[1]
    while x < end:
        draw.line([(x, y), (min(x + 8, end), y)], fill=colour, width=2)
        x += 14


def _axes(
    draw: ImageDraw.ImageDraw, frame: ChartFrame, x_ticks: Sequence[float], x_label: str, y_label: str
) -> None:
    font = text_font()
    left, top, right, bottom = frame.box
    y = frame.y_range[0]
    while y <= frame.y_range[1] + 1e-9:
        _, py = frame.to_pixel(frame.x_range[0], y)
        draw.line([(left, py), (right, py)], fill=(228, 228, 228))
        text = f"{y:g}"
        draw.text(
            (left - 6 - draw.textlength(text, font=font), py - LINE_H / 2 + 2), text, fill="black", font=font
        )
        y += frame.y_step
    for x in x_ticks:
        px, _ = frame.to_pixel(x, frame.y_range[0])
        draw.line([(px, bottom), (px, bottom + 4)], fill="black")
        text = f"{x:g}"
        draw.text((px - draw.textlength(text, font=font) / 2, bottom + 6), text, fill="black", font=font)
    draw.rectangle([left, top, right, bottom], outline="black")
    draw.text(
        ((left + right - draw.textlength(x_label, font=font)) / 2, bottom + LINE_H + 8),
        x_label,
        fill="black",
        font=font,
    )
    draw.text((4, top - LINE_H - 2), y_label, fill="black", font=font)


def _legend(draw: ImageDraw.ImageDraw, entries: List[Tuple[str, Colour, bool]], x: float, y: float) -> None:
    """Entries (label, colour, dashed) in one row from (x, y)."""
    font = text_font()
    for label, colour, dashed in entries:
        if dashed:
            _dashed(draw, (x, y + 7), (x + 22, y + 7), colour)
        else:
            draw.line([(x, y + 7), (x + 22, y + 7)], fill=colour, width=2)
        draw.text((x + 26, y), label, fill="black", font=font)
        x += 40 + draw.textlength(label, font=font)


def line_chart(
    series: Sequence[Series],
    title: str,
    x_label: str,
    y_label: str,
    reference: Optional[Tuple[float, str]] = None,
    size: Tuple[int, int] = SIZE,
) -> Image.Image:
    """Each series as a line through dots (colours from :data:`PALETTE`, in order); ``reference`` =
    (value, label) as a dashed grey line across the chart; x ticks at every x a series has."""
    if len(series) > len(PALETTE):
        raise ValueError(f"line_chart: at most {len(PALETTE)} series, got {len(series)}")
    frame = chart_frame(series, reference[0] if reference else None, size)
    image = Image.new("RGB", size, "white")
    draw = ImageDraw.Draw(image)
    x_ticks = sorted({frame.x_range[0], *(x for s in series for x, _ in s.points)})
    _axes(draw, frame, x_ticks, x_label, y_label)
    entries: List[Tuple[str, Colour, bool]] = []
    if reference is not None:
        _dashed(
            draw,
            frame.to_pixel(frame.x_range[0], reference[0]),
            frame.to_pixel(frame.x_range[1], reference[0]),
            REFERENCE,
        )
        entries.append((reference[1], REFERENCE, True))
    for s, colour in zip(series, PALETTE):
        pixels = [frame.to_pixel(x, y) for x, y in s.points]
        if len(pixels) > 1:
            draw.line(pixels, fill=colour, width=2)
        for px, py in pixels:
            draw.ellipse([px - POINT_R, py - POINT_R, px + POINT_R, py + POINT_R], fill=colour)
        entries.append((s.label, colour, False))
    draw.text((4, 2), title, fill="black", font=text_font())
    _legend(draw, entries, MARGINS[0], LINE_H + 2)
    return image
