"""Drawing the mixed-sample figures: cells in [0, 1], a grid with a title, column labels, row labels and
(for masks) a grey scale bar, drawn with PIL and its scalable default font (no plotting dependency).

Rows are image pairs, columns are a, b, then the mixed image at each requested lambda (the weight of
source a); the learned-Mixer figure adds, per pair, the mask of a actually used and the raw Mixer
output s_a. Each row is labelled with its pair, the dataset indices and labels (or ODC clusters) of a
and b; the title names the method, mixer, config and which weights (checkpoint, epoch) it shows, so a
figure reads without the text beside it.
"""

from __future__ import annotations

import math
from typing import Dict, List, Optional, Sequence, Tuple

import torch
from PIL import Image, ImageDraw, ImageFont
from torch import Tensor

from ssmix.config import Config
from ssmix.visualize.sweep import Sweep

MIN_CELL = 64  # cells are upscaled (nearest) to at least this many pixels per side
PAD = 2  # pixels between cells
FONT_SIZE = 13  # pixels; PIL's scalable default font (Pillow >= 10.1), its bitmap font before
LINE_H = 18  # height of one line of text
TITLE_LINES = 3  # fixed title block, so the figure size depends only on the grid
ROW_LABEL_W = 132  # left margin holding each row's label
BAR_H = 2 * LINE_H + 10  # the grey scale bar of the mask figure and its legend
BACKGROUND = torch.tensor([0.80, 0.84, 0.93])  # padding and blank cells (no grey mask has this colour)


def denormalise(x: Tensor, mean: Sequence[float], std: Sequence[float]) -> Tensor:
    """Undo the eval transform's normalisation; clamped to [0, 1]."""
    m = torch.tensor(mean, dtype=x.dtype, device=x.device).view(3, 1, 1)
    s = torch.tensor(std, dtype=x.dtype, device=x.device).view(3, 1, 1)
    return (x * s + m).clamp(0.0, 1.0)


def grid_cells(sweep: Sweep, mean: Sequence[float], std: Sequence[float]) -> Tensor:
    """(P, 2 + S, 3, H, W) cells in [0, 1]: column 0 = a, 1 = b, 2 + k = mixed at ``sweep.lams[k]``."""
    mixed = sweep.mixed.transpose(0, 1)  # (P, S, 3, H, W)
    cells = torch.cat([sweep.xa[:, None], sweep.xb[:, None], mixed], dim=1)
    return denormalise(cells, mean, std).cpu()


def mask_cells(sweep: Sweep, mean: Sequence[float], std: Sequence[float]) -> Tensor:
    """(3P, 2 + S, 3, H, W): per pair a row of :func:`grid_cells`, a row of used masks and a row of raw
    Mixer masks (grey = weight of a); the a/b columns of the mask rows are blank (ones; the figure
    paints them in the background colour)."""
    if sweep.masks is None or sweep.raw_masks is None:
        raise ValueError("mask_cells: this sweep has no learned-Mixer masks (SAMix only)")
    images = grid_cells(sweep, mean, std)
    p, cols = images.shape[:2]
    blank = torch.ones(p, 2, *images.shape[2:])

    def row(masks: Tensor) -> Tensor:
        grey = masks.transpose(0, 1).clamp(0, 1).expand(-1, -1, 3, -1, -1).cpu()
        return torch.cat([blank, grey], dim=1)

    return torch.stack([images, row(sweep.masks), row(sweep.raw_masks)], dim=1).reshape(
        3 * p, cols, *images.shape[2:]
    )


def text_font() -> ImageFont.ImageFont:
    """The figures' font: PIL's scalable default at FONT_SIZE (its bitmap font before Pillow 10.1)."""
    try:
        return ImageFont.load_default(size=FONT_SIZE)
    except TypeError:  # Pillow < 10.1: the fixed bitmap font
        return ImageFont.load_default()


def _wrap(draw: ImageDraw.ImageDraw, text: str, width: int, max_lines: int) -> List[str]:
    """Greedy word wrap to ``width`` pixels, at most ``max_lines`` lines (the last one cut with '...')."""
    font, lines, line = text_font(), [], ""
    for word in text.split():
        trial = f"{line} {word}".strip()
        if draw.textlength(trial, font=font) <= width or not line:
            line = trial
        else:
            lines.append(line)
            line = word
    if line:
        lines.append(line)
    if len(lines) > max_lines:
        lines = lines[:max_lines]
        last = lines[-1]
        while last and draw.textlength(last + "...", font=font) > width:
            last = last[:-1]
        lines[-1] = last + "..."
    return lines


def figure_size(rows: int, cols: int, image_size: int, scale_bar: bool = False) -> Tuple[int, int]:
    """(width, height) in pixels of a figure of ``rows x cols`` cells of an ``image_size`` image."""
    cell = image_size * max(1, math.ceil(MIN_CELL / image_size))
    return (
        ROW_LABEL_W + cols * (cell + PAD) + PAD,
        rows * (cell + PAD) + PAD + (TITLE_LINES + 1) * LINE_H + (BAR_H if scale_bar else 0),
    )


def _scale_bar(draw: ImageDraw.ImageDraw, x: int, y: int, width: int) -> None:
    """A grey ramp from 0 (black) to 1 (white) with its legend: how to read a mask cell."""
    font = text_font()
    for i in range(width):
        v = round(255 * i / max(width - 1, 1))
        draw.line([(x + i, y), (x + i, y + 10)], fill=(v, v, v))
    draw.rectangle([x, y, x + width - 1, y + 10], outline="black")
    draw.text((x, y + 13), "0: all b", fill="black", font=font)
    right = "1: all a"
    draw.text((x + width - draw.textlength(right, font=font), y + 13), right, fill="black", font=font)
    middle = "mask = weight of a"
    draw.text((x + (width - draw.textlength(middle, font=font)) / 2, y + 13), middle, fill="black", font=font)


def render(
    cells: Tensor,
    col_labels: Sequence[str],
    title: str,
    cell_text: Optional[Dict[Tuple[int, int], str]] = None,
    row_labels: Optional[Sequence[Sequence[str]]] = None,
    scale_bar: bool = False,
) -> Image.Image:
    """A PIL figure: ``title`` (wrapped, at most TITLE_LINES lines), one label per column, ``row_labels``
    (lines per row) in a left margin, then the (R, C, 3, H, W) ``cells`` in [0, 1] upscaled to >= MIN_CELL
    px, and with ``scale_bar`` a grey ramp saying how to read masks. Cells named in ``cell_text`` are
    blank (background colour) and hold that text. Padding and blanks use BACKGROUND, a colour no grey
    mask takes, so a white (all-a) mask stays visible."""
    from torchvision.utils import make_grid

    rows, cols, _, h, w = cells.shape
    zoom = max(1, math.ceil(MIN_CELL / h))
    cell_text = cell_text or {}
    cells = cells.clone()
    for r, c in cell_text:
        cells[r, c] = BACKGROUND.view(3, 1, 1)
    flat = cells.reshape(rows * cols, *cells.shape[2:])
    if zoom > 1:
        flat = torch.nn.functional.interpolate(flat, scale_factor=zoom, mode="nearest")
    grid = make_grid(flat + 1.0, nrow=cols, padding=PAD, pad_value=0.0)  # cells in [1, 2], padding 0
    padding = (grid == 0).all(0)
    grid = grid - 1.0
    grid[:, padding] = BACKGROUND[:, None]
    grid_img = Image.fromarray(grid.mul(255).round().clamp(0, 255).byte().permute(1, 2, 0).numpy())
    top, left = (TITLE_LINES + 1) * LINE_H, ROW_LABEL_W
    figure = Image.new(
        "RGB", (grid_img.width + left, grid_img.height + top + (BAR_H if scale_bar else 0)), "white"
    )
    figure.paste(grid_img, (left, top))
    draw, font = ImageDraw.Draw(figure), text_font()
    for i, line in enumerate(_wrap(draw, title, figure.width - 2 * PAD, TITLE_LINES)):
        draw.text((PAD, i * LINE_H + 1), line, fill="black", font=font)
    cell_w, cell_h = w * zoom + PAD, h * zoom + PAD
    for c, label in enumerate(col_labels):
        x = left + PAD + c * cell_w + (w * zoom - draw.textlength(label, font=font)) / 2
        draw.text((x, TITLE_LINES * LINE_H + 1), label, fill="black", font=font)
    for r, lines in enumerate(row_labels or []):
        for i, line in enumerate(lines[: max(1, cell_h // LINE_H)]):
            draw.text((PAD, top + PAD + r * cell_h + 2 + i * LINE_H), line, fill="black", font=font)
    for (r, c), text in cell_text.items():
        draw.text((left + PAD + c * cell_w + 3, top + PAD + r * cell_h + 3), text, fill="black", font=font)
    if scale_bar:
        _scale_bar(draw, left + PAD, top + grid_img.height + 6, min(grid_img.width - 2 * PAD, 360))
    return figure


def column_labels(lams: Sequence[float]) -> List[str]:
    return ["a", "b"] + [f"{lam:.2f}" for lam in lams]


def pair_labels(sweep: Sweep) -> List[List[str]]:
    """Per pair: its number, then a's and b's dataset index and label (or ODC cluster; ? = unknown)."""
    if sweep.index_a is None:
        return []
    kind = "cluster" if sweep.label_kind == "cluster" else "label"

    def who(name: str, index: Tensor, labels: Optional[Tensor], i: int) -> str:
        label = int(labels[i]) if labels is not None else -1
        return f"{name}: #{int(index[i])}, {kind} {label if label >= 0 else '?'}"

    return [
        [
            f"pair {i + 1}",
            who("a", sweep.index_a, sweep.labels_a, i),
            who("b", sweep.index_b, sweep.labels_b, i),
        ]
        for i in range(len(sweep.index_a))
    ]


def _title(cfg: Config, sweep: Sweep, what: str, source: str = "") -> str:
    head = f"{cfg.method.name} + {cfg.mix.type} ({cfg.data.name}, {cfg.output_dir})"
    parts = [f"{head}, {source or 'weights: as built'}: {what}", "columns: requested lambda (weight of a)"]
    if cfg.mix.type not in ("mixup", "manifoldmix"):
        parts.append("box/mask mixers clip and adjust, so the effective lambda may differ")
    if sweep.note:
        parts.append(sweep.note)
    return "; ".join(parts)


def mix_figure(cfg: Config, sweep: Sweep, source: str = "") -> Image.Image:
    """The main grid: rows = pairs, columns = a, b, mixed at each lambda; ``source`` says which weights
    (e.g. "checkpoint step_00001000.pt" or "epoch 3, step 120")."""
    from ssmix.data.datasets import dataset_info_from_config

    info = dataset_info_from_config(cfg.data)
    return render(
        grid_cells(sweep, info.mean, info.std),
        column_labels(sweep.lams),
        _title(cfg, sweep, "rows = pairs (a, b)", source),
        row_labels=pair_labels(sweep),
    )


def mask_figure(cfg: Config, sweep: Sweep, source: str = "") -> Image.Image:
    """The learned Mixer's masks: per pair, mixed images / used mask of a / raw Mixer mask s_a, with the
    grey scale bar."""
    from ssmix.data.datasets import dataset_info_from_config

    info = dataset_info_from_config(cfg.data)
    cells = mask_cells(sweep, info.mean, info.std)
    text = {}
    for r in range(0, cells.shape[0], 3):
        text.update({(r + 1, 0): "used", (r + 1, 1): "mask", (r + 2, 0): "Mixer", (r + 2, 1): "raw s_a"})
    rows: List[List[str]] = []
    for lines in pair_labels(sweep) or [[f"pair {i + 1}"] for i in range(cells.shape[0] // 3)]:
        rows += [lines, [lines[0], "mask of a used"], [lines[0], "raw Mixer s_a"]]
    return render(
        cells,
        column_labels(sweep.lams),
        _title(cfg, sweep, "per pair: mixed; mask of a used (post-processed); raw Mixer output s_a", source),
        text,
        row_labels=rows,
        scale_bar=True,
    )
