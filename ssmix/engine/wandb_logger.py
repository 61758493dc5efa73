"""Optional Weights & Biases logger (``train.loggers: [tensorboard, wandb]``; README "Pre-training").

It logs the rows of ``metrics.jsonl`` (numbers only) and the mixed-sample grids, with the resolved config.
``wandb`` is an extra (``pip install 'ssmix[wandb]'``), imported only when asked for. The run lives in
``output_dir/wandb`` with an id derived from ``output_dir``, so a resumed run continues the same W&B run.
W&B's own environment variables apply: ``WANDB_MODE=offline`` works without a network (``wandb sync``
uploads later), ``WANDB_PROJECT`` (default ``ssmix``), ``WANDB_ENTITY``.
"""

from __future__ import annotations

import hashlib
import os
from typing import Any, Dict, Sequence

from torch import Tensor

from ssmix.config import ConfigError

LOGGERS = ("tensorboard", "wandb")
INSTALL = "pip install 'ssmix[wandb]' (or pip install wandb)"


def check_loggers(loggers: Sequence[str]) -> None:
    """Known names only, and wandb importable when asked for: before any run directory is touched."""
    for name in loggers:
        if name not in LOGGERS:
            raise ConfigError(
                f"train.loggers: unknown logger '{name}'; expected a list of {', '.join(LOGGERS)}"
            )
    if "wandb" in loggers:
        try:
            import wandb  # noqa: F401
        except ImportError:
            raise ConfigError(
                f"train.loggers: wandb is not installed; {INSTALL}, or drop wandb from train.loggers"
            ) from None


def run_id(output_dir: str) -> str:
    """A stable W&B run id for ``output_dir`` (the same after a resume)."""
    return "ssmix-" + hashlib.sha256(os.path.realpath(output_dir).encode()).hexdigest()[:12]


class WandbLogger:
    """``log(step, row)``, ``image(tag, chw, step)``, ``close()`` on one W&B run."""

    def __init__(self, output_dir: str, config: Dict[str, Any]) -> None:
        import wandb

        self.wandb = wandb
        self.run = wandb.init(
            project=os.environ.get("WANDB_PROJECT", "ssmix"),
            dir=output_dir,
            id=run_id(output_dir),
            name=os.path.basename(os.path.normpath(output_dir)),
            resume="allow",
            config=config,
        )

    def log(self, step: int, row: Dict[str, Any]) -> None:
        scalars = {k: v for k, v in row.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
        if scalars:
            self.run.log(scalars, step=step)

    def image(self, tag: str, image: Tensor, step: int) -> None:
        """``image``: (3, H, W) in [0, 1], as TensorBoard takes it."""
        array = image.detach().cpu().clamp(0, 1).mul(255).round().byte().permute(1, 2, 0).numpy()
        self.run.log({tag: self.wandb.Image(array)}, step=step)

    def close(self) -> None:
        self.run.finish()
