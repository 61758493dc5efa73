"""Precise BN (docs/detection.md §4.2 item 4): before evaluation, recompute every BatchNorm's running
statistics as the plain average over ``num_iters`` training-mode forward passes, without gradients.

A detection model's training-mode forward needs targets (and returns losses), so this takes an iterator
of ``(images, targets)`` batches instead of using torch.optim.swa_utils.update_bn.
"""

from __future__ import annotations

from typing import Iterator, List, Tuple

import torch
import torch.nn as nn

BN_TYPES = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm)


@torch.no_grad()
def update_bn_stats(model: nn.Module, batches: Iterator[Tuple[List, List]], num_iters: int) -> int:
    """Reset BN running stats, accumulate a cumulative average (momentum None) over ``num_iters`` batches,
    restore momenta and the train/eval mode. Returns the number of BN layers updated."""
    layers = [m for m in model.modules() if isinstance(m, BN_TYPES) and m.track_running_stats]
    if num_iters <= 0 or not layers:
        return 0
    momenta = [layer.momentum for layer in layers]
    for layer in layers:
        layer.reset_running_stats()
        layer.momentum = None
    was_training = model.training
    model.train()
    try:
        for _ in range(num_iters):
            images, targets = next(batches)
            model(images, targets)
    finally:
        for layer, momentum in zip(layers, momenta):
            layer.momentum = momentum
        model.train(was_training)
    return len(layers)
