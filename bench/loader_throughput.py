"""Images/s of the pre-training data loader on real JPEG files, generated here (nothing downloaded).

``--images`` JPEGs of ``--width x --height`` (default 500 x 375, ImageNet's typical size; smooth random
content, so they compress like photographs) are written under ``--root`` (a temporary folder by
default) and read through ``ssmix.data.loader.epoch_loader`` as a ``data.name=folder`` run reads them:
decode, two MoCo v2 views at ``--size`` px, collate, with ``--workers`` processes and pinned memory when
CUDA is there. Print this beside the step's images/s (``bench/gpu_throughput.py``,
``bench/gpu_check.py``): the smaller of the two bounds the run.

    python bench/loader_throughput.py --workers 16           # 2000 JPEGs, 224 px views
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

import numpy as np  # noqa: E402
import torch  # noqa: E402


def generate_jpegs(root: str, count: int, width: int = 500, height: int = 375, seed: int = 0) -> str:
    """``count`` JPEGs under ``root/images`` (kept if already there); returns that folder."""
    from PIL import Image

    folder = os.path.join(root, "images")
    os.makedirs(folder, exist_ok=True)
    rng = np.random.default_rng(seed)
    for i in range(count):
        path = os.path.join(folder, f"{i:06d}.jpg")
        if os.path.exists(path):
            continue
        coarse = Image.fromarray(rng.integers(0, 256, (12, 16, 3), dtype=np.uint8)).resize(
            (width, height), Image.BICUBIC
        )
        noisy = np.asarray(coarse, dtype=np.int16) + rng.integers(-12, 13, (height, width, 3))
        Image.fromarray(noisy.clip(0, 255).astype(np.uint8)).save(path, quality=90)
    return folder


def loader_rate(root: str, size: int, batch: int, workers: int, batches: int, pin: bool) -> float:
    """Images/s of the pre-training loader over the images under ``root`` (the first batch, which
    starts the workers, is not timed)."""
    from ssmix.config import AugConfig
    from ssmix.data.datasets import build_dataset, dataset_info
    from ssmix.data.loader import MultiViewDataset, epoch_loader
    from ssmix.data.transforms import build_view_transform

    info = dataset_info("folder")
    base = build_dataset("folder", root, "train")
    # uint8 views when pinned for CUDA, as the trainer loads them there (normalised on the GPU)
    dataset = MultiViewDataset(base, build_view_transform(AugConfig(), size, info.mean, info.std, uint8=pin))
    batches = min(batches, len(base) // batch - 1)
    if batches < 1:
        raise ValueError(f"loader_rate: {len(base)} images give no timed batch of {batch}")
    loader = iter(epoch_loader(dataset, batch, 0, 0, 0, workers, pin_memory=pin))
    next(loader)
    start, seen = time.perf_counter(), 0
    for _ in range(batches):
        views, _, _ = next(loader)
        seen += views[0].shape[0]
    return seen / (time.perf_counter() - start)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=2000)
    parser.add_argument("--width", type=int, default=500)
    parser.add_argument("--height", type=int, default=375)
    parser.add_argument("--size", type=int, default=224, help="view size (px)")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--workers", type=int, default=min(16, os.cpu_count() or 1))
    parser.add_argument("--root", default=None, help="where the JPEGs go (default: a temporary folder)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = args.root or tmp
        generate_jpegs(root, args.images, args.width, args.height)
        rate = loader_rate(
            root, args.size, args.batch, args.workers, args.images // args.batch, torch.cuda.is_available()
        )
    print(
        f"loader: {rate:.0f} img/s ({args.images} JPEGs {args.width}x{args.height}, two {args.size} px "
        f"MoCo v2 views, batch {args.batch}, {args.workers} workers)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
