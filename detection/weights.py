"""The encoder file of a detection transfer (detection_notes.md 1.6, 4.2), read by ssmix's one loader.

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


def load_encoder_state(path: str) -> Tuple[Dict[str, Tensor], str, bool]:
    """``(state_dict, arch, cifar_stem)`` of the encoder in ``path`` (a trusted file: pickled objects such
    as a torchvision reference checkpoint's ``args`` are read too)."""
    encoder = load_pretrained_encoder(path, allow_pickle=True)
    return export_state_dict(encoder.backbone), encoder.arch, encoder.cifar_stem
