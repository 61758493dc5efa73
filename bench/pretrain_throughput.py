"""Images/s of the ssmix MoCo v2 training step against a textbook lightly MoCo v2 step.

- ssmix: the trainer's own step, :class:`ssmix.engine.step.OptimStep` (learning rates, forward under
  autocast, backward through the loss scaler, clipping, optimizer) over a ``Pretrainer`` built by
  ``build_optimizer``, in the trainer's memory format (``ssmix.device.memory_format_for``: channels_last
  on CUDA only, so contiguous here); mix.type=none.
- reference: built here from torch + lightly blocks only: torchvision ResNet (``fc = Identity``,
  lightly ``SplitBatchNorm`` as ``norm_layer``), lightly ``MoCoProjectionHead``, a momentum copy
  updated with ``update_momentum``, ``batch_shuffle`` / ``batch_unshuffle`` on the keys and
  ``NTXentLoss(temperature, memory_bank_size=(K, 128))`` (InfoNCE against a memory bank), SGD.

Same backbone, batch, image size, queue size, threads and synthetic already-augmented inputs (data
loading is excluded). After a warm-up, timed blocks of ``--steps`` steps alternate between the two
(the order flips every round); the medians over ``--rounds`` blocks and the median of the per-round
ratios are reported, per wall second and per CPU second of this process. On a machine shared with
other jobs, use ``--threads 1``: OpenMP threads otherwise spin against the other jobs (with 2 threads
on 2 busy cores a step took 10x longer), and with one thread the CPU-second figures barely depend on
the load.

    python bench/pretrain_throughput.py --arch resnet18 --size 32 --batch 32 --steps 10 --bn-splits 8
    python bench/pretrain_throughput.py --no-channels-last      # ssmix with model.channels_last=false
    python bench/pretrain_throughput.py --profile               # top ops of one step of each
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
from typing import Dict, List, Optional, Tuple

import torch
import torch.nn as nn
from torch import Tensor

from timing import StepFn, timed


def ssmix_step(args, total_steps: int) -> StepFn:
    """One engine step of ssmix MoCo v2 (the body of the loop in ``trainer.train``, mix.type=none)."""
    from ssmix.config import load_config
    from ssmix.device import autocast_dtype, memory_format_for
    from ssmix.engine.optim import build_optimizer
    from ssmix.engine.pretrainer import Pretrainer
    from ssmix.engine.step import OptimStep

    # train.amp=auto: fp32 on CPU
    cfg = load_config(
        None,
        [
            "device=cpu",
            "method.name=mocov2",
            f"model.arch={args.arch}",
            f"data.image_size={args.size}",
            f"train.batch_size={args.batch}",
            f"method.queue_size={args.queue}",
            f"method.bn_splits={args.bn_splits}",
            f"method.temperature={args.temperature}",
            f"model.channels_last={str(not args.no_channels_last).lower()}",
        ],
    )
    memory_format = memory_format_for(cfg.model.channels_last, "cpu")
    model = Pretrainer(cfg, num_samples=args.batch * total_steps, num_classes=10).to(
        memory_format=memory_format
    )
    model.train()
    optimizer = build_optimizer(model.param_groups(), cfg, steps_per_ep=total_steps)
    optim_step = OptimStep(model, optimizer, "cpu", autocast_dtype(cfg.train.amp, "cpu"), cfg.train.grad_clip)
    labels, index = torch.zeros(args.batch, dtype=torch.long), torch.arange(args.batch)

    def step(views: List[Tensor], i: int) -> Tensor:
        views = [v.contiguous(memory_format=memory_format) for v in views]
        loss, _, _ = optim_step(views, labels, index, i, total_steps, total_steps)  # one epoch
        return loss.detach()

    return step


def lightly_split_bn(channels: int, splits: int, memory_format: torch.memory_format) -> nn.Module:
    """lightly's ``SplitBatchNorm`` as a user must run it under channels_last: its forward ``view``s the
    input as NCHW (a channels_last tensor raises "view size is not compatible"), so the input is made
    NCHW-contiguous first and the output put back in ``memory_format`` (two copies per layer)."""
    from lightly.models.batchnorm import SplitBatchNorm

    bn = SplitBatchNorm(channels, splits)
    if memory_format == torch.channels_last:
        bn.register_forward_pre_hook(lambda module, args: (args[0].contiguous(),))
        bn.register_forward_hook(lambda module, args, out: out.contiguous(memory_format=memory_format))
    return bn


class ReferenceMoCo(nn.Module):
    """The textbook lightly MoCo v2 model: online and momentum ResNet + MoCo projection heads."""

    def __init__(
        self,
        arch: str,
        bn_splits: int,
        out_dim: int = 128,
        memory_format: torch.memory_format = torch.contiguous_format,
    ) -> None:
        super().__init__()
        import torchvision
        from lightly.models.modules import MoCoProjectionHead
        from lightly.models.utils import deactivate_requires_grad

        norm = nn.BatchNorm2d if bn_splits <= 1 else (lambda c: lightly_split_bn(c, bn_splits, memory_format))
        self.backbone = getattr(torchvision.models, arch)(weights=None, norm_layer=norm)
        width = self.backbone.fc.in_features
        self.backbone.fc = nn.Identity()
        self.head = MoCoProjectionHead(width, width, out_dim)
        self.backbone_m, self.head_m = copy.deepcopy(self.backbone), copy.deepcopy(self.head)
        deactivate_requires_grad(self.backbone_m)
        deactivate_requires_grad(self.head_m)


def reference_step(
    args,
    total_steps: int,
    device: str = "cpu",
    amp: Optional[torch.dtype] = None,
    memory_format: torch.memory_format = torch.contiguous_format,
) -> StepFn:
    """The reference step; ``device`` / ``amp`` (autocast dtype) / ``memory_format`` for GPU runs
    (bench/gpu_throughput.py), matching what the ssmix engine uses there."""
    from lightly.loss import NTXentLoss
    from lightly.models.utils import batch_shuffle, batch_unshuffle, update_momentum
    from lightly.utils.scheduler import cosine_schedule

    model = ReferenceMoCo(args.arch, args.bn_splits, memory_format=memory_format)
    model = model.to(device, memory_format=memory_format).train()
    criterion = NTXentLoss(temperature=args.temperature, memory_bank_size=(args.queue, 128)).to(device)
    optimizer = torch.optim.SGD(
        [p for p in model.parameters() if p.requires_grad], lr=0.03, momentum=0.9, weight_decay=1e-4
    )
    scaler = torch.amp.GradScaler("cuda", enabled=amp == torch.float16)  # fp16 with loss scaling, as ssmix

    def step(views: List[Tensor], i: int) -> float:
        for g in optimizer.param_groups:
            g["lr"] = cosine_schedule(i, total_steps, 0.03, 0.0)
        update_momentum(model.backbone, model.backbone_m, 0.999)
        update_momentum(model.head, model.head_m, 0.999)
        views = [v.contiguous(memory_format=memory_format) for v in views]  # as the engine feeds its model
        with torch.autocast(device.split(":")[0], dtype=amp or torch.float32, enabled=amp is not None):
            query = model.head(model.backbone(views[0]))
            with torch.no_grad():
                x_key, shuffle = batch_shuffle(views[1])
                key = batch_unshuffle(model.head_m(model.backbone_m(x_key)), shuffle)
            loss = criterion(query, key)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        optimizer.zero_grad(set_to_none=True)
        return loss.detach()

    return step


def timed_block(step: StepFn, batches: List[List[Tensor]], first: int, steps: int) -> Tuple[float, float]:
    """(images per wall second, images per CPU second of this process) over ``steps`` steps."""
    wall, cpu = timed(step, batches, first, steps)
    images = steps * batches[0][0].shape[0]
    return images / wall, images / cpu


def profile_one(name: str, step: StepFn, batches: List[List[Tensor]], first: int, rows: int = 25) -> None:
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for i in range(first, first + 3):
            step(batches[i % len(batches)], i)
    print(f"\n=== {name}: 3 steps, top ops by self CPU time ===")
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=rows))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", default="resnet18")
    parser.add_argument("--size", type=int, default=32, help="image size (px)")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--steps", type=int, default=10, help="steps per timed block")
    parser.add_argument("--rounds", type=int, default=5, help="timed blocks of each")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps of each first")
    parser.add_argument("--bn-splits", type=int, default=8)
    parser.add_argument("--queue", type=int, default=4096, help="queue / memory bank size K")
    parser.add_argument("--temperature", type=float, default=0.2)
    parser.add_argument(
        "--no-channels-last", action="store_true", help="ssmix with model.channels_last=false"
    )
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    parser.add_argument("--profile", action="store_true", help="print the top ops of each step and exit")
    parser.add_argument("--json", default=None, help="also write the numbers to this file")
    args = parser.parse_args()
    if args.batch % args.bn_splits or args.queue % args.batch:
        parser.error("--batch must be divisible by --bn-splits and --queue by --batch")
    if args.threads > 0:
        torch.set_num_threads(args.threads)

    torch.manual_seed(0)
    total_steps = args.warmup + args.rounds * args.steps + 3
    batches = [[torch.randn(args.batch, 3, args.size, args.size) for _ in range(2)] for _ in range(4)]
    steps = {"ssmix": ssmix_step(args, total_steps), "reference": reference_step(args, total_steps)}
    print(
        f"{args.arch}, {args.size} px, batch {args.batch}, bn_splits {args.bn_splits}, queue {args.queue}, "
        f"ssmix model.channels_last={not args.no_channels_last}, {torch.get_num_threads()} threads",
        flush=True,
    )

    for name, step in steps.items():  # warm-up (allocator, oneDNN primitive caches)
        for i in range(args.warmup):
            step(batches[i % len(batches)], i)
    if args.profile:
        for name, step in steps.items():
            profile_one(name, step, batches, args.warmup)
        return

    rates: Dict[str, Dict[str, List[float]]] = {
        clock: {name: [] for name in steps} for clock in ("wall", "cpu")
    }
    first = args.warmup
    for r in range(args.rounds):
        order = list(steps) if r % 2 == 0 else list(reversed(steps))
        for name in order:
            wall, cpu = timed_block(steps[name], batches, first, args.steps)
            rates["wall"][name].append(wall)
            rates["cpu"][name].append(cpu)
        first += args.steps
        print(
            f"round {r + 1}: "
            + ", ".join(
                f"{n} {rates['wall'][n][-1]:.1f} img/s ({rates['cpu'][n][-1]:.1f} img/cpu-s)" for n in steps
            ),
            flush=True,
        )

    summary = {}
    for clock, unit in (("wall", "images/s"), ("cpu", "images per CPU second")):
        median = {name: statistics.median(v) for name, v in rates[clock].items()}
        # Each round's two blocks ran back to back: their ratio is less exposed to load drifting on a
        # shared machine than the ratio of the medians.
        paired = statistics.median(s / r for s, r in zip(rates[clock]["ssmix"], rates[clock]["reference"]))
        ratio = median["ssmix"] / median["reference"]
        summary[clock] = {"median": median, "ratio": ratio, "paired_ratio": paired}
        print(
            f"median {unit}: ssmix {median['ssmix']:.1f}, reference {median['reference']:.1f}; "
            f"ratio ssmix/reference {ratio:.3f} (median of per-round ratios {paired:.3f})"
        )
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump({"args": vars(args), "rates": rates, **summary}, f, indent=1)


if __name__ == "__main__":
    main()
