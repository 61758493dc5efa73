"""Hand-crafted baseline mixups of the SSL comparison (docs/algorithm.md §8): Mixup, CutMix, ResizeMix,
ManifoldMix and Inter-Intra. Their box geometry lives in :mod:`ssmix.mixers.boxes`; FMix and SaliencyMix,
which carry their own signal processing, live in :mod:`ssmix.mixers.fmix` and :mod:`ssmix.mixers.saliencymix`.

General rules (docs/algorithm.md §8): one lambda and one random geometry per batch, shared by all pairs (Inter-Intra
picks per pair between its two draws; SaliencyMix places one box per pair). The step draws lambda from
:meth:`Mixer.sample_lambda` and passes it in; every random number (that lambda, ``torch.randint``,
``torch.rand``) comes from torch's global CPU generator, so a run resumed with the saved RNG state
replays the same mixes on any device. Every pixel-space mixer returns
``mask`` = per-pixel weight of source ``a`` and ``lam`` = its per-row mean (the effective weight).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import List

import torch
import torch.nn.functional as F
from torch import Tensor

from ssmix.config import BetaMixConfig, ConfigError, LabelledMixConfig, check_alpha, register_mix_config
from ssmix.mixers.base import Lam, LamPair, Mixer, blend, blend_exact, check_pair, expand_lam, register_mixer
from ssmix.mixers.boxes import cutmix_box_size, paste_mask, random_boxes
from ssmix.mixup import MixContext, MixedInputs, sample_beta


def batch_constant_mask(lam: float, xa: Tensor) -> Tensor:
    """(N, 1, H, W) mask holding the batch's one ``lam`` at every pixel of every row (a broadcast view, no
    memory): Mixup's, and ManifoldMix's at the input."""
    n, _, h, w = xa.shape
    return torch.full((1, 1, 1, 1), float(lam), device=xa.device).expand(n, 1, h, w)


# --------------------------------------------------------------------------------------------
# Mixup
# --------------------------------------------------------------------------------------------


@register_mix_config("mixup")
@dataclass
class MixupConfig(BetaMixConfig):
    """Mixup (Zhang et al. 2018): ``x = lam xa + (1 - lam) xb``, lam ~ Beta(alpha, alpha)."""

    type: str = "mixup"


@register_mixer("mixup")
class Mixup(Mixer):
    def forward(self, xa: Tensor, xb: Tensor, lam: float, ctx: MixContext) -> MixedInputs:
        check_pair(xa, xb, "mixup")
        mask = batch_constant_mask(lam, xa)
        return MixedInputs(blend(xa, xb, mask), expand_lam(lam, xa.shape[0], xa.device), 0, mask)


# --------------------------------------------------------------------------------------------
# CutMix
# --------------------------------------------------------------------------------------------


@register_mix_config("cutmix")
@dataclass
class CutMixConfig(BetaMixConfig):
    """CutMix (Yun et al. 2019): paste a box of the partner, box area ~ (1 - lam) HW (docs/algorithm.md §8)."""

    type: str = "cutmix"


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
class ResizeMixConfig(BetaMixConfig):
    """ResizeMix (Qin et al. 2020): the whole partner, shrunk by tau ~ U(scale_min, scale_max), is
    pasted at a random place (docs/algorithm.md §8). ``use_alpha`` draws tau ~ Beta(alpha, alpha) instead and falls
    back to a uniform draw in the range when it lands outside."""

    type: str = "resizemix"
    scale_min: float = 0.1
    scale_max: float = 0.8
    use_alpha: bool = False

    def __post_init__(self) -> None:
        super().__post_init__()
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
class ManifoldMixConfig(BetaMixConfig):
    """ManifoldMix (Verma et al. 2019): Mixup of the online trunk's maps at a position drawn uniformly
    from ``layers`` (0 = input, k = after layer k; docs/algorithm.md §8)."""

    type: str = "manifoldmix"
    layers: List[int] = field(default_factory=lambda: [0, 1, 2])

    def __post_init__(self) -> None:
        super().__post_init__()
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
            mask = batch_constant_mask(lam, xa)
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

    def sample_lambda(self) -> LamPair:
        """(CutMix lambda ~ Beta(inter_alpha), Mixup lambda ~ Beta(intra_alpha)), drawn in that order; one
        float passed to :meth:`forward` serves as both."""
        return LamPair(sample_beta(self.cfg.inter_alpha), sample_beta(self.cfg.intra_alpha))

    def forward(self, xa: Tensor, xb: Tensor, lam: Lam, ctx: MixContext) -> MixedInputs:
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
