"""Weighted kNN classifier on frozen features (InstDisc / MoCo-colab monitor: k=200, t=0.1).

The vote is lightly's ``knn_predict``: the k most cosine-similar bank features vote for their label
with weight ``exp(sim / t)``. Importing ``lightly.utils.benchmarking`` loads pytorch_lightning
(~0.6 s), so it is imported only when a kNN is actually computed.
"""

from __future__ import annotations

from typing import Dict, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import DataLoader

from ssmix.evaluation.features import extract_features

_CHUNK_ELEMENTS = 1 << 24  # bound on the (queries * k * classes) one-hot lightly allocates


def knn_rank_classes(
    query: Tensor, bank: Tensor, bank_labels: Tensor, num_classes: int, k: int = 200, t: float = 0.1
) -> Tensor:
    """Classes ranked by weighted vote, ``(Q, num_classes)``, best first. Features are L2-normalised here.

    ``k`` is clipped to the bank size. Queries are processed in chunks to bound memory.
    """
    from lightly.utils.benchmarking import knn_predict

    k = min(k, bank.shape[0])
    bank_t = F.normalize(bank.float(), dim=1).t().contiguous()
    query = F.normalize(query.float(), dim=1)
    bank_labels = bank_labels.to(bank_t.device)
    chunk = max(1, _CHUNK_ELEMENTS // (k * num_classes))
    ranked = [
        knn_predict(query[i : i + chunk], bank_t, bank_labels, num_classes, knn_k=k, knn_t=t)
        for i in range(0, query.shape[0], chunk)
    ]
    return torch.cat(ranked)


def knn_metrics(
    train_features: Tensor,
    train_labels: Tensor,
    test_features: Tensor,
    test_labels: Tensor,
    num_classes: int,
    k: int = 200,
    t: float = 0.1,
    device: Optional[torch.device] = None,
) -> Dict[str, float]:
    """kNN top-1 / top-5 accuracy (percent) of ``test`` against the ``train`` bank."""
    device = device or train_features.device
    ranked = knn_rank_classes(
        test_features.to(device), train_features.to(device), train_labels.to(device), num_classes, k, t
    )
    hits = ranked[:, : min(5, num_classes)] == test_labels.to(device)[:, None]
    return {
        "knn_top1": 100.0 * hits[:, 0].float().mean().item(),
        "knn_top5": 100.0 * hits.any(1).float().mean().item(),
    }


def knn_accuracy(
    backbone: nn.Module,
    train_loader: DataLoader,
    test_loader: DataLoader,
    device: torch.device | str,
    k: int = 200,
    t: float = 0.1,
) -> float:
    """Online kNN monitor: extract (eval mode, training flag restored), normalise, vote; top-1 in percent.

    The loaders yield ``(images, labels)`` with the test-time transform; the number of classes is
    taken from the labels.
    """
    device = torch.device(device)
    train_features, train_labels = extract_features(backbone, train_loader, device)
    test_features, test_labels = extract_features(backbone, test_loader, device)
    num_classes = int(max(train_labels.max(), test_labels.max())) + 1
    metrics = knn_metrics(train_features, train_labels, test_features, test_labels, num_classes, k, t, device)
    return metrics["knn_top1"]
