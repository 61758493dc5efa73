"""Contrastive losses with soft (lambda-mixed) targets. All inputs are L2-normalised embeddings;
every function returns one loss per row (reduce with ``.mean()``), except :func:`nt_xent` (the mean).
Computed in fp32: autocast is switched off inside each (``.float()`` alone does not leave a bf16 autocast
region: its matmuls would run in bf16 again).

Notation of docs/algorithm.md §1: l^NCE(z, k+) = -log e^{z.k+/t} / (e^{z.k+/t} + sum_u e^{z.u/t}).
"""

from __future__ import annotations

import functools
from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from ssmix.distributed import is_distributed, rank


def fp32(loss: Callable[..., Tensor]) -> Callable[..., Tensor]:
    """Run ``loss`` with autocast off on the device of its first tensor argument."""

    @functools.wraps(loss)
    def wrapped(*args, **kwargs) -> Tensor:
        device = next(a.device.type for a in args if isinstance(a, Tensor))
        with torch.autocast(device, enabled=False):
            return loss(*args, **kwargs)

    return wrapped


def _nce_from_logits(pos: Tensor, neg: Tensor) -> Tensor:
    """-log softmax([pos, neg])[0] per row; pos (N,), neg (N, K)."""
    return torch.logsumexp(torch.cat([pos[:, None], neg], dim=1), dim=1) - pos


@fp32
def info_nce(query: Tensor, positive: Tensor, negatives: Tensor, temperature: float) -> Tensor:
    """l^NCE(q, k+) with the negatives shared by all rows (the MoCo queue), docs/algorithm.md §1."""
    q, k, n = query.float(), positive.float(), negatives.float()
    return _nce_from_logits((q * k).sum(-1) / temperature, q @ n.t() / temperature)


@fp32
def mixup_info_nce(
    z: Tensor, pos_a: Tensor, pos_b: Tensor, lam: Tensor, negatives: Tensor, temperature: float
) -> Tensor:
    """lam * l^NCE(z, k_a) + (1 - lam) * l^NCE(z, k_b) with shared negatives (docs/algorithm.md §2.1 step 8, L_bb).

    The negative logits are computed once and shared by both terms.
    """
    z = z.float()
    neg = z @ negatives.float().t() / temperature
    la = (z * pos_a.float()).sum(-1) / temperature
    lb = (z * pos_b.float()).sum(-1) / temperature
    return lam * _nce_from_logits(la, neg) + (1 - lam) * _nce_from_logits(lb, neg)


def _pair_logits(z: Tensor, candidates: Tensor, index_a: Tensor, index_b: Tensor, temperature: float):
    logits = z.float() @ candidates.float().t() / temperature  # (N, M)
    la = logits.gather(1, index_a[:, None]).squeeze(1)
    lb = logits.gather(1, index_b[:, None]).squeeze(1)
    return logits, la, lb


@fp32
def mixup_info_nce_in_batch(
    z: Tensor, candidates: Tensor, index_a: Tensor, index_b: Tensor, lam: Tensor, temperature: float
) -> Tensor:
    """lam * NT-Xent(z, c_a) + (1 - lam) * NT-Xent(z, c_b) with in-batch negatives (docs/algorithm.md §2.4, SimCLR).

    ``candidates`` (M, D) are the batch's target embeddings; row n's two positives are
    ``candidates[index_a[n]]`` and ``candidates[index_b[n]]``; its negatives are the other M - 2.
    """
    logits, la, lb = _pair_logits(z, candidates, index_a, index_b, temperature)
    rows = torch.arange(z.shape[0], device=z.device)
    neg = logits.clone()
    neg[rows, index_a] = float("-inf")
    neg[rows, index_b] = float("-inf")
    return lam * _nce_from_logits(la, neg) + (1 - lam) * _nce_from_logits(lb, neg)


@fp32
def soft_target_cross_entropy(
    z: Tensor, candidates: Tensor, index_a: Tensor, index_b: Tensor, lam: Tensor, temperature: float
) -> Tensor:
    """-lam log p_a - (1 - lam) log p_b with p = softmax(z . candidates / t) over the whole batch.

    The BSIM-style objective for mixed samples in BYOL and SimSiam (docs/algorithm.md §2.4 [I]).
    """
    logits, la, lb = _pair_logits(z, candidates, index_a, index_b, temperature)
    lse = torch.logsumexp(logits, dim=1)
    return lam * (lse - la) + (1 - lam) * (lse - lb)


@fp32
def two_source_bce(z: Tensor, pos_a: Tensor, pos_b: Tensor, lam: Tensor, temperature: float) -> Tensor:
    """SAMix-I local term (docs/algorithm.md §4.1): p = e^{z.k_a/t} / (e^{z.k_a/t} + e^{z.k_b/t});
    -lam log p - (1 - lam) log(1 - p)."""
    la = (z.float() * pos_a.float()).sum(-1) / temperature
    lb = (z.float() * pos_b.float()).sum(-1) / temperature
    logp = F.logsigmoid(la - lb)
    log1mp = F.logsigmoid(lb - la)
    return -lam * logp - (1 - lam) * log1mp


@fp32
def nt_xent(z0: Tensor, z1: Tensor, temperature: float) -> Tensor:
    """NT-Xent (SimCLR eq. 1), the mean over the 2N views: each view's positive is the other view of its
    sample, its negatives every other view of the global batch (gathered with gradient under DDP). A view's
    similarity to itself is masked with -inf rather than cut out of the logits: no boolean indexing, so no
    host sync on a GPU."""
    z0, z1 = F.normalize(z0.float(), dim=1), F.normalize(z1.float(), dim=1)
    n = z0.shape[0]
    all0, all1, offset = z0, z1, 0
    if is_distributed():
        from lightly.utils.dist import gather

        all0, all1, offset = torch.cat(gather(z0)), torch.cat(gather(z1)), rank() * n
    m = all0.shape[0]
    logits = torch.cat([z0, z1]) @ torch.cat([all0, all1]).t() / temperature  # (2N, 2M)
    own = torch.arange(n, device=z0.device) + offset
    logits = logits.scatter(1, torch.cat([own, own + m])[:, None], float("-inf"))
    return F.cross_entropy(logits, torch.cat([own + m, own]))
