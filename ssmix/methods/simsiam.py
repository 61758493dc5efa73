"""SimSiam (Chen & He 2021, arXiv 2011.10566; docs/algorithm.md §2.4).

One encoder (backbone + projector) and a predictor; symmetric negative cosine with stop-gradient
(paper eq. 4): L = D(p_1, sg(z_2)) / 2 + D(p_2, sg(z_1)) / 2, D = -cos. The projector has 3 layers
(ImageNet, lightly ``SimSiamProjectionHead``) or 2 (the paper's CIFAR variant, ``proj_layers: 2``). The
predictor's learning rate is not decayed (paper sec. 4.4 / its ``--fix-pred-lr``): its own optimizer
group with ``fixed_lr``, which ``ssmix.engine.optim`` keeps at the run's base lr (no warm-up, no decay).

Mixed views (docs/algorithm.md §2.4 [I], BSIM-style): soft-target cross-entropy between the normalised prediction of
x_mix and the batch's stop-gradient projections, mass lam / 1 - lam on the two sources.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, List, Optional

import torch.nn as nn
from lightly.models.modules.heads import ProjectionHead, SimSiamPredictionHead, SimSiamProjectionHead
from torch import Tensor

from ssmix.config import ConfigError, MethodConfig, ModelConfig, register_method_config
from ssmix.methods.base import Method, cat_views, collapse_std, l2n, register_method
from ssmix.mixup import MethodOutput


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
        return ProjectionHead(
            [
                (in_dim, hidden_dim, nn.BatchNorm1d(hidden_dim), nn.ReLU()),
                (hidden_dim, out_dim, nn.BatchNorm1d(out_dim, affine=False), None),
            ]
        )
    raise ConfigError(f"method.proj_layers: expected 2 (CIFAR variant) or 3 (ImageNet), got {layers}")


def negative_cosine(prediction: Tensor, target: Tensor) -> Tensor:
    """D(p, z) = -cos(p, z) per row; ``target`` must already be detached (stop-gradient)."""
    return -(l2n(prediction) * l2n(target)).sum(-1)


@register_method("simsiam")
class SimSiam(Method):
    cfg: SimSiamConfig

    def __init__(self, cfg: SimSiamConfig, model: ModelConfig) -> None:
        super().__init__(cfg, model)
        self.temperature, self.embed_dim = cfg.mix_temperature, cfg.out_dim
        self.projector = build_projector(
            cfg.proj_layers, self.backbone.out_dim, cfg.proj_hidden_dim, cfg.out_dim
        )
        self.predictor = SimSiamPredictionHead(cfg.out_dim, cfg.pred_hidden_dim, cfg.out_dim)

    def forward(self, views: List[Tensor], map_at: Optional[int] = None) -> MethodOutput:
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

    mixed_loss = Method.predictor_mixed_loss  # p = softmax over the batch's stop-grad projections

    embed_target = Method.frozen_online_embedding  # the stop-gradient branch

    def param_groups(self) -> List[Dict[str, Any]]:
        """Encoder with the run's schedule; predictor at the run's base lr, constant (``fixed_lr``)."""
        predictor = {id(p) for p in self.predictor.parameters()}
        encoder = [p for p in self.parameters() if p.requires_grad and id(p) not in predictor]
        return [
            {"name": "encoder", "params": encoder},
            {"name": "predictor", "params": list(self.predictor.parameters()), "fixed_lr": True},
        ]
