"""SimSiam (Chen & He 2021, arXiv 2011.10566; docs/algorithm.md §2.4).

One encoder (backbone + projector) and a predictor; symmetric negative cosine with stop-gradient
(paper eq. 4): L = D(p_1, sg(z_2)) / 2 + D(p_2, sg(z_1)) / 2, D = -cos. The projector has 3 layers
(ImageNet, lightly ``SimSiamProjectionHead``) or 2 (the paper's CIFAR variant, ``proj_layers: 2``). The
predictor's learning rate is not decayed (paper sec. 4.4 / its ``--fix-pred-lr``): its own optimizer
group with no warm-up and a final lr equal to the base lr.

Mixed views (docs/algorithm.md §2.4 [I], BSIM-style): soft-target cross-entropy between the normalised prediction of
x_mix and the batch's stop-gradient projections, mass lam / 1 - lam on the two sources.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, List, Optional

import torch.nn as nn
from lightly.models.modules.heads import ProjectionHead, SimSiamPredictionHead, SimSiamProjectionHead
from torch import Tensor

from ssmix.config import (Config, ConfigError, MethodConfig, ModelConfig, per_process_batch,
                          register_method_config, scaled_lr)
from ssmix.distributed import world_size
from ssmix.losses.contrastive import soft_target_cross_entropy
from ssmix.methods.base import Method, cat_views, collapse_std, in_batch_mixed_loss, l2n, register_method
from ssmix.mixup import MethodOutput, MixedBatch
from ssmix.models.backbones import build_backbone


@register_method_config("simsiam")
@dataclass
class SimSiamConfig(MethodConfig):
    name: str = "simsiam"
    proj_layers: int = 3  # 3 = ImageNet recipe; 2 = the paper's CIFAR variant
    proj_hidden_dim: int = 2048
    out_dim: int = 2048
    pred_hidden_dim: int = 512  # the predictor's bottleneck (paper sec. 4.3)
    mix_temperature: float = 0.2  # of the mixed-view soft-target cross-entropy (docs/algorithm.md §2.4 [I])


def build_projector(layers: int, in_dim: int, hidden_dim: int, out_dim: int) -> nn.Module:
    """SimSiam projector: BN on every fc, ReLU on the hidden ones, output BN without affine."""
    if layers == 3:
        return SimSiamProjectionHead(in_dim, hidden_dim, out_dim)
    if layers == 2:
        return ProjectionHead([
            (in_dim, hidden_dim, nn.BatchNorm1d(hidden_dim), nn.ReLU()),
            (hidden_dim, out_dim, nn.BatchNorm1d(out_dim, affine=False), None),
        ])
    raise ConfigError(f"method.proj_layers: expected 2 (CIFAR variant) or 3 (ImageNet), got {layers}")


def negative_cosine(prediction: Tensor, target: Tensor) -> Tensor:
    """D(p, z) = -cos(p, z) per row; ``target`` must already be detached (stop-gradient)."""
    return -(l2n(prediction) * l2n(target)).sum(-1)


@register_method("simsiam")
class SimSiam(Method):
    cfg: SimSiamConfig

    def __init__(self, cfg: SimSiamConfig, model: ModelConfig, base_lr: float) -> None:
        """``base_lr``: the run's base learning rate, the predictor's constant lr."""
        super().__init__(cfg)
        self.base_lr = base_lr
        self.temperature, self.embed_dim = cfg.mix_temperature, cfg.out_dim
        self.backbone = build_backbone(model.arch, model.cifar_stem, model.zero_init_residual)
        self.projector = build_projector(cfg.proj_layers, self.backbone.out_dim, cfg.proj_hidden_dim, cfg.out_dim)
        self.predictor = SimSiamPredictionHead(cfg.out_dim, cfg.pred_hidden_dim, cfg.out_dim)

    @classmethod
    def from_config(cls, cfg: Config) -> "SimSiam":
        world = world_size()  # the process group is up before the model is built
        lr = scaled_lr(cfg.train, per_process_batch(cfg.train, world) * world)
        return cls(cfg.method, cfg.model, base_lr=lr)

    def forward(self, views: List[Tensor], map_at: Optional[int] = None, with_targets: bool = True) -> MethodOutput:
        n = views[0].shape[0]
        feats, maps = self.online_features(cat_views(views), map_at)
        z = self.projector(feats)
        p = self.predictor(z).float().unflatten(0, (2, n))
        zt = z.detach().float().unflatten(0, (2, n))  # stop-gradient branch
        loss = 0.5 * (negative_cosine(p[0], zt[1]) + negative_cosine(p[1], zt[0])).mean()
        return MethodOutput(
            losses={"simsiam": loss},
            keys=l2n(zt),
            feature_maps=maps,
            metrics={"collapse_std": collapse_std(z)},
        )

    def mixed_loss(self, mixed: MixedBatch, out: MethodOutput) -> Tensor:
        """-lam log p_a - (1 - lam) log p_b, p = softmax over the batch's stop-grad projections
        (docs/algorithm.md §2.4)."""
        p = l2n(self.predictor(self.projector(self.backbone(mixed.x, start=mixed.start))))
        return in_batch_mixed_loss(soft_target_cross_entropy, p, mixed, out, self.temperature)

    embed_target = Method.frozen_online_embedding  # the stop-gradient branch

    def param_groups(self) -> List[Dict[str, Any]]:
        """Encoder with the run's schedule; predictor at a constant lr (no warm-up, no decay)."""
        lr = self.base_lr
        predictor = {id(p) for p in self.predictor.parameters()}
        encoder = [p for p in self.parameters() if p.requires_grad and id(p) not in predictor]
        return [
            {"name": "encoder", "params": encoder},
            {"name": "predictor", "params": list(self.predictor.parameters()), "lr": lr,
             "warmup_epochs": 0, "min_lr": lr},
        ]
