"""Images/s on one CUDA GPU: ssmix MoCo v2 and MoCo v2 + SAMix-C beside the torch + lightly reference
step (``bench/pretrain_throughput.py``), and the data loader's own images/s.

Two settings: ResNet-18 at 32 px, batch 256, and ResNet-50 at 224 px, batch 64. Every step runs as
the engine runs it on CUDA: bf16 autocast (``train.amp=auto``), channels_last model and inputs, SGD
with the per-step learning-rate schedule; the reference gets the same autocast and memory format.
Inputs are synthetic already-augmented tensors on the GPU (compute only). SAMix-C uses ODC
pseudo-labels (200 clusters) over a 20k-sample memory initialised from random features. After a
warm-up, timed blocks of ``--steps`` steps (CUDA-synchronised at both ends) alternate between the
three; medians over ``--rounds`` blocks are printed.

The loader figure is ``ssmix.data.loader.epoch_loader`` over ``--data`` (default ``synthetic``:
images generated per item) with the MoCo v2 view transform and ``--workers`` processes: if it is
below the step's images/s, data loading is the bottleneck (add workers or pre-resize the images).

    python bench/gpu_throughput.py                  # both settings
    python bench/gpu_throughput.py --only r18 --workers 16 --data imagefolder --root /data/imagenet

Without CUDA it prints that and exits 0 (so ``make bench`` passes on CPU machines).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from types import SimpleNamespace
from typing import Callable, Dict, List, Optional

import torch
from torch import Tensor

from timing import timed

SETTINGS = {"r18": ("resnet18", 32, 256), "r50": ("resnet50", 224, 64)}
QUEUE = 16384
ODC_SAMPLES = 20000


def ssmix_step(
    arch: str,
    size: int,
    batch: int,
    mix: List[str],
    total_steps: int,
    device: str,
    amp: str = "auto",
    odc_samples: int = ODC_SAMPLES,
    queue: int = QUEUE,
) -> Callable:
    """The body of ``trainer.train``'s loop (no data loading, no logging); ``amp`` is ``train.amp``."""
    from ssmix.config import load_config
    from ssmix.device import autocast_dtype, memory_format_for
    from ssmix.engine.optim import build_optimizer
    from ssmix.engine.pretrainer import Pretrainer
    from ssmix.engine.step import OptimStep

    cfg = load_config(
        None,
        [
            f"device={device}",
            "method.name=mocov2",
            f"model.arch={arch}",
            f"data.image_size={size}",
            f"train.batch_size={batch}",
            f"method.queue_size={queue}",
            f"train.amp={amp}",
            *mix,
        ],
    )
    memory_format = memory_format_for(cfg.model.channels_last, device)
    dtype = autocast_dtype(cfg.train.amp, device)
    model = Pretrainer(cfg, odc_samples, 0).to(device).to(memory_format=memory_format).train()
    g = torch.Generator().manual_seed(0)
    model.on_train_start(
        lambda: (
            torch.randn(odc_samples, model.method.embed_dim, generator=g),
            torch.zeros(odc_samples, dtype=torch.long),
        )
    )
    optimizer = build_optimizer(model.param_groups(), cfg, steps_per_ep=total_steps)
    optim_step = OptimStep(model, optimizer, device, dtype, cfg.train.grad_clip)
    labels = torch.zeros(batch, dtype=torch.long, device=device)

    def step(views: List[Tensor], i: int) -> None:
        views = [v.contiguous(memory_format=memory_format) for v in views]
        index = torch.randint(0, odc_samples, (batch,), device=device)
        optim_step(views, labels, index, i, total_steps, total_steps)  # one epoch, as the optimizer's

    return step


def reference(
    arch: str,
    size: int,
    batch: int,
    total_steps: int,
    device: str,
    amp: Optional[torch.dtype] = torch.bfloat16,
    queue: int = QUEUE,
) -> Callable:
    """The same MoCo v2 (shuffle-BN emulated by 8 BN splits, as ssmix's default ``method.bn_splits``);
    ``amp``: the autocast dtype on CUDA (fp32 elsewhere, as the engine)."""
    from pretrain_throughput import reference_step

    args = SimpleNamespace(arch=arch, bn_splits=8, temperature=0.2, queue=queue)
    from ssmix.device import memory_format_for

    on_cuda = device.startswith("cuda")
    # ssmix's default, the trainer's rule
    return reference_step(
        args,
        total_steps,
        device=device,
        amp=amp if on_cuda else None,
        memory_format=memory_format_for(True, device),
    )


def images_per_second(step: Callable, batches, first: int, steps: int, device: str) -> float:
    wall, _ = timed(step, batches, first, steps, device)
    return steps * batches[0][0].shape[0] / wall


def loader_rate(name: str, root: str, size: int, batch: int, workers: int, batches: int, pin: bool) -> float:
    """Images/s of the pre-training loader alone (decode + two MoCo v2 views + collate)."""
    from ssmix.config import AugConfig
    from ssmix.data.datasets import build_dataset, dataset_info
    from ssmix.data.loader import MultiViewDataset, epoch_loader
    from ssmix.data.transforms import build_view_transform

    info = dataset_info(name)
    base = build_dataset(name, root, "train", image_size=size, num_samples=batch * (batches + 2))
    dataset = MultiViewDataset(base, build_view_transform(AugConfig(), size, info.mean, info.std))
    loader = iter(epoch_loader(dataset, batch, 0, 0, 0, workers, pin_memory=pin))
    next(loader)  # workers started
    start, seen = time.perf_counter(), 0
    for _ in range(min(batches, len(base) // batch - 1)):
        views, _, _ = next(loader)
        seen += views[0].shape[0]
    return seen / (time.perf_counter() - start)


def run_setting(key: str, args) -> Dict[str, float]:
    arch, size, batch = SETTINGS[key]
    if args.batch:  # a smaller smoke run
        size, batch = args.size or size, args.batch
    device = args.device
    total = args.warmup + args.rounds * args.steps + 1
    samix = ["mix.type=samix_c", "mix.mixer_warmup_epochs=0"]
    steps = {
        "mocov2": ssmix_step(arch, size, batch, [], total, device),
        "mocov2+samix_c": ssmix_step(arch, size, batch, samix, total, device),
        "reference": reference(arch, size, batch, total, device),
    }
    torch.manual_seed(0)
    batches = [[torch.randn(batch, 3, size, size, device=device) for _ in range(2)] for _ in range(2)]
    for step in steps.values():
        for i in range(args.warmup):
            step(batches[i % 2], i)
    rates: Dict[str, List[float]] = {name: [] for name in steps}
    first = args.warmup
    for r in range(args.rounds):
        names = list(steps)[r % 3 :] + list(steps)[: r % 3]
        for name in names:
            rates[name].append(images_per_second(steps[name], batches, first, args.steps, device))
        first += args.steps
    result = {name: statistics.median(v) for name, v in rates.items()}
    result["loader"] = loader_rate(
        args.data, args.root, size, batch, args.workers, args.loader_batches, device == "cuda"
    )
    name = torch.cuda.get_device_name() if device == "cuda" else "cpu"
    print(
        f"{arch} {size} px batch {batch} on {name}: "
        + ", ".join(f"{name} {value:.0f} img/s" for name, value in result.items()),
        flush=True,
    )
    print(
        f"  ssmix MoCo v2 / reference {result['mocov2'] / result['reference']:.3f}, + SAMix-C / MoCo v2 "
        f"{result['mocov2+samix_c'] / result['mocov2']:.3f}, loader / MoCo v2 step "
        f"{result['loader'] / result['mocov2']:.2f} ({args.workers} workers, {args.data})",
        flush=True,
    )
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", choices=list(SETTINGS), default=None)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--data", default="synthetic", help="dataset of the loader figure (data.name)")
    parser.add_argument("--root", default="data")
    parser.add_argument("--workers", type=int, default=min(8, os.cpu_count() or 1))
    parser.add_argument("--loader-batches", type=int, default=20)
    parser.add_argument("--json", default=None)
    parser.add_argument("--device", default="cuda", help=argparse.SUPPRESS)  # cpu: smoke-test the script
    parser.add_argument("--batch", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--size", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        print("gpu_throughput: skipped, no CUDA device")
        return 0
    torch.backends.cudnn.benchmark = True
    results = {key: run_setting(key, args) for key in ([args.only] if args.only else list(SETTINGS))}
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump({"device": args.device, "images_per_s": results}, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
