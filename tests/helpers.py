"""Shared tiny settings for fast CPU tests."""
from ssmix.config import load_config

TINY = ["device=cpu", "data.name=synthetic", "data.image_size=16", "data.num_samples=32", "data.num_workers=0",
        "data.aug.blur_prob=0", "model.arch=resnet18", "model.channels_last=false", "train.batch_size=8",
        "train.epochs=2", "train.progress=false", "train.log_every=1", "train.ckpt_every=100"]


def tiny_config(*overrides, base=None):
    return load_config(base, [*TINY, *overrides])


def moco_overrides():
    return ["method.name=mocov2", "method.queue_size=16", "method.bn_splits=2", "method.momentum=0.9"]
