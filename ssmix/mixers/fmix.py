"""FMix (Harris et al. 2020, "FMix: Enhancing Mixed Sample Data Augmentation"), docs/algorithm.md §8.

A binary mask is cut from low-frequency Fourier noise: Gaussian complex coefficients whose magnitude
decays as ``1 / f^decay_power`` are inverse-transformed to a grey-level image, and its top
``ceil(lam HW)`` (or ``floor``, with probability 1/2) pixels become 1. One mask per batch, always at the
input's own size (the reference's (32, 32) default is a trap, docs/algorithm.md §8).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from ssmix.config import BetaMixConfig, ConfigError, register_mix_config
from ssmix.mixers.base import Mixer, blend_exact, check_pair, register_mixer
from ssmix.mixup import MixContext, MixedInputs


def fourier_noise(h: int, w: int, decay_power: float, device: torch.device | str = "cpu") -> Tensor:
    """(H, W) low-frequency noise normalised to [0, 1] (FMix paper, Sec. 3).

    Frequency magnitudes ``f = sqrt(fy^2 + fx^2)`` on the real-FFT grid, amplitude
    ``1 / max(f, 1 / max(H, W))^decay_power``, complex N(0, 1) coefficients (drawn from torch's global
    CPU generator), inverse real FFT at (H, W).
    """
    fy = torch.fft.fftfreq(h)[:, None]
    fx = torch.fft.rfftfreq(w)[None, :]
    freq = torch.sqrt(fy**2 + fx**2)
    scale = freq.clamp_min(1.0 / max(h, w)).pow(-decay_power)
    coeffs = torch.randn(2, *freq.shape)  # real and imaginary parts
    spectrum = torch.complex(coeffs[0] * scale, coeffs[1] * scale).to(device)
    grid = torch.fft.irfft2(spectrum, s=(h, w))
    grid = grid - grid.min()
    return grid / grid.max().clamp_min(1e-12)


def binarise_top(noise: Tensor, lam: float) -> Tensor:
    """Binary mask of ``noise``'s shape with its top-k values set to 1, ``k = ceil(lam * size)`` or,
    with probability 1/2, ``floor(lam * size)`` (FMix binarisation, max_soft = 0)."""
    size = noise.numel()
    k = math.ceil(lam * size) if float(torch.rand(())) < 0.5 else math.floor(lam * size)
    k = min(max(k, 0), size)
    flat = torch.zeros(size, device=noise.device)
    flat[torch.topk(noise.flatten(), k).indices] = 1.0
    return flat.view_as(noise)


@register_mix_config("fmix")
@dataclass
class FMixConfig(BetaMixConfig):
    """FMix: lam ~ Beta(alpha, alpha); Fourier-noise mask with spectrum decay ``decay_power``."""

    type: str = "fmix"
    decay_power: float = 3.0

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.decay_power <= 0:
            raise ConfigError(f"mix.decay_power: must be > 0 (FMix uses 3), got {self.decay_power}")


@register_mixer("fmix")
class FMix(Mixer):
    def forward(self, xa: Tensor, xb: Tensor, lam: float, ctx: MixContext) -> MixedInputs:
        check_pair(xa, xb, "fmix")
        n, _, h, w = xa.shape
        keep = binarise_top(fourier_noise(h, w, self.cfg.decay_power, xa.device), lam)
        mask = keep.expand(n, 1, h, w)
        return MixedInputs(blend_exact(xa, xb, mask), keep.mean().expand(n).clone(), 0, mask)
