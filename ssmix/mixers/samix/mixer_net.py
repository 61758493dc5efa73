"""The SAMix Mixer M_phi (OpenMixup's ``PixelMixBlock`` in its SAMix setting), docs/algorithm.md §3.2-3.5, §3.8.

Input: stage-3 maps z_a, z_b (N, C, h, w) of the two sources and lambda. Steps:

1. adaptive lambda encoding: lam~ = rho_k(lam); z_a <- (1 + lam~) z_a, z_b <- (2 - lam~) z_b (3.2);
2. mixing attention: q = W_q [z_a; z_b], k = W_k [z_a; z_b] (1x1 convs 2C -> C/reduction, bias),
   P = softmax(q k / sqrt(d)) over key positions, in fp32 (3.3);
3. value (content) net on z_b only: conv1x1 C -> C/2, BN, ELU, conv1x1 C/2 -> 1, dropout (3.4);
4. content = P v, bilinear upsampling to the image size, s_b = sigmoid(content), s_a = 1 - s_b (3.5).

``lam_offset`` (ours, off in the reference; docs/algorithm.md §3.2): add logit(1 - lam) to the upsampled
content, so s_a = sigmoid(logit(lam) - content): a flat content map gives the flat mask lam (Mixup) and
the content only moves pixels away from it; the value net then reads z_b without the gain. With one
lambda per batch, the value net's BatchNorm (train mode) removes the (2 - lam~) gain exactly, so without
the offset lambda reaches the mask only through the attention weights.

``centre_content`` (ours, with ``lam_offset``; docs/algorithm.md §3.3): the upsampled content minus its
per-image mean, so a content map that is high (or low) everywhere in an image no longer moves that image's
mask mean away from lambda; only its spatial pattern reaches the mask.
"""

from __future__ import annotations

import math
from typing import Dict, Sequence, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from ssmix.mixers.base import expand_lam
from ssmix.mixers.samix.masks import rescale_lambda

#: lambda is clipped to [LAM_EPS, 1 - LAM_EPS] before its logit (``lam_offset``)
LAM_EPS = 1e-3


class MixerNet(nn.Module):
    """Pixel-wise mask generator; ``forward`` returns s_a, the mask of source a, (N, 1, H, W) fp32."""

    def __init__(
        self,
        in_channels: int,
        reduction: int = 2,
        rescale_k: float = 1.0,
        dropout: float = 0.0,
        lam_offset: bool = False,
        qk_init_std: float = 0.01,
        value_init_std: float = 0.01,
        centre_content: bool = False,
    ) -> None:
        super().__init__()
        if in_channels < 2 or in_channels % reduction or in_channels % 2:
            raise ValueError(
                f"MixerNet: feature channels {in_channels} must be even and divisible by reduction={reduction}"
            )
        self.in_channels, self.reduction = in_channels, reduction
        self.rescale_k, self.dropout = float(rescale_k), float(dropout)
        self.lam_offset, self.centre_content = bool(lam_offset), bool(centre_content)
        if self.centre_content and not self.lam_offset:
            raise ValueError("MixerNet: centre_content needs lam_offset (the mask's mean comes from lambda)")
        self.qk_init_std, self.value_init_std = float(qk_init_std), float(value_init_std)
        self.qk_dim = in_channels // reduction
        self.query = nn.Conv2d(2 * in_channels, self.qk_dim, kernel_size=1, bias=True)
        self.key = nn.Conv2d(2 * in_channels, self.qk_dim, kernel_size=1, bias=True)
        hidden = in_channels // 2
        self.value = nn.Sequential(
            nn.Conv2d(in_channels, hidden, kernel_size=1, bias=False),
            nn.BatchNorm2d(hidden),
            nn.ELU(inplace=True),
            nn.Conv2d(hidden, 1, kernel_size=1, bias=False),
            nn.Dropout(dropout),
        )
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Conv/Linear weights N(0, 0.01^2), biases 0; BN weight 1, bias 0 (docs/algorithm.md §3.5 item 4);
        the query and key weights N(0, qk_init_std^2) (``mix.qk_init_std``) and the value net's output
        conv N(0, value_init_std^2) (``mix.value_init_std``), both 0.01 by default (docs/algorithm.md §3.3)."""
        stds = {
            id(self.query): self.qk_init_std,
            id(self.key): self.qk_init_std,
            id(self.value[3]): self.value_init_std,
        }
        for module in self.modules():  # one draw per weight: the default draws what the reference draws
            if isinstance(module, (nn.Conv2d, nn.Linear)):
                std = stds.get(id(module), 0.01)
                nn.init.normal_(module.weight, 0.0, std)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)

    def hparams(self) -> Dict[str, float]:
        """Constructor arguments (stored with an exported Mixer, see ``pretrained.py``)."""
        return {
            "in_channels": self.in_channels,
            "reduction": self.reduction,
            "rescale_k": self.rescale_k,
            "dropout": self.dropout,
            "lam_offset": self.lam_offset,
            "centre_content": self.centre_content,
        }

    def _check(self, z_a: Tensor, z_b: Tensor) -> None:
        if z_a.dim() != 4 or z_a.shape != z_b.shape or z_a.shape[1] != self.in_channels:
            raise ValueError(
                f"MixerNet: expected two (N, {self.in_channels}, h, w) feature maps, got {tuple(z_a.shape)} and "
                f"{tuple(z_b.shape)}; mix.feature_channels must equal the stage-3 width of the backbone "
                f"(256 for resnet18/34, 1024 for resnet50)"
            )

    def content(self, z_a: Tensor, z_b: Tensor, lam: float | Tensor) -> Tensor:
        """The attention-aggregated content map a_b (N, 1, h, w) before upsampling (fp32)."""
        self._check(z_a, z_b)
        n, _, h, w = z_a.shape
        lam_t = rescale_lambda(expand_lam(lam, n, z_a.device), self.rescale_k).view(n, 1, 1, 1)
        raw_b = z_b
        z_a = z_a * (1 + lam_t).to(z_a.dtype)
        z_b = z_b * (2 - lam_t).to(z_b.dtype)
        joint = torch.cat([z_a, z_b], dim=1)
        q = self.query(joint).flatten(2).transpose(1, 2)  # (N, hw, d)
        k = self.key(joint).flatten(2)  # (N, d, hw)
        # with lam_offset the value net reads the ungained z_b: the same content in train mode (where BN
        # removes a batch-wide gain), and no untrained lambda shift in eval mode (SAMix-P, figures)
        v = self.value(raw_b if self.lam_offset else z_b).flatten(2).transpose(1, 2)  # (N, hw, 1)
        with torch.autocast(device_type=z_a.device.type, enabled=False):
            attention = torch.softmax(q.float() @ k.float() / math.sqrt(self.qk_dim), dim=-1)
            return (attention @ v.float()).transpose(1, 2).reshape(n, 1, h, w)

    def logits(self, z_a: Tensor, z_b: Tensor, lam: float | Tensor, size: Sequence[int]) -> Tensor:
        """Content upsampled bilinearly to ``size`` (the image size, docs/algorithm.md §9.10): s_b = sigmoid(it)."""
        content = self.content(z_a, z_b, lam)
        with torch.autocast(device_type=content.device.type, enabled=False):
            logits = F.interpolate(
                content, size=tuple(int(s) for s in size), mode="bilinear", align_corners=False
            )
            if self.centre_content:
                logits = logits - logits.mean(dim=(2, 3), keepdim=True)
            if self.lam_offset:
                lam_t = expand_lam(lam, content.shape[0], content.device).float().clamp(LAM_EPS, 1 - LAM_EPS)
                logits = logits + torch.log((1 - lam_t) / lam_t).view(-1, 1, 1, 1)
            return logits

    def mask_pair(
        self, z_a: Tensor, z_b: Tensor, lam: float | Tensor, size: Sequence[int]
    ) -> Tuple[Tensor, Tensor]:
        """(s_a, s_b), each (N, 1, H, W), s_a + s_b = 1."""
        logits = self.logits(z_a, z_b, lam, size)
        return torch.sigmoid(-logits), torch.sigmoid(logits)

    def forward(self, z_a: Tensor, z_b: Tensor, lam: float | Tensor, size: Sequence[int]) -> Tensor:
        """s_a = 1 - sigmoid(logits) = sigmoid(-logits) (N, 1, H, W): the per-pixel weight of source a."""
        return torch.sigmoid(-self.logits(z_a, z_b, lam, size))
