"""Online linear probe during pre-training (``train.online_probe``; README "Evaluation").

A linear layer on the online trunk's pooled features of view 1, trained by its own SGD on every labelled
batch. The features come from a no-gradient forward in eval mode (the trunk's buffers restored after it,
since eval() folds split-BN statistics), so the encoder, its BatchNorm statistics and every random
stream are untouched: a run computes the same weights with or without the
probe (tests/test_researcher.py). Its accuracy on the training batches of each epoch is logged as
``online_probe_top1`` at the epoch end. The probe's state travels in checkpoints (``online_probe``), so a
resumed run continues it exactly. Cost: one extra forward of view 1 per step.
"""

from __future__ import annotations

from typing import Any, Dict, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from ssmix.config import ConfigError

MODES = ("off", "auto", "on")


class OnlineProbe(nn.Module):
    """BatchNorm without affine (as linear eval's ``feature_bn``) + Linear, trained by SGD (lr 0.1, m 0.9)."""

    def __init__(self, dim: int, num_classes: int, lr: float = 0.1) -> None:
        super().__init__()
        generator = torch.Generator().manual_seed(0)
        with torch.random.fork_rng(devices=[]):  # nn.Linear's own init draws from the global RNG: keep it
            self.norm = nn.BatchNorm1d(dim, affine=False)
            self.head = nn.Linear(dim, num_classes)
        with torch.no_grad():
            bound = dim**-0.5
            self.head.weight.uniform_(-bound, bound, generator=generator)
            self.head.bias.zero_()
        self.optimizer = torch.optim.SGD(self.parameters(), lr=lr, momentum=0.9)
        self.correct, self.seen, self.loss_sum = 0, 0, 0.0

    def step(self, trunk: nn.Module, images: Tensor, labels: Tensor) -> None:
        """One SGD step of the probe on ``trunk``'s detached features of ``images``."""
        was_training = trunk.training
        with torch.no_grad():
            buffers = [b.clone() for b in trunk.buffers()]  # eval() folds split-BN statistics: put them back
            trunk.eval()
            feats = torch.flatten(trunk(images), 1).float()
            trunk.train(was_training)
            for buffer, saved in zip(trunk.buffers(), buffers):
                buffer.copy_(saved)
        logits = self.head(self.norm(feats))
        loss = F.cross_entropy(logits, labels)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        self.correct += int((logits.argmax(1) == labels).sum())
        self.seen += int(labels.numel())
        self.loss_sum += float(loss.detach()) * int(labels.numel())

    def epoch_metrics(self) -> Dict[str, float]:
        """Top-1 (percent) and mean loss over the batches since the last call; resets the counts."""
        if not self.seen:
            return {}
        out = {
            "online_probe_top1": 100.0 * self.correct / self.seen,
            "online_probe_loss": self.loss_sum / self.seen,
        }
        self.correct, self.seen, self.loss_sum = 0, 0, 0.0
        return out

    def checkpoint_state(self) -> Dict[str, Any]:
        return {
            "module": self.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "counts": [self.correct, self.seen, self.loss_sum],
        }

    def load_checkpoint_state(self, state: Dict[str, Any]) -> None:
        self.load_state_dict(state["module"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.correct, self.seen, self.loss_sum = state["counts"]


def build_probe(
    mode: str, labelled: bool, dim: int, num_classes: Optional[int], device: str
) -> Optional[OnlineProbe]:
    """The probe ``train.online_probe`` asks for: ``off``; ``auto`` = on where the split has labels;
    ``on`` = on, refused on an unlabelled split."""
    if mode not in MODES:
        raise ConfigError(f"train.online_probe: expected off, auto or on, got '{mode}'")
    if mode == "off" or (mode == "auto" and not labelled):
        return None
    if not labelled or not num_classes:
        raise ConfigError(
            "train.online_probe=on: this split has no labels (e.g. stl10 unlabeled, folder); "
            "use train.online_probe=auto or off"
        )
    return OnlineProbe(dim, num_classes).to(device)
