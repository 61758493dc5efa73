"""The optimisation step of pre-training, the one the trainer and every benchmark in ``bench/`` run
(docs/algorithm.md §2.1): the learning rates of this step, the forward under autocast, the backward
through the loss scaler, gradient clipping, the optimizer step and the scaler's update."""

from __future__ import annotations

from typing import Any, Callable, Dict, List, Optional, Tuple

import torch
from torch import Tensor

from ssmix.device import autocast
from ssmix.engine.optim import set_learning_rates

Losses = Dict[str, Tensor]
Metrics = Dict[str, "Tensor | float"]
#: ``(views, labels, index, step, total_steps, steps_per_epoch) -> (losses, metrics)``: a Pretrainer or its
#: DDP wrapper
Forward = Callable[[List[Tensor], Tensor, Tensor, int, int, int], Tuple[Losses, Metrics]]
Schedule = Callable[[Any, int, int], None]


class OptimStep:
    """One call = one optimisation step of ``forward``'s summed losses. ``grad_clip`` 0 clips nothing;
    the scaler is enabled only for fp16 (``torch.amp.GradScaler`` is a pass-through otherwise)."""

    def __init__(
        self,
        forward: Forward,
        optimizer,
        device: str,
        amp: Optional[torch.dtype],
        grad_clip: float = 0.0,
        scaler: Optional[torch.amp.GradScaler] = None,
        after_backward: Optional[Callable[[], None]] = None,
        schedule: Schedule = set_learning_rates,
    ) -> None:
        """``after_backward`` runs between the backward and the clipping (bench/ddp_overhead.py's
        hand-written gradient all-reduce); ``schedule(optimizer, step, total_steps)`` sets the step's
        learning rates."""
        self.forward, self.optimizer, self.device, self.amp = forward, optimizer, device, amp
        self.schedule = schedule
        self.grad_clip, self.after_backward = grad_clip, after_backward
        self.scaler = (
            scaler if scaler is not None else torch.amp.GradScaler("cuda", enabled=amp == torch.float16)
        )
        self.params = [p for g in optimizer.param_groups for p in g["params"]]

    def __call__(
        self,
        views: List[Tensor],
        labels: Tensor,
        index: Tensor,
        step: int,
        total_steps: int,
        steps_per_epoch: int,
    ) -> Tuple[Tensor, Losses, Metrics]:
        """(summed loss, named losses, metrics) of step ``step`` of ``total_steps``, in epochs of
        ``steps_per_epoch`` steps; no host sync."""
        self.schedule(self.optimizer, step, total_steps)
        with autocast(self.device, self.amp):
            losses, metrics = self.forward(views, labels, index, step, total_steps, steps_per_epoch)
        loss = sum(losses.values())
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        if self.after_backward is not None:
            self.after_backward()
        if self.grad_clip:
            self.scaler.unscale_(self.optimizer)
            torch.nn.utils.clip_grad_norm_(self.params, self.grad_clip)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        return loss, losses, metrics
