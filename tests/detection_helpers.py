"""Setup shared by tests/test_detection.py and tests/test_detection_train.py."""

import os
from typing import Dict

import torch

from ssmix.models.backbones import build_backbone, export_state_dict

PRESETS = os.path.join(os.path.dirname(__file__), "..", "detection", "presets")


def encoder_state(arch: str, seed: int = 0) -> Dict[str, torch.Tensor]:
    """A randomly initialised trunk of ``arch`` in ``backbone.pth`` format (reproducible through ``seed``)."""
    torch.manual_seed(seed)
    return export_state_dict(build_backbone(arch))
