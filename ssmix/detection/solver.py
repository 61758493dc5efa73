"""detectron2's default solver (docs/detection.md §1.1, §4.2 item 5): SGD momentum 0.9 with weight decay
except on normalisation layers (WEIGHT_DECAY_NORM 0), and WarmupMultiStepLR (linear warmup from 1/1000,
x0.1 at each step), stepped once per iteration."""

from __future__ import annotations

import bisect
from typing import Sequence

import torch
import torch.nn as nn

MOMENTUM = 0.9
GAMMA = 0.1
WARMUP_FACTOR = 1e-3
NORM_TYPES = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm, nn.GroupNorm, nn.LayerNorm)


def build_optimizer(model: nn.Module, base_lr: float, weight_decay: float) -> torch.optim.SGD:
    """Two groups: parameters of normalisation layers (no weight decay) and everything else."""
    norm_params, other_params, seen = [], [], set()
    for module in model.modules():
        for param in module.parameters(recurse=False):
            if not param.requires_grad or id(param) in seen:
                continue
            seen.add(id(param))
            (norm_params if isinstance(module, NORM_TYPES) else other_params).append(param)
    groups = [
        {"params": other_params, "weight_decay": weight_decay},
        {"params": norm_params, "weight_decay": 0.0},
    ]
    return torch.optim.SGD(groups, lr=base_lr, momentum=MOMENTUM)


def lr_factor(iteration: int, steps: Sequence[int], warmup_iters: int) -> float:
    """Multiplier of the base LR at ``iteration``: ``GAMMA ** #steps passed``, times the linear warmup
    ``WARMUP_FACTOR * (1 - a) + a`` with ``a = iteration / warmup_iters`` while ``iteration < warmup_iters``."""
    factor = GAMMA ** bisect.bisect_right(list(steps), iteration)
    if iteration < warmup_iters:
        alpha = iteration / warmup_iters
        factor *= WARMUP_FACTOR * (1.0 - alpha) + alpha
    return factor


def build_scheduler(
    optimizer: torch.optim.Optimizer, steps: Sequence[int], warmup_iters: int
) -> torch.optim.lr_scheduler.LambdaLR:
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda it: lr_factor(it, steps, warmup_iters))
