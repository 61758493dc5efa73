"""Config of the embedded detection backend: YAML + ``key=value`` overrides, typed by dataclasses.

Defaults are the MoCo VOC protocol (docs/detection.md §1.1-1.2): Faster R-CNN R50-C4, VOC07+12
trainval -> VOC07 test, 24k iterations at 16 images, LR 0.02, steps 18k/22k, warmup 100.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence

from ssmix.config import ConfigError, check_device, check_ranges, from_dict, read_config
from ssmix.config_checks import usable_workers
from ssmix.shipped import DETECTION

HEADS = ("c4", "fpn")
ARCHS = ("resnet18", "resnet34", "resnet50")
VOC_MIN_SIZES = [480, 512, 544, 576, 608, 640, 672, 704, 736, 768, 800]

# detectron2 RPN top-k defaults per head (docs/detection.md §1.1 for C4; Base-RCNN-FPN for FPN, per level).
RPN_TOPK = {
    "c4": {"pre_train": 12000, "pre_test": 6000, "post_train": 2000, "post_test": 1000},
    "fpn": {"pre_train": 2000, "pre_test": 1000, "post_train": 1000, "post_test": 1000},
}


@dataclass
class ModelSpec:
    """The detector. ``weights`` is the encoder (see :func:`ssmix.detection.weights.load_encoder_state`)."""

    # backbone.pth | run dir | ssmix/torchvision/MoCo checkpoint | null = random
    weights: Optional[str] = None
    # also read weights that pickle objects: runs code from the file, own files only
    trust_pickle: bool = False
    arch: Optional[str] = None  # null: read from the weights (resnet50 without weights)
    head: str = "c4"  # c4 (res5 RoI head, R50 only) | fpn
    mask: bool = False  # Mask R-CNN
    # RPN proposals; null = detectron2's default for the head (C4 12000/6000 -> 2000/1000, FPN per level).
    rpn_pre_nms_topk_train: Optional[int] = None
    rpn_pre_nms_topk_test: Optional[int] = None
    rpn_post_nms_topk_train: Optional[int] = None
    rpn_post_nms_topk_test: Optional[int] = None
    rpn_batch_size_per_image: int = 256
    roi_batch_size_per_image: int = 512
    detections_per_image: int = 100


@dataclass
class DataSpec:
    """Datasets by detectron2's builtin names, read under ``root`` in detectron2's layout."""

    root: Optional[str] = None  # null: $DETECTRON2_DATASETS, else ./datasets
    train: List[str] = field(default_factory=lambda: ["voc_2007_trainval", "voc_2012_trainval"])
    test: str = "voc_2007_test"
    classes: Optional[List[str]] = None  # VOC only; null = the 20 VOC classes (COCO reads its JSON)
    min_size_train: List[int] = field(default_factory=lambda: list(VOC_MIN_SIZES))
    min_size_test: int = 800
    max_size: int = 1333
    num_workers: int = 4


@dataclass
class SolverSpec:
    """Iteration-based SGD (momentum 0.9, no weight decay on norm layers), linear warmup, x0.1 steps."""

    ims_per_batch: int = 16  # total over all processes
    base_lr: float = 0.02
    weight_decay: float = 1e-4
    max_iter: int = 24000
    steps: List[int] = field(default_factory=lambda: [18000, 22000])
    warmup_iters: int = 100
    checkpoint_period: int = 5000


@dataclass
class TestSpec:
    precise_bn_iters: int = 200  # forward passes that recompute BN statistics before evaluation; 0 = off
    eval_period: int = 0  # iterations between evaluations; 0 = only after the last one


@dataclass
class DetectionConfig:
    output_dir: str = "runs/detection"
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda
    trials: int = 1  # independent runs (seeds seed..seed+trials-1), reported as mean +- std
    resume: bool = False  # continue from output_dir/last_checkpoint.pth if present
    overwrite: bool = False  # start afresh in a non-empty output_dir, deleting the old run's outputs
    log_every: int = 20
    model: ModelSpec = field(default_factory=ModelSpec)
    data: DataSpec = field(default_factory=DataSpec)
    solver: SolverSpec = field(default_factory=SolverSpec)
    test: TestSpec = field(default_factory=TestSpec)


def rpn_topk(model: ModelSpec) -> Dict[str, int]:
    """The four RPN top-k values, the head's detectron2 defaults where the config leaves them null."""
    defaults = RPN_TOPK[model.head]
    given = {
        "pre_train": model.rpn_pre_nms_topk_train,
        "pre_test": model.rpn_pre_nms_topk_test,
        "post_train": model.rpn_post_nms_topk_train,
        "post_test": model.rpn_post_nms_topk_test,
    }
    return {k: defaults[k] if v is None else v for k, v in given.items()}


def dataset_root(data: DataSpec) -> str:
    return data.root or os.environ.get("DETECTRON2_DATASETS", "datasets")


def validate(cfg: DetectionConfig) -> DetectionConfig:
    """Check values the types cannot (raises :class:`ConfigError` naming key and fix)."""
    m, d, s = cfg.model, cfg.data, cfg.solver
    check_device(cfg.device)
    check_ranges(
        {
            "log_every": cfg.log_every,
            "solver.checkpoint_period": s.checkpoint_period,
            "data.max_size": d.max_size,
        },
        ">0",
    )
    check_ranges(
        {
            "solver.weight_decay": s.weight_decay,
            "solver.warmup_iters": s.warmup_iters,
            "data.num_workers": d.num_workers,
            "test.precise_bn_iters": cfg.test.precise_bn_iters,
            "test.eval_period": cfg.test.eval_period,
        },
        ">=0",
    )
    d.num_workers = usable_workers(d.num_workers)
    if m.head not in HEADS:
        raise ConfigError(f"model.head: unknown head '{m.head}', expected one of {', '.join(HEADS)}")
    if m.arch is not None and m.arch not in ARCHS:
        raise ConfigError(f"model.arch: unknown backbone '{m.arch}', expected one of {', '.join(ARCHS)}")
    check_head_arch(m.head, m.arch)
    if not d.train:
        raise ConfigError("data.train: at least one training dataset is required")
    if not d.min_size_train or min(d.min_size_train) <= 0 or d.min_size_test <= 0:
        raise ConfigError("data.min_size_train / data.min_size_test: sizes must be positive")
    if s.ims_per_batch <= 0 or s.max_iter <= 0 or s.base_lr <= 0:
        raise ConfigError("solver.ims_per_batch, solver.max_iter and solver.base_lr must be positive")
    if list(s.steps) != sorted(s.steps) or any(step <= 0 for step in s.steps):
        raise ConfigError(f"solver.steps: expected increasing positive iterations, got {s.steps}")
    if cfg.trials < 1:
        raise ConfigError(f"trials: expected >= 1, got {cfg.trials}")
    for key in ("rpn_batch_size_per_image", "roi_batch_size_per_image", "detections_per_image"):
        if getattr(m, key) <= 0:
            raise ConfigError(f"model.{key}: expected a positive integer, got {getattr(m, key)}")
    return cfg


def check_head_arch(head: str, arch: Optional[str]) -> None:
    """The C4 head runs the encoder's res5 on RoIs: it needs a Bottleneck stage (docs/detection.md §1.1)."""
    if head == "c4" and arch is not None and arch != "resnet50":
        raise ConfigError(
            f"model.head=c4 needs a resnet50 encoder (its res5 Bottleneck stage is the RoI head); "
            f"'{arch}' has BasicBlocks: use model.head=fpn for resnet18/resnet34"
        )


def load_detection_config(path: Optional[str], overrides: Sequence[str] = ()) -> DetectionConfig:
    """Read a preset (``_base_`` inheritance as in ssmix configs), apply overrides, validate."""
    return validate(from_dict(DetectionConfig, read_config(path, overrides, DETECTION)[1], ""))
