"""Device and precision rules shared by pre-training, evaluation and the benchmarks (docs/config.md:
``device``, ``train.amp``, ``model.channels_last``)."""

from __future__ import annotations

import contextlib
from typing import ContextManager, Optional

import torch

from ssmix.config import ConfigError


def resolve_device(name: str) -> str:
    """``auto`` -> ``cuda`` when available, else ``cpu``; a CUDA device without CUDA or a name torch does
    not parse is a :class:`~ssmix.config.ConfigError`."""
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"device: '{name}' was asked for but CUDA is not available; use device=cpu or auto")
    try:
        torch.device(name)
    except RuntimeError:
        raise ConfigError(f"device: invalid value '{name}', expected auto | cpu | cuda | cuda:N") from None
    return name


def autocast_dtype(amp: str, device: str) -> Optional[torch.dtype]:
    """None (fp32) or the autocast dtype; ``auto`` is bf16 on CUDA and fp32 on CPU."""
    if amp not in ("auto", "bf16", "fp16", "off"):
        raise ConfigError(f"train.amp: expected auto, bf16, fp16 or off, got '{amp}'")
    if amp == "off" or (amp == "auto" and not device.startswith("cuda")):
        return None
    if amp == "fp16" and not device.startswith("cuda"):
        raise ConfigError("train.amp=fp16 needs CUDA; use train.amp=bf16 or off on CPU")
    return torch.float16 if amp == "fp16" else torch.bfloat16


def autocast(device: str, dtype: Optional[torch.dtype]) -> ContextManager:
    """``torch.autocast`` at ``dtype`` on ``device``'s type, or nothing for fp32 (``dtype`` None)."""
    return torch.autocast(device.split(":")[0], dtype=dtype) if dtype else contextlib.nullcontext()


def memory_format_for(channels_last: bool, device: str) -> torch.memory_format:
    """The memory format of ``model.channels_last`` on ``device``: channels_last on CUDA only: on CPU (torch 2.14) it measured 1.03-1.35x slower per MoCo v2 step
    (1.35x with split BN, whose per-split reshape then copies; bench/pretrain_throughput.py)."""
    if channels_last and device.startswith("cuda"):
        return torch.channels_last
    return torch.contiguous_format
