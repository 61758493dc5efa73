"""Contrastive losses against explicit per-sample formulas, and the persistent queue."""

import math

import pytest
import torch
import torch.nn.functional as F

from ssmix.config import ConfigError
from ssmix.losses.contrastive import (
    info_nce,
    mixup_info_nce,
    mixup_info_nce_in_batch,
    soft_target_cross_entropy,
    two_source_bce,
)
from ssmix.losses.queue import KeyQueue


def _unit(*shape):
    return F.normalize(torch.randn(*shape, dtype=torch.float64), dim=-1)


def _nce(z, pos, negs, t):
    num = math.exp(float(z @ pos) / t)
    return -math.log(num / (num + sum(math.exp(float(z @ u) / t) for u in negs)))


def test_info_nce_matches_formula():
    q, k, queue, t = _unit(4, 8), _unit(4, 8), _unit(6, 8), 0.2
    got = info_nce(q, k, queue, t)
    want = [_nce(q[i], k[i], queue, t) for i in range(4)]
    assert torch.allclose(got.double(), torch.tensor(want, dtype=torch.float64), atol=1e-5)


def test_mixup_info_nce_is_lambda_weighted_sum_of_two_nce_terms():
    z, ka, kb, queue, t = _unit(3, 8), _unit(3, 8), _unit(3, 8), _unit(5, 8), 0.2
    lam = torch.tensor([0.1, 0.5, 0.8], dtype=torch.float64)
    got = mixup_info_nce(z, ka, kb, lam, queue, t)
    want = [
        float(lam[i]) * _nce(z[i], ka[i], queue, t) + (1 - float(lam[i])) * _nce(z[i], kb[i], queue, t)
        for i in range(3)
    ]
    assert torch.allclose(got.double(), torch.tensor(want, dtype=torch.float64), atol=1e-5)


def test_in_batch_mixup_nce_uses_the_other_candidates_as_negatives():
    z, cand, t = _unit(3, 8), _unit(6, 8), 0.5
    ia, ib = torch.tensor([3, 4, 5]), torch.tensor([1, 2, 0])
    lam = torch.tensor([0.3, 0.6, 0.9], dtype=torch.float64)
    got = mixup_info_nce_in_batch(z, cand, ia, ib, lam, t)
    want = []
    for i in range(3):
        negs = [cand[m] for m in range(6) if m not in (int(ia[i]), int(ib[i]))]
        want.append(
            float(lam[i]) * _nce(z[i], cand[ia[i]], negs, t)
            + (1 - float(lam[i])) * _nce(z[i], cand[ib[i]], negs, t)
        )
    assert torch.allclose(got.double(), torch.tensor(want, dtype=torch.float64), atol=1e-5)


def test_soft_target_cross_entropy_formula():
    z, cand, t = _unit(2, 8), _unit(4, 8), 0.2
    ia, ib, lam = torch.tensor([2, 3]), torch.tensor([1, 0]), torch.tensor([0.25, 0.75], dtype=torch.float64)
    got = soft_target_cross_entropy(z, cand, ia, ib, lam, t)
    for i in range(2):
        logp = torch.log_softmax(cand @ z[i] / t, dim=0)
        want = -(lam[i] * logp[ia[i]] + (1 - lam[i]) * logp[ib[i]])
        assert abs(float(got[i]) - float(want)) < 1e-5


def test_two_source_bce_formula():
    z, ka, kb, t = _unit(3, 8), _unit(3, 8), _unit(3, 8), 0.2
    lam = torch.tensor([0.2, 0.5, 0.7], dtype=torch.float64)
    got = two_source_bce(z, ka, kb, lam, t)
    for i in range(3):
        ea, eb = math.exp(float(z[i] @ ka[i]) / t), math.exp(float(z[i] @ kb[i]) / t)
        p = ea / (ea + eb)
        want = -float(lam[i]) * math.log(p) - (1 - float(lam[i])) * math.log(1 - p)
        assert abs(float(got[i]) - want) < 1e-5


def test_queue_is_persistent_fifo_and_checks_divisibility():
    q = KeyQueue(8, 4)
    assert set(q.state_dict()) == {"keys", "ptr", "filled"}
    before = q.snapshot()
    k1, k2, k3 = _unit(4, 4).float(), _unit(4, 4).float(), _unit(4, 4).float()
    q.enqueue(k1)
    assert torch.equal(before[4:], q.keys[4:]) and torch.equal(q.keys[:4], k1)  # snapshot unaffected
    assert not torch.equal(before[:4], q.keys[:4])
    q.enqueue(k2)
    q.enqueue(k3)  # wraps around: replaces the oldest (k1)
    assert torch.equal(q.keys[:4], k3) and torch.equal(q.keys[4:], k2) and int(q.ptr) == 4
    fresh = KeyQueue(8, 4)
    fresh.load_state_dict(q.state_dict())
    assert torch.equal(fresh.keys, q.keys) and int(fresh.ptr) == 4
    with pytest.raises(ConfigError, match="queue_size=8 is not divisible by the global batch size 3"):
        q.enqueue(_unit(3, 4).float())


def test_zero_init_queue_reports_fill_state():
    q = KeyQueue(4, 2, zero_init=True)
    assert not q.full and float(q.keys.abs().sum()) == 0
    q.enqueue(_unit(2, 2).float())
    assert not q.full
    q.enqueue(_unit(2, 2).float())
    assert q.full
