"""Checks of a pre-training config that the type schema cannot express and that would otherwise fail only
once the run has started (a deep torch traceback at step 1, a ValueError at the first k-means, a kNN
monitor after epoch 1). Each raises :class:`~ssmix.errors.ConfigError` naming the key and the fix (issue 24).

:func:`check_config` (value ranges) runs inside :func:`ssmix.config.validate`; :func:`check_runnable`
(values that do not fit each other or the process count) runs first thing in the trainer, before the
output directory is touched; :func:`check_data_fit` once the training set is built (its size known).
"""

from __future__ import annotations

import functools
import os
import sys
from typing import Any, Optional

from ssmix.errors import ConfigError

SEED_MAX = 2**32 - 1  # numpy's seed range


def per_process_batch(cfg: Any, world: int) -> int:
    """The images one process computes per step: ``train.batch_size``, or ``train.global_batch_size`` over
    ``world`` processes (whether it divides is :func:`ssmix.config.per_process_batch`'s check)."""
    t = cfg.train
    return t.batch_size if getattr(t, "global_batch_size", None) is None else t.global_batch_size // world


def _in_range(key: str, value: float, low: float, high: float, low_open: bool = False) -> None:
    if value is None:
        return
    if value < low or value > high or (low_open and value == low):
        bracket = "(" if low_open else "["
        raise ConfigError(f"{key}: expected a value in {bracket}{low:g}, {high:g}], got {value:g}")


def _check_seed(cfg: Any) -> None:
    if not 0 <= cfg.seed <= SEED_MAX:
        raise ConfigError(
            f"seed: expected an integer in [0, {SEED_MAX}] (numpy's seed range), got {cfg.seed}"
        )


def _check_aug(cfg: Any) -> None:
    aug = cfg.data.aug
    _in_range("data.aug.min_scale", aug.min_scale, 0.0, 1.0, low_open=True)
    for name in ("cj_prob", "gray_prob", "blur_prob", "hflip_prob", "rotation_prob"):
        _in_range(f"data.aug.{name}", getattr(aug, name), 0.0, 1.0)
    if aug.cj_strength < 0:
        raise ConfigError(f"data.aug.cj_strength: expected a number >= 0, got {aug.cj_strength:g}")
    mc = aug.multi_crop
    for i, (low, high) in enumerate(zip(mc.min_scales, mc.max_scales)):
        _in_range(f"data.aug.multi_crop.min_scales[{i}]", low, 0.0, 1.0, low_open=True)
        _in_range(f"data.aug.multi_crop.max_scales[{i}]", high, 0.0, 1.0, low_open=True)
        if low > high:
            raise ConfigError(
                f"data.aug.multi_crop: min_scales[{i}]={low:g} is above max_scales[{i}]={high:g}"
            )
    for i, size in enumerate(mc.sizes):
        if size < 1:
            raise ConfigError(f"data.aug.multi_crop.sizes[{i}]: expected a positive crop side, got {size}")


def _check_method_values(cfg: Any) -> None:
    method = cfg.method
    for name in ("temperature", "mix_temperature"):
        value = getattr(method, name, None)
        if value is not None and value <= 0:
            raise ConfigError(
                f"method.{name}: expected a positive temperature (logits are divided by it), got "
                f"{value:g}; MoCo v2 uses 0.2, SimCLR 0.1-0.5"
            )
    if method.name == "mocov2":
        _in_range("method.momentum", method.momentum, 0.0, 1.0)
        if method.bn_splits < 1:
            raise ConfigError(
                f"method.bn_splits: expected an integer >= 1 (1 = plain BatchNorm), got {method.bn_splits}"
            )
    if method.name == "byol" and not 0.0 <= method.base_momentum <= method.final_momentum <= 1.0:
        raise ConfigError(
            "method.base_momentum and method.final_momentum: need 0 <= base <= final <= 1, got "
            f"{method.base_momentum:g} and {method.final_momentum:g}"
        )


def _layer4_side(cfg: Any) -> int:
    """Side of the last stage's feature map: the stem and stages 2-4 halve it (rounding up), the ImageNet
    stem twice (conv1 and max-pool), the CIFAR stem not at all."""
    side = cfg.data.image_size
    for _ in range(3 if cfg.model.cifar_stem else 5):
        side = (side + 1) // 2
    return side


def _check_method(cfg: Any, world: int) -> None:
    method, batch = cfg.method, per_process_batch(cfg, world)
    if batch < 2:
        raise ConfigError(
            f"train.batch_size={batch}: a contrastive step needs at least 2 images per process "
            "(partners and BatchNorm statistics); raise train.batch_size"
        )
    if method.name == "mocov2":
        _check_moco(method, batch, world, _layer4_side(cfg))


def _check_moco(method: Any, batch: int, world: int, side: int) -> None:
    splits = method.bn_splits if world == 1 else 1  # under DDP shuffle-BN is real: plain BN per process
    per_split = batch // splits
    if batch % splits or per_split * side * side < 2:
        need = splits * (-(-2 // (side * side)))
        raise ConfigError(
            f"method.bn_splits={splits} does not fit train.batch_size={batch} (per process): "
            f"BatchNorm needs at least 2 values per channel in each split, and the last stage is "
            f"{side}x{side}; use a batch that is a multiple of {need}, or a smaller method.bn_splits"
        )
    global_batch = batch * world
    if method.queue_size < global_batch or method.queue_size % global_batch:
        raise ConfigError(
            f"method.queue_size={method.queue_size} must be a multiple of the global batch "
            f"{global_batch} ({batch} x {world} process(es)), so that no key is dropped; use e.g. "
            f"{max(global_batch, method.queue_size // global_batch * global_batch)}"
        )


def _check_mix_values(cfg: Any) -> None:
    mix = cfg.mix
    if mix.type != "none" and mix.weight < 0:
        raise ConfigError(f"mix.weight: expected a number >= 0, got {mix.weight:g}")
    labels = getattr(mix, "labels", None)
    if labels is not None and labels not in ("odc", "dataset"):
        raise ConfigError(f"mix.labels: expected 'odc' or 'dataset', got '{labels}'")


def _check_mix(cfg: Any) -> None:
    mix = cfg.mix
    labels = getattr(mix, "labels", None)
    if mix.type == "none" or labels is None:
        return
    unlabelled = cfg.data.name == "folder" or (cfg.data.name == "stl10" and "unlabeled" in cfg.data.split)
    if labels == "dataset" and unlabelled:
        raise ConfigError(
            f"mix.labels=dataset: data.name={cfg.data.name} split {cfg.data.split} has no labels; "
            "use mix.labels=odc (online clustering) or a labelled dataset"
        )
    odc = mix.odc
    if odc.num_clusters < 2:
        raise ConfigError(f"mix.odc.num_clusters: expected at least 2 clusters, got {odc.num_clusters}")
    if cfg.data.name == "synthetic":
        _check_clusters(cfg, cfg.data.num_samples)


def _check_clusters(cfg: Any, num_images: int) -> None:
    mix = cfg.mix
    if getattr(mix, "labels", None) == "odc" and mix.odc.num_clusters > num_images:
        raise ConfigError(
            f"mix.odc.num_clusters={mix.odc.num_clusters} is more than the {num_images} training "
            f"images; lower it to at most {num_images} (a cluster needs members)"
        )


def check_config(cfg: Any) -> None:
    """Value ranges of single keys (part of :func:`ssmix.config.validate`)."""
    _check_seed(cfg)
    _check_aug(cfg)
    _check_method_values(cfg)
    _check_mix_values(cfg)
    if cfg.train.knn_k < 1:
        raise ConfigError(f"train.knn_k: expected a positive number of neighbours, got {cfg.train.knn_k}")


def check_runnable(cfg: Any, world: int) -> None:
    """Values that do not fit each other or the ``world`` processes (the trainer's first step)."""
    _check_method(cfg, world)
    _check_mix(cfg)


def check_data_fit(cfg: Any, num_images: int) -> None:
    """Checks that need the size of the training set."""
    _check_clusters(cfg, num_images)


def knn_bank_warning(key: str, k: int, bank_size: int, where: str) -> Optional[str]:
    """A kNN's ``k`` (config key ``key``) above its bank's size: the vote uses the whole bank; the warning
    that says so, or None. Shared by the online monitor and linear evaluation."""
    if k <= bank_size:
        return None
    return (
        f"{key}={k} is more than the {bank_size} images of the kNN bank ({where}); the vote uses "
        f"k={bank_size} (set {key} <= {bank_size} to silence this)"
    )


def usable_cpus() -> int:
    """The CPUs this process may run on (its affinity mask: what a SLURM or container limit leaves)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def usable_workers(requested: int, key: str = "data.num_workers") -> int:
    """``requested`` DataLoader worker processes, at most :func:`usable_cpus`: more only queue for the same
    cores (torch warns about it at every loader). Workers do not change the batches (each item's
    augmentation is a function of seed, epoch and index), so lowering them changes no result. Says so once."""
    usable = usable_cpus()
    if requested <= usable:
        return requested
    _note_workers(key, requested, usable)
    return usable


@functools.lru_cache(maxsize=None)
def _note_workers(key: str, requested: int, usable: int) -> None:
    print(
        f"[ssmix] {key}: {requested} asked for, but this process may use {usable} CPU(s); using {usable} "
        f"worker(s) (set {key}={usable} to silence this)",
        file=sys.stderr,
    )
