"""Multi-view pre-training data: items ``(views, label, index)`` and a resumable epoch sampler.

Exact resume: the order of an epoch is a function of (seed, epoch) and the augmentation of an item is
a function of (seed, epoch, index) (every RNG is re-seeded per item), so a run resumed at any step sees
the same batches as an uninterrupted one, whatever the number of workers.
"""

from __future__ import annotations

import os
import random
import signal
from typing import Callable, Iterator, List, Tuple

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler, get_worker_info


def _item_seed(seed: int, epoch: int, index: int) -> int:
    return (seed * 1_000_003 + epoch * 7_919 + index * 104_729) % (2**31 - 1)


class MultiViewDataset(Dataset):
    """Wrap a ``(image, label)`` dataset: item -> (list of view tensors, label, index)."""

    def __init__(self, base: Dataset, transform: Callable, seed: int = 0) -> None:
        self.base, self.transform, self.seed = base, transform, seed
        self.epoch = 0

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, key: int | Tuple[int, int]):
        """Item ``key``: an index (of epoch ``self.epoch``) or ``(epoch, index)``, as :class:`RunLoader`'s
        sampler sends them to workers that persist across epochs (their copy of ``epoch`` is stale)."""
        epoch, index = key if isinstance(key, tuple) else (self.epoch, key)
        image, label = self.base[index]
        seed = _item_seed(self.seed, epoch, index)
        in_main = get_worker_info() is None
        if in_main:  # keep the training loop's RNG streams untouched
            states = (random.getstate(), np.random.get_state())
        # The transforms draw from torch's CPU generator only: seeding just that one (torch.manual_seed
        # would reseed every CUDA generator too, the training loop's, at every item with num_workers=0).
        with torch.random.fork_rng(devices=[], enabled=in_main):
            random.seed(seed)
            np.random.seed(seed)
            torch.default_generator.manual_seed(seed)
            views = self.transform(image)
        if in_main:
            random.setstate(states[0])
            np.random.set_state(states[1])
        return views, int(label), index


class EpochSampler(Sampler[int]):
    """Shuffled indices of one epoch (a function of seed and epoch), sharded over ranks, starting at
    ``start`` samples into this rank's shard. Incomplete trailing batches are dropped by the loader."""

    def __init__(
        self, num_samples: int, seed: int, epoch: int = 0, start: int = 0, rank: int = 0, world_size: int = 1
    ) -> None:
        self.num_samples, self.seed, self.epoch, self.start = num_samples, seed, epoch, start
        self.rank, self.world_size = rank, world_size

    def _shard(self) -> List[int]:
        g = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        order = torch.randperm(self.num_samples, generator=g)
        per_rank = self.num_samples // self.world_size
        return order[self.rank * per_rank : (self.rank + 1) * per_rank].tolist()

    def __iter__(self) -> Iterator[int]:
        return iter(self._shard()[self.start :])


class _KeyedEpochSampler(EpochSampler):
    """:class:`EpochSampler` yielding ``(epoch, index)`` keys (see :meth:`MultiViewDataset.__getitem__`)."""

    def __iter__(self) -> Iterator[Tuple[int, int]]:
        return ((self.epoch, i) for i in self._shard()[self.start :])

    def __len__(self) -> int:
        return max(self.num_samples // self.world_size - self.start, 0)


def collate_views(batch):
    views, labels, index = zip(*batch)
    stacked = [torch.stack(v) for v in zip(*views)]
    return stacked, torch.tensor(labels), torch.tensor(index)


def steps_per_epoch(num_samples: int, batch_size: int, world_size: int = 1) -> int:
    return (num_samples // world_size) // batch_size


def _detach_from_stop_signals(worker_id: int) -> None:
    """A worker leaves its parent's process group and ignores SIGINT: SIGTERM / SIGINT sent to the job's
    group (preemption, Ctrl-C) reach only the main process, which finishes the step with its workers, saves
    (ssmix.engine.signals) and then ends them (a direct terminate() still works)."""
    os.setpgrp()
    signal.signal(signal.SIGINT, signal.SIG_IGN)


class RunLoader:
    """One DataLoader for a whole run, whose workers persist across epochs (``persistent_workers``: no
    restart of ``num_workers`` processes at each epoch); :meth:`epoch` points its sampler at an epoch and
    a start step and returns it. Batches are those of :func:`epoch_loader`. :meth:`close` ends the workers."""

    def __init__(
        self,
        dataset: MultiViewDataset,
        batch_size: int,
        seed: int,
        num_workers: int,
        rank: int = 0,
        world_size: int = 1,
        pin_memory: bool = False,
    ) -> None:
        self.dataset, self.batch_size = dataset, batch_size
        self.sampler = _KeyedEpochSampler(len(dataset), seed, 0, 0, rank, world_size)
        # Its own generator: creating an iterator must not draw from the training loop's global RNG.
        self.loader = DataLoader(
            dataset,
            batch_size=batch_size,
            sampler=self.sampler,
            num_workers=num_workers,
            collate_fn=collate_views,
            drop_last=True,
            pin_memory=pin_memory,
            generator=torch.Generator().manual_seed(seed * 100_003),
            persistent_workers=num_workers > 0,
            worker_init_fn=_detach_from_stop_signals if num_workers else None,
        )

    def epoch(self, epoch: int, start_step: int) -> DataLoader:
        """The loader over ``epoch``, starting after ``start_step`` batches of it."""
        self.dataset.epoch = epoch  # items loaded in this process
        self.sampler.epoch, self.sampler.start = epoch, start_step * self.batch_size
        return self.loader

    def close(self) -> None:
        iterator = getattr(self.loader, "_iterator", None)
        if iterator is not None and hasattr(iterator, "_shutdown_workers"):
            iterator._shutdown_workers()
        self.loader._iterator = None


def epoch_loader(
    dataset: MultiViewDataset,
    batch_size: int,
    epoch: int,
    start_step: int,
    seed: int,
    num_workers: int,
    rank: int = 0,
    world_size: int = 1,
    pin_memory: bool = False,
) -> DataLoader:
    """Loader over one epoch, starting after ``start_step`` batches of it."""
    dataset.epoch = epoch
    sampler = EpochSampler(len(dataset), seed, epoch, start_step * batch_size, rank, world_size)
    # Its own generator: creating an iterator must not draw from the training loop's global RNG.
    generator = torch.Generator().manual_seed(seed * 100_003 + epoch)
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        num_workers=num_workers,
        collate_fn=collate_views,
        drop_last=True,
        pin_memory=pin_memory,
        generator=generator,
        persistent_workers=False,
        worker_init_fn=_detach_from_stop_signals if num_workers else None,
    )
