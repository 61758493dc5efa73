"""Wall time of the cached linear probe against an in-loop probe (backbone forward every epoch).

Both run the same recipe for the same number of epochs on the same data and transforms (test-time
transform for training, so the inputs are identical), with the same probe init and batch order:

- in-loop: ``train_probe_in_loop`` - the trunk runs on every train batch and the test set each epoch;
- cached (cold): feature extraction into an empty cache + ``train_probe_cached`` on the tensors;
- cached (warm): the same with the cache already filled (a second seed, lr sweep or re-run).

    python bench/linear_eval_speed.py                        # digits, random R18, 32 px, 30 epochs
    python bench/linear_eval_speed.py --epochs 10 --threads 0   # torch default threads

Prints both accuracies, their difference and the speed-ups (target: >= 20x, within 0.5 points).
The cold speed-up is bounded by about the number of epochs: the in-loop probe runs the trunk over
train + test every epoch, the cached one once. The warm one is what every further seed, lr or
schedule costs.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time

import torch

from ssmix.device import resolve_device
from ssmix.evaluation.features import FeatureCache, TransformedDataset, extract_copies, test_transform  # noqa: E402
from ssmix.evaluation.linear import ProbeSchedule, train_probe_cached, train_probe_in_loop  # noqa: E402
from ssmix.evaluation.weights import random_encoder  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="digits", choices=["digits", "synthetic"])
    parser.add_argument("--root", default="data")
    parser.add_argument("--image-size", type=int, default=32)
    parser.add_argument("--arch", default="resnet18")
    parser.add_argument("--cifar-stem", action="store_true", help="3x3 stride-1 stem (4x the FLOPs at 32 px)")
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--lr", type=float, default=0.1)
    parser.add_argument("--num-workers", type=int, default=0)
    parser.add_argument("--device", default="auto")
    parser.add_argument(
        "--threads", type=int, default=1, help="torch CPU threads for both probes (0: torch default)"
    )
    parser.add_argument("--json", default=None, help="also write the numbers to this file")
    args = parser.parse_args()

    from ssmix.data.datasets import DATASET_INFO, build_dataset

    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(resolve_device(args.device))
    info = DATASET_INFO[args.dataset]
    train_base = build_dataset(args.dataset, args.root, "train", image_size=args.image_size)
    test_base = build_dataset(args.dataset, args.root, "test", image_size=args.image_size)
    transform = test_transform(args.image_size, info.mean, info.std)
    train_set, test_set = TransformedDataset(train_base, transform), TransformedDataset(test_base, transform)
    num_classes = int(info.num_classes)
    encoder = random_encoder(args.arch, args.cifar_stem, seed=0)
    backbone = encoder.backbone.to(device)
    milestones = (int(args.epochs * 0.6), int(args.epochs * 0.8))
    schedule = ProbeSchedule(args.epochs, args.batch_size, args.lr, milestones=milestones)
    print(
        f"{args.dataset}: {len(train_base)} train / {len(test_base)} test at {args.image_size} px, "
        f"{args.arch} (cifar_stem={args.cifar_stem}), {args.epochs} epochs, batch {args.batch_size}, "
        f"device {device}, {torch.get_num_threads()} threads",
        flush=True,
    )

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize()

    t0 = time.perf_counter()
    in_loop = train_probe_in_loop(
        backbone,
        train_set,
        test_set,
        num_classes,
        schedule,
        seed=0,
        device=device,
        num_workers=args.num_workers,
    )
    sync()
    in_loop_s = time.perf_counter() - t0

    with tempfile.TemporaryDirectory() as cache_dir:
        cache = FeatureCache(cache_dir)

        def cached_run():
            feats = [
                cache.get_or_compute(
                    {"weights": encoder.weights_hash, "split": split, "tf": repr(transform)},
                    lambda ds=ds: extract_copies(
                        backbone, ds, transform, 1, 0, device, args.batch_size, args.num_workers
                    ),
                )
                for split, ds in (("train", train_base), ("test", test_base))
            ]
            (train_x, train_y), (test_x, test_y) = feats
            return train_probe_cached(
                train_x, train_y, test_x[0], test_y, num_classes, schedule, seed=0, device=device
            )

        t0 = time.perf_counter()
        cold = cached_run()
        sync()
        cold_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        warm = cached_run()
        sync()
        warm_s = time.perf_counter() - t0
        assert cache.misses == 2 and cache.hits == 2

    rows = [
        ("in-loop probe", in_loop_s, in_loop),
        ("cached (cold: extract + probe)", cold_s, cold),
        ("cached (warm: cache hit + probe)", warm_s, warm),
    ]
    print(f"{'':34s} {'wall s':>8s} {'speed-up':>9s} {'final top1':>11s} {'median10 top1':>14s}")
    for name, seconds, history in rows:
        print(
            f"{name:34s} {seconds:8.2f} {in_loop_s / seconds:8.1f}x {history.top1[-1]:11.2f} "
            f"{history.summary()['top1']:14.2f}"
        )
    delta = abs(cold.summary()["top1"] - in_loop.summary()["top1"])
    print(
        f"speed-up cold {in_loop_s / cold_s:.1f}x, warm {in_loop_s / warm_s:.1f}x; "
        f"|top1 cached - in-loop| = {delta:.2f} points (target: >= 20x, <= 0.5 points; cold is bounded by "
        f"~epochs = {args.epochs})"
    )
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(
                {
                    "args": vars(args),
                    "device": str(device),
                    "in_loop_s": in_loop_s,
                    "cached_cold_s": cold_s,
                    "cached_warm_s": warm_s,
                    "top1_in_loop": in_loop.summary()["top1"],
                    "top1_cached": cold.summary()["top1"],
                    "top1_delta": delta,
                },
                f,
                indent=2,
            )


if __name__ == "__main__":
    main()
