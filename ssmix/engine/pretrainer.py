"""One pre-training step: an SSL method, optionally a mixer, and the cross-view mixup between them
(docs/algorithm.md §2.1, §2.3, §2.4, §8).

:meth:`Pretrainer.training_step` reads top-down, in the order of docs/algorithm.md §2.1:

1. the method's momentum update, then its forward on the un-mixed views (its own losses, the
   stop-gradient targets of both views, feature maps when the mixer reads them);
2. mix: a partner permutation pi with no fixed points, a lambda drawn by the mixer's rule, the mixed
   inputs x_mix(i) from a source of i and one of pi(i) (:mod:`ssmix.mixup` is the contract);
3. losses: the method's on x_mix toward lam x target(i) + (1 - lam) x target(pi(i)), each source's target
   being its other view, plus a learned mixer's own losses on a batch it mixes at a lambda of its own;
4. updates that must follow every loss: the ODC memory (after its labels were read) and the method's
   queue.

Mixers that need labels (Inter-Intra, SAMix-C) get them from the dataset or from an ODC memory that this
step owns (docs/algorithm.md §4.2). The optimizer step itself is the trainer's (:mod:`ssmix.engine.trainer`).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Dict, List, Optional, Tuple

import torch.nn as nn
from torch import Tensor

from ssmix.config import Config, LabelledMixConfig, MixConfig
from ssmix.engine.optim import method_param_groups
from ssmix.methods import Method, build_method
from ssmix.mixers import build_mixer
from ssmix.mixers.base import MixerLosses, mask_statistics
from ssmix.mixup import MethodOutput, MixContext, MixedBatch, Pairing
from ssmix.transfer import to_device


class Mixing(nn.Module):
    """The mixer of a run and where its labels come from: the dataset, or an ODC memory
    (docs/algorithm.md §5) kept here. Checkpoints hold it as ``mixing.mixer.*`` / ``mixing.odc.*``
    (``pipeline.*`` before 2026-12-03, renamed on load by :func:`ssmix.engine.checkpoint.migrate_model_keys`)."""

    def __init__(
        self, cfg: MixConfig, num_samples: int, num_classes: int, embed_dim: int, feature_channels: int
    ) -> None:
        super().__init__()
        # Widths a mixer may declare as 0 (= automatic) come from the backbone and the method.
        auto = {"feature_channels": feature_channels, "embed_dim": embed_dim}
        cfg = dataclasses.replace(cfg, **{k: v for k, v in auto.items() if getattr(cfg, k, None) == 0})
        self.cfg = cfg
        self.mixer = build_mixer(cfg)
        self.num_classes = num_classes
        self.odc = None
        if self.mixer.needs_labels:
            assert isinstance(cfg, LabelledMixConfig)
            if cfg.labels == "odc":
                from ssmix.clustering import ODCMemory

                self.odc = ODCMemory(num_samples, embed_dim, cfg.odc)
            elif cfg.labels != "dataset":
                raise ValueError(f"mix.labels: expected 'odc' or 'dataset', got '{cfg.labels}'")

    def on_train_start(self, extract: Callable[[], Tuple[Tensor, Tensor]]) -> None:
        """Initial clustering on the randomly initialised network (docs/algorithm.md §5.2), then the mixer's hook."""
        if self.odc is not None and not bool(self.odc.initialized):
            from ssmix.report import phase

            embeddings, _ = extract()
            detail = f"{embeddings.shape[0]} x {embeddings.shape[1]} -> {self.odc.num_clusters} clusters"
            with phase("ODC init: k-means", detail, embeddings.shape[0], "points"):
                self.odc.initialize(embeddings, seed=0)
        self.mixer.on_train_start(extract)

    def labels(self, labels: Tensor, index: Tensor) -> Tuple[Optional[Tensor], int, Optional[Tensor]]:
        """(labels of the batch, number of label values, class weights) for a mixer that needs them."""
        if not self.mixer.needs_labels:
            return None, 0, None
        if self.odc is None:
            if bool((labels < 0).any()):  # a host sync on a GPU (labels=dataset is for tests and oracle runs)
                raise ValueError(
                    "mix.labels=dataset needs a labelled split; this batch has unlabelled images"
                )
            return labels, self.num_classes, None
        # ``index`` is in host memory (see host_index)
        lab = to_device(self.odc.labels_of(index), labels.device)
        return lab, self.odc.cfg.num_clusters, to_device(self.odc.class_weights(), labels.device)

    def host_index(self, index: Tensor) -> Tensor:
        """``index`` where the ODC memory lives (host memory): one device-to-host copy per step, shared by
        the label read and the memory update; ``index`` itself without an ODC memory."""
        return index if self.odc is None else index.to(self.odc.labels.device)

    def context(
        self,
        method: Method,
        views: List[Tensor],
        pairing: Pairing,
        out: MethodOutput,
        labels: Tensor,
        index: Tensor,
        step: int,
        total_steps: int,
    ) -> MixContext:
        lab, num_classes, weights = self.labels(labels, index)
        return MixContext(
            views=views[:2],
            pairing=pairing,
            keys=out.keys,
            negatives=out.negatives,
            temperature=method.temperature,
            embed_target=method.embed_target,
            online_prefix=method.online_prefix,
            feature_maps=out.feature_maps,
            labels=lab,
            num_classes=num_classes,
            class_weights=weights,
            index=index,
            step=step,
            total_steps=total_steps,
        )


class Pretrainer(nn.Module):
    """``method`` (always) and ``mixing`` (a :class:`Mixing`, when ``mix.type`` is not ``none``); one
    training step as its ``forward``."""

    def __init__(self, cfg: Config, num_samples: int, num_classes: int) -> None:
        super().__init__()
        self.method = build_method(cfg)
        self.optimizer_name = cfg.train.optimizer
        self.mixing: Optional[Mixing] = None
        if cfg.mix.type != "none":
            self.mixing = Mixing(
                cfg.mix,
                num_samples,
                num_classes,
                self.method.embed_dim,
                self.method.backbone.stage_channels[3],
            )
        self.method.step_mixes = self.mixing is not None  # what the method's output must hold

    def param_groups(self) -> List[Dict[str, Any]]:
        groups = method_param_groups(self.method, self.optimizer_name)
        if self.mixing is not None:
            groups += self.mixing.mixer.param_groups()
        return [g for g in groups if g["params"]]

    def on_train_start(self, extract: Callable[[], Tuple[Tensor, Tensor]]) -> None:
        if self.mixing is not None:
            self.mixing.on_train_start(extract)

    def training_step(
        self,
        views: List[Tensor],
        labels: Tensor,
        index: Tensor,
        step: int,
        total_steps: int,
        steps_per_epoch: int,
    ) -> Tuple[Dict[str, Tensor], Dict[str, Tensor | float]]:
        """Named losses (to be summed) and metrics (0-dim tensors or constants) of step ``step`` (from 0)
        of ``total_steps``, in epochs of ``steps_per_epoch`` steps."""
        method, mixing = self.method, self.mixing

        # 1. forward: momentum update first, then the method on the un-mixed views
        method.on_step_start(step, total_steps, steps_per_epoch)
        map_at = mixing.mixer.needs_feature_maps if mixing is not None else None
        out = method(views, map_at=map_at)
        losses, metrics = dict(out.losses), dict(out.metrics)

        if mixing is not None:
            mixer = mixing.mixer
            # 2. mix: partners, lambda, mixed inputs
            pairing = Pairing.draw(views[0].shape[0], mixing.cfg.cross_view, views[0].device)
            host_index = mixing.host_index(index)
            ctx = mixing.context(method, views, pairing, out, labels, host_index, step, total_steps)
            inputs = mixer(*pairing.sources(views), mixer.sample_lambda(), ctx)
            mixed = MixedBatch(inputs, pairing)

            # 3. losses: the method's on the mixed batch, a learned mixer's own
            losses["mix"] = mixing.cfg.weight * method.mixed_loss(mixed, out)
            aux = mixer.aux_losses(ctx, mixer.sample_lambda()) if mixer.learned else MixerLosses()
            losses.update(aux.losses)
            metrics["mix_lam"] = inputs.lam.mean().detach()
            metrics.update(aux.metrics)  # a learned mixer's, about its own batch (SAMix: mixer_mask_*)
            if inputs.mask is not None:  # the encoder's (bb) masks; SAMix adds its own (mb) as mixer_mask_*
                metrics.update(mask_statistics(inputs.mask, "mask_"))

            # 4. update the pseudo-labels, after this step read them (docs/algorithm.md §4.2 item 6)
            if mixing.odc is not None:
                metrics.update(mixing.odc.update(host_index, out.keys[0], step))

        # 4. (cont.) enqueue the keys, once per step
        method.on_step_end(out)
        return losses, metrics

    def forward(
        self,
        views: List[Tensor],
        labels: Tensor,
        index: Tensor,
        step: int,
        total_steps: int,
        steps_per_epoch: int,
    ) -> Tuple[Dict[str, Tensor], Dict[str, Tensor | float]]:
        """The training step: DistributedDataParallel wraps it whole, as one graph."""
        return self.training_step(views, labels, index, step, total_steps, steps_per_epoch)
