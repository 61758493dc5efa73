"""Low-level collectives shared by methods, losses and clustering (identities on a single process).

Process-group set-up, the DistributedDataParallel wrap and SyncBatchNorm are the engine's business
(:mod:`ssmix.engine.ddp`); this leaf module only answers "am I distributed, which rank" and
gathers or broadcasts tensors, so that any layer may import it.
"""
from __future__ import annotations

import torch
import torch.distributed as dist
from torch import Tensor


def is_distributed() -> bool:
    """True inside an initialised process group of more than one rank."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def barrier() -> None:
    if is_distributed():
        dist.barrier()


def all_gather_nograd(x: Tensor) -> Tensor:
    """Concatenate ``x`` from every rank along dim 0 (no gradient); identity when not distributed."""
    if not is_distributed():
        return x
    out = [torch.empty_like(x) for _ in range(dist.get_world_size())]
    dist.all_gather(out, x.contiguous())
    return torch.cat(out)


def broadcast_from_rank0(t: Tensor) -> Tensor:
    """Rank 0's ``t`` on every rank (identity when not distributed); NCCL gets a CUDA copy."""
    if not is_distributed():
        return t
    device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else t.device
    buf = t.to(device).contiguous()
    dist.broadcast(buf, src=0)
    return buf.to(t.device)
