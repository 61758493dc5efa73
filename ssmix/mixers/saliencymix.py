"""SaliencyMix (Uddin et al. 2021), docs/algorithm.md §8: a CutMix-sized box of the partner, centred on the
partner's most salient pixel.

Saliency is the spectral residual of Hou & Zhang (CVPR 2007), computed batched in torch: grey level
(downsampled so that no side exceeds 64 px, the paper's working width; smaller images are used as they
are, since upsampling turns pixel noise into blobs that outshine small objects), log amplitude spectrum
minus its 3 x 3 local mean, inverse FFT with the original phase, squared magnitude, Gaussian blur
(sigma 2.5, as in the authors' reference), resized back to the image.

Differences from the reference (documented choices):
- the reference uses OpenCV's *fine-grained* static saliency; we use the spectral residual (no OpenCV);
- the reference (dist mode) takes one box for the whole batch from the first partner image; we place
  one box per pair, each centred on its own partner's saliency peak, so ``lam`` is per row (boxes near
  a border are clipped by different amounts). The box size still comes from one lambda per batch.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
import torchvision.transforms.functional as TF
from torch import Tensor

from ssmix.config import BetaMixConfig, register_mix_config
from ssmix.mixers.base import Mixer, blend_exact, check_pair, register_mixer
from ssmix.mixers.boxes import centred_boxes, cutmix_box_size, paste_mask
from ssmix.mixup import MixContext, MixedInputs

SALIENCY_SIZE = 64  # largest working side of the spectral residual (Hou & Zhang 2007)
BLUR_KERNEL = 11
BLUR_SIGMA = 2.5
LUMA = (0.299, 0.587, 0.114)


def spectral_residual_saliency(x: Tensor) -> Tensor:
    """(N, 1, H, W) saliency maps of images ``x`` (N, C, H, W) (Hou & Zhang 2007)."""
    _, c, h, w = x.shape
    x = x.float()
    if c == 3:
        gray = (x * torch.tensor(LUMA, device=x.device)[None, :, None, None]).sum(1, keepdim=True)
    else:
        gray = x.mean(1, keepdim=True)
    work = (min(h, SALIENCY_SIZE), min(w, SALIENCY_SIZE))
    if work != (h, w):
        gray = F.interpolate(gray, size=work, mode="bilinear", align_corners=False, antialias=True)
    spectrum = torch.fft.fft2(gray)
    log_amp = torch.log(spectrum.abs() + 1e-8)
    local_mean = F.avg_pool2d(F.pad(log_amp, (1, 1, 1, 1), mode="replicate"), 3, stride=1)
    residual = torch.polar(torch.exp(log_amp - local_mean), spectrum.angle())
    saliency = torch.fft.ifft2(residual).abs() ** 2
    kernel = min(BLUR_KERNEL, 2 * min(work) - 1)  # reflect padding needs kernel // 2 < side
    saliency = TF.gaussian_blur(saliency, [kernel, kernel], [BLUR_SIGMA, BLUR_SIGMA])
    return F.interpolate(saliency, size=(h, w), mode="bilinear", align_corners=False)


def saliency_peaks(x: Tensor) -> tuple[Tensor, Tensor]:
    """Row and column (each (N,), long) of every image's saliency maximum."""
    with torch.no_grad():
        flat = spectral_residual_saliency(x).flatten(1).argmax(1)
    w = x.shape[-1]
    return flat // w, flat % w


@register_mix_config("saliencymix")
@dataclass
class SaliencyMixConfig(BetaMixConfig):
    """SaliencyMix: lam ~ Beta(alpha, alpha), CutMix-sized box at the partner's saliency peak."""

    type: str = "saliencymix"


@register_mixer("saliencymix")
class SaliencyMix(Mixer):
    def forward(self, xa: Tensor, xb: Tensor, lam: float, ctx: MixContext) -> MixedInputs:
        check_pair(xa, xb, "saliencymix")
        _, _, h, w = xa.shape
        box_h, box_w = cutmix_box_size(h, w, lam)
        cy, cx = saliency_peaks(xb)
        mask, lam = paste_mask(centred_boxes(h, w, box_h, box_w, cy, cx), xa)
        return MixedInputs(blend_exact(xa, xb, mask), lam, 0, mask)
