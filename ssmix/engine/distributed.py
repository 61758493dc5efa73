"""torch.distributed set-up for ``torchrun`` and gradient averaging."""
from __future__ import annotations

import os
from typing import Iterable, Tuple

import torch
import torch.distributed as dist


def init_distributed(device: str) -> Tuple[int, int, int]:
    """Initialise the process group when launched by torchrun; returns (rank, world_size, local_rank)."""
    if "WORLD_SIZE" not in os.environ or int(os.environ["WORLD_SIZE"]) == 1:
        return 0, 1, 0
    if not dist.is_initialized():
        backend = "nccl" if device.startswith("cuda") else "gloo"
        dist.init_process_group(backend=backend)
    return dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", 0))


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


@torch.no_grad()
def broadcast_module(module: torch.nn.Module) -> None:
    """Make every rank start from rank 0's parameters and buffers."""
    if is_distributed():
        device_type = "cuda" if dist.get_backend() == "nccl" else "cpu"
        for tensor in list(module.parameters()) + list(module.buffers()):
            # Host-resident state (the ODC memory) is kept in sync by its own owner.
            if tensor.device.type == device_type:
                dist.broadcast(tensor.data, src=0)


@torch.no_grad()
def average_gradients(params: Iterable[torch.nn.Parameter]) -> None:
    """All-reduce (mean) the gradients in one flat buffer per dtype."""
    if not is_distributed():
        return
    grads = [p.grad for p in params if p.grad is not None]
    by_dtype = {}
    for g in grads:
        by_dtype.setdefault(g.dtype, []).append(g)
    world = dist.get_world_size()
    for group in by_dtype.values():
        flat = torch.cat([g.reshape(-1) for g in group])
        dist.all_reduce(flat)
        flat /= world
        offset = 0
        for g in group:
            g.copy_(flat[offset : offset + g.numel()].view_as(g))
            offset += g.numel()


def barrier() -> None:
    if is_distributed():
        dist.barrier()
