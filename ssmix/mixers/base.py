"""The base class of every mixer, and helpers shared by several of them.

A mixer receives aligned source pairs (row n of ``xa`` is mixed with row n of ``xb``: the step has
already applied the partner permutation), the lambda the step drew from :meth:`Mixer.sample_lambda`,
and a :class:`~ssmix.mixup.MixContext`; it returns :class:`~ssmix.mixup.MixedInputs` with the
effective per-row lambda. It never sees the method (the contract is :mod:`ssmix.mixup`). A learned
mixer's own losses, and what it reports about them, come back from :meth:`Mixer.aux_losses` as
:class:`MixerLosses`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Dict, List, NamedTuple, Optional, Union

import torch
import torch.nn as nn
from torch import Tensor

from ssmix.config import BetaMixConfig, MixConfig, registrar
from ssmix.mixup import MixContext, MixedInputs, sample_beta

MIXERS: Dict[str, type] = {}


register_mixer = registrar(MIXERS)  # ``@register_mixer("name")``: buildable from ``mix.type``


class LamPair(NamedTuple):
    """Inter-Intra's two lambdas of one batch (docs/algorithm.md §8): CutMix's for pairs across clusters,
    Mixup's for pairs within one."""

    inter: float
    intra: float


#: What :meth:`Mixer.sample_lambda` draws and :meth:`Mixer.forward` takes: the weight of source a, or
#: Inter-Intra's :class:`LamPair` (every mixer also takes a plain float: a figure's sweep passes one).
Lam = Union[float, LamPair]


@dataclass
class MixerLosses:
    """What :meth:`Mixer.aux_losses` returns: named losses the step adds to its own (summed), and metrics
    about them (0-dim tensors or constants, read at log steps) under the names they are logged with."""

    losses: Dict[str, Tensor] = field(default_factory=dict)
    metrics: Dict[str, Tensor | float] = field(default_factory=dict)


class Mixer(nn.Module):
    """Base class of all mixers."""

    #: the step asks the method for target-branch maps at this trunk position (SAMix: 3)
    needs_feature_maps: Optional[int] = None
    #: the step must provide ``ctx.labels`` (Inter-Intra, SAMix-C)
    needs_labels: bool = False

    #: the mixer trains itself: the step calls :meth:`aux_losses` with a lambda of its own (SAMix-I/C)
    learned: bool = False

    def __init__(self, cfg: MixConfig) -> None:
        super().__init__()
        self.cfg = cfg

    def sample_lambda(self) -> Lam:
        """The lambda of one batch (weight of source a), drawn by the step and passed to :meth:`forward`:
        Beta(alpha, alpha) of a :class:`~ssmix.config.BetaMixConfig` unless a mixer has its own rule
        (docs/algorithm.md §8)."""
        cfg = self.cfg
        if not isinstance(cfg, BetaMixConfig):
            raise TypeError(
                f"{type(self).__name__}: its config {type(cfg).__name__} has no alpha (not a "
                "BetaMixConfig); such a mixer draws its lambda with its own sample_lambda"
            )
        return sample_beta(cfg.alpha)

    def forward(self, xa: Tensor, xb: Tensor, lam: Lam, ctx: MixContext) -> MixedInputs:
        """Mix ``xa`` (source a) with ``xb`` (source b) at the requested weight ``lam`` of a."""
        raise NotImplementedError

    def aux_losses(self, ctx: MixContext, lam: Lam) -> MixerLosses:
        """Losses a learned mixer trains itself with on a batch of its own mixed at ``lam`` (SAMix), and
        its metrics of that batch."""
        return MixerLosses()

    def param_groups(self) -> List[dict]:
        """Optimizer groups of a learned mixer (same format as ``Method.param_groups``)."""
        return []

    def on_train_start(self, extract: Callable[[], tuple]) -> None:
        """Called once before the first step of a fresh run. ``extract()`` returns
        ``(embeddings (N_data, D), dataset_labels (N_data,))`` of the whole training set through the
        target branch (ODC's initial clustering)."""


def check_pair(xa: Tensor, xb: Tensor, who: str) -> None:
    """Both sources must be image batches of the same shape (N, C, H, W)."""
    if xa.dim() != 4 or xa.shape != xb.shape:
        raise ValueError(
            f"{who}: expected two image batches of the same shape (N, C, H, W), got {tuple(xa.shape)} and "
            f"{tuple(xb.shape)}"
        )


def expand_lam(lam: float | Tensor, n: int, device: torch.device | str) -> Tensor:
    if isinstance(lam, Tensor):
        return lam.to(device=device, dtype=torch.float32).expand(n).clone() if lam.dim() == 0 else lam.float()
    return torch.full((n,), float(lam), device=device)


@torch.no_grad()
def mask_statistics(mask: Tensor, prefix: str = "mask_") -> Dict[str, Tensor]:
    """How structured a batch of masks ``(N, 1, H, W)`` is (docs/algorithm.md §3.7):

    - ``within_var``: mean over images of each mask's spatial variance (0 for a constant mask, as
      Mixup's, and for a mask that is all 0 or all 1);
    - ``between_var``: variance of the per-image mask means across the batch (high when images get
      all-0 / all-1 masks: the degenerate optimum of the batch-global variance term);
    - ``saturated``: fraction of pixels below 0.05 or above 0.95.

    ``within_var + between_var`` is the variance over every pixel of the batch (law of total variance).
    0-dim tensors on the mask's device (no host sync; the trainer reads them at logging steps).
    """
    m = mask.detach().float().flatten(1)
    means = m.mean(dim=1)
    return {
        f"{prefix}within_var": m.var(dim=1, unbiased=False).mean(),
        f"{prefix}between_var": means.var(unbiased=False),
        f"{prefix}saturated": ((m < 0.05) | (m > 0.95)).float().mean(),
    }


def blend(xa: Tensor, xb: Tensor, mask: Tensor) -> Tensor:
    """``mask * xa + (1 - mask) * xb``; mask broadcasts over channels."""
    return xb + mask.to(xa.dtype) * (xa - xb)


def blend_exact(xa: Tensor, xb: Tensor, mask: Tensor) -> Tensor:
    """:func:`blend`, but pixels whose mask is exactly 1 (0) are copied from ``xa`` (``xb``) bit for bit
    (``xb + 1 * (xa - xb)`` is not always ``xa`` in floating point)."""
    mixed = blend(xa, xb, mask)
    return torch.where(mask == 1, xa, torch.where(mask == 0, xb, mixed))
