"""View augmentations (lightly's paper recipes) and the plain evaluation transform."""

from __future__ import annotations

from typing import Any, Callable, List, Sequence

import torch
import torchvision.transforms as T
from lightly.transforms import (
    BYOLTransform,
    BYOLView1Transform,
    BYOLView2Transform,
    MoCoV2Transform,
    SimCLRTransform,
    SimSiamTransform,
    SwaVTransform,
)
from torch import Tensor

from ssmix.config import AugConfig

AUG_KINDS = ("mocov2", "simclr", "byol", "simsiam", "swav")


def build_view_transform(
    aug: AugConfig, image_size: int, mean: Sequence[float], std: Sequence[float], uint8: bool = False
) -> Callable[..., List]:
    """PIL image -> list of normalised view tensors (2 views; SwAV: the multi-crop list). ``uint8``: the
    views as uint8 CHW tensors instead, without ``ToTensor`` + ``Normalize``, which
    :class:`DeviceNormalize` then applies on the GPU (4x less pinned memory and host-to-device traffic)."""
    transform = _build_view_transform(aug, image_size, mean, std, normalize=not uint8)
    if uint8:
        _to_uint8_views(transform)
    return transform


class DeviceNormalize:
    """What :func:`build_view_transform` with ``uint8`` left out (lightly's ``ToTensor``: float32 x 1/255,
    then ``Normalize``), on a batch of views wherever it is: the same float operations, the same values."""

    def __init__(self, mean: Sequence[float], std: Sequence[float]) -> None:
        self.mean = torch.tensor(list(mean), dtype=torch.float32).view(-1, 1, 1)
        self.std = torch.tensor(list(std), dtype=torch.float32).view(-1, 1, 1)
        self._on: dict = {}  # device -> (mean, std) there: copied once, not every step

    def __call__(self, views: Tensor) -> Tensor:
        if views.device not in self._on:
            self._on[views.device] = (self.mean.to(views.device), self.std.to(views.device))
        mean, std = self._on[views.device]
        return views.to(torch.float32).mul_(1.0 / 255).sub_(mean).div_(std)


def _to_uint8_views(transform: Any) -> None:
    """Swap every view's final lightly ``ToTensor`` for ``PILToTensor`` (uint8), in place."""
    found = []

    def visit(node: Any) -> None:
        steps = getattr(node, "transforms", None)
        if isinstance(steps, list):
            for i, step in enumerate(steps):
                if type(step).__name__ == "ToTensor":
                    steps[i] = T.PILToTensor()
                    found.append(i)
                else:
                    visit(step)
        inner = getattr(node, "transform", None)
        if inner is not None and not callable(getattr(type(node), "transform", None)):
            visit(inner)

    visit(transform)
    if not found:  # lightly's layout changed: fail here, not with float views normalised twice
        raise RuntimeError("uint8 views: no ToTensor step found in the view transform")


def _build_view_transform(
    aug: AugConfig, image_size: int, mean: Sequence[float], std: Sequence[float], normalize: bool
) -> Callable[..., List]:
    normalize = {"mean": list(mean), "std": list(std)} if normalize else None
    # lightly reads rr_degrees=None as quarter turns: a rotation needs both a probability and an angle.
    rotate = aug.rotation_prob > 0 and aug.rotation_degrees > 0
    common = dict(
        cj_prob=aug.cj_prob,
        cj_strength=aug.cj_strength,
        random_gray_scale=aug.gray_prob,
        hf_prob=aug.hflip_prob,
        rr_prob=aug.rotation_prob if rotate else 0.0,
        rr_degrees=aug.rotation_degrees if rotate else None,
        normalize=normalize,
    )
    if aug.kind == "mocov2":
        return MoCoV2Transform(
            input_size=image_size, min_scale=aug.min_scale, gaussian_blur=aug.blur_prob, **common
        )
    if aug.kind == "simclr":
        return SimCLRTransform(
            input_size=image_size, min_scale=aug.min_scale, gaussian_blur=aug.blur_prob, **common
        )
    if aug.kind == "simsiam":
        return SimSiamTransform(
            input_size=image_size, min_scale=aug.min_scale, gaussian_blur=aug.blur_prob, **common
        )
    if aug.kind == "byol":
        # BYOL's asymmetric views (blur 1.0 / 0.1, solarisation 0 / 0.2); blur_prob=0 turns blur off.
        blur = (1.0, 0.1) if aug.blur_prob > 0 else (0.0, 0.0)
        return BYOLTransform(
            view_1_transform=BYOLView1Transform(
                input_size=image_size, min_scale=aug.min_scale, gaussian_blur=blur[0], **common
            ),
            view_2_transform=BYOLView2Transform(
                input_size=image_size, min_scale=aug.min_scale, gaussian_blur=blur[1], **common
            ),
        )
    if aug.kind == "swav":
        mc = aug.multi_crop
        if not (len(mc.sizes) == len(mc.counts) == len(mc.min_scales) == len(mc.max_scales)):
            raise ValueError(
                "data.aug.multi_crop: sizes, counts, min_scales and max_scales must have equal length"
            )
        if mc.counts[0] != 2:
            raise ValueError("data.aug.multi_crop.counts[0] must be 2 (the two high-resolution views)")
        return SwaVTransform(
            crop_sizes=tuple(mc.sizes),
            crop_counts=tuple(mc.counts),
            crop_min_scales=tuple(mc.min_scales),
            crop_max_scales=tuple(mc.max_scales),
            gaussian_blur=aug.blur_prob,
            **common,
        )
    raise ValueError(
        f"data.aug.kind: unknown augmentation '{aug.kind}', expected one of {', '.join(AUG_KINDS)}"
    )


def build_eval_transform(image_size: int, mean: Sequence[float], std: Sequence[float]) -> Callable:
    """Resize (shorter side) + centre crop to ``image_size``, tensor, normalise."""
    return T.Compose(
        [
            T.Resize(image_size),
            T.CenterCrop(image_size),
            T.ToTensor(),
            T.Normalize(list(mean), list(std)),
        ]
    )
