"""Non-finite losses and weights never reach the disk, without a device-to-host sync per step.

:class:`FiniteGuard` keeps on-device flags: whether any loss so far was non-finite, the first such step
and its loss terms. The trainer reads them (one sync) every ``log_every`` steps and before each save;
:func:`check_state` also checks every floating tensor of the state to be saved (BatchNorm statistics
included). Failures raise :class:`NonFiniteError` naming the step, the loss terms and the last good
checkpoint.

Under fp16 the GradScaler skips a step whose gradients overflowed and lowers its scale; a transient
non-finite loss is then a skipped step, not a fault (``skippable``): only :data:`MAX_CONSECUTIVE_SKIPS`
of them in a row stop the run."""

from __future__ import annotations

from typing import Dict, List, Mapping, Optional

import torch
from torch import Tensor


class NonFiniteError(FloatingPointError):
    """Training diverged; nothing after the last good checkpoint was saved."""


def _last_good(checkpoint: Optional[str]) -> str:
    if checkpoint is None:
        return "no checkpoint was written yet"
    return f"last good checkpoint: {checkpoint} (resume=PATH from it with a lower train.lr or train.amp=off)"


MAX_CONSECUTIVE_SKIPS = 20  # fp16: the GradScaler halves its scale at each; 20 in a row is divergence


class FiniteGuard:
    """Accumulates loss finiteness on the loss's device; :meth:`check` is the only read.

    ``skippable`` (fp16 with a GradScaler): a non-finite loss counts as a skipped step (``skipped``); a
    fault only after :data:`MAX_CONSECUTIVE_SKIPS` consecutive ones."""

    def __init__(self, skippable: bool = False) -> None:
        self.skippable = skippable
        self.bad: Optional[Tensor] = None  # bool, any non-finite total loss so far (that is a fault)
        self.first: Optional[Tensor] = None  # int64, the 1-based step of the first one (-1: none)
        self.terms: Dict[str, Tensor] = {}  # loss term values at that step
        self.skipped: Optional[Tensor] = None  # int64, steps the GradScaler skipped (skippable only)
        self.run: Optional[Tensor] = None  # int64, consecutive non-finite steps up to now

    def observe(self, losses: Mapping[str, Tensor], total: Tensor, step: int) -> None:
        """Record step ``step`` (1-based, as in checkpoints and metrics.jsonl); no host sync."""
        nonfinite = ~torch.isfinite(total.detach())
        if self.bad is None:
            self.bad = torch.zeros((), dtype=torch.bool, device=total.device)
            self.first = torch.full((), -1, dtype=torch.int64, device=total.device)
            self.skipped = torch.zeros((), dtype=torch.int64, device=total.device)
            self.run = torch.zeros((), dtype=torch.int64, device=total.device)
        if self.skippable:
            self.run = torch.where(nonfinite, self.run + 1, torch.zeros_like(self.run))
            self.skipped = self.skipped + nonfinite.long()
            nonfinite = self.run >= MAX_CONSECUTIVE_SKIPS
        new = nonfinite & ~self.bad
        self.first = torch.where(new, torch.full_like(self.first, step), self.first)
        for name, value in losses.items():
            value = value.detach().float().reshape(())
            old = self.terms.get(name, torch.full_like(value, float("nan")))
            self.terms[name] = torch.where(new, value, old)
        self.bad = self.bad | nonfinite

    def check(self, last_checkpoint: Optional[str]) -> None:
        """Raise :class:`NonFiniteError` if any observed loss was non-finite (reads the flags: one sync)."""
        if self.bad is None or not bool(self.bad):
            return
        terms = ", ".join(f"{k}={float(v):.4g}" for k, v in self.terms.items())
        what = (
            f"the fp16 loss was non-finite for {MAX_CONSECUTIVE_SKIPS} steps in a row (each skipped by the "
            "GradScaler) up to"
            if self.skippable
            else "non-finite loss at"
        )
        raise NonFiniteError(
            f"training diverged: {what} step {int(self.first)} ({terms}); nothing "
            f"after it was saved; {_last_good(last_checkpoint)}"
        )

    def metrics(self) -> Dict[str, Tensor]:
        """``amp_skipped_steps`` (a device tensor, read with the logging row) when steps may be skipped."""
        return {"amp_skipped_steps": self.skipped} if self.skippable and self.skipped is not None else {}


def nonfinite_tensors(state: Mapping[str, Tensor]) -> List[str]:
    """Names of the floating tensors of ``state`` holding a NaN or an infinity (one sync for all)."""
    names = [k for k, v in state.items() if isinstance(v, Tensor) and v.is_floating_point() and v.numel()]
    if not names:
        return []
    finite = torch.stack([torch.isfinite(state[k]).all().to(state[names[0]].device) for k in names]).cpu()
    return [k for k, ok in zip(names, finite.tolist()) if not ok]


def check_state(state: Mapping[str, Tensor], step: int, last_checkpoint: Optional[str]) -> None:
    """Raise :class:`NonFiniteError` if a weight or buffer of ``state`` is not finite."""
    bad = nonfinite_tensors(state)
    if bad:
        shown = ", ".join(bad[:4]) + (f" (+{len(bad) - 4} more)" if len(bad) > 4 else "")
        raise NonFiniteError(
            f"training diverged: non-finite weights or statistics after step {step} ({shown}); "
            f"nothing was saved; {_last_good(last_checkpoint)}"
        )
