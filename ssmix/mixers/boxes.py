"""Box geometry of the box-pasting mixers (CutMix, ResizeMix, Inter-Intra, SaliencyMix;
docs/algorithm.md §8): boxes as vectorised masks, their placement and the CutMix box size.

Random placements draw from torch's global CPU generator (resumable, the same on any device).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Tuple

import torch
from torch import Tensor

from ssmix.transfer import to_device


@dataclass
class Boxes:
    """Axis-aligned boxes ``[y0, y1) x [x0, x1)`` of R rows (R = 1: one box shared by the batch)."""

    y0: Tensor  # (R,) long
    y1: Tensor
    x0: Tensor
    x1: Tensor

    def area(self) -> Tensor:
        return (self.y1 - self.y0) * (self.x1 - self.x0)

    def inside(self, h: int, w: int, device: torch.device) -> Tensor:
        """(R, 1, H, W) bool, True inside each row's box (arange comparisons, no loop)."""
        ys = torch.arange(h, device=device)
        xs = torch.arange(w, device=device)
        y0, y1, x0, x1 = (to_device(t, device)[:, None] for t in (self.y0, self.y1, self.x0, self.x1))
        rows = (ys >= y0) & (ys < y1)  # (R, H)
        cols = (xs >= x0) & (xs < x1)  # (R, W)
        return (rows[:, :, None] & cols[:, None, :])[:, None]


def centred_boxes(h: int, w: int, box_h: int, box_w: int, cy: Tensor, cx: Tensor) -> Boxes:
    """Boxes of ``box_h x box_w`` centred at (cy, cx) (one pair per row), clipped to the image.
    An unclipped box spans ``[c - size // 2, c - size // 2 + size)``, i.e. exactly ``size`` pixels."""
    y0 = cy - box_h // 2
    x0 = cx - box_w // 2
    return Boxes(y0.clamp(0, h), (y0 + box_h).clamp(0, h), x0.clamp(0, w), (x0 + box_w).clamp(0, w))


def random_boxes(h: int, w: int, box_h: int, box_w: int, rows: int = 1) -> Boxes:
    """Boxes at centres uniform over the image pixels (docs/algorithm.md §8, CutMix step 2), clipped."""
    cy = torch.randint(h, (rows,))
    cx = torch.randint(w, (rows,))
    return centred_boxes(h, w, box_h, box_w, cy, cx)


def cutmix_box_size(h: int, w: int, lam: float) -> Tuple[int, int]:
    """CutMix box side lengths ``floor(H sqrt(1 - lam)), floor(W sqrt(1 - lam))`` (docs/algorithm.md §8)."""
    ratio = (1.0 - lam) ** 0.5
    return int(h * ratio), int(w * ratio)


def paste_mask(boxes: Boxes, xa: Tensor) -> Tuple[Tensor, Tensor]:
    """Weight of source a for pasting the partner's boxes: ``(mask (N, 1, H, W), lam (N,))`` with
    ``lam = 1 - box_area / HW`` (the actual, clipped area)."""
    n, _, h, w = xa.shape
    keep = (~boxes.inside(h, w, xa.device)).float().expand(n, 1, h, w)
    lam = 1.0 - to_device(boxes.area(), xa.device).float() / float(h * w)
    return keep, lam.expand(n).contiguous()
