"""Frozen-feature extraction and the on-disk feature cache (cached linear probe, docs/algorithm.md §6.3).

Features are the global-average-pooled last stage of the trunk in eval mode, extracted once per
(weights hash, dataset, split, transform, copies) and stored as ``<cache_dir>/<key>.pt``. The key
holds the weights' hash, so a changed checkpoint never reuses stale features, and, for image files, the
file list with sizes and modification times, so changed images do not either.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from typing import Any, Callable, Dict, Mapping, Optional, Sequence, Tuple

import torch
import torch.nn as nn
from torch import Tensor
from torch.utils.data import DataLoader, Dataset
from torchvision import transforms as T

BICUBIC = T.InterpolationMode.BICUBIC


def test_transform(
    image_size: int, mean: Sequence[float], std: Sequence[float], resize: Optional[int] = None
) -> T.Compose:
    """Resize (shorter side, bicubic) + centre crop to ``image_size`` + normalise (docs/algorithm.md §6.3: no aug)."""
    return T.Compose(
        [
            T.Resize(resize or image_size, interpolation=BICUBIC),
            T.CenterCrop(image_size),
            T.ToTensor(),
            T.Normalize(mean, std),
        ]
    )


def train_transform(image_size: int, mean: Sequence[float], std: Sequence[float]) -> T.Compose:
    """RandomResizedCrop(scale 0.2-1, bicubic) + horizontal flip + normalise (docs/algorithm.md §6.3, OpenMixup)."""
    return T.Compose(
        [
            T.RandomResizedCrop(image_size, scale=(0.2, 1.0), interpolation=BICUBIC),
            T.RandomHorizontalFlip(),
            T.ToTensor(),
            T.Normalize(mean, std),
        ]
    )


class TransformedDataset(Dataset):
    """``(PIL image, label)`` dataset -> ``(transform(image), label)``."""

    def __init__(self, base: Dataset, transform: Callable) -> None:
        self.base, self.transform = base, transform

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, index: int) -> Tuple[Tensor, int]:
        image, label = self.base[index]
        return self.transform(image), int(label)


def make_loader(
    dataset: Dataset,
    batch_size: int,
    num_workers: int,
    device: torch.device,
    generator: Optional[torch.Generator] = None,
    **kwargs: Any,
) -> DataLoader:
    return DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=False,
        num_workers=num_workers,
        pin_memory=device.type == "cuda",
        generator=generator,
        persistent_workers=False,
        **kwargs,
    )


@torch.no_grad()
def extract_features(backbone: nn.Module, loader: DataLoader, device: torch.device) -> Tuple[Tensor, Tensor]:
    """Pooled trunk features (float32, CPU, ``(N, D)``) and labels ``(N,)`` in loader order, eval mode."""
    was_training = backbone.training
    backbone.eval()
    features, labels = [], []
    try:
        for images, targets in loader:
            out = backbone(images.to(device, non_blocking=True))
            features.append(torch.flatten(out, 1).float().cpu())
            labels.append(torch.as_tensor(targets, dtype=torch.long))
    finally:
        backbone.train(was_training)
    if not features:
        raise ValueError("extract_features: the loader yielded no batches (empty dataset split?)")
    return torch.cat(features), torch.cat(labels)


def extract_copies(
    backbone: nn.Module,
    dataset: Dataset,
    transform: Callable,
    copies: int,
    seed: int,
    device: torch.device,
    batch_size: int,
    num_workers: int,
) -> Tuple[Tensor, Tensor]:
    """``copies`` passes of ``transform`` over ``dataset``: features ``(copies, N, D)`` and labels ``(N,)``.

    Each pass seeds the torch RNG (main process) and the loader generator (workers) with
    ``(seed, copy)``, so random augmentations are reproducible.
    """
    outputs, labels = [], None
    for copy in range(copies):
        pass_seed = seed * 1_000_003 + copy
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(pass_seed)
            loader = make_loader(
                TransformedDataset(dataset, transform),
                batch_size,
                num_workers,
                device,
                generator=torch.Generator().manual_seed(pass_seed),
            )
            feats, labels = extract_features(backbone, loader, device)
        outputs.append(feats)
    return torch.stack(outputs), labels


def cache_key(parts: Mapping[str, Any]) -> str:
    """Stable digest of the JSON form of ``parts`` (everything that determines the features)."""
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:32]


@dataclass
class FeatureCache:
    """``<cache_dir>/<key>.pt`` holding ``features``, ``labels`` and the ``parts`` that made the key.

    ``cache_dir`` None or "" disables the disk cache. ``hits`` / ``misses`` count lookups.
    """

    cache_dir: Optional[str] = None
    hits: int = 0
    misses: int = 0

    def _path(self, parts: Mapping[str, Any]) -> Optional[str]:
        return os.path.join(self.cache_dir, f"{cache_key(parts)}.pt") if self.cache_dir else None

    def get_or_compute(
        self, parts: Mapping[str, Any], compute: Callable[[], Tuple[Tensor, Tensor]]
    ) -> Tuple[Tensor, Tensor]:
        """Cached ``(features, labels)`` for ``parts``, computing and storing them on a miss."""
        path = self._path(parts)
        parts_json = json.loads(json.dumps(parts, sort_keys=True, default=str))
        if path and os.path.isfile(path):
            try:
                entry = torch.load(path, map_location="cpu", weights_only=True)
            except Exception:  # noqa: BLE001 - a truncated or foreign file: recompute it
                entry = None
            if isinstance(entry, dict) and entry.get("parts") == parts_json:
                self.hits += 1
                return entry["features"], entry["labels"]
        self.misses += 1
        features, labels = compute()
        if path:
            os.makedirs(self.cache_dir, exist_ok=True)
            tmp = f"{path}.tmp{os.getpid()}"
            torch.save({"features": features, "labels": labels, "parts": parts_json}, tmp)
            os.replace(tmp, path)  # atomic: readers never see a half-written entry
        return features, labels


def dataset_identity(name: str, root: str, split: str, **extra: Any) -> Dict[str, Any]:
    """What names a split's images in the cache key (the root as an absolute path)."""
    return {"name": name, "root": os.path.abspath(root), "split": split, **extra}


def file_fingerprint(dataset: Dataset) -> Optional[str]:
    """Digest of a file-backed split's (path, size, mtime, ctime, inode, label) list, or None for other
    datasets: images replaced, swapped, moved between classes, added or removed give another cache key
    (issue 24; a rename keeps the mtime but changes the ctime and the path's inode)."""
    if hasattr(dataset, "indices") and hasattr(dataset, "dataset"):  # a subset: its images' files (the key
        return file_fingerprint(dataset.dataset)  # holds the subset's size)
    samples = getattr(dataset, "samples", None)
    if samples is None and getattr(dataset, "paths", None) is not None:
        samples = list(zip(dataset.paths, dataset.targets))
    if not samples:
        return None
    digest = hashlib.sha256()
    for path, label in samples:
        try:
            stat = os.stat(path)
            digest.update(
                f"{path}\0{stat.st_size}\0{stat.st_mtime_ns}\0{stat.st_ctime_ns}\0{stat.st_ino}\0{label}\n".encode()
            )
        except OSError:
            digest.update(f"{path}\0missing\0{label}\n".encode())
    return digest.hexdigest()[:32]
