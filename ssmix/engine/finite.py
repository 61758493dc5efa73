"""Non-finite losses and weights never reach the disk, without a device-to-host sync per step.

:class:`FiniteGuard` keeps on-device flags: whether any loss so far was non-finite, the first such step
and its loss terms. The trainer reads them (one sync) every ``log_every`` steps and before each save;
:func:`check_state` also checks every floating tensor of the state to be saved (BatchNorm statistics
included). Failures raise :class:`NonFiniteError` naming the step, the loss terms and the last good
checkpoint."""
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


class FiniteGuard:
    """Accumulates loss finiteness on the loss's device; :meth:`check` is the only read."""

    def __init__(self) -> None:
        self.bad: Optional[Tensor] = None  # bool, any non-finite total loss so far
        self.first: Optional[Tensor] = None  # int64, the 1-based step of the first one (-1: none)
        self.terms: Dict[str, Tensor] = {}  # loss term values at that step

    def observe(self, losses: Mapping[str, Tensor], total: Tensor, step: int) -> None:
        """Record step ``step`` (1-based, as in checkpoints and metrics.jsonl); no host sync."""
        nonfinite = ~torch.isfinite(total.detach())
        if self.bad is None:
            self.bad = torch.zeros((), dtype=torch.bool, device=total.device)
            self.first = torch.full((), -1, dtype=torch.int64, device=total.device)
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
        raise NonFiniteError(f"training diverged: non-finite loss at step {int(self.first)} ({terms}); nothing "
                             f"after it was saved; {_last_good(last_checkpoint)}")


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
        raise NonFiniteError(f"training diverged: non-finite weights or statistics after step {step} ({shown}); "
                             f"nothing was saved; {_last_good(last_checkpoint)}")
