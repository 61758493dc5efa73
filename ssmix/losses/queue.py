"""A persistent key queue (MoCo dictionary), saved in checkpoints.

lightly's ``MemoryBankModule`` is not checkpointed and enqueues on every loss call
(docs/algorithm.md §12.4, items 1, 3, 5). This queue is read once per step (:meth:`snapshot`) and
enqueued once per step (:meth:`enqueue`), gathers keys across ranks before enqueueing, and requires
``size % global_batch == 0`` so no key is ever silently dropped.
"""

from __future__ import annotations

from typing import Optional, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from ssmix.config import ConfigError
from ssmix.distributed import all_gather_nograd


class KeyQueue(nn.Module):
    """FIFO of ``size`` L2-normalised ``dim``-d keys, initialised from a random normal.

    ``ptr`` and ``filled`` are buffers (saved in checkpoints); the queue also keeps them as Python
    ints, read from the buffers once after construction or loading, so a step never reads a device
    tensor back to the host (no per-step sync on a GPU)."""

    def __init__(self, size: int, dim: int, zero_init: bool = False) -> None:
        super().__init__()
        if size <= 0:
            raise ValueError(f"queue size must be positive, got {size}")
        init = torch.zeros(size, dim) if zero_init else F.normalize(torch.randn(size, dim), dim=1)
        self.register_buffer("keys", init)
        self.register_buffer("ptr", torch.zeros((), dtype=torch.long))
        self.register_buffer("filled", torch.tensor(0 if zero_init else size, dtype=torch.long))
        self._counters: Optional[Tuple[int, int]] = (0, 0 if zero_init else size)  # (ptr, filled)

    def _load_from_state_dict(self, *args, **kwargs) -> None:
        super()._load_from_state_dict(*args, **kwargs)
        self._counters = None  # re-read from the loaded buffers on first use

    def _host_counters(self) -> Tuple[int, int]:
        if self._counters is None:
            self._counters = (int(self.ptr), int(self.filled))
        return self._counters

    @property
    def size(self) -> int:
        return self.keys.shape[0]

    @property
    def full(self) -> bool:
        return self._host_counters()[1] >= self.size

    def check_batch(self, global_batch: int) -> None:
        if self.size % global_batch:
            raise ConfigError(
                f"method.queue_size={self.size} is not divisible by the global batch size {global_batch}; "
                f"choose a queue size that is a multiple of {global_batch}"
            )

    def snapshot(self) -> Tensor:
        """The current keys (a detached copy): read once per step, before enqueueing."""
        return self.keys.detach().clone()

    @torch.no_grad()
    def enqueue(self, keys: Tensor) -> None:
        """Append this step's keys (gathered across ranks), replacing the oldest."""
        keys = all_gather_nograd(keys.detach().to(self.keys.dtype))
        n = keys.shape[0]
        self.check_batch(n)
        ptr, filled = self._host_counters()
        self.keys[ptr : ptr + n] = keys
        self._counters = ((ptr + n) % self.size, min(filled + n, self.size))
        self.ptr.fill_(self._counters[0])
        self.filled.fill_(self._counters[1])
