"""Mask utilities of the SAMix Mixer: lambda rescaling (docs/algorithm.md §3.2), post-processing of the
encoder ("bb") mask (docs/algorithm.md §3.6), the mask loss (docs/algorithm.md §3.7) and the decaying loss
weights (docs/algorithm.md §3.7, §4.1).

Convention everywhere: a mask is ``s_a``, the per-pixel weight of source a, shape (N, 1, H, W); the
partner's mask is ``s_b = 1 - s_a``. Lambdas are per-row tensors (N,) (one value per batch in practice).
"""

from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor

#: clamp of the mask before its mean is adjusted (docs/algorithm.md §3.6 step 3.1)
_MASK_EPS = 1e-10


def rescale_lambda(lam: Tensor, k: float = 1.0) -> Tensor:
    """rho_k(lam) = (4/3 lam^3 - 2 lam^2 + kappa lam) / (kappa - 2/3), kappa = k + 1 (docs/algorithm.md §3.2).

    An odd-symmetric cubic about 0.5 with rho(0) = 0, rho(0.5) = 0.5, rho(1) = 1; ``k = -1`` disables it.
    """
    if k == -1:
        return lam
    kappa = k + 1.0
    return (4.0 / 3.0 * lam**3 - 2.0 * lam**2 + kappa * lam) / (kappa - 2.0 / 3.0)


def _rows(lam: Tensor) -> Tensor:
    return lam.reshape(-1, 1, 1, 1)


def row_constant_mask(lam: Tensor, like: Tensor) -> Tensor:
    """The vanilla-mixup mask of each row: ``lam[n]`` (N,) at every pixel of row n, shaped and typed like
    the mask ``like`` (N, 1, H, W)."""
    return _rows(lam).to(like.dtype).expand_as(like)


def lam_margin_fallback(mask: Tensor, lam: Tensor, margin: float) -> Tensor:
    """Rows with lam <= margin or 1 - lam <= margin get the constant mask (docs/algorithm.md §3.6 step 1)."""
    extreme = (lam <= margin) | (1 - lam <= margin)
    return torch.where(_rows(extreme), row_constant_mask(lam, mask), mask)


def gaussian_kernel1d(sigma: float) -> Tensor:
    """Normalised 1-D Gaussian of std ``sigma`` px on ``int(5 sigma) | 1`` taps (docs/algorithm.md §3.6 step 2)."""
    size = int(5 * sigma) | 1
    x = torch.arange(size, dtype=torch.float32) - size // 2
    kernel = torch.exp(-(x**2) / (2 * sigma**2))
    return kernel / kernel.sum()


def gaussian_smooth(mask: Tensor, sigma: float) -> Tensor:
    """Separable Gaussian smoothing of an (N, 1, H, W) mask with zero padding (docs/algorithm.md §3.6 step 2), fp32."""
    mask = mask.float()
    kernel = gaussian_kernel1d(sigma).to(mask.device)
    size = kernel.numel()
    with torch.autocast(device_type=mask.device.type, enabled=False):
        out = F.conv2d(mask, kernel.view(1, 1, 1, size), padding=(0, size // 2))
        return F.conv2d(out, kernel.view(1, 1, size, 1), padding=(size // 2, 0))


def adjust_mask_mean(mask: Tensor, lam: Tensor, margin: float) -> Tensor:
    """ "auto" lambda adjusting, per sample (docs/algorithm.md §3.6 step 3).

    With mu = mean(s_a) of the clamped mask: mu > lam + margin scales s_a by lam / mu; mu < lam - margin
    scales s_b by (1 - lam) / (1 - mu). Either way the row's mean becomes exactly lam, values stay in
    [0, 1]; rows within the margin are only clamped.
    """
    s_a = mask.clamp(_MASK_EPS, 1 - _MASK_EPS)
    mu = s_a.mean(dim=(1, 2, 3), keepdim=True)
    lam4 = _rows(lam).to(s_a.dtype)
    shrink_a = s_a * lam4 / mu
    shrink_b = 1 - (1 - s_a) * (1 - lam4) / (1 - mu)
    return torch.where(mu > lam4 + margin, shrink_a, torch.where(mu < lam4 - margin, shrink_b, s_a))


def same_label_mixup(mask: Tensor, lam: Tensor, labels_a: Tensor, labels_b: Tensor) -> Tensor:
    """ "auto_label": pairs of the same (known) pseudo-label get the constant mask (docs/algorithm.md §3.6 step 3)."""
    same = (labels_a == labels_b) & (labels_a >= 0)
    return torch.where(_rows(same), row_constant_mask(lam, mask), mask)


def postprocess_encoder_mask(
    mask: Tensor,
    lam: Tensor,
    lam_margin: float,
    mask_smooth: float,
    mask_adjust: str,
    mean_margin: float,
    labels_a: Optional[Tensor] = None,
    labels_b: Optional[Tensor] = None,
) -> Tensor:
    """Post-processing of the detached bb mask, in the order of docs/algorithm.md §3.6: optional smoothing with
    sigma ~ U(0.5, mask_smooth) (0 = off), then ``mask_adjust`` (none | auto | auto_label), and the
    lambda-margin fallback, applied last so a fallback row is exactly the constant mask (smoothing a
    constant mask with zero padding would only darken its border)."""
    if mask_smooth > 0:
        sigma = 0.5 + (mask_smooth - 0.5) * float(torch.rand(()))
        mask = gaussian_smooth(mask, sigma)
    if mask_adjust == "auto_label":
        if labels_a is None or labels_b is None:
            raise ValueError("mask_adjust='auto_label' needs the pseudo-labels of both sources")
        mask = same_label_mixup(mask, lam, labels_a, labels_b)
    if mask_adjust in ("auto", "auto_label"):
        mask = adjust_mask_mean(mask, lam, mean_margin)
    return lam_margin_fallback(mask, lam, lam_margin)


def mask_loss(
    mask: Tensor, lam: float | Tensor, margin: float = 0.1, form: str = "l2", per_sample: bool = False
) -> Tensor:
    """l_mu + l_sigma of docs/algorithm.md §3.7 (unweighted; multiply by beta).

    With m = mean of s_a over the batch and all pixels (= 1 - mean(s_b)):
    l_mu = max((m - lam)^2 - margin^2, 0) ("l2") or max(|m - lam| - margin, 0) ("l1");
    l_sigma = -2 Var(s_a) (= -2 Var(s_b)) over the batch, which rewards near-binary masks.

    ``per_sample`` (``mix.mask_mean: sample``, ours): l_mu is the mean over images of the same hinge on
    each image's own mask mean, and l_sigma rewards each image's own (within-image) variance. The
    reference's batch-global terms are both met by giving half the images an all-1 and half an all-0
    mask (variance 0.25, no spatial structure at all); a per-image hinge alone does not stop that either,
    as a whole-image choice costs ~(1/2)^2 in l_mu and earns 2 x 0.25 in l_sigma (measured on digits).
    """
    mask = mask.float()
    mean = mask.mean(dim=(1, 2, 3), keepdim=True) if per_sample else mask.mean()
    gap = mean.flatten() - lam
    if form == "l2":
        l_mu = (gap**2 - margin**2).clamp_min(0).mean()
    elif form == "l1":
        l_mu = (gap.abs() - margin).clamp_min(0).mean()
    else:
        raise ValueError(f"mask loss form must be 'l1' or 'l2', got '{form}'")
    variance = ((mask - mean) ** 2).mean()
    return l_mu - 2 * variance


def decayed_weight(start: float, step: int, total_steps: int, schedule: str) -> float:
    """A loss weight decaying from ``start`` to 0 over training: constant | linear | cosine
    (beta of docs/algorithm.md §3.7: linear in the paper, cosine in the code; eta of docs/algorithm.md §4.1
    caveat 1)."""
    progress = min(max(step / max(total_steps, 1), 0.0), 1.0)
    if schedule == "constant":
        return start
    if schedule == "linear":
        return start * (1.0 - progress)
    if schedule == "cosine":
        return start * 0.5 * (1.0 + math.cos(math.pi * progress))
    raise ValueError(f"weight schedule must be constant, linear or cosine, got '{schedule}'")
