"""Online kNN monitor called by the pre-training engine every ``train.knn_every`` epochs.

Bank: the labelled ``train`` split of ``cfg.data`` (its ``data.subset`` where set; pre-training on
``folder``: of the labelled ``imagefolder`` at ``data.eval_root``); queries: its ``val`` split (``test`` where there
is none); test-time transform; k=200, t=0.1 (MoCo colab). Datasets are built once per process.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Optional, Tuple

import torch
import torch.nn as nn
from torch.utils.data import Dataset, Subset

from ssmix.config import Config
from ssmix.distributed import gather_shards, is_distributed, rank0_buffers, shard
from ssmix.evaluation.features import TransformedDataset, extract_features, make_loader, test_transform
from ssmix.evaluation.knn import knn_accuracy, knn_metrics

MONITOR_BATCH = 256


@lru_cache(maxsize=4)
def _monitor_sets(
    name: str,
    root: str,
    image_size: int,
    num_samples: int,
    num_classes: int,
    mean: Tuple[float, ...],
    std: Tuple[float, ...],
    subset: int,
) -> Tuple[Dataset, Dataset]:
    from ssmix.data.datasets import DATASET_INFO, build_dataset

    info = DATASET_INFO[name]
    transform = test_transform(image_size, mean, std)
    query_split = "val" if "val" in info.splits else "test"
    return tuple(
        TransformedDataset(
            build_dataset(
                name,
                root,
                split,
                image_size=image_size,
                num_samples=num_samples,
                num_classes=num_classes,
                subset=subset if split == "train" else 0,
            ),
            transform,
        )
        for split in ("train", query_split)
    )


def _sets_of(cfg: Config) -> Tuple[Dataset, Dataset]:
    """The monitor's (bank, query) sets; a missing or unusable ``data.eval_root`` is a ConfigError."""
    from ssmix.config import ConfigError
    from ssmix.data.datasets import dataset_info_from_config

    data = cfg.data
    info = dataset_info_from_config(data)
    name, root = ("imagefolder", data.eval_root) if data.name == "folder" else (data.name, data.root)
    subset = data.subset if data.name != "folder" else 0  # the bank: the images pre-trained on
    try:
        return _monitor_sets(
            name, root, data.image_size, data.num_samples, info.num_classes, info.mean, info.std, subset
        )
    except (OSError, ValueError) as exc:
        if data.name != "folder":
            raise
        text = " ".join(str(exc).split())
        raise ConfigError(
            f"data.eval_root: {text[:300]}; the kNN monitor (train.knn_every) needs a labelled "
            "<eval_root>/train/<class>/* and <eval_root>/val/<class>/*"
        ) from None


def check_monitor(cfg: Config) -> Optional[str]:
    """Build the monitor's sets at the start of a run (not after epoch 1); a warning if ``train.knn_k``
    is above the bank size."""
    from ssmix.config_checks import knn_bank_warning

    bank, _ = _sets_of(cfg)
    where = f"train split of {cfg.data.eval_root if cfg.data.name == 'folder' else cfg.data.name}"
    warning = knn_bank_warning("train.knn_k", cfg.train.knn_k, len(bank), where)
    return warning and f"warning: {warning}"


def knn_monitor(
    cfg: Config, trunk: nn.Module, device: torch.device | str, k: int = 200, t: float = 0.1
) -> float:
    """kNN top-1 (percent) of ``trunk`` on the labelled splits of ``cfg.data`` (for ``folder``, the
    ``imagefolder`` at ``data.eval_root``); restores its train flag."""
    data = cfg.data
    bank_set, query_set = _sets_of(cfg)
    device = torch.device(device)
    if not is_distributed():
        loaders = [make_loader(s, MONITOR_BATCH, data.num_workers, device) for s in (bank_set, query_set)]
        return knn_accuracy(trunk, loaders[0], loaders[1], device, k, t)
    return _sharded_knn(trunk, bank_set, query_set, data.num_workers, device, k, t)


def _sharded_knn(
    trunk: nn.Module,
    bank_set: Dataset,
    query_set: Dataset,
    workers: int,
    device: torch.device,
    k: int,
    t: float,
) -> float:
    """Under DDP: each rank embeds its shard of the bank and of the queries with rank 0's BatchNorm
    statistics, the shards are gathered, and every rank votes (the same result on each)."""
    parts = []
    with rank0_buffers(trunk):
        for data in (bank_set, query_set):
            loader = make_loader(Subset(data, shard(len(data))), MONITOR_BATCH, workers, device)
            feats, labels = extract_features(trunk, loader, device)
            parts.append((gather_shards(feats, len(data)), gather_shards(labels, len(data))))
    (bank, bank_labels), (query, query_labels) = parts
    num_classes = int(max(bank_labels.max(), query_labels.max())) + 1
    return knn_metrics(bank, bank_labels, query, query_labels, num_classes, k, t, device)["knn_top1"]
