"""The contract every SSL method implements.

A training step, as the engine drives it (docs/algorithm.md §2.1):

1. ``method.on_step_start(step, total_steps)``: EMA/momentum updates happen *first*.
2. ``out = method(views, map_at)``: the method's own losses on the un-mixed views, plus what the mixup
   pipeline needs: stop-gradient target embeddings of views 1 and 2 (``out.keys``), optional extra
   negatives (``out.negatives``, e.g. the MoCo queue read once), method-specific soft targets
   (``out.targets``, e.g. SwAV codes) and, when asked, target-branch feature maps at trunk position
   ``map_at`` (``out.feature_maps``, read by the SAMix Mixer).
3. The mixup pipeline builds a :class:`MixedBatch` and calls ``method.mixed_loss(mixed, out)``; the
   SAMix Mixer also calls ``method.embed_target(x_mix)``.
4. ``method.on_step_end(out)``: enqueue keys (once per step, after every loss term is formed).

A method knows nothing about data loading, logging or which mixer it gets.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F
from lightly.models.utils import deactivate_requires_grad, get_weight_decay_parameters, update_momentum
from torch import Tensor

from ssmix.config import Config, registrar
from ssmix.models.backbones import ResNetTrunk


@dataclass
class MethodOutput:
    """What one forward pass of a method on the un-mixed views produces."""

    losses: Dict[str, Tensor]
    # (2, N, D): L2-normalised target-branch embeddings of views 1 and 2, no grad. Called with
    # ``with_targets=False`` (no mix pipeline) a method may return view 2's alone, (1, N, D).
    keys: Tensor
    negatives: Optional[Tensor] = None  # (K, D) extra negatives (queue snapshot), no grad
    targets: Optional[Tensor] = None  # (2, N, ...) method-specific mixed-view targets (default: keys)
    feature_maps: Optional[Tensor] = None  # (2, N, C, h, w) target-branch maps at `map_at`, no grad
    metrics: Dict[str, Tensor | float] = field(default_factory=dict)  # 0-dim tensors: read at log steps


@dataclass
class MixedBatch:
    """Mixed inputs and their two sources' targets (docs/algorithm.md §2.1 step 8).

    ``x`` enters the online trunk at position ``start`` (0 = images; ManifoldMix uses 1 or 2).
    Row n is trained toward ``lam[n]`` x target(view_a, index_a[n]) + (1 - lam[n]) x
    target(view_b, index_b[n]).
    """

    x: Tensor
    lam: Tensor  # (N,)
    view_a: int
    index_a: Tensor  # (N,)
    view_b: int
    index_b: Tensor  # (N,)
    start: int = 0
    mask: Optional[Tensor] = None  # (N, 1, H, W) weight of source a per pixel, for logging

    def gather(self, per_view: Tensor) -> Tuple[Tensor, Tensor]:
        """Rows of ``per_view`` (2, N, ...) for the two sources: (target_a, target_b)."""
        return per_view[self.view_a][self.index_a], per_view[self.view_b][self.index_b]

    def flat_index(self, batch_size: int) -> Tuple[Tensor, Tensor]:
        """Indices of the two targets into ``per_view.flatten(0, 1)``."""
        return self.view_a * batch_size + self.index_a, self.view_b * batch_size + self.index_b


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

    def __init__(self, cfg: Config) -> None:
        super().__init__()
        self.cfg = cfg
        self.momentum_pairs = []

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
        if map_at is None:
            return self.backbone(x), None
        feats, maps = self.backbone.forward_with_map(x, map_at)
        return feats, maps.detach().unflatten(0, (2, x.shape[0] // 2))

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
    index_a, index_b = mixed.flat_index(out.keys.shape[1])
    return criterion(z, out.keys.flatten(0, 1), index_a, index_b, mixed.lam, temperature).mean()


def lars_param_groups(method: nn.Module) -> List[Dict[str, Any]]:
    """Trainable parameters in two groups: biases and normalisation parameters get neither weight decay
    nor LARS adaptation (as the SimCLR reference code and BYOL sec. 3.3; lightly's LARS skips the
    adaptation of a group whose ``weight_decay`` is 0)."""
    decay, no_decay = get_weight_decay_parameters([method])
    return [
        {"name": "encoder", "params": [p for p in decay if p.requires_grad]},
        {"name": "encoder_no_decay", "params": [p for p in no_decay if p.requires_grad], "weight_decay": 0.0},
    ]


def collapse_std(z: Tensor) -> Tensor:
    """Std of L2-normalised embeddings averaged over dimensions; ~1/sqrt(D) when healthy, 0 when
    collapsed (SimSiam paper, sec. 4.1; lightly's ``std_of_l2_normalized``). A 0-dim tensor on
    ``z``'s device: the trainer reads metrics back to the host only at logging steps."""
    from lightly.utils.debug import std_of_l2_normalized

    return std_of_l2_normalized(z.detach().float())
