"""Preemption: SIGTERM / SIGINT become a request that the training loop honours at the next step boundary
(checkpoint, then :class:`Interrupted`, exit code 128 + signal: 143 / 130). A second signal stops at once."""
from __future__ import annotations

import signal
import threading
from typing import Dict, Optional

import torch

SIGNALS = (signal.SIGTERM, signal.SIGINT)


class Interrupted(Exception):
    """The run stopped on a signal after writing ``checkpoint`` at ``step``."""

    def __init__(self, signum: int, step: int, checkpoint: Optional[str]) -> None:
        self.signum, self.step, self.checkpoint = signum, step, checkpoint
        self.exit_code = 128 + signum
        saved = f"checkpoint {checkpoint} written" if checkpoint else "no checkpoint written"
        super().__init__(f"stopped by {signal.Signals(signum).name} at step {step}; {saved}")


class StopRequest:
    """``with StopRequest() as stop:`` installs the handlers (main thread only) and restores them on exit."""

    def __init__(self) -> None:
        self.signum: Optional[int] = None
        self._previous: Dict[int, object] = {}

    def __enter__(self) -> "StopRequest":
        if threading.current_thread() is threading.main_thread():
            for sig in SIGNALS:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()

    def _handle(self, signum: int, frame) -> None:
        if self.signum is not None:  # second signal: give up on the clean stop
            self.__exit__()
            raise KeyboardInterrupt(f"second {signal.Signals(signum).name}: stopped without a checkpoint")
        self.signum = signum

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
