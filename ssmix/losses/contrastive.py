"""Contrastive losses with soft (lambda-mixed) targets. All inputs are L2-normalised embeddings;
every function returns one loss per row (reduce with ``.mean()``). Computed in fp32.

Notation of docs/algorithm.md §1: l^NCE(z, k+) = -log e^{z.k+/t} / (e^{z.k+/t} + sum_u e^{z.u/t}).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def _nce_from_logits(pos: Tensor, neg: Tensor) -> Tensor:
    """-log softmax([pos, neg])[0] per row; pos (N,), neg (N, K)."""
    return torch.logsumexp(torch.cat([pos[:, None], neg], dim=1), dim=1) - pos


def info_nce(query: Tensor, positive: Tensor, negatives: Tensor, temperature: float) -> Tensor:
    """l^NCE(q, k+) with the negatives shared by all rows (the MoCo queue), docs/algorithm.md §1."""
    q, k, n = query.float(), positive.float(), negatives.float()
    return _nce_from_logits((q * k).sum(-1) / temperature, q @ n.t() / temperature)


def mixup_info_nce(z: Tensor, pos_a: Tensor, pos_b: Tensor, lam: Tensor, negatives: Tensor,
                   temperature: float) -> Tensor:
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


def mixup_info_nce_in_batch(z: Tensor, candidates: Tensor, index_a: Tensor, index_b: Tensor, lam: Tensor,
                            temperature: float) -> Tensor:
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


def soft_target_cross_entropy(z: Tensor, candidates: Tensor, index_a: Tensor, index_b: Tensor, lam: Tensor,
                              temperature: float) -> Tensor:
    """-lam log p_a - (1 - lam) log p_b with p = softmax(z . candidates / t) over the whole batch.

    The BSIM-style objective for mixed samples in BYOL and SimSiam (docs/algorithm.md §2.4 [I]).
    """
    logits, la, lb = _pair_logits(z, candidates, index_a, index_b, temperature)
    lse = torch.logsumexp(logits, dim=1)
    return lam * (lse - la) + (1 - lam) * (lse - lb)


def two_source_bce(z: Tensor, pos_a: Tensor, pos_b: Tensor, lam: Tensor, temperature: float) -> Tensor:
    """SAMix-I local term (docs/algorithm.md §4.1): p = e^{z.k_a/t} / (e^{z.k_a/t} + e^{z.k_b/t});
    -lam log p - (1 - lam) log(1 - p)."""
    la = (z.float() * pos_a.float()).sum(-1) / temperature
    lb = (z.float() * pos_b.float()).sum(-1) / temperature
    logp = F.logsigmoid(la - lb)
    log1mp = F.logsigmoid(lb - la)
    return -lam * logp - (1 - lam) * log1mp
