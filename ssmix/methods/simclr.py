"""SimCLR (Chen et al. 2020, arXiv 2002.05709; spec 2.4).

Both views go through one encoder (one concatenated forward); NT-Xent over the 2N embeddings with
in-batch negatives, gathered with gradient across ranks under DDP (lightly ``NTXentLoss``). Mixed views
(spec 2.4): lam NT-Xent(z_m, z_i^(2)) + (1 - lam) NT-Xent(z_m, z_j^(1)) against the stop-gradient
embeddings of the batch, negatives the other 2N - 2.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, List, Optional

import torch
import torch.nn as nn
from lightly.loss import NTXentLoss
from lightly.models.modules import SimCLRProjectionHead
from lightly.models.utils import get_weight_decay_parameters
from torch import Tensor

from ssmix.config import Config, MethodConfig, register_method_config
from ssmix.losses.contrastive import mixup_info_nce_in_batch
from ssmix.methods.base import (
    Method,
    MethodOutput,
    MixedBatch,
    collapse_std,
    frozen_call,
    l2n,
    register_method,
)
from ssmix.models.backbones import build_backbone


@register_method_config("simclr")
@dataclass
class SimCLRConfig(MethodConfig):
    name: str = "simclr"
    proj_hidden_dim: int = 0  # 0 = the backbone's output width (512 for R18, 2048 for R50)
    out_dim: int = 128
    temperature: float = 0.5  # SimCLR CIFAR recipe; 0.1 at ImageNet scale (configs say which)


def cat_views(views: List[Tensor]) -> Tensor:
    """Views 1 and 2 as one batch (one forward: faster, and BN normalises both views together)."""
    if len(views) < 2 or views[0].shape != views[1].shape:
        raise ValueError("expected at least two views of equal shape (data.aug.kind makes the views); got "
                         f"shapes {[tuple(v.shape) for v in views]}")
    return torch.cat(views[:2])


def lars_param_groups(method: nn.Module) -> List[Dict[str, Any]]:
    """Trainable parameters in two groups: biases and normalisation parameters get neither weight decay
    nor LARS adaptation (as the SimCLR reference code and BYOL sec. 3.3; lightly's LARS skips the
    adaptation of a group whose ``weight_decay`` is 0)."""
    decay, no_decay = get_weight_decay_parameters([method])
    return [
        {"name": "encoder", "params": [p for p in decay if p.requires_grad]},
        {"name": "encoder_no_decay", "params": [p for p in no_decay if p.requires_grad], "weight_decay": 0.0},
    ]


@register_method("simclr")
class SimCLR(Method):
    def __init__(self, cfg: Config) -> None:
        super().__init__(cfg)
        mc: SimCLRConfig = cfg.method
        self.temperature, self.embed_dim = mc.temperature, mc.out_dim
        self.backbone = build_backbone(cfg.model.arch, cfg.model.cifar_stem, cfg.model.zero_init_residual)
        width = self.backbone.out_dim
        self.projector = SimCLRProjectionHead(width, mc.proj_hidden_dim or width, mc.out_dim)
        self.criterion = NTXentLoss(temperature=mc.temperature, gather_distributed=True)

    def forward(self, views: List[Tensor], map_at: Optional[int] = None) -> MethodOutput:
        n = views[0].shape[0]
        x = cat_views(views)
        if map_at is None:
            feats, maps = self.backbone(x), None
        else:  # no target network: the online pass's maps, detached (no extra forward)
            feats, maps = self.backbone.forward_with_map(x, map_at)
            maps = maps.detach().unflatten(0, (2, n))
        z = self.projector(feats).float()
        loss = self.criterion(z[:n], z[n:])
        return MethodOutput(
            losses={"simclr": loss},
            keys=l2n(z).detach().unflatten(0, (2, n)),
            feature_maps=maps,
            metrics={"collapse_std": collapse_std(z)},
        )

    def mixed_loss(self, mixed: MixedBatch, out: MethodOutput) -> Tensor:
        """lam NT-Xent(z_m, k_a) + (1 - lam) NT-Xent(z_m, k_b), in-batch negatives (spec 2.4)."""
        z = l2n(self.projector(self.backbone(mixed.x, start=mixed.start)))
        index_a, index_b = mixed.flat_index(out.keys.shape[1])
        return mixup_info_nce_in_batch(z, out.keys.flatten(0, 1), index_a, index_b, mixed.lam,
                                       self.temperature).mean()

    def embed_target(self, x: Tensor) -> Tensor:
        # No target network: the online encoder with its parameters detached (gradient reaches x only).
        return l2n(frozen_call(self.projector, frozen_call(self.backbone, x)))

    def param_groups(self) -> List[Dict[str, Any]]:
        if self.cfg.train.optimizer == "lars":
            return lars_param_groups(self)
        return super().param_groups()

