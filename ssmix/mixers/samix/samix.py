"""SAMix-I and SAMix-C: the learned Mixer trained alongside the encoder
(docs/algorithm.md §2.1 steps 5-9, §4.1, §4.2).

Per step the training step calls :meth:`forward` (the "bb" batch: a detached, post-processed mask; the
encoder trains on the result) and :meth:`aux_losses` (the "mb" batch: a fresh lambda, drawn by the step,
and a fresh partner permutation, a mask *with* gradient, the mixed images embedded by the frozen target branch
``ctx.embed_target``, so the Mixer's losses reach only the Mixer, through the mask).
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from typing import Dict, List, Optional, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from ssmix.config import ConfigError
from ssmix.losses.contrastive import mixup_info_nce, mixup_info_nce_in_batch, two_source_bce
from ssmix.mixers.base import Mixer, MixerLosses, blend, mask_statistics, register_mixer
from ssmix.mixers.samix.configs import SAMixCConfig, SAMixIConfig, validate_samix
from ssmix.mixers.samix.encoder_mix import mix_for_encoder
from ssmix.mixers.samix.losses import (
    cross_entropy,
    extend_positives,
    mixup_cross_entropy,
    mixup_info_nce_masked,
    pair_bce,
    sample_weights,
)
from ssmix.mixers.samix.masks import decayed_weight, mask_loss
from ssmix.mixers.samix.mixer_net import MixerNet
from ssmix.mixup import MixContext, MixedInputs, Pairing, derangement


@dataclass
class MixerTrainingBatch:
    """The batch the Mixer trains itself on in one step, "mb" (docs/algorithm.md §2.1 steps 6-7, 9)."""

    lam: Tensor  # (N,) one lambda_mb for every row
    pairing: Pairing  # the step's views with partners pi_mb (images and, unless leaky, features)
    mask: Tensor  # (N, 1, H, W) s_a, with gradient to the Mixer
    z: Tensor  # (N, D) target-branch embedding of the mixed images (gradient to the mask only)


def _feature_maps(ctx: MixContext, who: str) -> Tensor:
    maps, n = ctx.feature_maps, ctx.views[0].shape[0]
    if maps is None:
        raise ValueError(
            f"{who}: ctx.feature_maps is None; the step must ask the method for target-branch maps at "
            f"trunk position {_LearnedMixer.needs_feature_maps} (method(views, map_at=mixer.needs_feature_maps))"
        )
    if maps.dim() != 5 or maps.shape[:2] != (2, n):
        raise ValueError(f"{who}: ctx.feature_maps must be (2, N={n}, C, h, w), got {tuple(maps.shape)}")
    return maps


class _LearnedMixer(Mixer):
    """What SAMix-I and SAMix-C share: the Mixer, the bb path, the mb batch and the mask loss."""

    needs_feature_maps = 3  # stage-3 maps of the target (momentum) branch, docs/algorithm.md §3.1
    learned = True

    def __init__(self, cfg: SAMixIConfig) -> None:
        super().__init__(cfg)
        validate_samix(cfg, labels=self.needs_labels)
        self.net = MixerNet(
            cfg.feature_channels,
            cfg.reduction,
            cfg.rescale_k,
            cfg.dropout,
            lam_offset=cfg.lam_offset,
            qk_init_std=cfg.qk_init_std,
            value_init_std=cfg.value_init_std,
            centre_content=cfg.centre_content,
        )

    # -- bb: the encoder's mixed batch ---------------------------------------------------------
    def _pair_labels(self, ctx: MixContext, perm: Tensor) -> Tuple[Optional[Tensor], Optional[Tensor]]:
        if ctx.labels is None:
            return None, None
        return ctx.labels, ctx.labels[perm]

    def forward(self, xa: Tensor, xb: Tensor, lam: float, ctx: MixContext) -> MixedInputs:
        """x = s_a x_a + (1 - s_a) x_b with a detached, post-processed mask at lambda_bb = ``lam``
        (docs/algorithm.md §2.1 step 5) from the target branch's stage-3 maps of the two sources
        (:func:`mix_for_encoder`, shared with SAMix-P)."""
        maps = _feature_maps(ctx, type(self).__name__)
        auto_label = self.cfg.mask_adjust == "auto_label"
        labels = self._pair_labels(ctx, ctx.pairing.perm) if auto_label else (None, None)
        return mix_for_encoder(self.net, self.cfg, xa, xb, ctx.pairing.sources(maps), lam, labels)

    # -- mb: the Mixer's mixed batch -----------------------------------------------------------
    def mixer_batch(self, ctx: MixContext, lam: float) -> MixerTrainingBatch:
        """Draw pi_mb, build the mask at lambda_mb = ``lam`` with gradient and embed the mixed images with
        the frozen target branch (docs/algorithm.md §2.1 steps 6, 7, 9). The mask reads the features of the
        partner whose image it mixes (docs/algorithm.md §9.1), or of pi_bb(pi_mb(i)) with
        ``leaky_pairing`` (the code)."""
        maps = _feature_maps(ctx, type(self).__name__)
        n = ctx.views[0].shape[0]
        device = ctx.views[0].device
        lam_rows = torch.full((n,), float(lam), device=device)
        pairing = ctx.pairing.with_partners(derangement(n, device))
        feature_pairing = (
            ctx.pairing.with_partners(ctx.pairing.perm[pairing.perm]) if self.cfg.leaky_pairing else pairing
        )
        mask = self.net(*feature_pairing.sources(maps), lam_rows, ctx.views[0].shape[-2:])
        z = ctx.embed_target(blend(*pairing.sources(ctx.views), mask))
        return MixerTrainingBatch(lam=lam_rows, pairing=pairing, mask=mask, z=z)

    def mask_term(self, batch: MixerTrainingBatch, ctx: MixContext) -> Tensor:
        """beta(t) (l_mu + l_sigma) on the mb mask at lambda_mb (docs/algorithm.md §3.7)."""
        cfg = self.cfg
        beta = decayed_weight(cfg.mask_loss_weight, ctx.step, ctx.total_steps, cfg.mask_loss_decay)
        return beta * mask_loss(
            batch.mask,
            batch.lam[0],
            cfg.mask_loss_margin,
            cfg.mask_loss,
            per_sample=cfg.mask_mean == "sample",
        )

    def eta(self, ctx: MixContext) -> float:
        return decayed_weight(self.cfg.eta, ctx.step, ctx.total_steps, self.cfg.eta_schedule)

    def instance_positives(self, ctx: MixContext, pairing: Pairing) -> Tuple[Tensor, Tensor]:
        """The two sources' targets, latent-extended when ``latent_pos_extend`` is set (docs/algorithm.md §4.1)."""
        mode = self.cfg.latent_pos_extend
        targets = pairing.targets(ctx.keys)
        if mode == "none":
            return targets
        own = pairing.sources(ctx.keys)
        return extend_positives(targets[0], own[0], mode), extend_positives(targets[1], own[1], mode)

    def export(self, path: str, trunk, meta: Dict) -> str:
        """Write ``mixer.pt`` for SAMix-P: this Mixer with the trunk that fed it (docs/algorithm.md §2.4)."""
        from ssmix.mixers.samix.pretrained import export_mixer

        return export_mixer(path, self.net, trunk, meta)

    def mixer_group(self) -> Dict:
        """Plain SGD with the Mixer's own lr whatever the encoder's optimizer (``lars: False``,
        docs/algorithm.md §6.2)."""
        cfg = self.cfg
        return {
            "name": "mixer",
            "params": list(self.net.parameters()),
            "lars": False,
            "lr": cfg.mixer_lr,
            "momentum": cfg.mixer_momentum,
            "weight_decay": cfg.mixer_weight_decay,
            "warmup_epochs": cfg.mixer_warmup_epochs,
            "min_lr": cfg.mixer_min_lr,
        }

    def param_groups(self) -> List[dict]:
        return [self.mixer_group()]


class CosineClusterHead(nn.Module):
    """Cluster head psi of SAMix-C: cosine similarity to C learned prototypes over a temperature.

    The methods' target embeddings are L2-normalised (a linear head on them has logits of std ~0.01
    and its CE never leaves ln C); normalising the prototypes too and dividing by ``temperature``
    gives logits in [-1/t, 1/t] for every method (the reference feeds the unnormalised MoCo
    projection to a linear head instead, docs/algorithm.md §5.5)."""

    def __init__(self, dim: int, num_clusters: int, temperature: float) -> None:
        super().__init__()
        self.temperature = temperature
        self.weight = nn.Parameter(torch.randn(num_clusters, dim) * 0.01)

    def forward(self, z: Tensor) -> Tensor:
        return F.normalize(z.float(), dim=-1) @ F.normalize(self.weight, dim=-1).t() / self.temperature


@register_mixer("samix_i")
class SAMixI(_LearnedMixer):
    """SAMix-I (docs/algorithm.md §4.1): L_phi = l+ (two-source BCE) + eta l- (mixup infoNCE) + beta L_mask."""

    def aux_losses(self, ctx: MixContext, lam: float) -> MixerLosses:
        return self.losses_for(self.mixer_batch(ctx, lam), ctx)

    def losses_for(self, batch: MixerTrainingBatch, ctx: MixContext) -> MixerLosses:
        """The weighted Mixer losses of one mb batch (their sum is the Mixer's objective) and the
        statistics of its masks (``mixer_mask_*``)."""
        t = ctx.temperature
        k_a, k_b = batch.pairing.targets(ctx.keys)
        local = two_source_bce(batch.z, k_a, k_b, batch.lam, t).mean()
        p_a, p_b = self.instance_positives(ctx, batch.pairing)
        if ctx.negatives is not None:
            global_ = mixup_info_nce(batch.z, p_a, p_b, batch.lam, ctx.negatives, t)
        else:
            idx_a, idx_b = batch.pairing.target_index(batch.z.shape[0])
            candidates = ctx.keys.flatten(0, 1)
            if self.cfg.latent_pos_extend == "none":
                global_ = mixup_info_nce_in_batch(batch.z, candidates, idx_a, idx_b, batch.lam, t)
            else:
                global_ = mixup_info_nce_masked(batch.z, p_a, p_b, batch.lam, candidates, idx_a, idx_b, t)
        losses = {
            "mixer_local": local,
            "mixer_global": self.eta(ctx) * global_.mean(),
            "mixer_mask": self.mask_term(batch, ctx),
        }
        return MixerLosses(losses, mask_statistics(batch.mask, "mixer_mask_"))


@register_mixer("samix_c")
class SAMixC(_LearnedMixer):
    """SAMix-C (docs/algorithm.md §4.2, §5.5): L_phi = pBCE + eta mixup CE over ODC clusters through psi_off, plus
    beta L_mask; the cluster head psi learns mixup CE + one-hot CE on the pseudo-labels.

    Deviations (documented): the head is a cosine head with a temperature on the L2-normalised target
    embedding (method-agnostic, :class:`CosineClusterHead`; the reference feeds the unnormalised MoCo
    projector output to a linear head), psi's mixup CE sees the mixed embedding
    detached (the Mixer is trained only through psi_off, as the paper; the code also lets psi's CE reach
    the Mixer, docs/algorithm.md §9.3), and class weights are normalised to batch mean 1 (docs/algorithm.md §9.4).
    """

    needs_labels = True

    def __init__(self, cfg: SAMixCConfig) -> None:
        super().__init__(cfg)
        if cfg.local not in ("pbce", "bce"):
            raise ConfigError(f"mix.local: expected 'pbce' or 'bce', got '{cfg.local}'")
        if cfg.embed_dim < 1 or cfg.odc.num_clusters < 2:
            raise ConfigError(
                f"mix.embed_dim ({cfg.embed_dim}) must be >= 1 and mix.odc.num_clusters "
                f"({cfg.odc.num_clusters}) >= 2"
            )
        if not cfg.head_temperature > 0:
            raise ConfigError(
                f"mix.head_temperature: expected a positive temperature, got {cfg.head_temperature}"
            )
        self.head = CosineClusterHead(cfg.embed_dim, cfg.odc.num_clusters, cfg.head_temperature)
        self.head_off = copy.deepcopy(self.head).requires_grad_(False)
        self._labels_checked = False

    def refresh_frozen_head(self) -> None:
        """psi_off <- psi, a hard copy (docs/algorithm.md §5.5)."""
        with torch.no_grad():
            for frozen, live in zip(self.head_off.parameters(), self.head.parameters()):
                frozen.copy_(live)

    def forward(self, xa: Tensor, xb: Tensor, lam: float, ctx: MixContext) -> MixedInputs:
        self.refresh_frozen_head()  # the bb call opens every step, before any Mixer loss
        self._check_labels(ctx)
        return super().forward(xa, xb, lam, ctx)

    def _check_labels(self, ctx: MixContext) -> Tensor:
        clusters = self.head.weight.shape[0]
        if ctx.labels is None:
            raise ValueError(
                "SAMix-C: ctx.labels is None; the step must provide pseudo-labels (mix.labels: odc | dataset)"
            )
        if ctx.num_classes and ctx.num_classes != clusters:
            raise ValueError(
                f"SAMix-C: the labels have {ctx.num_classes} classes but the cluster head has "
                f"{clusters} outputs: set mix.odc.num_clusters: {ctx.num_classes}"
            )
        if not self._labels_checked and ctx.labels.numel():  # the values once (a host sync on a GPU)
            top = int(ctx.labels.max())
            if top >= clusters:
                raise ValueError(f"SAMix-C: label {top} >= mix.odc.num_clusters={clusters}")
            self._labels_checked = True
        return ctx.labels

    def _check_embedding(self, ctx: MixContext) -> None:
        dim = ctx.keys.shape[-1]
        if dim != self.head.weight.shape[1]:
            raise ValueError(
                f"SAMix-C: the method's target embeddings have D={dim} but the cluster head expects "
                f"mix.embed_dim={self.head.weight.shape[1]}: set mix.embed_dim: {dim}"
            )

    def aux_losses(self, ctx: MixContext, lam: float) -> MixerLosses:
        self._check_labels(ctx)
        self._check_embedding(ctx)
        return self.losses_for(self.mixer_batch(ctx, lam), ctx)

    def losses_for(self, batch: MixerTrainingBatch, ctx: MixContext) -> MixerLosses:
        """Weighted Mixer losses (through psi_off) and the cluster head's loss for one mb batch, with the
        head's accuracy and CE against chance (``cluster_head_*``) and the masks' statistics
        (``mixer_mask_*``)."""
        y_a, y_b = ctx.labels, ctx.labels[batch.pairing.perm]
        w_a, w_b = sample_weights(y_a, ctx.class_weights), sample_weights(y_b, ctx.class_weights)
        logits = self.head_off(batch.z)  # psi_off is frozen: gradient reaches z (the mask) only
        if self.cfg.local == "pbce":
            local = pair_bce(logits, y_a, y_b, batch.lam, w_a, w_b)
        else:
            p_a, p_b = self.instance_positives(ctx, batch.pairing)
            local = two_source_bce(batch.z, p_a, p_b, batch.lam, ctx.temperature).mean()
        global_ = mixup_cross_entropy(logits, y_a, y_b, batch.lam, w_a, w_b)
        head_mix = mixup_cross_entropy(self.head(batch.z.detach()), y_a, y_b, batch.lam, w_a, w_b)
        raw_logits = self.head(ctx.keys[ctx.pairing.view_a])
        head_raw = cross_entropy(raw_logits, y_a, w_a)
        with torch.no_grad():  # chance: accuracy 1/C, and each of the two CE terms ln C
            metrics = {
                "cluster_head_acc": (raw_logits.argmax(1) == y_a).float().mean(),
                "cluster_head_ce": (head_mix + head_raw).detach(),
                "cluster_head_ce_chance": 2 * math.log(raw_logits.shape[1]),
            }
        losses = {
            "mixer_local": local,
            "mixer_global": self.eta(ctx) * global_,
            "mixer_mask": self.mask_term(batch, ctx),
            "cluster_head": head_mix + head_raw,
        }
        return MixerLosses(losses, {**metrics, **mask_statistics(batch.mask, "mixer_mask_")})

    def param_groups(self) -> List[dict]:
        cfg = self.cfg
        head = {
            "name": "cluster_head",
            "params": list(self.head.parameters()),
            "lars": False,
            "lr": cfg.head_lr,
            "momentum": cfg.head_momentum,
            "weight_decay": cfg.head_weight_decay,
            "warmup_epochs": cfg.mixer_warmup_epochs,
            "min_lr": cfg.mixer_min_lr,
        }
        return [self.mixer_group(), head]
