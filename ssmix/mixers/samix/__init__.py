"""SAMix: the learned Mixer (docs/algorithm.md §2-§4) as mixers ``samix_i``, ``samix_c`` and ``samix_p``.

Importing this package registers the three mixers and their config schemas.
"""

from ssmix.mixers.samix.configs import MaskPostConfig, SAMixCConfig, SAMixIConfig, SAMixPConfig
from ssmix.mixers.samix.mixer_net import MixerNet
from ssmix.mixers.samix.pretrained import SAMixP, export_mixer, load_mixer
from ssmix.mixers.samix.samix import MixerTrainingBatch, SAMixC, SAMixI

__all__ = [
    "MaskPostConfig",
    "MixerTrainingBatch",
    "MixerNet",
    "SAMixC",
    "SAMixCConfig",
    "SAMixI",
    "SAMixIConfig",
    "SAMixP",
    "SAMixPConfig",
    "export_mixer",
    "load_mixer",
]
