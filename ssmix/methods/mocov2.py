"""MoCo v2 (Chen et al. 2020, arXiv 2003.04297; docs/algorithm.md §2.1 and §6.2).

Query from view 1 through the online encoder, keys of both views through the momentum encoder with
shuffle-BN (real cross-rank shuffle under DDP; lightly's SplitBatchNorm emulation on one device),
InfoNCE against a persistent queue read once per step; the view-2 keys are enqueued once per step.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import List, Optional

import torch
from lightly.models.modules import MoCoProjectionHead
from lightly.models.utils import batch_shuffle, batch_unshuffle
from torch import Tensor

from ssmix.config import MethodConfig, ModelConfig, register_method_config
from ssmix.distributed import is_distributed, world_size
from ssmix.losses.contrastive import info_nce, mixup_info_nce
from ssmix.losses.queue import KeyQueue
from ssmix.methods.base import Method, collapse_std, l2n, register_method
from ssmix.mixup import MethodOutput, MixedBatch


@register_method_config("mocov2")
@dataclass
class MoCoV2Config(MethodConfig):
    name: str = "mocov2"
    proj_hidden_dim: int = 0  # 0 = the backbone's output width (512 for R18, 2048 for R50)
    out_dim: int = 128
    temperature: float = 0.2
    momentum: float = 0.999
    queue_size: int = 16384
    bn_splits: int = 8  # single-device shuffle-BN emulation; 1 = plain BN (used under DDP)
    proj_bn: bool = False  # BatchNorm in the projector (MoCo v3); spreads a random encoder's embeddings
    symmetric: bool = False  # also query from view 2 against view-1 keys (loss averaged), as MoCo v3


@register_method("mocov2")
class MoCoV2(Method):
    cfg: MoCoV2Config
    uses_shuffle_bn = True

    def __init__(self, cfg: MoCoV2Config, model: ModelConfig) -> None:
        super().__init__(cfg, model, bn_splits=1 if is_distributed() else cfg.bn_splits)
        self.temperature, self.embed_dim = cfg.temperature, cfg.out_dim
        width = self.backbone.out_dim
        self.projector = MoCoProjectionHead(
            width, cfg.proj_hidden_dim or width, cfg.out_dim, batch_norm=cfg.proj_bn
        )
        self.build_momentum_branch()
        self.queue = KeyQueue(cfg.queue_size, cfg.out_dim)

    # -- step -----------------------------------------------------------------------------
    def on_step_start(self, step: int, total_steps: int, steps_per_epoch: int) -> None:
        # docs/algorithm.md §2.1 step 3.1: the EMA update comes first, so keys use the updated encoder.
        self.momentum_update(self.cfg.momentum)

    @torch.no_grad()
    def _keys(self, x: Tensor, map_at: Optional[int]):
        """Momentum keys (and optional maps) of ``x`` with shuffle-BN."""
        x, shuffle = batch_shuffle(x, distributed=is_distributed())
        feats, maps = self.momentum_features(x, map_at)
        if maps is not None:
            maps = batch_unshuffle(maps, shuffle, distributed=is_distributed())
        keys = l2n(self.projector_m(feats))
        return batch_unshuffle(keys, shuffle, distributed=is_distributed()), maps

    def forward(self, views: List[Tensor], map_at: Optional[int] = None) -> MethodOutput:
        x1, x2 = views[0], views[1]
        n = x1.shape[0]
        self.queue.check_batch(n * world_size())
        # Plain MoCo v2 needs view 2's keys only (shuffle-BN over N, as the original); a mixing step
        # also needs view 1's (docs/algorithm.md §2.1 step 3.3: both views in one shuffled pass).
        symmetric = self.cfg.symmetric
        both = self.step_mixes or map_at is not None or symmetric
        keys, maps = self._keys(torch.cat([x1, x2]) if both else x2, map_at)
        keys = keys.view(-1, n, keys.shape[-1])
        negatives = self.queue.snapshot()  # read once per step
        if symmetric:  # one online pass over both views; each view's query against the other's key
            q = l2n(self.projector(self.backbone(torch.cat([x1, x2]))))
            loss = info_nce(q, torch.cat([keys[1], keys[0]]), negatives, self.temperature).mean()
        else:  # docs/algorithm.md §2.1 step 4: one-directional, query from view 1, positive key from view 2
            q = l2n(self.projector(self.backbone(x1)))
            loss = info_nce(q, keys[-1], negatives, self.temperature).mean()
        return MethodOutput(
            losses={"moco": loss},
            keys=keys,
            negatives=negatives,
            feature_maps=None if maps is None else maps.view(2, n, *maps.shape[1:]),
            metrics={"collapse_std": collapse_std(q)},
        )

    def mixed_loss(self, mixed: MixedBatch, out: MethodOutput) -> Tensor:
        """L_bb = lam l^NCE(z_m, k_a) + (1 - lam) l^NCE(z_m, k_b), queue negatives (docs/algorithm.md §4.3)."""
        z = self.embed_mixed(mixed)
        key_a, key_b = mixed.targets(out.keys)
        return mixup_info_nce(z, key_a, key_b, mixed.lam, out.negatives, self.temperature).mean()

    def embed_target(self, x: Tensor) -> Tensor:
        # The momentum branch has requires_grad=False: gradient reaches the input only.
        return l2n(self.projector_m(self.backbone_m(x)))

    def on_step_end(self, out: MethodOutput) -> None:
        self.queue.enqueue(out.keys[-1])  # docs/algorithm.md §2.1 step 10: the view-2 keys, once per step
