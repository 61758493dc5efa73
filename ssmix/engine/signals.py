"""Preemption: SIGTERM / SIGINT / SIGHUP become a request that the training loop honours at the next step
boundary (checkpoint, then :class:`Interrupted`, exit code 128 + signal: 143 / 130 / 129).

Schedulers deliver the same signal more than once (GNU ``timeout`` sends TERM to the child and then to
its whole process group; SLURM signals every process of a step; torchrun's agent forwards to its workers),
so a repeat is not taken as "stop now" (issue 24): a signal within :data:`GRACE_S` seconds of the first,
or any signal while a checkpoint is being written (:func:`critical`), is ignored. Only a later,
deliberate second signal stops at once, as :class:`ForcedStop` (no new checkpoint; the files on disk
are intact, since every save writes a temp file and renames it).
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
import time
from typing import Dict, Iterator, Optional

import torch

SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)


def _grace_s() -> float:
    try:
        return max(float(os.environ.get("SSMIX_SIGNAL_GRACE_S", "5")), 0.0)
    except ValueError:
        return 5.0


GRACE_S = _grace_s()  # repeats this soon after the first are ignored
_CRITICAL = [0]  # depth of critical() sections: a checkpoint is being written


class Interrupted(Exception):
    """The run stopped on a signal after writing ``checkpoint`` at ``step``."""

    def __init__(self, signum: int, step: int, checkpoint: Optional[str]) -> None:
        self.signum, self.step, self.checkpoint = signum, step, checkpoint
        self.exit_code = 128 + signum
        saved = f"checkpoint {checkpoint} written" if checkpoint else "no checkpoint written"
        super().__init__(f"stopped by {signal.Signals(signum).name} at step {step}; {saved}")


class ForcedStop(BaseException):
    """A second, deliberate signal: stop now, without the next checkpoint (a BaseException, so that no
    ``except Exception`` on the way swallows it)."""

    def __init__(self, signum: int) -> None:
        self.signum, self.exit_code = signum, 128 + signum
        super().__init__(
            f"stopped at once by a second {signal.Signals(signum).name}; the checkpoints on disk are "
            "intact, the steps after the newest one are lost"
        )


@contextlib.contextmanager
def critical() -> Iterator[None]:
    """A section (a checkpoint write) that no signal interrupts: a stop request waits for its end."""
    _CRITICAL[0] += 1
    try:
        yield
    finally:
        _CRITICAL[0] -= 1


class StopRequest:
    """``with StopRequest() as stop:`` installs the handlers (main thread only) and restores them on exit.
    A signal the process ignores (``nohup``: SIGHUP) stays ignored."""

    def __init__(self, grace_s: Optional[float] = None) -> None:
        self.signum: Optional[int] = None
        self.grace_s = GRACE_S if grace_s is None else grace_s
        self._first_at = 0.0
        self._previous: Dict[int, object] = {}

    def __enter__(self) -> "StopRequest":
        if threading.current_thread() is threading.main_thread():
            for sig in SIGNALS:
                if signal.getsignal(sig) is not signal.SIG_IGN:
                    self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()

    def _handle(self, signum: int, frame) -> None:
        if self.signum is None:
            self.signum, self._first_at = signum, time.monotonic()
            return
        if _CRITICAL[0] or time.monotonic() - self._first_at < self.grace_s:
            return  # the same preemption delivered twice, or a save in progress: keep stopping cleanly
        self.__exit__()
        raise ForcedStop(signum)

    def due(self, step: int, every: int, world: int = 1, device: str = "cpu") -> bool:
        """Whether to stop after ``step``. One process: at every step (a Python flag). Several: every
        ``every`` steps, whether any of them got a signal (a collective, so that all stop together)."""
        if world == 1:
            return self.signum is not None
        if step % every:
            return False
        flag = torch.tensor([self.signum or 0], device=device)
        torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)
        self.signum = int(flag.item()) or None
        return self.signum is not None
