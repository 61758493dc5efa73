"""Step time of the DDP-wrapped training step against the former hand-written gradient sync, 2 ranks.

- ``ddp``: the engine's path (``ssmix.engine.ddp.wrap_for_training``): the whole step (method +
  mix pipeline) inside one DistributedDataParallel module, bucketed all-reduce overlapped with the
  backward pass, ``find_unused_parameters=True``.
- ``ddp_static``: the same with ``find_unused_parameters=False`` (what the traversal of the graph costs).
- ``manual``: the former engine path, kept here only as the reference: the plain step, then after
  ``backward()`` one flat all-reduce (mean) per dtype over every gradient, no overlap.

Each rank builds the three from the same seed (MoCo v2 + mixup, cross-rank shuffle-BN, SGD) and runs
them on the same synthetic, already-augmented batches; timed blocks of ``--steps`` steps alternate
between them (order rotating per round). Rank 0 prints median ms/step and the median of the per-round
ratios ddp / manual (< 1: DDP is faster). The script launches its ranks itself, like ``torchrun``
(gloo on CPU; ``--backend nccl`` on a machine with one GPU per rank):

    python bench/ddp_overhead.py                          # 2 gloo ranks, R18, 32 px, batch 16 per rank
    python bench/ddp_overhead.py --arch resnet50 --size 64 --batch 32 --backend nccl --world 8
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
from typing import Dict, List

import torch
import torch.distributed as dist
from torch import Tensor

from timing import StepFn, timed


@torch.no_grad()
def flat_all_reduce_mean(params) -> None:
    """The former ``average_gradients``: one flat all-reduce (mean) per gradient dtype."""
    by_dtype: Dict[torch.dtype, List[Tensor]] = {}
    for p in params:
        if p.grad is not None:
            by_dtype.setdefault(p.grad.dtype, []).append(p.grad)
    for grads in by_dtype.values():
        flat = torch.cat([g.reshape(-1) for g in grads])
        dist.all_reduce(flat)
        flat /= dist.get_world_size()
        offset = 0
        for g in grads:
            g.copy_(flat[offset : offset + g.numel()].view_as(g))
            offset += g.numel()


def make_step(kind: str, args, device: str, total_steps: int) -> StepFn:
    from ssmix.config import load_config
    from ssmix.device import autocast_dtype
    from ssmix.engine.ddp import wrap_for_training
    from ssmix.engine.optim import build_optimizer
    from ssmix.engine.pretrainer import Pretrainer
    from ssmix.engine.step import OptimStep

    cfg = load_config(
        None,
        [
            f"device={device}",
            "method.name=mocov2",
            "mix.type=mixup",
            f"model.arch={args.arch}",
            f"data.image_size={args.size}",
            f"train.batch_size={args.batch}",
            f"method.queue_size={args.queue}",
            "model.channels_last=false",
        ],
    )
    torch.manual_seed(0)
    model = Pretrainer(cfg, num_samples=args.batch * total_steps, num_classes=10).to(device).train()
    optimizer = build_optimizer(model.param_groups(), cfg, steps_per_ep=total_steps)
    params = [p for g in optimizer.param_groups for p in g["params"]]
    if kind == "manual":
        run = model
    elif kind == "ddp":
        run = wrap_for_training(model, False, model.method.uses_shuffle_bn, device)
    else:  # the engine's wrap without the unused-parameter search
        on_cuda = device.startswith("cuda")
        run = torch.nn.parallel.DistributedDataParallel(
            model,
            device_ids=[torch.device(device).index] if on_cuda else None,
            find_unused_parameters=False,
            broadcast_buffers=False,
            gradient_as_bucket_view=True,
        )
    sync_grads = (lambda: flat_all_reduce_mean(params)) if kind == "manual" else None
    optim_step = OptimStep(
        run,
        optimizer,
        device,
        autocast_dtype(cfg.train.amp, device),
        cfg.train.grad_clip,
        after_backward=sync_grads,
    )
    labels, index = (
        torch.zeros(args.batch, dtype=torch.long, device=device),
        torch.arange(args.batch, device=device),
    )

    def step(views: List[Tensor], i: int) -> None:
        optim_step(views, labels, index, i, total_steps, total_steps)  # one epoch, as the optimizer's

    return step


def seconds_per_step(step: StepFn, batches, first: int, steps: int, device: str) -> float:
    """Seconds per step over ``steps`` steps (ranks start together, the slowest one counts)."""
    dist.barrier()
    wall, _ = timed(step, batches, first, steps, device)
    elapsed = torch.tensor([wall])
    dist.all_reduce(elapsed, op=dist.ReduceOp.MAX)
    return float(elapsed) / steps


def rank_main(args) -> None:
    from ssmix.engine.ddp import setup_process

    torch.set_num_threads(args.threads)
    device, rank, world, _ = setup_process("cuda" if args.backend == "nccl" else "cpu")  # GPU bound first
    kinds = ["manual", "ddp", "ddp_static"]
    total_steps = len(kinds) * (args.warmup + args.rounds * args.steps) + 1
    steps = {kind: make_step(kind, args, device, total_steps) for kind in kinds}
    torch.manual_seed(100 + rank)
    batches = [
        [torch.randn(args.batch, 3, args.size, args.size, device=device) for _ in range(2)] for _ in range(3)
    ]
    for step in steps.values():
        for i in range(args.warmup):
            step(batches[i % len(batches)], i)
    per_step: Dict[str, List[float]] = {kind: [] for kind in kinds}
    first = args.warmup
    for r in range(args.rounds):
        for kind in kinds[r % len(kinds) :] + kinds[: r % len(kinds)]:
            per_step[kind].append(seconds_per_step(steps[kind], batches, first, args.steps, device))
        first += args.steps
        if rank == 0:
            print(
                f"round {r + 1}: " + ", ".join(f"{k} {1e3 * v[-1]:.0f} ms" for k, v in per_step.items()),
                flush=True,
            )
    if rank == 0:
        median = {k: statistics.median(v) for k, v in per_step.items()}
        ratio = {
            k: statistics.median(a / b for a, b in zip(per_step[k], per_step["manual"])) for k in kinds[1:]
        }
        print(
            f"\n{world} {args.backend} ranks, {args.arch}, {args.size} px, batch {args.batch} per rank, MoCo v2 + mixup, "
            f"{args.threads} thread(s) per rank"
        )
        for kind in kinds:
            print(f"  {kind:<11} {1e3 * median[kind]:8.1f} ms/step")
        print(
            f"ratio ddp / manual = {ratio['ddp']:.3f} (ddp_static / manual = {ratio['ddp_static']:.3f}; "
            "< 1: DDP is faster)"
        )
        if args.json:
            with open(args.json, "w", encoding="utf-8") as f:
                json.dump(
                    {
                        "ms_per_step": {k: 1e3 * v for k, v in median.items()},
                        "ratio_vs_manual": ratio,
                        "args": vars(args),
                    },
                    f,
                    indent=2,
                )
    dist.destroy_process_group()


def launch(args) -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    procs = []
    for rank in range(args.world):
        env = {
            **os.environ,
            "MASTER_ADDR": "127.0.0.1",
            "MASTER_PORT": str(port),
            "RANK": str(rank),
            "WORLD_SIZE": str(args.world),
            "LOCAL_RANK": str(rank),
            "OMP_NUM_THREADS": str(args.threads),
        }
        procs.append(
            subprocess.Popen([sys.executable, os.path.abspath(__file__), *sys.argv[1:], "--as-rank"], env=env)
        )
    codes = [p.wait() for p in procs]
    return max(codes)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--world", type=int, default=2)
    parser.add_argument("--backend", choices=["gloo", "nccl"], default="gloo")
    parser.add_argument("--arch", default="resnet18")
    parser.add_argument("--size", type=int, default=32)
    parser.add_argument("--batch", type=int, default=16, help="images per rank")
    parser.add_argument("--queue", type=int, default=4096)
    parser.add_argument("--steps", type=int, default=4, help="steps per timed block")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads per rank")
    parser.add_argument("--json", default=None)
    parser.add_argument("--as-rank", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.as_rank:
        rank_main(args)
        return 0
    return launch(args)


if __name__ == "__main__":
    sys.exit(main())
