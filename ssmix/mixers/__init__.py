"""Mixers: hand-crafted and learned (SAMix) mixed-view generators (:class:`ssmix.mixers.base.Mixer`)."""
from ssmix.mixers.base import MIXERS, Mixer, MixContext, MixResult
from ssmix.mixers import fmix, handcrafted, saliencymix, samix  # noqa: F401,E402  (each registers itself)


def build_mixer(cfg) -> Mixer:
    return MIXERS[cfg.type](cfg)


__all__ = ["MIXERS", "Mixer", "MixContext", "MixResult", "build_mixer"]
