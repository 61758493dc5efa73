"""Latent-extended targets and the cluster-level losses of the SAMix Mixer (docs/algorithm.md §4.1, §4.2).

Instance-level terms reuse :mod:`ssmix.losses.contrastive` (``two_source_bce``, ``mixup_info_nce``,
``mixup_info_nce_in_batch``). Every function here returns a scalar (batch-reduced) loss.
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor


def extend_positives(target: Tensor, own: Tensor, mode: str) -> Tensor:
    """Latent-extended positives (docs/algorithm.md §4.1 caveat 2) of sources whose targets (other view)
    are ``target`` and whose own-view embeddings are ``own`` (``Pairing.targets`` / ``Pairing.sources``).

    With t = target, o = own and an element-wise b ~ Beta(2, 2): interpolation b t + (1 - b) o,
    extrapolation (1 + b) t - b o ("both": one of the two with probability 1/2 per call), re-normalised.
    """
    target, own = target.float(), own.float()
    b = torch.distributions.Beta(2.0, 2.0).sample(target.shape).to(target.device)
    if mode == "both":
        mode = "interpolation" if float(torch.rand(())) < 0.5 else "extrapolation"
    if mode == "interpolation":
        mixed = b * target + (1 - b) * own
    elif mode == "extrapolation":
        mixed = (1 + b) * target - b * own
    else:
        raise ValueError(f"latent_pos_extend: expected interpolation, extrapolation or both, got '{mode}'")
    return F.normalize(mixed, dim=-1)


def mixup_info_nce_masked(
    z: Tensor,
    pos_a: Tensor,
    pos_b: Tensor,
    lam: Tensor,
    candidates: Tensor,
    index_a: Tensor,
    index_b: Tensor,
    temperature: float,
) -> Tensor:
    """Per-row lam l^NCE(z, pos_a) + (1 - lam) l^NCE(z, pos_b) whose negatives are the in-batch
    ``candidates`` except rows ``index_a``/``index_b`` (in-batch form with replaced positives)."""
    z = z.float()
    neg = z @ candidates.float().t() / temperature
    rows = torch.arange(z.shape[0], device=z.device)
    neg = neg.index_put((rows, index_a), torch.tensor(float("-inf"), device=z.device))
    neg = neg.index_put((rows, index_b), torch.tensor(float("-inf"), device=z.device))
    la = (z * pos_a.float()).sum(-1, keepdim=True) / temperature
    lb = (z * pos_b.float()).sum(-1, keepdim=True) / temperature
    nce_a = torch.logsumexp(torch.cat([la, neg], 1), 1) - la[:, 0]
    nce_b = torch.logsumexp(torch.cat([lb, neg], 1), 1) - lb[:, 0]
    return lam * nce_a + (1 - lam) * nce_b


def sample_weights(labels: Tensor, class_weights: Optional[Tensor]) -> Tensor:
    """Per-row loss weight w_{y_n} (1 without class weights); 0 for unknown labels (y < 0)."""
    known = labels >= 0
    if class_weights is None:
        return known.float()
    return class_weights.float()[labels.clamp_min(0)] * known


def weighted_mean(loss: Tensor, weight: Tensor) -> Tensor:
    """sum_n w_n l_n / sum_n w_n, i.e. the mean of l weighted by w normalised to batch mean 1
    (docs/algorithm.md §4.2 [I]); 0 when every weight is 0."""
    return (loss * weight).sum() / weight.sum().clamp_min(1e-12)


def mixup_cross_entropy(
    logits: Tensor, labels_a: Tensor, labels_b: Tensor, lam: Tensor, weight_a: Tensor, weight_b: Tensor
) -> Tensor:
    """Global term of SAMix-C (docs/algorithm.md §4.2): lam CE(s, y_a) + (1 - lam) CE(s, y_b) over all clusters,
    each CE class-weighted by :func:`weighted_mean`."""
    logp = F.log_softmax(logits.float(), dim=-1)
    ce_a = -logp.gather(1, labels_a.clamp_min(0)[:, None])[:, 0]
    ce_b = -logp.gather(1, labels_b.clamp_min(0)[:, None])[:, 0]
    return weighted_mean(lam * ce_a, weight_a) + weighted_mean((1 - lam) * ce_b, weight_b)


def cross_entropy(logits: Tensor, labels: Tensor, weight: Tensor) -> Tensor:
    """One-hot CE with per-row weights (the cluster head's CE on the raw view, docs/algorithm.md §4.2 [C] 2)."""
    logp = F.log_softmax(logits.float(), dim=-1)
    return weighted_mean(-logp.gather(1, labels.clamp_min(0)[:, None])[:, 0], weight)


def pair_bce(
    logits: Tensor, labels_a: Tensor, labels_b: Tensor, lam: Tensor, weight_a: Tensor, weight_b: Tensor
) -> Tensor:
    """Local term of SAMix-C, the parametric BCE over the two source clusters (docs/algorithm.md §4.2):
    p = e^{s_a} / (e^{s_a} + e^{s_b}); -lam log p - (1 - lam) log(1 - p), class-weighted.

    Same-cluster pairs (y_a = y_b) carry a constant term and are left out (weight 0)."""
    logits = logits.float()
    s_a = logits.gather(1, labels_a.clamp_min(0)[:, None])[:, 0]
    s_b = logits.gather(1, labels_b.clamp_min(0)[:, None])[:, 0]
    distinct = (labels_a != labels_b).float()
    loss_a = -F.logsigmoid(s_a - s_b)
    loss_b = -F.logsigmoid(s_b - s_a)
    return weighted_mean(lam * loss_a, weight_a * distinct) + weighted_mean(
        (1 - lam) * loss_b, weight_b * distinct
    )
