"""No device-to-host sync per training step: losses and metrics stay tensors and are read back only at
logging steps (on a GPU every such read waits for the queued kernels)."""
from __future__ import annotations

import collections

import torch

import ssmix.engine.trainer as trainer_module
from ssmix.engine.pretrainer import Pretrainer
from tests.helpers import moco_overrides, tiny_config

READS = collections.Counter()  # step (1-based, the step whose outputs were read) -> host reads
CALLS = [0]


class CountingTensor(torch.Tensor):
    """Counts every read of its value back to Python (what forces a sync on a GPU)."""

    def _read(self, name):
        READS[CALLS[0]] += 1
        return getattr(torch.Tensor, name)(self.as_subclass(torch.Tensor))

    def __float__(self):
        return self._read("__float__")

    def __int__(self):
        return self._read("__int__")

    def __bool__(self):
        return self._read("__bool__")

    def item(self):
        return self._read("item")

    def tolist(self):
        return self._read("tolist")


def counting_step(model: Pretrainer):
    def step(*args):
        CALLS[0] += 1
        losses, metrics = model.training_step(*args)
        poison = {k: v.as_subclass(CountingTensor) for k, v in losses.items()}
        return poison, {k: v.as_subclass(CountingTensor) if isinstance(v, torch.Tensor) else v
                        for k, v in metrics.items()}

    return step


def test_losses_and_metrics_are_read_back_only_at_logging_steps(tmp_path, monkeypatch):
    READS.clear()
    CALLS[0] = 0
    monkeypatch.setattr(trainer_module, "wrap_for_training", lambda model, *a: counting_step(model))
    cfg = tiny_config(*moco_overrides(), "mix.type=cutmix", "train.log_every=3", "train.epochs=2",
                      "train.ckpt_every=100", f"output_dir={tmp_path}")  # 32 images / 8 = 4 steps an epoch
    trainer_module.train(cfg)
    assert CALLS[0] == 8
    assert set(READS) == {3, 6, 8}  # log_every=3, and the last step


def test_a_step_returns_its_metrics_as_tensors():
    """No metric of MoCo v2 + CutMix is turned into a Python number inside the step (each would be a
    sync); constants computed on the host are allowed only where the value never lived on the device."""
    torch.manual_seed(0)
    cfg = tiny_config(*moco_overrides(), "mix.type=cutmix")
    model = Pretrainer(cfg, num_samples=32, num_classes=10)
    views = [torch.randn(8, 3, 16, 16), torch.randn(8, 3, 16, 16)]
    losses, metrics = model.training_step(views, torch.zeros(8, dtype=torch.long), torch.arange(8), 0, 10)
    assert {"collapse_std", "mix_lam", "mask_within_var", "mask_between_var", "mask_saturated"} <= set(metrics)
    assert all(isinstance(v, torch.Tensor) and v.dim() == 0 for v in [*losses.values(), *metrics.values()])
