"""Linear probe on a frozen trunk, two ways (docs/algorithm.md §6.3).

- :func:`train_probe_in_loop` (``mode=protocol``): the paper's protocol - the trunk runs in eval mode
  on augmented images every epoch; a check asserts its weights are unchanged at the end.
- :func:`train_probe_cached` (``mode=cached``): the same SGD recipe on pre-extracted feature tensors.

Both draw the probe's initial weights and every epoch's sample order from the same seeded
generators, so with the same inputs they follow the same trajectory. Accuracy is reported per
epoch and summarised as the median of the last 10 epochs. The probe standardises its input with a
BatchNorm without affine parameters (``feature_bn``, as the MoCo v3 and MAE probes do), so one learning
rate fits encoders whose features differ in scale by orders of magnitude (docs/algorithm.md §6.3).
"""

from __future__ import annotations

import contextlib
import math
import statistics
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, Sampler

Logger = Optional[Callable[[str], None]]


@dataclass
class ProbeSchedule:
    """SGD recipe of the probe (docs/algorithm.md §6.3: momentum 0.9, wd 0, batch 256, 100 epochs, x0.1 at 60/80)."""

    epochs: int = 100
    batch_size: int = 256
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 0.0
    milestones: Sequence[int] = (60, 80)
    gamma: float = 0.1
    feature_bn: bool = True  # BatchNorm1d(affine=False) in front of the linear layer

    @classmethod
    def from_config(cls, cfg: Any) -> "ProbeSchedule":
        """The schedule an evaluation config (``ssmix.evaluation.config.LinearEvalConfig``) asks for."""
        return cls(
            cfg.epochs,
            cfg.batch_size,
            cfg.lr,
            cfg.momentum,
            cfg.weight_decay,
            tuple(cfg.milestones),
            cfg.gamma,
            cfg.feature_bn,
        )


def median_last(values: Sequence[float], n: int = 10) -> float:
    """Median of the last ``n`` values (all of them when there are fewer)."""
    if not values:
        raise ValueError("median_last: no values")
    return float(statistics.median(list(values)[-n:]))


@dataclass
class ProbeHistory:
    """Per-epoch test top-1 / top-5 (percent) and mean train loss."""

    top1: List[float] = field(default_factory=list)
    top5: List[float] = field(default_factory=list)
    loss: List[float] = field(default_factory=list)

    def summary(self, last: int = 10) -> Dict[str, float]:
        return {
            "top1": median_last(self.top1, last),
            "top5": median_last(self.top5, last),
            "final_top1": self.top1[-1],
            "final_top5": self.top5[-1],
        }

    def divergence(self, num_classes: int) -> Optional[str]:
        """Why this training run diverged, or None: a non-finite loss, a final loss above a chance
        predictor's ln(num_classes), or a final loss above the first epoch's."""
        if not all(math.isfinite(v) for v in self.loss):
            epoch = next(i for i, v in enumerate(self.loss) if not math.isfinite(v))
            return f"its training loss became {self.loss[epoch]} at epoch {epoch + 1}"
        chance = math.log(max(num_classes, 2))
        if self.loss and self.loss[-1] > chance:
            return (
                f"its final training loss {self.loss[-1]:.4g} is above a uniform guess's ln({num_classes}) = "
                f"{chance:.3g}"
            )
        if len(self.loss) > 1 and self.loss[-1] > self.loss[0]:
            return f"its training loss rose from {self.loss[0]:.4g} (epoch 1) to {self.loss[-1]:.4g} (last epoch)"
        return None


class BackboneChangedError(AssertionError):
    """The frozen trunk's weights or buffers changed during linear evaluation."""


def snapshot(module: nn.Module) -> Dict[str, Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def assert_unchanged(module: nn.Module, before: Dict[str, Tensor]) -> None:
    """Raise :class:`BackboneChangedError` naming the entries that differ from ``before``."""
    after = module.state_dict()
    changed = sorted(k for k, v in before.items() if k not in after or not torch.equal(v, after[k].detach()))
    if changed:
        raise BackboneChangedError(
            f"linear eval changed the frozen backbone ({len(changed)} entries): "
            f"{', '.join(changed[:8])}{' ...' if len(changed) > 8 else ''}"
        )


def make_probe(feature_dim: int, num_classes: int, seed: int, feature_bn: bool = True) -> nn.Module:
    """One linear layer with bias; weights ~ N(0, 0.01), bias 0 (MoCo's linear classifier init); with
    ``feature_bn``, behind a BatchNorm without affine parameters that standardises each feature (batch
    statistics while training, running statistics at test time)."""
    linear = nn.Linear(feature_dim, num_classes)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        linear.weight.copy_(torch.randn(linear.weight.shape, generator=generator) * 0.01)
        linear.bias.zero_()
    if not feature_bn:
        return linear
    return nn.Sequential(nn.BatchNorm1d(feature_dim, affine=False), linear)


def make_optimizer(
    probe: nn.Module, schedule: ProbeSchedule
) -> Tuple[torch.optim.SGD, torch.optim.lr_scheduler.MultiStepLR]:
    optimizer = torch.optim.SGD(
        probe.parameters(), lr=schedule.lr, momentum=schedule.momentum, weight_decay=schedule.weight_decay
    )
    return optimizer, torch.optim.lr_scheduler.MultiStepLR(
        optimizer, list(schedule.milestones), schedule.gamma
    )


def epoch_order(num_samples: int, seed: int, epoch: int) -> Tensor:
    """The shuffled sample order of ``epoch`` (shared by both probe modes)."""
    return torch.randperm(num_samples, generator=torch.Generator().manual_seed(seed * 100_003 + epoch + 1))


class EpochBatchSampler(Sampler[List[int]]):
    """Mini-batches of :func:`epoch_order`; call :meth:`set_epoch` before iterating."""

    def __init__(self, num_samples: int, batch_size: int, seed: int) -> None:
        self.num_samples, self.batch_size, self.seed, self.epoch = num_samples, batch_size, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self) -> Iterator[List[int]]:
        return iter(epoch_order(self.num_samples, self.seed, self.epoch).split(self.batch_size))

    def __len__(self) -> int:
        return -(-self.num_samples // self.batch_size)


def _count_correct(logits: Tensor, labels: Tensor) -> Tuple[int, int]:
    top = logits.topk(min(5, logits.shape[1]), dim=1).indices == labels[:, None]
    return int(top[:, 0].sum()), int(top.any(1).sum())


def _log_epoch(log: Logger, epoch: int, schedule: ProbeSchedule, history: ProbeHistory, every: int) -> None:
    if log and (epoch % every == every - 1 or epoch == schedule.epochs - 1):
        log(
            f"  epoch {epoch + 1:3d}/{schedule.epochs}  loss {history.loss[-1]:.4f}  "
            f"top1 {history.top1[-1]:.2f}  top5 {history.top5[-1]:.2f}"
        )


@contextlib.contextmanager
def single_cpu_thread(device: torch.device) -> Iterator[None]:
    """One intra-op thread for the cached probe on CPU (restored after).

    Its steps are thousands of tiny GEMMs (batch x D x classes) where thread synchronisation costs
    more than it saves. Measured on a shared 2-core machine: 10 epochs of digits features 0.13 s with
    one thread against 7.7 s with two; one epoch of 50k x 512 -> 200 classes 1.2 s against 20 s.
    """
    threads = torch.get_num_threads()
    if device.type == "cpu":
        torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def train_probe_cached(
    train_features: Tensor,
    train_labels: Tensor,
    test_features: Tensor,
    test_labels: Tensor,
    num_classes: int,
    schedule: ProbeSchedule,
    seed: int = 0,
    device: torch.device | str = "cpu",
    log: Logger = None,
) -> ProbeHistory:
    """Linear probe on feature tensors. ``train_features`` is ``(N, D)`` or ``(copies, N, D)``.

    With several augmented copies every epoch uses one randomly chosen copy per image, like a fresh
    augmentation per epoch in the protocol. Mini-batch SGD on the device, no data loader.
    """
    device = torch.device(device)
    with single_cpu_thread(device):
        return _train_probe_cached(
            train_features, train_labels, test_features, test_labels, num_classes, schedule, seed, device, log
        )


def _train_probe_cached(
    train_features: Tensor,
    train_labels: Tensor,
    test_features: Tensor,
    test_labels: Tensor,
    num_classes: int,
    schedule: ProbeSchedule,
    seed: int,
    device: torch.device,
    log: Logger,
) -> ProbeHistory:
    copies = train_features.unsqueeze(0) if train_features.dim() == 2 else train_features
    copies, train_labels = copies.to(device), train_labels.to(device)
    test_features, test_labels = test_features.to(device), test_labels.to(device)
    num_copies, num_train, feature_dim = copies.shape
    probe = make_probe(feature_dim, num_classes, seed, schedule.feature_bn).to(device)
    optimizer, scheduler = make_optimizer(probe, schedule)
    copy_generator = torch.Generator().manual_seed(seed + 7919)
    rows = torch.arange(num_train, device=device)
    history = ProbeHistory()
    for epoch in range(schedule.epochs):
        if num_copies == 1:
            epoch_features = copies[0]
        else:
            chosen = torch.randint(num_copies, (num_train,), generator=copy_generator).to(device)
            epoch_features = copies[chosen, rows]
        total_loss = torch.zeros((), device=device)  # summed on the device: no sync per step
        probe.train()
        for batch in epoch_order(num_train, seed, epoch).to(device).split(schedule.batch_size):
            loss = F.cross_entropy(probe(epoch_features[batch]), train_labels[batch])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total_loss += loss.detach() * batch.numel()
        scheduler.step()
        probe.eval()
        with torch.no_grad():
            top1, top5 = _count_correct(probe(test_features), test_labels)
        history.loss.append(total_loss.item() / num_train)
        history.top1.append(100.0 * top1 / len(test_labels))
        history.top5.append(100.0 * top5 / len(test_labels))
        _log_epoch(log, epoch, schedule, history, every=10)
    return history


#: share of the probe's training images held out to pick the learning rate (:func:`select_lr`)
LR_SELECTION_FRACTION = 0.1


def select_lr(
    train_features: Tensor,
    train_labels: Tensor,
    num_classes: int,
    schedule: ProbeSchedule,
    grid: Sequence[float],
    seed: int = 0,
    device: torch.device | str = "cpu",
) -> Tuple[float, Dict[float, float]]:
    """The learning rate of ``grid`` whose probe scores best on a validation carve-out of the training
    features (a fixed class-balanced :data:`LR_SELECTION_FRACTION` of them; the probe trains on the
    rest), with every rate's validation top-1 (median of the last 10 epochs). The test set is never
    looked at; ties go to the first rate of the grid."""
    from dataclasses import replace

    from ssmix.data.datasets import subset_indices

    copies = train_features.unsqueeze(0) if train_features.dim() == 2 else train_features
    size = max(1, round(LR_SELECTION_FRACTION * copies.shape[1]))
    held = torch.zeros(copies.shape[1], dtype=torch.bool)
    held[torch.from_numpy(subset_indices(train_labels.cpu().numpy(), size))] = True
    fit = copies[:, ~held.to(copies.device)]
    val_features, val_labels = copies[0, held.to(copies.device)], train_labels[held.to(train_labels.device)]
    scores = {}
    for lr in grid:
        history = train_probe_cached(
            fit,
            train_labels[~held.to(train_labels.device)],
            val_features,
            val_labels,
            num_classes,
            replace(schedule, lr=float(lr)),
            seed,
            device,
        )
        scores[float(lr)] = history.summary(10)["top1"]
    best = max(scores, key=lambda lr: (scores[lr], -list(scores).index(lr)))
    return best, scores


def _feature_dim(backbone: nn.Module, dataset: Dataset, device: torch.device) -> int:
    dim = getattr(backbone, "out_dim", None)
    if dim is None:
        with torch.no_grad():
            dim = torch.flatten(backbone(dataset[0][0][None].to(device)), 1).shape[1]
    return int(dim)


def _train_epoch_in_loop(
    backbone: nn.Module, probe: nn.Module, loader: DataLoader, optimizer: torch.optim.Optimizer, device
) -> float:
    """One epoch of the probe on the frozen trunk's pooled features; the mean training loss."""
    backbone.eval()
    probe.train()
    total_loss, seen = 0.0, 0
    for images, labels in loader:
        images, labels = images.to(device, non_blocking=True), labels.to(device, non_blocking=True)
        with torch.no_grad():
            features = torch.flatten(backbone(images), 1)
        loss = F.cross_entropy(probe(features), labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        total_loss, seen = total_loss + loss.item() * labels.numel(), seen + labels.numel()
    return total_loss / seen


@torch.no_grad()
def _accuracy_in_loop(
    backbone: nn.Module, probe: nn.Module, loader: DataLoader, device
) -> Tuple[float, float]:
    """(top-1, top-5) in % of trunk + probe on ``loader``."""
    probe.eval()
    top1 = top5 = total = 0
    for images, labels in loader:
        labels = labels.to(device)
        c1, c5 = _count_correct(probe(torch.flatten(backbone(images.to(device)), 1)), labels)
        top1, top5, total = top1 + c1, top5 + c5, total + labels.numel()
    return 100.0 * top1 / total, 100.0 * top5 / total


def train_probe_in_loop(
    backbone: nn.Module,
    train_set: Dataset,
    test_set: Dataset,
    num_classes: int,
    schedule: ProbeSchedule,
    seed: int = 0,
    device: torch.device | str = "cpu",
    num_workers: int = 2,
    log: Logger = None,
) -> ProbeHistory:
    """The paper's protocol: trunk frozen in eval mode, forward every epoch, one linear layer on the
    pooled features. ``train_set`` / ``test_set`` yield transformed ``(image tensor, label)``.

    Raises :class:`BackboneChangedError` if the trunk's state changed (MoCo's sanity check).
    """
    device = torch.device(device)
    backbone.eval().requires_grad_(False)
    before = snapshot(backbone)
    probe = make_probe(_feature_dim(backbone, test_set, device), num_classes, seed, schedule.feature_bn).to(
        device
    )
    optimizer, scheduler = make_optimizer(probe, schedule)
    sampler = EpochBatchSampler(len(train_set), schedule.batch_size, seed)
    pin = device.type == "cuda"
    loader_generator = torch.Generator().manual_seed(seed)
    train_loader = DataLoader(
        train_set, batch_sampler=sampler, num_workers=num_workers, pin_memory=pin, generator=loader_generator
    )
    test_loader = DataLoader(
        test_set, batch_size=schedule.batch_size, num_workers=num_workers, pin_memory=pin
    )
    history = ProbeHistory()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)  # augmentations in the main process (num_workers=0)
        for epoch in range(schedule.epochs):
            sampler.set_epoch(epoch)
            mean_loss = _train_epoch_in_loop(backbone, probe, train_loader, optimizer, device)
            scheduler.step()
            top1, top5 = _accuracy_in_loop(backbone, probe, test_loader, device)
            history.loss.append(mean_loss)
            history.top1.append(top1)
            history.top5.append(top5)
            _log_epoch(log, epoch, schedule, history, every=1)
    assert_unchanged(backbone, before)
    return history
