"""The contract every SSL method implements.

A training step, as the engine drives it (docs/algorithm.md §2.1):

1. ``method.on_step_start(step, total_steps)``: EMA/momentum updates happen *first*.
2. ``out = method(views, map_at)``: a :class:`~ssmix.mixup.MethodOutput`, the method's own losses on
   the un-mixed views plus what mixing needs: stop-gradient target embeddings of views 1 and 2
   (``out.keys``), optional extra negatives (``out.negatives``, e.g. the MoCo queue read once),
   method-specific soft targets (``out.targets``, e.g. SwAV codes) and, when asked, target-branch
   feature maps at trunk position ``map_at`` (``out.feature_maps``, read by the SAMix Mixer).
3. The step mixes (:mod:`ssmix.mixup`: the contract with the mixers) and calls
   ``method.mixed_loss(mixed, out)`` on a :class:`~ssmix.mixup.MixedBatch`; the SAMix Mixer also calls
   ``method.embed_target(x_mix)``.
4. ``method.on_step_end(out)``: enqueue keys (once per step, after every loss term is formed).

A method knows nothing about data loading, logging, the optimizer or which mixer it gets: it is built
from its own ``method.*`` config, the backbone's (``model.*``) and, where it needs one, an explicit value
(SimSiam's base lr, SwAV's epoch count) by :meth:`Method.from_config`.
"""
from __future__ import annotations

import copy
from typing import Any, Callable, Dict, List, Optional, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F
from lightly.models.utils import deactivate_requires_grad, update_momentum
from torch import Tensor

from ssmix.config import Config, MethodConfig, registrar
from ssmix.mixup import MethodOutput, MixedBatch
from ssmix.models.backbones import ResNetTrunk


METHODS: Dict[str, type] = {}


register_method = registrar(METHODS)  # ``@register_method("name")``: buildable from ``method.name``


class Method(nn.Module):
    """Base class. Subclasses set ``backbone`` (online trunk), ``temperature`` and implement
    :meth:`forward`, :meth:`mixed_loss` and :meth:`embed_target`."""

    backbone: ResNetTrunk
    projector: nn.Module  # the online projection head (read by the helpers below)
    temperature: float = 0.2  # of the instance-level mixer losses on ``keys``
    embed_dim: int  # width of ``keys`` and of ``embed_target``
    #: (online, target) module pairs EMA-updated by :meth:`on_step_start`
    momentum_pairs: List[Tuple[nn.Module, nn.Module]]
    #: under LARS, biases and normalisation parameters get neither weight decay nor LARS adaptation
    #: (SimCLR's reference code, BYOL sec. 3.3; ``ssmix.engine.optim`` applies it)
    lars_exclude_bias_and_norm: bool = False

    def __init__(self, cfg: MethodConfig) -> None:
        super().__init__()
        self.cfg = cfg  # this method's own ``method.*`` section
        self.momentum_pairs = []

    @classmethod
    def from_config(cls, cfg: Config) -> "Method":
        """Build from a run's config: the method's own section and the backbone's."""
        return cls(cfg.method, cfg.model)

    # -- the step ---------------------------------------------------------------------------
    def on_step_start(self, step: int, total_steps: int) -> None:
        """Called before the forward pass of every step (momentum updates go here)."""

    def forward(self, views: List[Tensor], map_at: Optional[int] = None, with_targets: bool = True) -> MethodOutput:
        raise NotImplementedError

    def mixed_loss(self, mixed: MixedBatch, out: MethodOutput) -> Tensor:
        """Loss of the online branch on mixed inputs toward the lambda-mixed targets (scalar)."""
        raise NotImplementedError

    def embed_target(self, x: Tensor) -> Tensor:
        """L2-normalised target-branch embedding of images ``x``, in the space of ``out.keys``.

        Gradient flows to ``x`` only, never into parameters (the SAMix Mixer is trained through it).
        """
        raise NotImplementedError

    def on_step_end(self, out: MethodOutput) -> None:
        """Called once per step after every loss term is formed (enqueue here)."""

    # -- helpers for subclasses --------------------------------------------------------------
    def online_prefix(self, x: Tensor, stop: int) -> Tensor:
        """Online trunk from the image to position ``stop`` (ManifoldMix's hidden maps)."""
        return self.backbone.run(x, 0, stop)

    def online_features(self, x: Tensor, map_at: Optional[int]) -> Tuple[Tensor, Optional[Tensor]]:
        """Pooled online features of the two-view batch ``x`` (2N, ...) and, when ``map_at`` is set, the
        detached maps at that position as (2, N, C, h, w): a method without a target network hands the
        SAMix Mixer its online pass's maps (no extra forward)."""
        feats, maps = features_and_maps(self.backbone, x, map_at)
        return feats, None if maps is None else maps.detach().unflatten(0, (2, x.shape[0] // 2))

    @torch.no_grad()
    def momentum_features(self, x: Tensor, map_at: Optional[int]) -> Tuple[Tensor, Optional[Tensor]]:
        """Pooled features of the momentum trunk ``backbone_m`` and, when ``map_at`` is set, its maps at
        that position (no gradient): one pass feeds the keys and the SAMix Mixer."""
        return features_and_maps(self.backbone_m, x, map_at)

    def frozen_online_embedding(self, x: Tensor) -> Tensor:
        """:meth:`embed_target` of a method without a target network: the online backbone and projector
        with their parameters detached (gradient reaches ``x`` only)."""
        return l2n(frozen_call(self.projector, frozen_call(self.backbone, x)))

    def build_momentum_branch(self) -> None:
        """``backbone_m`` / ``projector_m``: gradient-free copies of the online backbone and projector,
        registered in :attr:`momentum_pairs` for :meth:`momentum_update`."""
        self.backbone_m = copy.deepcopy(self.backbone)
        self.projector_m = copy.deepcopy(self.projector)
        deactivate_requires_grad(self.backbone_m)
        deactivate_requires_grad(self.projector_m)
        self.momentum_pairs = [(self.backbone, self.backbone_m), (self.projector, self.projector_m)]

    @torch.no_grad()
    def momentum_update(self, tau: float) -> None:
        """EMA of every pair in :attr:`momentum_pairs`: target <- tau * target + (1 - tau) * online."""
        for online, target in self.momentum_pairs:
            update_momentum(online, target, tau)

    def param_groups(self) -> List[Dict[str, Any]]:
        """Optimizer groups; keys beyond ``params`` (lr, momentum, weight_decay, warmup_epochs,
        min_lr) override the train config for that group."""
        return [{"name": "encoder", "params": [p for p in self.parameters() if p.requires_grad]}]

    def target_trunk(self) -> ResNetTrunk:
        """The trunk of the target branch (momentum / EMA encoder where there is one), which feeds the
        SAMix Mixer and is exported with it for SAMix-P."""
        return getattr(self, "backbone_m", self.backbone)

    def export_trunk(self) -> ResNetTrunk:
        """The trunk whose weights are exported as ``backbone.pth`` (the online encoder)."""
        return self.backbone


def features_and_maps(trunk: ResNetTrunk, x: Tensor, map_at: Optional[int]) -> Tuple[Tensor, Optional[Tensor]]:
    """``trunk``'s pooled features of ``x`` and, when ``map_at`` is set, its maps at that position."""
    if map_at is None:
        return trunk(x), None
    return trunk.forward_with_map(x, map_at)


def l2n(x: Tensor) -> Tensor:
    return F.normalize(x.float(), dim=-1)


def frozen_call(module: nn.Module, *args: Any, **kwargs: Any) -> Any:
    """Run ``module`` with its parameters detached: gradient reaches the inputs only."""
    params = {name: p.detach() for name, p in module.named_parameters()}
    return torch.func.functional_call(module, params, args, kwargs)


def cat_views(views: List[Tensor]) -> Tensor:
    """Views 1 and 2 as one batch (one forward: faster, and BN normalises both views together)."""
    if len(views) < 2 or views[0].shape != views[1].shape:
        raise ValueError("expected at least two views of equal shape (data.aug.kind makes the views); got "
                         f"shapes {[tuple(v.shape) for v in views]}")
    return torch.cat(views[:2])


def in_batch_mixed_loss(criterion: Callable[..., Tensor], z: Tensor, mixed: MixedBatch, out: MethodOutput,
                        temperature: float) -> Tensor:
    """Mean of ``criterion(z, candidates, index_a, index_b, lam, temperature)`` where the candidates are
    the batch's 2N keys ``out.keys`` and the two sources of each mixed row index into them (docs/algorithm.md §2.4)."""
    index_a, index_b = mixed.target_index(out.keys.shape[1])
    return criterion(z, out.keys.flatten(0, 1), index_a, index_b, mixed.lam, temperature).mean()


def collapse_std(z: Tensor) -> Tensor:
    """Std of L2-normalised embeddings averaged over dimensions; ~1/sqrt(D) when healthy, 0 when
    collapsed (SimSiam paper, sec. 4.1; lightly's ``std_of_l2_normalized``). A 0-dim tensor on
    ``z``'s device: the trainer reads metrics back to the host only at logging steps."""
    from lightly.utils.debug import std_of_l2_normalized

    return std_of_l2_normalized(z.detach().float())
