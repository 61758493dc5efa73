"""ResNet trunks (torchvision) with stage-wise execution.

Positions along the trunk: 0 = input image, k = output of ``layer{k}`` (k = 1..4; the stem runs
inside stage 1). ``run(x, start, stop)`` executes the stages between two positions, which is what the
SAMix Mixer (reads position 3, docs/algorithm.md §3.1) and ManifoldMix (starts at position 0, 1 or 2) need.

Parameter names are torchvision's (``conv1``, ``bn1``, ``layer1`` ... ``layer4``), so
:func:`export_state_dict` loads with ``strict=True`` into ``torchvision.models.resnetXX()`` whose
``fc`` is replaced by ``nn.Identity()``.
"""

from __future__ import annotations

from typing import Callable, Dict, Mapping, Optional

import torch
import torch.nn as nn
import torchvision
from lightly.models.batchnorm import SplitBatchNorm as _LightlySplitBatchNorm
from torch import Tensor

from ssmix.config import ConfigError

ARCHS = ("resnet18", "resnet34", "resnet50")
STAGE_CHANNELS: Dict[str, tuple] = {
    "resnet18": (3, 64, 128, 256, 512),
    "resnet34": (3, 64, 128, 256, 512),
    "resnet50": (3, 256, 512, 1024, 2048),
}


class SplitBatchNorm(_LightlySplitBatchNorm):
    """lightly's SplitBatchNorm (single-device shuffle-BN emulation) made channels_last-safe.

    lightly's forward reshapes with ``view``, which fails on channels_last tensors; ``reshape``
    is the same operation when the tensor is contiguous and a copy otherwise.
    """

    def forward(self, input: Tensor) -> Tensor:
        if not (self.training or not self.track_running_stats) or self.num_splits == 1:
            return super().forward(input)
        n, c, h, w = input.shape
        if n % self.num_splits:
            raise ValueError(f"SplitBatchNorm: batch {n} is not divisible by bn_splits={self.num_splits}")
        out = nn.functional.batch_norm(
            input.reshape(-1, c * self.num_splits, h, w),
            self.running_mean,
            self.running_var,
            self.weight.repeat(self.num_splits),
            self.bias.repeat(self.num_splits),
            training=True,
            momentum=0.0 if self.momentum is None else self.momentum,
            eps=self.eps,
        )
        return out.reshape(n, c, h, w)


def norm_layer_factory(bn_splits: int) -> Callable[[int], nn.Module]:
    if bn_splits <= 1:
        return nn.BatchNorm2d
    return lambda channels: SplitBatchNorm(channels, bn_splits)


class ResNetTrunk(nn.Module):
    """A torchvision ResNet without ``fc``; ``forward`` returns the pooled last-stage features."""

    def __init__(
        self,
        arch: str = "resnet18",
        cifar_stem: bool = False,
        zero_init_residual: bool = False,
        bn_splits: int = 1,
    ) -> None:
        super().__init__()
        if arch not in ARCHS:
            raise ConfigError(f"model.arch: unknown backbone '{arch}', expected one of {', '.join(ARCHS)}")
        net = getattr(torchvision.models, arch)(
            weights=None, zero_init_residual=zero_init_residual, norm_layer=norm_layer_factory(bn_splits)
        )
        if cifar_stem:
            net.conv1 = nn.Conv2d(3, 64, kernel_size=3, stride=1, padding=1, bias=False)
            nn.init.kaiming_normal_(net.conv1.weight, mode="fan_out", nonlinearity="relu")
            net.maxpool = nn.Identity()
        self.arch, self.cifar_stem = arch, cifar_stem
        self.conv1, self.bn1, self.relu, self.maxpool = net.conv1, net.bn1, net.relu, net.maxpool
        self.layer1, self.layer2, self.layer3, self.layer4 = net.layer1, net.layer2, net.layer3, net.layer4
        self.stage_channels = STAGE_CHANNELS[arch]
        self.out_dim = self.stage_channels[4]
        # Downsampling factor of each position w.r.t. the input image.
        stem = 1 if cifar_stem else 4
        self.stage_strides = (1, stem, stem * 2, stem * 4, stem * 8)

    def _stages(self):
        stem = nn.Sequential(self.conv1, self.bn1, self.relu, self.maxpool)
        return (lambda x: self.layer1(stem(x)), self.layer2, self.layer3, self.layer4)

    def run(self, x: Tensor, start: int = 0, stop: int = 4) -> Tensor:
        """Run the trunk from position ``start`` to position ``stop`` (feature maps, no pooling)."""
        if not 0 <= start <= stop <= 4:
            raise ValueError(f"invalid trunk positions start={start}, stop={stop}")
        for stage in self._stages()[start:stop]:
            x = stage(x)
        return x

    @staticmethod
    def pool(maps: Tensor) -> Tensor:
        return torch.flatten(nn.functional.adaptive_avg_pool2d(maps, 1), 1)

    def forward(self, x: Tensor, start: int = 0) -> Tensor:
        return self.pool(self.run(x, start, 4))

    def forward_with_map(self, x: Tensor, map_at: int = 3) -> tuple:
        """Pooled features plus the feature map at position ``map_at`` (one pass)."""
        maps = self.run(x, 0, map_at)
        return self.pool(self.run(maps, map_at, 4)), maps


def build_backbone(
    arch: str = "resnet18", cifar_stem: bool = False, zero_init_residual: bool = False, bn_splits: int = 1
) -> ResNetTrunk:
    return ResNetTrunk(arch, cifar_stem, zero_init_residual, bn_splits)


def fold_split_bn_stats(state_dict: Mapping[str, Tensor]) -> Dict[str, Tensor]:
    """Split-BN running stats of shape ``(splits*C,)`` averaged over the splits to ``(C,)``.

    ``C`` is the width of the layer's ``weight`` (SplitBatchNorm keeps one affine pair per channel and
    ``splits`` copies of the running stats); every other entry is returned as is.
    """
    out = dict(state_dict)
    for key, value in state_dict.items():
        if not key.endswith(("running_mean", "running_var")):
            continue
        weight = state_dict.get(key.rsplit(".", 1)[0] + ".weight")
        if (
            weight is not None
            and value.dim() == 1
            and value.numel() != weight.numel()
            and value.numel() % weight.numel() == 0
        ):
            out[key] = value.view(-1, weight.numel()).mean(0)
    return out


def export_state_dict(trunk: ResNetTrunk) -> Dict[str, Tensor]:
    """Plain torchvision ResNet state_dict (no ``fc``): split-BN running stats averaged over splits."""
    return fold_split_bn_stats({key: value.detach().clone() for key, value in trunk.state_dict().items()})


def load_torchvision_resnet(
    state_dict: Dict[str, Tensor], arch: str, cifar_stem: bool = False, strict: bool = True
) -> nn.Module:
    """Build ``torchvision.models.<arch>()`` with ``fc = Identity`` and load an exported trunk."""
    net = getattr(torchvision.models, arch)(weights=None)
    if cifar_stem:
        net.conv1 = nn.Conv2d(3, 64, kernel_size=3, stride=1, padding=1, bias=False)
        net.maxpool = nn.Identity()
    net.fc = nn.Identity()
    net.load_state_dict(state_dict, strict=strict)
    return net


def infer_arch(state_dict: Dict[str, Tensor]) -> Optional[tuple]:
    """Guess (arch, cifar_stem) from an exported trunk state_dict; None if it is not a ResNet."""
    if "conv1.weight" not in state_dict:
        return None
    cifar_stem = state_dict["conv1.weight"].shape[-1] == 3
    if "layer1.0.conv3.weight" in state_dict:
        return "resnet50", cifar_stem
    return ("resnet34" if "layer1.2.conv1.weight" in state_dict else "resnet18"), cifar_stem
