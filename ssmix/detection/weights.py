"""The encoder file of a detection transfer (docs/detection.md §1.6, §4.2), read by ssmix's one loader.

:func:`load_encoder_state` returns a plain torchvision ResNet state_dict without ``fc`` (the format of
ssmix's ``backbone.pth``), checked key by key against the trunk. Every format
:func:`ssmix.evaluation.weights.load_pretrained_encoder` reads is accepted: ``backbone.pth``, an ssmix run
directory, an ssmix training checkpoint (split-BN stats averaged), a torchvision checkpoint (``fc``
dropped) or an official MoCo checkpoint (``module.encoder_q.``).
"""

from __future__ import annotations

from typing import Dict, Tuple

from torch import Tensor

from ssmix.evaluation.weights import WeightsError, load_pretrained_encoder
from ssmix.models.backbones import export_state_dict

__all__ = ["WeightsError", "load_encoder_state"]


def load_encoder_state(
    path: str, trust_pickle: bool = False, opt_in: str = ""
) -> Tuple[Dict[str, Tensor], str, bool]:
    """``(state_dict, arch, cifar_stem)`` of the encoder in ``path``, loaded weights-only; ``trust_pickle``
    (the user's explicit opt-in, named by ``opt_in`` in errors) also reads files that pickle objects."""
    encoder = load_pretrained_encoder(path, trust_pickle=trust_pickle, opt_in=opt_in)
    return export_state_dict(encoder.backbone), encoder.arch, encoder.cifar_stem
