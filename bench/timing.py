"""The benchmarks' one timing loop: ``steps`` calls of a step over a cycled pool of batches, with the
device synchronised at both ends."""

from __future__ import annotations

import time
from typing import Callable, List, Sequence, Tuple

import torch
from torch import Tensor

#: ``(views, step index) -> anything``
StepFn = Callable[[List[Tensor], int], object]


def sync(device: str) -> None:
    """Wait for the queued CUDA work (nothing to wait for on CPU)."""
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def timed(
    step: StepFn, batches: Sequence[List[Tensor]], first: int, steps: int, device: str = "cpu"
) -> Tuple[float, float]:
    """(wall seconds, CPU seconds of this process) of steps ``first`` .. ``first + steps - 1``."""
    sync(device)
    wall, cpu = time.perf_counter(), time.process_time()
    for i in range(first, first + steps):
        step(batches[i % len(batches)], i)
    sync(device)
    return time.perf_counter() - wall, time.process_time() - cpu
