"""Mixed-sample figures: what a config's mixer makes of fixed image pairs over a sweep of lambda.

:mod:`ssmix.visualize.sweep` reads the pairs and runs the mixer (data), :mod:`ssmix.visualize.figure`
draws (pictures); :func:`training_grid` joins them for TensorBoard, :func:`epoch_grid` also writes the PNG under the run.
The command line is ``ssmix-visualize`` (``python -m ssmix.visualize_mix``).
"""

from __future__ import annotations

import os

import torch
import torch.nn as nn
from PIL import Image
from torch import Tensor

from ssmix.config import Config
from ssmix.visualize.figure import mask_figure, mix_figure
from ssmix.visualize.sweep import lambda_sweep, load_pairs, sweep_lambdas

FIGURES = "figures"  # under output_dir: the train.vis_every PNGs


def training_figure(
    cfg: Config,
    model: nn.Module,
    device: torch.device | str,
    pairs: int = 4,
    steps: int = 5,
    source: str = "",
) -> Image.Image:
    """``pairs`` pairs of the training split (eval transform) at ``steps`` lambdas; the mask figure for
    learned Mixers; ``source`` goes into the title (e.g. "epoch 3, step 120"). RNG and model untouched."""
    data = load_pairs(cfg, cfg.data.split, pairs, device)
    sweep = lambda_sweep(model, data, sweep_lambdas(steps), cfg.seed, from_training_split=True)
    return mask_figure(cfg, sweep, source) if sweep.learned else mix_figure(cfg, sweep, source)


def training_grid(
    cfg: Config,
    model: nn.Module,
    device: torch.device | str,
    pairs: int = 4,
    steps: int = 5,
    source: str = "",
) -> Tensor:
    """:func:`training_figure` as a (3, H, W) tensor in [0, 1], for TensorBoard."""
    import torchvision.transforms.functional as TF

    return TF.to_tensor(training_figure(cfg, model, device, pairs, steps, source))


def epoch_grid(cfg: Config, model: nn.Module, device: torch.device | str, epoch: int, step: int) -> Tensor:
    """The ``train.vis_every`` figure: written to ``output_dir/figures/mix_epoch<E>.png`` and returned as a
    tensor for TensorBoard (README "Mixers")."""
    import torchvision.transforms.functional as TF

    figure = training_figure(cfg, model, device, source=f"epoch {epoch}, step {step}")
    folder = os.path.join(cfg.output_dir, FIGURES)
    os.makedirs(folder, exist_ok=True)
    path = os.path.join(folder, f"mix_epoch{epoch:04d}.png")
    tmp = f"{path}.tmp.{os.getpid()}.png"
    figure.save(tmp)
    os.replace(tmp, path)  # atomic, as every output of a run
    return TF.to_tensor(figure)
