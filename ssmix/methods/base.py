"""The contract every SSL method implements.

A training step, as the engine drives it (docs/algorithm.md §2.1):

1. ``method.on_step_start(step, total_steps, steps_per_epoch)``: EMA/momentum updates happen *first*;
   the step's position in the run comes from the engine (a method never recomputes the schedule).
2. ``out = method(views, map_at)``: a :class:`~ssmix.mixup.MethodOutput`, the method's own losses on
   the un-mixed views plus what mixing needs: stop-gradient target embeddings of views 1 and 2
   (``out.keys``; view 2's alone may do when :attr:`Method.step_mixes` is false), optional extra
   negatives (``out.negatives``, e.g. the MoCo queue read once), method-specific soft targets
   (``out.targets``, e.g. SwAV codes) and, when asked, target-branch feature maps at trunk position
   ``map_at`` (``out.feature_maps``, read by the SAMix Mixer).
3. The step mixes (:mod:`ssmix.mixup`: the contract with the mixers) and calls
   ``method.mixed_loss(mixed, out)`` on a :class:`~ssmix.mixup.MixedBatch`; the SAMix Mixer also calls
   ``method.embed_target(x_mix)``.
4. ``method.on_step_end(out)``: enqueue keys (once per step, after every loss term is formed).

A method knows nothing about data loading, logging, the optimizer or which mixer it gets: it is built
from its own ``method.*`` config and the backbone's (``model.*``) by :meth:`Method.from_config`; the base
class builds the online trunk ``backbone``. Per-group optimizer options are keys of its
:meth:`Method.param_groups` that ``ssmix.engine.optim`` reads (e.g. SimSiam's ``fixed_lr`` predictor).
"""

from __future__ import annotations

import copy
from typing import Any, Callable, Dict, List, Optional, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F
from lightly.models.utils import deactivate_requires_grad, update_momentum
from torch import Tensor

from ssmix.config import Config, MethodConfig, ModelConfig, registrar
from ssmix.losses.contrastive import soft_target_cross_entropy
from ssmix.mixup import MethodOutput, MixedBatch
from ssmix.models.backbones import ResNetTrunk, build_backbone

METHODS: Dict[str, type] = {}


register_method = registrar(METHODS)  # ``@register_method("name")``: buildable from ``method.name``


class Method(nn.Module):
    """Base class: builds the online trunk ``backbone``. Subclasses set ``projector``, ``temperature``,
    ``embed_dim`` and implement :meth:`forward`, :meth:`mixed_loss` and :meth:`embed_target`."""

    backbone: ResNetTrunk
    projector: nn.Module  # the online projection head (read by the helpers below)
    temperature: float = 0.2  # of the instance-level mixer losses on ``keys``
    embed_dim: int  # width of ``keys`` and of ``embed_target``
    #: (online, target) module pairs EMA-updated by :meth:`on_step_start`
    momentum_pairs: List[Tuple[nn.Module, nn.Module]]
    #: under LARS, biases and normalisation parameters get neither weight decay nor LARS adaptation
    #: (SimCLR's reference code, BYOL sec. 3.3; ``ssmix.engine.optim`` applies it)
    lars_exclude_bias_and_norm: bool = False
    #: normalises its keys with shuffle-BN across ranks (MoCo v2), which SyncBatchNorm would undo
    uses_shuffle_bn: bool = False
    #: whether the step mixes, and so reads ``out.keys`` of both views (the Pretrainer sets it); a method
    #: may compute less when it does not (MoCo v2's one-directional loss needs view 2's keys only)
    step_mixes: bool = True

    def __init__(self, cfg: MethodConfig, model: ModelConfig, bn_splits: int = 1) -> None:
        """``cfg``: this method's own ``method.*`` section; ``model``: the backbone's, from which the online
        trunk ``backbone`` is built first (before any head: the seeded initialisation depends on the
        order); ``bn_splits``: its split-BN emulation of shuffle-BN (MoCo v2 on one device)."""
        super().__init__()
        self.cfg = cfg
        self.momentum_pairs = []
        self.backbone = build_backbone(model.arch, model.cifar_stem, model.zero_init_residual, bn_splits)

    @classmethod
    def from_config(cls, cfg: Config) -> "Method":
        """Build from a run's config: the method's own section and the backbone's."""
        return cls(cfg.method, cfg.model)

    # -- the step ---------------------------------------------------------------------------
    def on_step_start(self, step: int, total_steps: int, steps_per_epoch: int) -> None:
        """Called before the forward pass of every step (momentum updates go here): step ``step`` (from
        0) of ``total_steps``, epochs of ``steps_per_epoch`` steps (epoch = step // steps_per_epoch)."""

    def forward(self, views: List[Tensor], map_at: Optional[int] = None) -> MethodOutput:
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
    def embed_mixed(self, mixed: MixedBatch, head: Optional[nn.Module] = None) -> Tensor:
        """L2-normalised online embedding of the mixed inputs (docs/algorithm.md §2.4): the trunk from
        ``mixed.start`` (0 for images, the ManifoldMix position for hidden maps), the projector and,
        where given, ``head`` (a predictor)."""
        z = self.projector(self.backbone(mixed.x, start=mixed.start))
        return l2n(z if head is None else head(z))

    def predictor_mixed_loss(self, mixed: MixedBatch, out: MethodOutput) -> Tensor:
        """:meth:`mixed_loss` of a method with a ``predictor`` (BYOL, SimSiam; docs/algorithm.md §2.4 [I],
        BSIM-style): -lam log p_a - (1 - lam) log p_b, p = softmax over the batch's targets ``out.keys`` of
        the normalised prediction of x_mix."""
        p = self.embed_mixed(mixed, head=self.predictor)
        return in_batch_mixed_loss(soft_target_cross_entropy, p, mixed, out, self.temperature)

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
        min_lr) override the train config for that group, ``fixed_lr: True`` keeps its lr constant (no
        warm-up, no decay) and ``lars: False`` steps it by SGD under LARS (``ssmix.engine.optim``)."""
        return [{"name": "encoder", "params": [p for p in self.parameters() if p.requires_grad]}]

    def target_trunk(self) -> ResNetTrunk:
        """The trunk of the target branch (momentum / EMA encoder where there is one), which feeds the
        SAMix Mixer and is exported with it for SAMix-P."""
        return getattr(self, "backbone_m", self.backbone)

    def export_trunk(self) -> ResNetTrunk:
        """The trunk whose weights are exported as ``backbone.pth`` (the online encoder)."""
        return self.backbone


def features_and_maps(
    trunk: ResNetTrunk, x: Tensor, map_at: Optional[int]
) -> Tuple[Tensor, Optional[Tensor]]:
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
        raise ValueError(
            "expected at least two views of equal shape (data.aug.kind makes the views); got "
            f"shapes {[tuple(v.shape) for v in views]}"
        )
    return torch.cat(views[:2])


def in_batch_mixed_loss(
    criterion: Callable[..., Tensor], z: Tensor, mixed: MixedBatch, out: MethodOutput, temperature: float
) -> Tensor:
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
