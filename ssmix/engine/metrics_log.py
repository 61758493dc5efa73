"""The run's metrics: ``metrics.jsonl`` rows, plus TensorBoard and / or W&B (docs/config.md: ``train.loggers``)."""

from __future__ import annotations

import json
import os
from typing import Any, Dict, Optional

from torch import Tensor

from ssmix.engine.rundir import truncate_metrics


def host_values(values: Dict[str, Any]) -> Dict[str, Any]:
    """Tensors (losses, metrics) as Python floats: a device-to-host sync, so only at logging steps."""
    return {k: float(v.detach()) if isinstance(v, Tensor) else v for k, v in values.items()}


class MetricsLogger:
    """``metrics.jsonl`` rows, plus TensorBoard and / or W&B (``train.loggers``; rank 0 only)."""

    def __init__(
        self,
        output_dir: str,
        enabled: bool,
        start_step: int = 0,
        loggers=("tensorboard",),
        config: Optional[Dict[str, Any]] = None,
    ) -> None:
        """Rows after ``start_step`` (left by a run that went further before it was killed) are dropped."""
        self.enabled = enabled
        self.tb = self.wandb = None
        if enabled:
            truncate_metrics(os.path.join(output_dir, "metrics.jsonl"), start_step)
            self.file = open(os.path.join(output_dir, "metrics.jsonl"), "a", encoding="utf-8")
            if "tensorboard" in loggers:
                try:
                    from torch.utils.tensorboard import SummaryWriter

                    self.tb = SummaryWriter(os.path.join(output_dir, "tb"), purge_step=start_step + 1)
                except ImportError:  # tensorboard is optional at run time
                    self.tb = None
            if "wandb" in loggers:
                from ssmix.engine.wandb_logger import WandbLogger

                self.wandb = WandbLogger(output_dir, config or {})

    def log(self, step: int, row: Dict[str, Any]) -> None:
        if not self.enabled:
            return
        self.file.write(json.dumps({"step": step, **row}) + "\n")
        self.file.flush()
        if self.tb is not None:
            for key, value in row.items():
                if isinstance(value, (int, float)):
                    self.tb.add_scalar(key, value, step)
        if self.wandb is not None:
            self.wandb.log(step, row)

    def image(self, tag: str, image: Tensor, step: int) -> None:
        if self.enabled and self.tb is not None:
            self.tb.add_image(tag, image, step)
        if self.enabled and self.wandb is not None:
            self.wandb.image(tag, image, step)

    def close(self) -> None:
        if self.enabled:
            self.file.close()
            if self.tb is not None:
                self.tb.close()
            if self.wandb is not None:
                self.wandb.close()
