"""Schema of a linear-evaluation run (``linear_eval/run.py CONFIG key=value ...``), docs/algorithm.md §6.3.

Loaded with the helpers of :mod:`ssmix.config` (``_base_`` inheritance, dotted overrides, unknown keys
rejected with a :class:`~ssmix.config.ConfigError` that names the key).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence

from ssmix.config import ConfigError, check_device, check_ranges, from_dict, read_config
from ssmix.config_checks import usable_workers
from ssmix.shipped import LINEAR

MODES = ("cached", "protocol")


@dataclass
class EvalDataConfig:
    """Labelled train / test splits of the evaluation dataset (``ssmix.data.datasets``)."""

    # imagefolder: your own labelled images, <root>/<train_split>/<class>/* and <root>/<test_split>/<class>/*
    name: str = "synthetic"  # synthetic | digits | fashion_mnist | mnist | cifar10 | cifar100 | stl10 | tiny_imagenet | imagefolder
    root: str = "data"
    train_split: str = "train"
    test_split: Optional[str] = None  # None: "val" if the dataset has it, else "test"
    image_size: Optional[int] = None  # None: the dataset's native size (Tiny: set 96, docs/algorithm.md §6.3)
    test_resize: Optional[int] = None  # shorter side before the centre crop; None: image_size (ImageNet: 256)
    num_samples: int = 512  # synthetic only
    # > 0: the probe and the kNN bank use a fixed class-balanced subset of the train split
    train_subset: int = 0
    # null = the dataset's own value (imagefolder: its class sub-folders); mean / std: R, G, B on 0..1
    num_classes: Optional[int] = None
    mean: Optional[List[float]] = None
    std: Optional[List[float]] = None
    num_workers: int = 2
    download: bool = False


@dataclass
class LinearEvalConfig:
    """Frozen-encoder evaluation: linear probe (``mode``) plus a kNN monitor on cached features."""

    weights: str = ""  # run dir | checkpoint (.pt/.pth/.pth.tar) | exported backbone.pth | random
    # cached (features extracted once) | protocol (paper protocol, docs/algorithm.md §6.3)
    mode: str = "cached"
    data: EvalDataConfig = field(default_factory=EvalDataConfig)
    arch: Optional[str] = None  # null: the config.yaml of the run, else inferred (random: resnet18)
    cifar_stem: Optional[bool] = None  # None: as arch (random: False)
    epochs: int = 100
    batch_size: int = 256
    # 0.1 for STL-10 / Tiny (with feature_bn: for any encoder), 30 for ImageNet without feature_bn
    lr: float = 0.1
    # cached mode: try each learning rate on a 10 % carve-out of the probe's training images, keep the best
    lr_grid: List[float] = field(default_factory=list)
    feature_bn: bool = True  # standardise features (BatchNorm, no affine) in front of the linear layer
    momentum: float = 0.9
    weight_decay: float = 0.0
    milestones: List[int] = field(default_factory=lambda: [60, 80])
    gamma: float = 0.1
    aug_copies: int = 0  # cached mode: augmented copies per train image (0: test transform only)
    seeds: int = 1  # repeats of the probe (seed 0..N-1); reports mean +- std
    knn_k: int = 200
    knn_t: float = 0.1
    output_dir: Optional[str] = None  # None (CLI): <run_dir>/linear_<data>_<mode> or runs/linear/...
    overwrite: bool = False  # replace the results.json of an earlier evaluation in output_dir
    # auto: $SSMIX_CACHE/features if set, else <run_dir>/feature_cache (weights a run dir) or
    # <output_dir>/feature_cache; None or "": no feature cache on disk
    cache_dir: Optional[str] = "auto"
    device: str = "auto"  # auto | cpu | cuda | cuda:N


def validate(cfg: LinearEvalConfig) -> LinearEvalConfig:
    """Value checks the type schema cannot express; raises :class:`ConfigError` naming the key."""
    if not cfg.weights:
        raise ConfigError(
            "weights: required; pass weights=<run dir | checkpoint file | backbone.pth | random>"
        )
    if cfg.mode not in MODES:
        raise ConfigError(f"mode: unknown value '{cfg.mode}', expected one of {', '.join(MODES)}")
    positive = {"epochs": cfg.epochs, "batch_size": cfg.batch_size, "seeds": cfg.seeds, "knn_k": cfg.knn_k}
    for key, value in positive.items():
        if value < 1:
            raise ConfigError(f"{key}: expected a positive integer, got {value}")
    if cfg.lr_grid and cfg.mode != "cached":
        raise ConfigError(
            f"lr_grid: picking the learning rate needs mode=cached (got mode={cfg.mode}); run "
            "mode=cached lr_grid=[...] first, then mode=protocol lr=<the pick>"
        )
    if any(not lr > 0 for lr in cfg.lr_grid):
        raise ConfigError(f"lr_grid: expected positive learning rates, got {cfg.lr_grid}")
    if cfg.aug_copies < 0:
        raise ConfigError(f"aug_copies: expected an integer >= 0, got {cfg.aug_copies}")
    if cfg.knn_t <= 0:
        raise ConfigError(f"knn_t: expected a positive temperature, got {cfg.knn_t}")
    if cfg.data.image_size is not None and cfg.data.image_size < 1:
        raise ConfigError(f"data.image_size: expected a positive integer, got {cfg.data.image_size}")
    check_device(cfg.device)
    check_ranges(
        {
            "lr": cfg.lr,
            "gamma": cfg.gamma,
            "data.test_resize": cfg.data.test_resize,
            "data.num_samples": cfg.data.num_samples,
            "data.num_classes": cfg.data.num_classes,
        },
        ">0",
    )
    check_ranges(
        {
            "momentum": cfg.momentum,
            "weight_decay": cfg.weight_decay,
            "data.num_workers": cfg.data.num_workers,
            "data.train_subset": cfg.data.train_subset,
        },
        ">=0",
    )
    cfg.data.num_workers = usable_workers(cfg.data.num_workers)
    return cfg


def build_eval_config(data: Dict[str, Any]) -> LinearEvalConfig:
    """Nested dict -> validated :class:`LinearEvalConfig`."""
    return validate(from_dict(LinearEvalConfig, data, ""))


def load_eval_config(path: Optional[str], overrides: Sequence[str] = ()) -> LinearEvalConfig:
    """Read ``path`` (may be None), apply ``dotted.key=value`` overrides and validate."""
    return build_eval_config(read_config(path, overrides, LINEAR)[1])
