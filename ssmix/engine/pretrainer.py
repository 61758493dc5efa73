"""The model a pre-training run trains and checkpoints: an SSL method plus an optional mix pipeline."""
from __future__ import annotations

from typing import Any, Callable, Dict, List, Tuple

import torch.nn as nn
from torch import Tensor

from ssmix.config import Config
from ssmix.methods import build_method
from ssmix.mixers.pipeline import MixPipeline


class Pretrainer(nn.Module):
    """``method`` (always) and ``pipeline`` (when ``mix.type`` is not ``none``); one training step."""

    def __init__(self, cfg: Config, num_samples: int, num_classes: int) -> None:
        super().__init__()
        self.method = build_method(cfg)
        self.pipeline = None
        if cfg.mix.type != "none":
            self.pipeline = MixPipeline(cfg.mix, num_samples, num_classes, self.method.embed_dim,
                                        self.method.backbone.stage_channels[3])

    def param_groups(self) -> List[Dict[str, Any]]:
        groups = self.method.param_groups()
        if self.pipeline is not None:
            groups += self.pipeline.mixer.param_groups()
        return [g for g in groups if g["params"]]

    def on_train_start(self, extract: Callable[[], Tuple[Tensor, Tensor]]) -> None:
        if self.pipeline is not None:
            self.pipeline.on_train_start(extract)

    def training_step(self, views: List[Tensor], labels: Tensor, index: Tensor, step: int, total_steps: int
                      ) -> Tuple[Dict[str, Tensor], Dict[str, Tensor | float]]:
        """Named losses (to be summed) and metrics (0-dim tensors or constants) of one step
        (docs/algorithm.md §2.1 order)."""
        self.method.on_step_start(step, total_steps)
        map_at = self.pipeline.needs_feature_maps if self.pipeline is not None else None
        out = self.method(views, map_at=map_at, with_targets=self.pipeline is not None)
        losses, metrics = dict(out.losses), dict(out.metrics)
        if self.pipeline is not None:
            mix_losses, mix_metrics = self.pipeline(self.method, views, labels, index, out, step, total_steps)
            losses.update(mix_losses)
            metrics.update(mix_metrics)
        self.method.on_step_end(out)
        return losses, metrics

    def forward(self, views: List[Tensor], labels: Tensor, index: Tensor, step: int, total_steps: int
                ) -> Tuple[Dict[str, Tensor], Dict[str, Tensor | float]]:
        """The training step: DistributedDataParallel wraps it whole, as one graph."""
        return self.training_step(views, labels, index, step, total_steps)
