"""BYOL (Grill et al. 2020, arXiv 2006.07733; docs/algorithm.md §2.4).

Online network = backbone + projector + predictor; target network = EMA copy of backbone + projector
with tau cosine-scheduled from ``base_momentum`` (0.996) to ``final_momentum`` (1) over the run. The
EMA update runs at the start of every step and tau is a function of the step number, so a resumed
run is exact. Loss (paper eq. 2, symmetrised): 2 - 2 cos(q(z_1), sg(z'_2)) + 2 - 2 cos(q(z_2), sg(z'_1)).
Mixed views (docs/algorithm.md §2.4 [I], BSIM-style): soft-target cross-entropy between the normalised online
prediction of x_mix and the batch's target projections, mass lam / 1 - lam on the two sources.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import List, Optional

import torch
from lightly.models.modules import BYOLPredictionHead, BYOLProjectionHead
from lightly.utils.scheduler import cosine_schedule
from torch import Tensor

from ssmix.config import ConfigError, MethodConfig, ModelConfig, register_method_config
from ssmix.methods.base import Method, cat_views, collapse_std, l2n, register_method
from ssmix.mixup import MethodOutput


@register_method_config("byol")
@dataclass
class BYOLConfig(MethodConfig):
    name: str = "byol"
    proj_hidden_dim: int = 4096
    out_dim: int = 256
    pred_hidden_dim: int = 4096
    base_momentum: float = 0.996  # tau at step 0 (BYOL sec. 3.3)
    final_momentum: float = 1.0  # tau at the last step
    mix_temperature: float = 0.2  # of the mixed-view soft-target cross-entropy (docs/algorithm.md §2.4 [I])


def regression_loss(prediction: Tensor, target: Tensor) -> Tensor:
    """BYOL eq. 2 per row: ||p/|p| - z/|z|||^2 = 2 - 2 cos(p, z); ``target`` must already be detached."""
    return 2 - 2 * (l2n(prediction) * l2n(target)).sum(-1)


@register_method("byol")
class BYOL(Method):
    cfg: BYOLConfig
    lars_exclude_bias_and_norm = True

    def __init__(self, cfg: BYOLConfig, model: ModelConfig) -> None:
        if not 0.0 <= cfg.base_momentum <= cfg.final_momentum <= 1.0:
            raise ConfigError(
                "method.base_momentum and method.final_momentum: need 0 <= base <= final <= 1, "
                f"got {cfg.base_momentum} and {cfg.final_momentum}"
            )
        super().__init__(cfg, model)
        self.temperature, self.embed_dim = cfg.mix_temperature, cfg.out_dim
        self.projector = BYOLProjectionHead(self.backbone.out_dim, cfg.proj_hidden_dim, cfg.out_dim)
        self.predictor = BYOLPredictionHead(cfg.out_dim, cfg.pred_hidden_dim, cfg.out_dim)
        self.build_momentum_branch()
        self.tau = cfg.base_momentum

    def momentum_at(self, step: int, total_steps: int) -> float:
        """tau(step): cosine from base_momentum at step 0 to final_momentum at the last step."""
        mc = self.cfg
        return cosine_schedule(step, total_steps, mc.base_momentum, mc.final_momentum)

    @torch.no_grad()
    def on_step_start(self, step: int, total_steps: int, steps_per_epoch: int) -> None:
        # docs/algorithm.md §2.1 step 3.1: the EMA update comes first, so the targets use the updated network.
        self.tau = self.momentum_at(step, total_steps)
        self.momentum_update(self.tau)

    def forward(self, views: List[Tensor], map_at: Optional[int] = None) -> MethodOutput:
        n = views[0].shape[0]
        x = cat_views(views)
        z = self.projector(self.backbone(x))
        p = self.predictor(z).float().unflatten(0, (2, n))
        feats_m, maps = self.momentum_features(x, map_at)
        with torch.no_grad():
            keys = l2n(self.projector_m(feats_m)).unflatten(0, (2, n))
        loss = (regression_loss(p[0], keys[1]) + regression_loss(p[1], keys[0])).mean()
        return MethodOutput(
            losses={"byol": loss},
            keys=keys,
            feature_maps=None if maps is None else maps.unflatten(0, (2, n)),
            metrics={"collapse_std": collapse_std(z), "tau": self.tau},
        )

    mixed_loss = Method.predictor_mixed_loss  # p = softmax over the batch's target projections

    def embed_target(self, x: Tensor) -> Tensor:
        # The target network has requires_grad=False: gradient reaches the input only.
        return l2n(self.projector_m(self.backbone_m(x)))
