"""The cross-view mixup pipeline shared by every method and every mixer (docs/algorithm.md §2.1, §2.3, §2.4, §8).

Per step: draw a partner permutation pi with no fixed points; the mixer builds x_mix(i) from a source
of sample i and one of sample pi(i); the method trains its online branch on x_mix toward
lam x (target of i's other view) + (1 - lam) x (target of pi(i)'s other view).

- ``cross_view: true`` (default, the reference code): view 1 of i with view 2 of pi(i); targets view 2
  of i and view 1 of pi(i).
- ``cross_view: false`` (the paper's Fig. 8 reading): view 1 of both; targets view 2 of both.

Mixers that need labels (Inter-Intra, SAMix-C) get them from the dataset or from an ODC memory that
this pipeline owns and updates with the view-1 target embeddings after reading the labels (docs/algorithm.md §4.2).
"""
from __future__ import annotations

import dataclasses
from typing import Callable, Dict, List, Optional, Tuple

import torch
import torch.nn as nn
from torch import Tensor

from ssmix.config import LabelledMixConfig, MixConfig
from ssmix.methods.base import Method, MethodOutput, MixedBatch
from ssmix.mixers import build_mixer
from ssmix.mixers.base import MixContext, MixResult, derangement, mask_statistics


class MixPipeline(nn.Module):
    def __init__(self, cfg: MixConfig, num_samples: int, num_classes: int, embed_dim: int,
                 feature_channels: int) -> None:
        super().__init__()
        # Widths a mixer may declare as 0 (= automatic) come from the backbone and the method.
        auto = {"feature_channels": feature_channels, "embed_dim": embed_dim}
        cfg = dataclasses.replace(cfg, **{k: v for k, v in auto.items() if getattr(cfg, k, None) == 0})
        self.cfg = cfg
        self.mixer = build_mixer(cfg)
        self.num_classes = num_classes
        self.odc = None
        if self.mixer.needs_labels:
            assert isinstance(cfg, LabelledMixConfig)
            if cfg.labels == "odc":
                from ssmix.clustering import ODCMemory

                self.odc = ODCMemory(num_samples, embed_dim, cfg.odc)
            elif cfg.labels != "dataset":
                raise ValueError(f"mix.labels: expected 'odc' or 'dataset', got '{cfg.labels}'")

    @property
    def needs_feature_maps(self) -> Optional[int]:
        return self.mixer.needs_feature_maps

    def on_train_start(self, extract: Callable[[], Tuple[Tensor, Tensor]]) -> None:
        """Initial clustering on the randomly initialised network (docs/algorithm.md §5.2), then the mixer's hook."""
        if self.odc is not None and not bool(self.odc.initialized):
            embeddings, _ = extract()
            self.odc.initialize(embeddings, seed=0)
        self.mixer.on_train_start(extract)

    def _labels(self, labels: Tensor, index: Tensor):
        if not self.mixer.needs_labels:
            return None, 0, None
        if self.odc is None:
            if bool((labels < 0).any()):
                raise ValueError("mix.labels=dataset needs a labelled split; this batch has unlabelled images")
            return labels, self.num_classes, None
        lab = self.odc.labels_of(index.to(self.odc.labels.device)).to(labels.device)
        return lab, self.odc.cfg.num_clusters, self.odc.class_weights().to(labels.device)

    def context(self, method: Method, views: List[Tensor], labels: Tensor, index: Tensor, out: MethodOutput,
                step: int, total_steps: int) -> MixContext:
        n = views[0].shape[0]
        view_b = 1 if self.cfg.cross_view else 0
        lab, num_classes, weights = self._labels(labels, index)
        return MixContext(
            views=views[:2], view_a=0, view_b=view_b, perm=derangement(n, views[0].device),
            keys=out.keys, negatives=out.negatives, temperature=method.temperature,
            embed_target=method.embed_target, online_prefix=method.online_prefix,
            feature_maps=out.feature_maps, labels=lab, num_classes=num_classes, class_weights=weights,
            index=index, step=step, total_steps=total_steps,
        )

    def mix(self, ctx: MixContext) -> Tuple[MixResult, MixedBatch]:
        """Mixed inputs and their targets: target of source a is its other view (docs/algorithm.md §2.3)."""
        res = self.mixer(ctx.views[ctx.view_a], ctx.views[ctx.view_b][ctx.perm], ctx)
        rows = torch.arange(ctx.perm.shape[0], device=ctx.perm.device)
        mixed = MixedBatch(x=res.x, lam=res.lam, view_a=1 - ctx.view_a, index_a=rows, view_b=1 - ctx.view_b,
                           index_b=ctx.perm, start=res.start, mask=res.mask)
        return res, mixed

    def forward(self, method: Method, views: List[Tensor], labels: Tensor, index: Tensor, out: MethodOutput,
                step: int, total_steps: int) -> Tuple[Dict[str, Tensor], Dict[str, Tensor | float]]:
        ctx = self.context(method, views, labels, index, out, step, total_steps)
        _, mixed = self.mix(ctx)
        losses = {"mix": self.cfg.weight * method.mixed_loss(mixed, out)}
        losses.update(self.mixer.aux_losses(ctx))
        metrics: Dict[str, Tensor | float] = {"mix_lam": mixed.lam.mean().detach(), **ctx.metrics}
        if mixed.mask is not None:  # the encoder's (bb) masks; SAMix adds its own (mb) as mixer_mask_*
            metrics.update(mask_statistics(mixed.mask, "mask_"))
        if self.odc is not None:  # labels were read above, before this update (docs/algorithm.md §4.2 item 6)
            metrics.update(self.odc.update(index.to(self.odc.labels.device), out.keys[0], step))
        return losses, metrics
