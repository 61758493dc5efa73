"""Online kNN monitor called by the pre-training engine every ``train.knn_every`` epochs.

Bank: the labelled ``train`` split of ``cfg.data`` (pre-training on ``folder``: of the labelled
``imagefolder`` at ``data.eval_root``); queries: its ``val`` split (``test`` where there
is none); test-time transform; k=200, t=0.1 (MoCo colab). Datasets are built once per process.
"""
from __future__ import annotations

from functools import lru_cache
from typing import Optional, Tuple

import torch
import torch.nn as nn
from torch.utils.data import Dataset

from ssmix.config import Config
from ssmix.evaluation.features import TransformedDataset, make_loader, test_transform
from ssmix.evaluation.knn import knn_accuracy

MONITOR_BATCH = 256


@lru_cache(maxsize=4)
def _monitor_sets(name: str, root: str, image_size: int, num_samples: int, num_classes: int,
                  mean: Tuple[float, ...], std: Tuple[float, ...]) -> Tuple[Dataset, Dataset]:
    from ssmix.data.datasets import DATASET_INFO, build_dataset

    info = DATASET_INFO[name]
    transform = test_transform(image_size, mean, std)
    query_split = "val" if "val" in info.splits else "test"
    return tuple(TransformedDataset(build_dataset(name, root, split, image_size=image_size, num_samples=num_samples,
                                                  num_classes=num_classes), transform)
                 for split in ("train", query_split))


def _sets_of(cfg: Config) -> Tuple[Dataset, Dataset]:
    """The monitor's (bank, query) sets; a missing or unusable ``data.eval_root`` is a ConfigError."""
    from ssmix.config import ConfigError
    from ssmix.data.datasets import data_info

    data = cfg.data
    info = data_info(data)
    name, root = ("imagefolder", data.eval_root) if data.name == "folder" else (data.name, data.root)
    try:
        return _monitor_sets(name, root, data.image_size, data.num_samples, info.num_classes, info.mean, info.std)
    except (OSError, ValueError) as exc:
        if data.name != "folder":
            raise
        text = " ".join(str(exc).split())
        raise ConfigError(f"data.eval_root: {text[:300]}; the kNN monitor (train.knn_every) needs a labelled "
                          "<eval_root>/train/<class>/* and <eval_root>/val/<class>/*") from None


def check_monitor(cfg: Config) -> Optional[str]:
    """Build the monitor's sets at the start of a run (not after epoch 1); a warning if ``train.knn_k``
    is above the bank size."""
    from ssmix.config_checks import knn_bank_warning

    bank, _ = _sets_of(cfg)
    where = f"train split of {cfg.data.eval_root if cfg.data.name == 'folder' else cfg.data.name}"
    return knn_bank_warning(cfg, len(bank), where)


def knn_monitor(cfg: Config, trunk: nn.Module, device: torch.device | str, k: int = 200, t: float = 0.1) -> float:
    """kNN top-1 (percent) of ``trunk`` on the labelled splits of ``cfg.data`` (for ``folder``, the
    ``imagefolder`` at ``data.eval_root``); restores its train flag."""
    data = cfg.data
    bank_set, query_set = _sets_of(cfg)
    device = torch.device(device)
    loaders = [make_loader(s, MONITOR_BATCH, data.num_workers, device) for s in (bank_set, query_set)]
    return knn_accuracy(trunk, loaders[0], loaders[1], device, k, t)
