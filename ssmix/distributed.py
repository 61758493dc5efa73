"""Low-level collectives shared by methods, losses and clustering (identities on a single process).

Process-group set-up, the DistributedDataParallel wrap and SyncBatchNorm are the engine's business
(:mod:`ssmix.engine.ddp`); this leaf module only answers "am I distributed, which rank" and
gathers or broadcasts tensors, so that any layer may import it.
"""

from __future__ import annotations

import contextlib
from typing import Iterator

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


def _collective_device(t: Tensor) -> torch.device:
    return torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else t.device


def shard(n: int) -> range:
    """This rank's share of ``n`` items: ``rank, rank + world, ...`` (all of them on one process)."""
    return range(rank(), n, world_size())


def gather_shards(local: Tensor, n: int) -> Tensor:
    """Every rank's :func:`shard` rows of an ``n``-row result, put back in item order (on ``local``'s
    device); ``local`` itself on one process."""
    if not is_distributed():
        return local
    world, per = world_size(), -(-n // world_size())
    padded = torch.zeros((per, *local.shape[1:]), dtype=local.dtype, device=_collective_device(local))
    padded[: local.shape[0]] = local.to(padded.device)
    gathered = all_gather_nograd(padded).view(world, per, *local.shape[1:])
    return gathered.transpose(0, 1).reshape(world * per, *local.shape[1:])[:n].to(local.device)


@torch.no_grad()
def broadcast_module_(module: torch.nn.Module) -> None:
    """Rank 0's parameters and buffers in ``module`` on every rank (in place; nothing on one process)."""
    if not is_distributed():
        return
    for t in [*module.parameters(), *module.buffers()]:
        t.copy_(broadcast_from_rank0(t.detach()))


@contextlib.contextmanager
def rank0_buffers(module: torch.nn.Module) -> Iterator[None]:
    """Within the block every rank's ``module`` holds rank 0's buffers (BatchNorm statistics, which stay
    per rank without SyncBN), so every rank's shard of an evaluation sees one network; restored after."""
    if not is_distributed():
        yield
        return
    own = [b.detach().clone() for b in module.buffers()]
    with torch.no_grad():
        for b in module.buffers():
            b.copy_(broadcast_from_rank0(b))
    try:
        yield
    finally:
        with torch.no_grad():
            for b, saved in zip(module.buffers(), own):
                b.copy_(saved)
