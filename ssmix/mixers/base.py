"""The contract every mixer implements, and sampling helpers shared by all of them.

A mixer receives aligned source pairs (row n of ``xa`` is mixed with row n of ``xb``, which the
pipeline has already permuted) and returns the mixed inputs and the effective per-row lambda. It
never sees the method: what it may need of the step comes through :class:`MixContext`.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional

import torch
import torch.nn as nn
from torch import Tensor

from ssmix.config import MixConfig, registrar


@dataclass
class MixContext:
    """What the pipeline knows about the current step, offered to mixers."""

    views: List[Tensor]  # the two (normalised) views, (N, 3, H, W) each
    view_a: int  # which view the `a` sources come from
    view_b: int
    perm: Tensor  # (N,) partner of row n is perm[n]
    keys: Tensor  # (2, N, D) target-branch embeddings (no grad)
    negatives: Optional[Tensor]  # (K, D) extra negatives or None (in-batch)
    temperature: float
    embed_target: Callable[[Tensor], Tensor]  # images -> normalised target embedding (grad to input)
    online_prefix: Callable[[Tensor, int], Tensor]  # images -> online trunk maps at a position
    feature_maps: Optional[Tensor] = None  # (2, N, C, h, w) target-branch maps (if requested)
    labels: Optional[Tensor] = None  # (N,) cluster / class labels of the batch, -1 = unknown
    num_classes: int = 0  # number of label values (clusters) when labels are given
    class_weights: Optional[Tensor] = None  # (num_classes,) loss re-weights (ODC, docs/algorithm.md §5.4)
    index: Optional[Tensor] = None  # (N,) dataset indices
    step: int = 0
    total_steps: int = 1
    metrics: Dict[str, Tensor | float] = field(default_factory=dict)  # what a mixer reports about this step


@dataclass
class MixResult:
    x: Tensor  # mixed inputs, entering the online trunk at position `start`
    lam: Tensor  # (N,) effective weight of source a
    start: int = 0
    mask: Optional[Tensor] = None  # (N, 1, H, W) per-pixel weight of source a, for visualisation


MIXERS: Dict[str, type] = {}


register_mixer = registrar(MIXERS)  # ``@register_mixer("name")``: buildable from ``mix.type``


class Mixer(nn.Module):
    """Base class of all mixers."""

    #: the pipeline asks the method for target-branch maps at this trunk position (SAMix: 3)
    needs_feature_maps: Optional[int] = None
    #: the pipeline must provide ``ctx.labels`` (Inter-Intra, SAMix-C)
    needs_labels: bool = False

    def __init__(self, cfg: MixConfig) -> None:
        super().__init__()
        self.cfg = cfg

    def forward(self, xa: Tensor, xb: Tensor, ctx: MixContext) -> MixResult:
        raise NotImplementedError

    def aux_losses(self, ctx: MixContext) -> Dict[str, Tensor]:
        """Extra losses a learned mixer trains itself with (SAMix); none by default."""
        return {}

    def param_groups(self) -> List[dict]:
        """Optimizer groups of a learned mixer (same format as ``Method.param_groups``)."""
        return []

    def on_train_start(self, extract: Callable[[], tuple]) -> None:
        """Called once before the first step of a fresh run. ``extract()`` returns
        ``(embeddings (N_data, D), dataset_labels (N_data,))`` of the whole training set through the
        target branch (ODC's initial clustering)."""


def sample_lambda(alpha: float, device: torch.device | str = "cpu") -> float:
    """One lambda ~ Beta(alpha, alpha) per batch, drawn from torch's global RNG (resumable)."""
    if alpha <= 0:
        return 1.0
    dist = torch.distributions.Beta(torch.tensor(float(alpha)), torch.tensor(float(alpha)))
    return float(dist.sample())


def derangement(n: int, device: torch.device | str = "cpu") -> Tensor:
    """A uniformly random permutation of ``range(n)`` with no fixed points (n >= 2), by rejection:
    draw permutations until one has no fixed point (1/e of them do, so ~2.7 draws on average). Every
    derangement is equally likely, so partners are swapped both ways (i <-> j) as often as chance."""
    if n < 2:
        raise ValueError("mixing needs a batch of at least 2 samples")
    rows = torch.arange(n)
    perm = torch.randperm(n)
    while bool((perm == rows).any()):
        perm = torch.randperm(n)
    return perm.to(device)


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
