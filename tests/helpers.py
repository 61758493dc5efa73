"""Shared tiny settings for fast CPU tests."""

import os

from ssmix.config import load_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
#: the shipped configs the command-line tests run with :data:`TINY`
CONFIG = os.path.join(ROOT, "configs", "synthetic", "mocov2.yaml")
LINEAR = os.path.join(ROOT, "configs", "linear", "synthetic.yaml")

TINY = [
    "device=cpu",
    "data.name=synthetic",
    "data.image_size=16",
    "data.num_samples=32",
    "data.num_workers=0",
    "data.aug.blur_prob=0",
    "model.arch=resnet18",
    "model.channels_last=false",
    "train.batch_size=8",
    "train.epochs=2",
    "train.progress=false",
    "train.log_every=1",
    "train.ckpt_every=100",
]


def tiny_config(*overrides, base=None):
    return load_config(base, [*TINY, *overrides])


def moco_overrides():
    return ["method.name=mocov2", "method.queue_size=16", "method.bn_splits=2", "method.momentum=0.9"]


def pretrain_argv(out, *overrides):
    """``python -m ssmix.pretrain`` arguments of a tiny MoCo v2 run into ``out``."""
    return [CONFIG, *TINY, *moco_overrides(), f"output_dir={out}", *overrides]


def run_pretrain(capsys, out, *overrides):
    """(exit code, stderr) of ``python -m ssmix.pretrain`` run in-process (:func:`pretrain_argv`)."""
    from ssmix import pretrain

    code = pretrain.main(pretrain_argv(out, *overrides))
    return code, capsys.readouterr().err


def checkpoint_steps(out):
    """The steps of the checkpoints in run directory ``out``, oldest first."""
    import ssmix.engine.checkpoint as ckpt

    return [ckpt.checkpoint_step(p) for p in ckpt.list_checkpoints(str(out))]


def assert_same_checkpoint(a, b):
    """Two checkpoints hold the same step, weights and SGD momentum buffers, bit for bit."""
    import torch

    assert a["step"] == b["step"]
    for key, value in a["model"].items():
        assert torch.equal(value, b["model"][key]), key
    for k, st in a["optimizer"]["state"].items():
        assert torch.equal(st["momentum_buffer"], b["optimizer"]["state"][k]["momentum_buffer"])


def uninterrupted_run(out, steps):
    """The final checkpoint of a tiny run of ``steps`` steps into ``out`` (a reference for resume tests)."""
    import ssmix.engine.checkpoint as ckpt
    from ssmix import pretrain

    assert pretrain.main(pretrain_argv(out, f"train.max_steps={steps}")) == 0
    return ckpt.load_checkpoint(ckpt.latest_checkpoint(str(out)))
