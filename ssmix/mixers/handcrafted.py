"""Hand-crafted baseline mixups of the SSL comparison (docs/algorithm.md §8): Mixup, CutMix, ResizeMix,
ManifoldMix and Inter-Intra, plus the shared vectorised box-mask builder. FMix and SaliencyMix, which
carry their own signal processing, live in :mod:`ssmix.mixers.fmix` and :mod:`ssmix.mixers.saliencymix`.

General rules (docs/algorithm.md §8): one lambda and one random geometry per batch, shared by all pairs (Inter-Intra
picks per pair between its two draws; SaliencyMix places one box per pair). The step draws lambda from
:meth:`Mixer.sample_lambda` and passes it in; every random number (that lambda, ``torch.randint``,
``torch.rand``) comes from torch's global CPU generator, so a run resumed with the saved RNG state
replays the same mixes on any device. Every pixel-space mixer returns
``mask`` = per-pixel weight of source ``a`` and ``lam`` = its per-row mean (the effective weight).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import List, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

from ssmix.config import ConfigError, LabelledMixConfig, MixConfig, register_mix_config
from ssmix.mixers.base import Mixer, blend, expand_lam, register_mixer
from ssmix.mixup import MixContext, MixedInputs, sample_beta
from ssmix.transfer import to_device


# --------------------------------------------------------------------------------------------
# Shared helpers
# --------------------------------------------------------------------------------------------


def check_alpha(alpha: float, key: str) -> None:
    if alpha < 0:
        raise ConfigError(f"{key}: Beta concentration must be >= 0 (0 disables mixing), got {alpha}")


def check_pair(xa: Tensor, xb: Tensor, who: str) -> None:
    """Both sources must be image batches of the same shape (N, C, H, W)."""
    if xa.dim() != 4 or xa.shape != xb.shape:
        raise ValueError(
            f"{who}: expected two image batches of the same shape (N, C, H, W), got {tuple(xa.shape)} and "
            f"{tuple(xb.shape)}"
        )


def constant_mask(lam: float, xa: Tensor) -> Tensor:
    """(N, 1, H, W) mask holding ``lam`` everywhere (a broadcast view, no memory)."""
    n, _, h, w = xa.shape
    return torch.full((1, 1, 1, 1), float(lam), device=xa.device).expand(n, 1, h, w)


def blend_exact(xa: Tensor, xb: Tensor, mask: Tensor) -> Tensor:
    """:func:`blend`, but pixels whose mask is exactly 1 (0) are copied from ``xa`` (``xb``) bit for bit
    (``xb + 1 * (xa - xb)`` is not always ``xa`` in floating point)."""
    mixed = blend(xa, xb, mask)
    return torch.where(mask == 1, xa, torch.where(mask == 0, xb, mixed))


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


# --------------------------------------------------------------------------------------------
# Mixup
# --------------------------------------------------------------------------------------------


@register_mix_config("mixup")
@dataclass
class MixupConfig(MixConfig):
    """Mixup (Zhang et al. 2018): ``x = lam xa + (1 - lam) xb``, lam ~ Beta(alpha, alpha)."""

    type: str = "mixup"
    alpha: float = 2.0

    def __post_init__(self) -> None:
        check_alpha(self.alpha, "mix.alpha")


@register_mixer("mixup")
class Mixup(Mixer):
    def forward(self, xa: Tensor, xb: Tensor, lam: float, ctx: MixContext) -> MixedInputs:
        check_pair(xa, xb, "mixup")
        mask = constant_mask(lam, xa)
        return MixedInputs(blend(xa, xb, mask), expand_lam(lam, xa.shape[0], xa.device), 0, mask)


# --------------------------------------------------------------------------------------------
# CutMix
# --------------------------------------------------------------------------------------------


@register_mix_config("cutmix")
@dataclass
class CutMixConfig(MixConfig):
    """CutMix (Yun et al. 2019): paste a box of the partner, box area ~ (1 - lam) HW (docs/algorithm.md §8)."""

    type: str = "cutmix"
    alpha: float = 2.0

    def __post_init__(self) -> None:
        check_alpha(self.alpha, "mix.alpha")


@register_mixer("cutmix")
class CutMix(Mixer):
    def forward(self, xa: Tensor, xb: Tensor, lam: float, ctx: MixContext) -> MixedInputs:
        check_pair(xa, xb, "cutmix")
        _, _, h, w = xa.shape
        box_h, box_w = cutmix_box_size(h, w, lam)
        mask, lam = paste_mask(random_boxes(h, w, box_h, box_w), xa)
        return MixedInputs(blend_exact(xa, xb, mask), lam, 0, mask)


# --------------------------------------------------------------------------------------------
# ResizeMix
# --------------------------------------------------------------------------------------------


@register_mix_config("resizemix")
@dataclass
class ResizeMixConfig(MixConfig):
    """ResizeMix (Qin et al. 2020): the whole partner, shrunk by tau ~ U(scale_min, scale_max), is
    pasted at a random place (docs/algorithm.md §8). ``use_alpha`` draws tau ~ Beta(alpha, alpha) instead and falls
    back to a uniform draw in the range when it lands outside."""

    type: str = "resizemix"
    scale_min: float = 0.1
    scale_max: float = 0.8
    use_alpha: bool = False
    alpha: float = 2.0

    def __post_init__(self) -> None:
        check_alpha(self.alpha, "mix.alpha")
        if not 0.0 < self.scale_min <= self.scale_max <= 1.0:
            raise ConfigError(
                f"mix.scale_min / mix.scale_max: need 0 < scale_min <= scale_max <= 1, got "
                f"{self.scale_min} and {self.scale_max}"
            )


@register_mixer("resizemix")
class ResizeMix(Mixer):
    """Its lambda is ``1 - tau^2`` (the weight of a before the box is clipped), so a lambda passed in
    (a figure's sweep) sets the scale ``tau = sqrt(1 - lam)``."""

    def sample_scale(self) -> float:
        lo, hi = self.cfg.scale_min, self.cfg.scale_max
        uniform = lo + (hi - lo) * float(torch.rand(()))
        if not self.cfg.use_alpha:
            return uniform
        tau = sample_beta(self.cfg.alpha)
        return tau if lo <= tau <= hi else uniform

    def sample_lambda(self) -> float:
        return 1.0 - self.sample_scale() ** 2

    def forward(self, xa: Tensor, xb: Tensor, lam: float, ctx: MixContext) -> MixedInputs:
        check_pair(xa, xb, "resizemix")
        _, _, h, w = xa.shape
        tau = max(1.0 - float(lam), 0.0) ** 0.5
        boxes = random_boxes(h, w, max(1, int(tau * h)), max(1, int(tau * w)))
        y0, y1, x0, x1 = (int(t) for t in (boxes.y0, boxes.y1, boxes.x0, boxes.x1))
        # The whole partner is resized into the (clipped) box, not cropped by it.
        x = xa.clone()
        x[:, :, y0:y1, x0:x1] = F.interpolate(xb, size=(y1 - y0, x1 - x0), mode="nearest")
        mask, lam = paste_mask(boxes, xa)
        return MixedInputs(x, lam, 0, mask)


# --------------------------------------------------------------------------------------------
# ManifoldMix
# --------------------------------------------------------------------------------------------


@register_mix_config("manifoldmix")
@dataclass
class ManifoldMixConfig(MixConfig):
    """ManifoldMix (Verma et al. 2019): Mixup of the online trunk's maps at a position drawn uniformly
    from ``layers`` (0 = input, k = after layer k; docs/algorithm.md §8)."""

    type: str = "manifoldmix"
    alpha: float = 2.0
    layers: List[int] = field(default_factory=lambda: [0, 1, 2])

    def __post_init__(self) -> None:
        check_alpha(self.alpha, "mix.alpha")
        if not self.layers or any(not 0 <= k <= 3 for k in self.layers):
            raise ConfigError(
                f"mix.layers: expected a non-empty list of trunk positions in 0..3 (0 = input, k = after "
                f"layer k; at least one stage must run on the mixed maps), got {self.layers}"
            )


@register_mixer("manifoldmix")
class ManifoldMix(Mixer):
    def forward(self, xa: Tensor, xb: Tensor, lam: float, ctx: MixContext) -> MixedInputs:
        check_pair(xa, xb, "manifoldmix")
        layers = self.cfg.layers
        k = layers[int(torch.randint(len(layers), ()))]
        lam_rows = expand_lam(lam, xa.shape[0], xa.device)
        if k == 0:
            mask = constant_mask(lam, xa)
            return MixedInputs(blend(xa, xb, mask), lam_rows, 0, mask)
        # Gradient flows through both prefixes (the online trunk up to position k).
        ha, hb = ctx.online_prefix(xa, k), ctx.online_prefix(xb, k)
        return MixedInputs(lam * ha + (1.0 - lam) * hb, lam_rows, k, None)


# --------------------------------------------------------------------------------------------
# Inter-Intra
# --------------------------------------------------------------------------------------------


@register_mix_config("interintra")
@dataclass
class InterIntraConfig(LabelledMixConfig):
    """Inter-Intra* (SAMix paper, docs/algorithm.md §8): pairs from different clusters get CutMix with
    ``inter_alpha``, pairs from the same cluster get Mixup with ``intra_alpha``."""

    type: str = "interintra"
    inter_alpha: float = 2.0
    intra_alpha: float = 0.2

    def __post_init__(self) -> None:
        check_alpha(self.inter_alpha, "mix.inter_alpha")
        check_alpha(self.intra_alpha, "mix.intra_alpha")


@register_mixer("interintra")
class InterIntraMix(Mixer):
    """One CutMix geometry and one Mixup lambda per batch; each pair takes the one its labels call
    for. An unknown label (-1) never counts as a match, so such pairs get CutMix."""

    needs_labels = True

    def sample_lambda(self) -> Tuple[float, float]:
        """(CutMix lambda ~ Beta(inter_alpha), Mixup lambda ~ Beta(intra_alpha)); one float passed to
        :meth:`forward` serves as both."""
        return sample_beta(self.cfg.inter_alpha), sample_beta(self.cfg.intra_alpha)

    def forward(self, xa: Tensor, xb: Tensor, lam: float | Tuple[float, float], ctx: MixContext) -> MixedInputs:
        check_pair(xa, xb, "interintra")
        lam_inter, lam_intra = lam if isinstance(lam, tuple) else (lam, lam)
        n, _, h, w = xa.shape
        if ctx.labels is None:
            raise ValueError(
                "interintra: ctx.labels is None; this mixer needs a label per sample (mix.labels: odc or "
                "dataset) and the step must fill MixContext.labels (Mixer.needs_labels is True)"
            )
        labels, perm = ctx.labels.to(xa.device), ctx.pairing.perm
        if labels.shape != (n,) or perm.shape != (n,):
            raise ValueError(
                f"interintra: ctx.labels and ctx.pairing.perm must have shape ({n},), got {tuple(labels.shape)} "
                f"and {tuple(perm.shape)}"
            )
        box_h, box_w = cutmix_box_size(h, w, lam_inter)
        box_mask, box_lam = paste_mask(random_boxes(h, w, box_h, box_w), xa)
        same = (labels == labels[perm.to(xa.device)]) & (labels >= 0)
        mask = torch.where(same[:, None, None, None], torch.full_like(box_mask, lam_intra), box_mask)
        lam = torch.where(same, torch.full_like(box_lam, lam_intra), box_lam)
        return MixedInputs(blend_exact(xa, xb, mask), lam, 0, mask)
