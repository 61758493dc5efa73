"""Per-iteration learning-rate schedule: linear warm-up then cosine decay (a pure function of the
step, so nothing needs checkpointing)."""

from __future__ import annotations

import math


def warmup_cosine(
    step: int, total_steps: int, base: float, warmup_steps: int = 0, final: float = 0.0
) -> float:
    """``base * (step + 1) / warmup_steps`` during warm-up, then cosine from ``base`` to ``final``."""
    if step < warmup_steps:
        return base * (step + 1) / warmup_steps
    progress = min((step - warmup_steps) / max(total_steps - warmup_steps, 1), 1.0)
    return final + 0.5 * (base - final) * (1.0 + math.cos(math.pi * progress))
