"""SwAV (Caron et al. 2020, arXiv 2006.09882; docs/algorithm.md §2.4).

Multi-crop: the two high-resolution views (``views[0:2]``) and any number of low-resolution views
(``views[2:]``, ``data.aug.kind: swav``); the backbone runs once per resolution, the projector once on
all crops. Embeddings are L2-normalised and scored against K bias-free prototypes (L2-normalised at the
start of every step). Codes of the two high-resolution views come from Sinkhorn-Knopp (lightly's
``sinkhorn``, gathered across ranks), computed once per step, optionally over a queue of recent
high-resolution embeddings prepended to the batch (filled from ``queue_start_epoch``, used once full).
Swapped prediction (eq. 1-3): every view predicts the codes of each high-resolution view other than
itself. The prototypes are frozen (no gradient) during the first ``freeze_prototypes_epochs`` epochs.

Mixed views (docs/algorithm.md §2.4 [I]): lam CE(c_a, softmax(p_m / t)) + (1 - lam) CE(c_b, softmax(p_m / t)), c the
codes of the sources' other views (``out.targets``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import List, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F
from lightly.loss.swav_loss import sinkhorn
from lightly.models.modules import SwaVProjectionHead
from torch import Tensor

from ssmix.config import ConfigError, MethodConfig, ModelConfig, register_method_config
from ssmix.distributed import is_distributed, rank, world_size
from ssmix.losses.queue import KeyQueue
from ssmix.methods.base import Method, cat_views, collapse_std, l2n, register_method
from ssmix.mixup import MethodOutput, MixedBatch


@register_method_config("swav")
@dataclass
class SwAVConfig(MethodConfig):
    name: str = "swav"
    proj_hidden_dim: int = 2048
    out_dim: int = 128
    num_prototypes: int = 3000
    temperature: float = 0.1
    sinkhorn_iterations: int = 3
    sinkhorn_epsilon: float = 0.05
    freeze_prototypes_epochs: int = 1  # prototypes get no gradient for this many epochs
    queue_size: int = 0  # high-res embeddings kept per high-res view; 0 = no queue
    queue_start_epoch: int = 15


def code_entropy(codes: Tensor) -> Tensor:
    """Mean entropy of the code rows ``(..., K)`` over ln K: 1 = uniform codes, which give the swapped
    prediction no signal (the loss then sits at ln K; a health monitor warns, ``ssmix.engine.health``)."""
    codes = codes.float()
    entropy = -(codes * codes.clamp_min(1e-12).log()).sum(-1).mean()
    return entropy / math.log(codes.shape[-1])


def swapped_prediction_loss(scores: Tensor, codes: Tensor, temperature: float) -> Tensor:
    """SwAV eq. (1)-(3) over multi-crop.

    ``scores`` (V, N, K): prototype scores of every view (high-resolution views first); ``codes``
    (S, N, K): Sinkhorn codes of the S high-resolution views. Mean over the pairs (s, v != s) of
    -1/N sum_n sum_k codes[s, n, k] log softmax(scores[v, n] / t)_k.
    """
    log_p = F.log_softmax(scores.float() / temperature, dim=-1)
    ce = -torch.einsum("snk,vnk->sv", codes.float(), log_p) / scores.shape[1]  # (S, V)
    s, v = codes.shape[0], scores.shape[0]
    keep = ~torch.eye(s, v, dtype=torch.bool, device=ce.device)
    return ce.masked_fill(~keep, 0.0).sum() / (s * v - min(s, v))  # no boolean indexing: no host sync


@register_method("swav")
class SwAV(Method):
    cfg: SwAVConfig

    def __init__(self, cfg: SwAVConfig, model: ModelConfig) -> None:
        if cfg.queue_size < 0 or cfg.num_prototypes < 1:
            raise ConfigError(
                f"method.queue_size must be >= 0 and method.num_prototypes >= 1, got "
                f"{cfg.queue_size} and {cfg.num_prototypes}"
            )
        super().__init__(cfg, model)
        self.temperature, self.embed_dim = cfg.temperature, cfg.out_dim
        self.projector = SwaVProjectionHead(self.backbone.out_dim, cfg.proj_hidden_dim, cfg.out_dim)
        # Bias-free, as the SwAV reference (lightly's SwaVPrototypes has a bias: docs/algorithm.md §12.4 item 9).
        self.prototypes = nn.Linear(cfg.out_dim, cfg.num_prototypes, bias=False)
        self.queues = None
        if cfg.queue_size:  # buffers: saved in checkpoints, so resume is exact
            self.queues = nn.ModuleList(
                [KeyQueue(cfg.queue_size, cfg.out_dim, zero_init=True) for _ in range(2)]
            )
        self.epoch = 0  # the epoch of the frozen-prototype and queue schedules, set by on_step_start

    # -- step -----------------------------------------------------------------------------
    @property
    def prototypes_frozen(self) -> bool:
        return self.epoch < self.cfg.freeze_prototypes_epochs

    @property
    def queue_active(self) -> bool:
        """The queue joins the Sinkhorn input once full; it is filled from ``queue_start_epoch`` on."""
        return (
            self.queues is not None
            and self.epoch >= self.cfg.queue_start_epoch
            and all(q.full for q in self.queues)
        )

    @torch.no_grad()
    def on_step_start(self, step: int, total_steps: int, steps_per_epoch: int) -> None:
        self.epoch = step // steps_per_epoch  # the loader's epochs, as the engine counts them
        w = self.prototypes.weight
        w.copy_(F.normalize(w, dim=1))

    def _prototype_weight(self) -> Tensor:
        # Frozen epochs: detached, so the prototypes get no gradient (and the optimizer skips them).
        w = self.prototypes.weight
        return w.detach() if self.prototypes_frozen else w

    def _embed(self, views: List[Tensor], map_at: Optional[int]):
        """Normalised embeddings (V*N, D) of all views and the (detached) high-res maps at ``map_at``."""
        high, maps = self.online_features(cat_views(views), map_at)
        feats, start = [high], 2
        while start < len(views):  # one backbone pass per run of equal-resolution low-res crops
            stop = start + 1
            while stop < len(views) and views[stop].shape == views[start].shape:
                stop += 1
            feats.append(self.backbone(torch.cat(views[start:stop])))
            start = stop
        return l2n(self.projector(torch.cat(feats))), maps

    @torch.no_grad()
    def _codes(self, high_scores: Tensor) -> Tensor:
        """Sinkhorn codes (2, N, K) of the high-res views, over [queue; batch] when the queue is active."""
        mc = self.cfg
        n, codes = high_scores.shape[1], []
        for v in range(2):
            scores = high_scores[v].float()
            if self.queue_active:
                queued = self.queues[v].snapshot()
                if is_distributed():  # every rank holds the gathered queue: use a disjoint share of it
                    queued = queued[rank() :: world_size()]
                scores = torch.cat([queued @ self.prototypes.weight.detach().float().t(), scores])
            q = sinkhorn(
                scores,
                iterations=mc.sinkhorn_iterations,
                epsilon=mc.sinkhorn_epsilon,
                gather_distributed=True,
            )
            codes.append(q[-n:])
        return torch.stack(codes)

    def forward(self, views: List[Tensor], map_at: Optional[int] = None) -> MethodOutput:
        n = views[0].shape[0]
        if self.queues is not None:
            self.queues[0].check_batch(n * world_size())
        z, maps = self._embed(views, map_at)
        scores = (z @ self._prototype_weight().float().t()).unflatten(0, (len(views), n))  # (V, N, K)
        codes = self._codes(scores[:2].detach())
        loss = swapped_prediction_loss(scores, codes, self.temperature)
        return MethodOutput(
            losses={"swav": loss},
            keys=z[: 2 * n].detach().unflatten(0, (2, n)),
            targets=codes,
            feature_maps=maps,
            metrics={"collapse_std": collapse_std(z[: 2 * n]), "swav_code_entropy": code_entropy(codes)},
        )

    def mixed_loss(self, mixed: MixedBatch, out: MethodOutput) -> Tensor:
        """lam CE(c_a, softmax(p_m / t)) + (1 - lam) CE(c_b, softmax(p_m / t)) (docs/algorithm.md §2.4 [I])."""
        z = self.embed_mixed(mixed)
        log_p = F.log_softmax(z @ self._prototype_weight().float().t() / self.temperature, dim=-1)
        codes_a, codes_b = mixed.targets(out.targets)
        return -(mixed.lam * (codes_a * log_p).sum(-1) + (1 - mixed.lam) * (codes_b * log_p).sum(-1)).mean()

    embed_target = Method.frozen_online_embedding  # no target network

    def on_step_end(self, out: MethodOutput) -> None:
        # The normalised high-res embeddings, once per step, from queue_start_epoch on: the queue
        # starts empty at that epoch (as the reference creates it then) and joins Sinkhorn once full.
        if self.queues is not None and self.epoch >= self.cfg.queue_start_epoch:
            for v, queue in enumerate(self.queues):
                queue.enqueue(out.keys[v])
