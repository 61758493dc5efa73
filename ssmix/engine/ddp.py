"""torch.distributed for ``torchrun``: process-group set-up, the DistributedDataParallel wrap of the
whole training step, and SyncBatchNorm (also on CPU / gloo). The collectives that methods, losses and
clustering use (gather, broadcast, rank) are in the leaf module :mod:`ssmix.distributed`.

Under DDP the module whose ``forward`` is the training step (:class:`~ssmix.engine.pretrainer.Pretrainer`:
method + mixer) is wrapped once, so the several encoder passes of a step (views, mixed
views, the SAMix Mixer's) are one graph whose gradients DDP averages in buckets, overlapped with the
backward pass. Buffers are not broadcast per step (only once, at the wrap): BatchNorm running
statistics stay per rank (global with ``model.sync_bn``), and the state that must agree across ranks
keeps itself in sync (the MoCo/SwAV key queues gather the global batch; the ODC memory gathers and
applies the same update everywhere and is host-resident, so it is also excluded from DDP's start-up
broadcast). DDP's start-up broadcast makes every rank start from rank 0's parameters and buffers.
"""

from __future__ import annotations

import datetime
import inspect
import os
from typing import Callable, Tuple

import torch
import torch.distributed as dist
import torch.nn as nn
from torch import Tensor
from torch.nn.modules.batchnorm import _BatchNorm

from ssmix.distributed import is_distributed

# Seconds a collective may wait for a peer before the job fails (a rank that died or hangs).
TIMEOUT_ENV = "SSMIX_DIST_TIMEOUT_S"
DEFAULT_TIMEOUT_S = 600.0


def launch_ranks() -> Tuple[int, int, int]:
    """(rank, world_size, local_rank) as ``torchrun`` sets them in the environment; (0, 1, 0) otherwise."""
    world = int(os.environ.get("WORLD_SIZE", 1))
    if world == 1:
        return 0, 1, 0
    return int(os.environ.get("RANK", 0)), world, int(os.environ.get("LOCAL_RANK", 0))


def bind_device(device: str, local_rank: int, world: int) -> str:
    """Make this process's GPU torch's current device and return its name (``cuda:<i>``); other devices
    are returned as they are. ``cuda`` is ``cuda:<local_rank>``; ``cuda:N`` is GPU N on one process only
    (under ``torchrun`` every rank would take GPU N). Must run before the process group starts and
    before anything broadcasts: NCCL puts a collective on the current device (``cuda:0`` by default)."""
    if not device.startswith("cuda"):
        return device
    from ssmix.config import ConfigError

    if device != "cuda" and world > 1:
        raise ConfigError(
            f"device: '{device}' with {world} processes would put every rank on that GPU; use "
            "device=cuda (rank i takes cuda:$LOCAL_RANK) and pick GPUs with CUDA_VISIBLE_DEVICES"
        )
    index = local_rank if device == "cuda" else int(device.split(":")[1])
    count = torch.cuda.device_count()
    if index >= count:
        what = f"LOCAL_RANK={local_rank}" if device == "cuda" else f"device: '{device}'"
        raise ConfigError(
            f"{what}: only {count} GPU(s) visible; start at most {count} process(es) per node "
            "(torchrun --nproc_per_node) or check CUDA_VISIBLE_DEVICES"
        )
    torch.cuda.set_device(index)
    return f"cuda:{index}"


def setup_process(device: str) -> Tuple[str, int, int, int]:
    """(device, rank, world_size, local_rank) of this process: the device bound first
    (:func:`bind_device`), then the process group initialised when launched by torchrun.

    The group's timeout (``$SSMIX_DIST_TIMEOUT_S``, default 600 s) bounds how long the surviving ranks
    wait in a collective for a rank that failed: they then fail too, so the whole job ends non-zero.
    """
    rank, world, local_rank = launch_ranks()
    device = bind_device(device, local_rank, world)
    if world == 1:
        return device, 0, 1, 0
    if not dist.is_initialized():
        backend = "nccl" if device.startswith("cuda") else "gloo"
        timeout = datetime.timedelta(seconds=float(os.environ.get(TIMEOUT_ENV, DEFAULT_TIMEOUT_S)))
        extra = {}
        if backend == "nccl" and "device_id" in inspect.signature(dist.init_process_group).parameters:
            extra["device_id"] = torch.device(device)
        dist.init_process_group(backend=backend, timeout=timeout, **extra)
    return device, dist.get_rank(), dist.get_world_size(), local_rank


def init_distributed(device: str) -> Tuple[int, int, int]:
    """:func:`setup_process` without the device name: (rank, world_size, local_rank)."""
    return setup_process(device)[1:]


# -------------------------------------------------------------------------------------------- SyncBN
class CPUSyncBatchNorm(_BatchNorm):
    """SyncBatchNorm for CPU tensors (gloo), which torch's ``nn.SyncBatchNorm`` and DDP refuse: mean and
    biased variance over every rank's batch by differentiable all-reduces (their backward sums the
    gradients of every rank, as torch's CUDA kernels do), the unbiased variance in the running
    estimate. Plain BatchNorm in eval mode and on one process."""

    def _check_input_dim(self, input: Tensor) -> None:  # noqa: A002
        if input.dim() < 2:
            raise ValueError(f"expected at least 2D input, got {input.dim()}D")

    def forward(self, input: Tensor) -> Tensor:  # noqa: A002 - nn.Module signature
        if not (self.training and is_distributed()):
            return super().forward(input)
        from torch.distributed.nn.functional import all_reduce

        self._check_input_dim(input)
        dims = [d for d in range(input.dim()) if d != 1]
        shape = [1, -1] + [1] * (input.dim() - 2)
        x = input if input.dtype in (torch.float32, torch.float64) else input.float()
        count = all_reduce(torch.tensor([x.numel() / x.shape[1]], dtype=x.dtype))
        mean = all_reduce(x.sum(dims)) / count
        centred = x - mean.view(shape)
        var = all_reduce(centred.pow(2).sum(dims)) / count
        if self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked.add_(1)
                m = self.momentum if self.momentum is not None else 1.0 / float(self.num_batches_tracked)
                self.running_mean.mul_(1 - m).add_(mean.detach().to(self.running_mean.dtype), alpha=m)
                unbiased = var.detach() * (count / (count - 1).clamp(min=1))
                self.running_var.mul_(1 - m).add_(unbiased.to(self.running_var.dtype), alpha=m)
        out = centred * torch.rsqrt(var + self.eps).view(shape)
        if self.affine:
            out = out * self.weight.view(shape) + self.bias.view(shape)
        return out.to(input.dtype)


def convert_sync_batchnorm(module: nn.Module, device: str) -> nn.Module:
    """Every BatchNorm layer of ``module`` synchronised over the process group: torch's
    ``nn.SyncBatchNorm`` on CUDA, :class:`CPUSyncBatchNorm` on CPU. The new layers share the old ones'
    parameters and buffers, so the optimizer's references stay valid."""
    if device.startswith("cuda"):
        return nn.SyncBatchNorm.convert_sync_batchnorm(module)
    if isinstance(module, _BatchNorm) and not isinstance(module, CPUSyncBatchNorm):
        new = CPUSyncBatchNorm(
            module.num_features, module.eps, module.momentum, module.affine, module.track_running_stats
        )
        new.weight, new.bias = module.weight, module.bias
        new.running_mean, new.running_var = module.running_mean, module.running_var
        new.num_batches_tracked = module.num_batches_tracked
        new.train(module.training)
        return new
    for name, child in module.named_children():
        module.add_module(name, convert_sync_batchnorm(child, device))
    return module


# ----------------------------------------------------------------------------------------------- DDP
def host_buffer_names(model: nn.Module) -> list:
    """Buffers DDP must leave alone: the ODC memory (host-resident, kept in sync by its owner)."""
    from ssmix.clustering.odc import ODCMemory

    return ODCMemory.ddp_ignored_buffers(model)


def wrap_for_training(model: nn.Module, sync_bn: bool, uses_shuffle_bn: bool, device: str) -> Callable:
    """The callable that runs one training step: ``model`` itself on one process, else ``model`` (with
    SyncBatchNorm when ``sync_bn``) inside one DistributedDataParallel module. ``model.forward`` must be
    the step. ``find_unused_parameters`` is on: a step may leave parameters out (SwAV's prototypes in
    their frozen epochs; a mixer's modules on steps it does not run)."""
    if sync_bn and uses_shuffle_bn:
        from ssmix.config import ConfigError

        raise ConfigError(
            "model.sync_bn: MoCo v2 normalises its keys with shuffle-BN across ranks; set model.sync_bn=false"
        )
    if not is_distributed():
        return model
    if sync_bn:
        model = convert_sync_batchnorm(model, device)
    ddp = nn.parallel.DistributedDataParallel
    ddp._set_params_and_buffers_to_ignore_for_model(model, host_buffer_names(model))
    # Buffers: synced once at start-up (from rank 0), never per forward.
    no_forward_sync = (
        {"forward_sync_buffers": False}
        if "forward_sync_buffers" in inspect.signature(ddp).parameters
        else {"broadcast_buffers": False}
    )
    on_cuda = device.startswith("cuda")
    return ddp(
        model,
        device_ids=[torch.device(device).index] if on_cuda else None,
        find_unused_parameters=True,
        gradient_as_bucket_view=True,
        **no_forward_sync,
    )
