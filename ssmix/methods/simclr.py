"""SimCLR (Chen et al. 2020, arXiv 2002.05709; docs/algorithm.md §2.4).

Both views go through one encoder (one concatenated forward); NT-Xent over the 2N embeddings with
in-batch negatives, gathered with gradient across ranks under DDP (``losses.contrastive.nt_xent``). Mixed views
(docs/algorithm.md §2.4): lam NT-Xent(z_m, z_i^(2)) + (1 - lam) NT-Xent(z_m, z_j^(1)) against the stop-gradient
embeddings of the batch, negatives the other 2N - 2.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import List, Optional

from lightly.models.modules import SimCLRProjectionHead
from torch import Tensor

from ssmix.config import MethodConfig, ModelConfig, register_method_config
from ssmix.losses.contrastive import mixup_info_nce_in_batch, nt_xent
from ssmix.methods.base import Method, cat_views, collapse_std, in_batch_mixed_loss, l2n, register_method
from ssmix.mixup import MethodOutput, MixedBatch


@register_method_config("simclr")
@dataclass
class SimCLRConfig(MethodConfig):
    name: str = "simclr"
    proj_hidden_dim: int = 0  # 0 = the backbone's output width (512 for R18, 2048 for R50)
    out_dim: int = 128
    temperature: float = 0.5  # SimCLR CIFAR recipe; 0.1 at ImageNet scale (configs say which)


@register_method("simclr")
class SimCLR(Method):
    cfg: SimCLRConfig
    lars_exclude_bias_and_norm = True

    def __init__(self, cfg: SimCLRConfig, model: ModelConfig) -> None:
        super().__init__(cfg, model)
        self.temperature, self.embed_dim = cfg.temperature, cfg.out_dim
        width = self.backbone.out_dim
        self.projector = SimCLRProjectionHead(width, cfg.proj_hidden_dim or width, cfg.out_dim)

    def forward(self, views: List[Tensor], map_at: Optional[int] = None) -> MethodOutput:
        n = views[0].shape[0]
        feats, maps = self.online_features(cat_views(views), map_at)
        z = self.projector(feats).float()
        loss = nt_xent(z[:n], z[n:], self.temperature)
        return MethodOutput(
            losses={"simclr": loss},
            keys=l2n(z).detach().unflatten(0, (2, n)),
            feature_maps=maps,
            metrics={"collapse_std": collapse_std(z)},
        )

    def mixed_loss(self, mixed: MixedBatch, out: MethodOutput) -> Tensor:
        """lam NT-Xent(z_m, k_a) + (1 - lam) NT-Xent(z_m, k_b), in-batch negatives (docs/algorithm.md §2.4)."""
        return in_batch_mixed_loss(
            mixup_info_nce_in_batch, self.embed_mixed(mixed), mixed, out, self.temperature
        )

    embed_target = Method.frozen_online_embedding  # no target network
