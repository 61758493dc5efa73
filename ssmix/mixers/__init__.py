"""Mixers: hand-crafted and learned (SAMix) mixed-view generators (:class:`ssmix.mixers.base.Mixer`).

Importing this package registers every mixer and its ``mix.*`` config schema (``MIXERS``,
``ssmix.config.MIX_SCHEMAS``).
"""

from ssmix.config import MixConfig
from ssmix.mixers import fmix, handcrafted, saliencymix, samix  # noqa: F401,E402  (each registers itself)
from ssmix.mixers.base import MIXERS, Mixer


def build_mixer(cfg: MixConfig) -> Mixer:
    return MIXERS[cfg.type](cfg)


__all__ = ["MIXERS", "Mixer", "build_mixer"]
