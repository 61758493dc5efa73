"""Host-to-device copies that do not make the host wait (a leaf module: any layer may import it)."""

from __future__ import annotations

import torch
from torch import Tensor


def to_device(t: Tensor, device: torch.device | str) -> Tensor:
    """Host tensor ``t`` on ``device`` without a host sync: on CUDA staged in pinned memory and copied
    with ``non_blocking`` (a blocking copy from pageable memory waits for every queued kernel); elsewhere
    ``.to`` as usual. For small per-step tensors drawn on the host (partners, boxes, pseudo-labels)."""
    device = torch.device(device)
    if device.type == "cuda" and t.device.type == "cpu":
        t = t.pin_memory()
    return t.to(device, non_blocking=True)
