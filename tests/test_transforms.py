"""View augmentations: the digits rotation option (lightly's rr_prob / rr_degrees)."""

import numpy as np
import pytest
import torch
from PIL import Image

from ssmix.config import AugConfig, ConfigError, load_config
from ssmix.data.transforms import build_eval_transform, build_view_transform

MEAN, STD = [0.5] * 3, [0.25] * 3


def _image() -> Image.Image:
    """An asymmetric 16x16 image (a bar in the top-left quadrant), so a rotation moves pixels."""
    a = np.zeros((16, 16, 3), dtype=np.uint8)
    a[2:8, 3:5] = 255
    return Image.fromarray(a)


def _identity_aug(**kw) -> AugConfig:
    """Whole-image crops, no colour, no flips, no blur: the view equals the eval transform unless rotated."""
    return AugConfig(min_scale=1.0, cj_prob=0.0, gray_prob=0.0, blur_prob=0.0, hflip_prob=0.0, **kw)


def test_views_without_rotation_equal_the_eval_transform():
    torch.manual_seed(0)
    views = build_view_transform(_identity_aug(), 16, MEAN, STD)(_image())
    plain = build_eval_transform(16, MEAN, STD)(_image())
    for v in views:
        torch.testing.assert_close(v, plain)


def test_rotation_moves_pixels_and_zero_degrees_is_no_rotation():
    plain = build_eval_transform(16, MEAN, STD)(_image())
    torch.manual_seed(0)
    rotated = build_view_transform(_identity_aug(rotation_prob=1.0, rotation_degrees=30.0), 16, MEAN, STD)
    views = [v for _ in range(4) for v in rotated(_image())]
    assert all((v - plain).abs().max() > 0.5 for v in views)
    # lightly reads rr_degrees=None as quarter turns; probability without an angle must not rotate at all
    torch.manual_seed(0)
    for v in build_view_transform(_identity_aug(rotation_prob=1.0), 16, MEAN, STD)(_image()):
        torch.testing.assert_close(v, plain)


def test_negative_rotation_is_refused_by_name():
    with pytest.raises(ConfigError, match="data.aug.rotation_degrees"):
        load_config(None, ["data.aug.rotation_degrees=-5"])
