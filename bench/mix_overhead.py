"""Step time of MoCo v2 with each mixer, relative to plain MoCo v2 and to MoCo v2 + CutMix.

    python bench/mix_overhead.py [--arch resnet18] [--size 32] [--batch 32] [--steps 10] [--rounds 5]
                                 [--warmup 3] [--cifar-stem] [--device auto] [--threads 0]

Every variant is built from its ``configs/mocov2*.yaml`` with the data switched to random synthetic
tensors of the same size, the same backbone, batch and optimizer, all in one process. A step is what
the trainer does, :class:`ssmix.engine.step.OptimStep` over a ``Pretrainer`` (method forward, mix
pipeline, Mixer losses, ODC update): the trainer's autocast (bf16 on CUDA, fp32 on CPU), loss scaler,
clipping and optimizer, in its memory format (``ssmix.device.memory_format_for``). Each variant runs
``--warmup`` untimed steps, then ``--rounds`` rounds visit the variants in turn, each running its share
of the ``--steps`` timed steps, so slow drifts of a shared machine hit every variant alike; the table
gives the median step time over all timed steps and their interquartile range (a shared machine's
stalls show up there and in the round means, not in the median).

Variants: Inter-Intra uses ``labels=dataset``; SAMix-C uses ODC with ``num_clusters`` = 10 on the
4-batch pool (k-means at start, as in training); SAMix-P loads a ``mixer.pt`` exported from the
SAMix-I model first. Issue targets: SAMix-C <= 1.35x and SAMix-P <= 1.10x MoCo v2 + CutMix.
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from typing import List, Optional, Tuple

import torch

from ssmix.config import Config, load_config
from ssmix.device import autocast_dtype, memory_format_for, resolve_device
from ssmix.engine.optim import build_optimizer
from ssmix.engine.pretrainer import Pretrainer
from ssmix.engine.step import OptimStep

from timing import sync

CONFIGS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs")
POOL_BATCHES = 4  # distinct batches cycled through (dataset size = 4 x batch)
NUM_CLASSES = 10
ODC_CLUSTERS = 10
TOTAL_STEPS = 1000  # schedule length seen by decaying loss weights (no effect on cost)
TARGETS = {"samix_c": 1.35, "samix_p": 1.10}  # x MoCo v2 + CutMix


@dataclass
class Variant:
    name: str
    config: str  # file under configs/
    overrides: List[str] = field(default_factory=list)
    model: Optional[Pretrainer] = None
    optim_step: Optional[OptimStep] = None
    step: int = 0
    times: List[float] = field(default_factory=list)  # seconds per timed step


def variants(mixer_dir: str) -> List[Variant]:
    k = ODC_CLUSTERS
    return [
        Variant("mocov2", "mocov2.yaml"),
        Variant("+ mixup", "mocov2_mixup.yaml"),
        Variant("+ cutmix", "mocov2_cutmix.yaml"),
        Variant("+ resizemix", "mocov2_resizemix.yaml"),
        Variant("+ fmix", "mocov2_fmix.yaml"),
        Variant("+ saliencymix", "mocov2_saliencymix.yaml"),
        Variant("+ manifoldmix", "mocov2_manifoldmix.yaml"),
        Variant("+ interintra (labels=dataset)", "mocov2_interintra.yaml", ["mix.labels=dataset"]),
        Variant("+ samix_i", "mocov2_samix_i.yaml"),
        Variant(
            f"+ samix_c (odc, {k} clusters)",
            "mocov2_samix_c.yaml",
            [f"mix.odc.num_clusters={k}", "mix.odc.min_cluster=2"],
        ),
        Variant(
            "+ samix_p",
            "mocov2.yaml",
            ["mix.type=samix_p", f"mix.checkpoint={os.path.join(mixer_dir, 'mixer.pt')}"],
        ),
    ]


def common_overrides(args: argparse.Namespace, device: str) -> List[str]:
    b = args.batch
    return [
        f"device={device}",
        "data.name=synthetic",
        "data.split=train",
        f"data.image_size={args.size}",
        f"data.num_samples={POOL_BATCHES * b}",
        f"data.num_classes={NUM_CLASSES}",
        "data.num_workers=0",
        f"model.arch={args.arch}",
        f"model.cifar_stem={str(args.cifar_stem).lower()}",
        f"train.batch_size={b}",
        f"method.queue_size={b * max(1, 16384 // b)}",
        f"method.bn_splits={math.gcd(8, b)}",
    ]


def make_pool(
    args: argparse.Namespace, device: str, memory_format
) -> List[Tuple[List[torch.Tensor], torch.Tensor, torch.Tensor]]:
    """``POOL_BATCHES`` batches of two random views, labels (index % 10) and dataset indices."""
    g = torch.Generator().manual_seed(0)
    order = torch.randperm(POOL_BATCHES * args.batch, generator=g)
    pool = []
    for index in order.view(POOL_BATCHES, args.batch):
        views = [
            torch.randn(args.batch, 3, args.size, args.size, generator=g)
            .to(device)
            .contiguous(memory_format=memory_format)
            for _ in range(2)
        ]
        pool.append((views, (index % NUM_CLASSES).to(device), index.to(device)))
    return pool


def build(variant: Variant, cfg: Config, pool, device: str, memory_format) -> None:
    model = Pretrainer(cfg, cfg.data.num_samples, NUM_CLASSES).to(device).to(memory_format=memory_format)
    optimizer = build_optimizer(model.param_groups(), cfg, POOL_BATCHES)
    variant.optim_step = OptimStep(
        model, optimizer, device, autocast_dtype(cfg.train.amp, device), cfg.train.grad_clip
    )

    def extract() -> Tuple[torch.Tensor, torch.Tensor]:  # ODC's initial clustering, as the trainer does
        model.eval()
        with torch.no_grad():
            feats = torch.cat([model.method.embed_target(views[0]).float().cpu() for views, _, _ in pool])
            index = torch.cat([i.cpu() for _, _, i in pool])
        model.train()
        return feats[index.argsort()], index.sort().values % NUM_CLASSES

    model.on_train_start(extract)
    model.train()
    variant.model = model


def train_step(variant: Variant, pool) -> None:
    views, labels, index = pool[variant.step % len(pool)]
    variant.optim_step(views, labels, index, variant.step, TOTAL_STEPS, POOL_BATCHES)
    variant.step += 1


def timed_steps(variant: Variant, pool, steps: int, device: str) -> None:
    round_times = []
    for _ in range(steps):
        start = time.perf_counter()
        train_step(variant, pool)
        sync(device)
        round_times.append(time.perf_counter() - start)
    variant.times += round_times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", default="resnet18")
    parser.add_argument("--size", type=int, default=32, help="image side in pixels")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--steps", type=int, default=10, help="timed steps per variant (all rounds)")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds over all variants")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps per variant before round 1")
    parser.add_argument(
        "--cifar-stem", action="store_true", help="3x3 stride-1 stem (16x the FLOPs at 32 px)"
    )
    parser.add_argument("--device", default="auto")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    device = resolve_device(args.device)
    if device.startswith("cuda"):
        torch.backends.cudnn.benchmark = True
    amp = autocast_dtype("auto", device)
    common = common_overrides(args, device)
    memory_format = None
    with tempfile.TemporaryDirectory() as mixer_dir:
        runs = variants(mixer_dir)
        for variant in runs:
            cfg = load_config(os.path.join(CONFIGS, variant.config), common + variant.overrides)
            if memory_format is None:
                memory_format = memory_format_for(cfg.model.channels_last, device)
                pool = make_pool(args, device, memory_format)
            build(variant, cfg, pool, device, memory_format)
            if cfg.mix.type == "samix_i":  # the SAMix-P variant loads this Mixer and its trunk
                model = variant.model
                model.mixing.mixer.export(mixer_dir, model.method.target_trunk(), {"image_size": args.size})
            for _ in range(args.warmup):
                train_step(variant, pool)
            sync(device)
        per_round = max(1, math.ceil(args.steps / args.rounds))
        for r in range(args.rounds):
            for variant in runs:
                timed_steps(variant, pool, per_round, device)
            print(f"round {r + 1}/{args.rounds} done", file=sys.stderr, flush=True)

    name = (
        torch.cuda.get_device_name()
        if device.startswith("cuda")
        else f"CPU, {torch.get_num_threads()} threads"
    )
    print(
        f"MoCo v2 step time with each mixer: {args.arch}{' (CIFAR stem)' if args.cifar_stem else ''}, "
        f"{args.size} px, batch {args.batch}, {device} ({name}), amp {amp or 'off'}; median of "
        f"{len(runs[0].times)} timed steps in {args.rounds} interleaved rounds after {args.warmup} warm-up steps"
    )
    base = statistics.median(runs[0].times)
    cutmix = statistics.median(next(v for v in runs if v.name == "+ cutmix").times)
    print(f"{'variant':<34} {'ms/step':>9} {'p25-p75 ms':>13} {'x mocov2':>9} {'x +cutmix':>10}  target")
    for variant in runs:
        med = statistics.median(variant.times)
        q1, _, q3 = statistics.quantiles(variant.times, n=4) if len(variant.times) > 1 else [med] * 3
        iqr = f"{q1 * 1e3:.0f}-{q3 * 1e3:.0f}"
        key = variant.name.split()[1] if variant.name.startswith("+") else ""
        target = (
            f"<= {TARGETS[key]:.2f}x +cutmix: {'met' if med / cutmix <= TARGETS[key] else 'MISSED'}"
            if key in TARGETS
            else ""
        )
        print(
            f"{variant.name:<34} {med * 1e3:>9.1f} {iqr:>13} {med / base:>8.2f}x {med / cutmix:>9.2f}x  {target}"
        )


if __name__ == "__main__":
    main()
