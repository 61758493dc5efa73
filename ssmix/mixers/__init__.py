"""Mixers: hand-crafted and learned (SAMix) mixed-view generators (:class:`ssmix.mixers.base.Mixer`)."""
from ssmix.mixers.base import MIXERS, Mixer, MixContext, MixResult


def build_mixer(cfg) -> Mixer:
    return MIXERS[cfg.type](cfg)


__all__ = ["MIXERS", "Mixer", "MixContext", "MixResult", "build_mixer"]
