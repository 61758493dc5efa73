"""Mixed-sample figures: what a config's mixer makes of fixed image pairs over a sweep of lambda.

:mod:`ssmix.visualize.sweep` reads the pairs and runs the mixer (data), :mod:`ssmix.visualize.figure`
draws (pictures); :func:`training_grid` joins them for TensorBoard. The command line is
``python -m ssmix.visualize_mix``.
"""
from __future__ import annotations

import torch
import torch.nn as nn
from torch import Tensor

from ssmix.config import Config
from ssmix.visualize.figure import mask_figure, mix_figure
from ssmix.visualize.sweep import lambda_sweep, load_pairs, sweep_lambdas


def training_grid(cfg: Config, model: nn.Module, device: torch.device | str, pairs: int = 4,
                  steps: int = 5) -> Tensor:
    """A small figure for TensorBoard, (3, H, W) in [0, 1]: ``pairs`` pairs of the training split
    (eval transform) at ``steps`` lambdas; the mask figure for learned Mixers. RNG and model untouched."""
    import torchvision.transforms.functional as TF

    data = load_pairs(cfg, cfg.data.split, pairs, device)
    sweep = lambda_sweep(model, data, sweep_lambdas(steps), cfg.seed, from_training_split=True)
    figure = mask_figure(cfg, sweep) if sweep.learned else mix_figure(cfg, sweep)
    return TF.to_tensor(figure)
