"""Mixed-sample grids: what a config's mixer makes of fixed image pairs over a sweep of lambda.

    ssmix-visualize CONFIG [checkpoint=PATH] [out=grid.png] [pairs=6] [steps=11] [split=NAME] [key=value ...]
    (python -m ssmix.visualize_mix in a checkout)

Rows are image pairs (a = sample i, b = its partner j; both through the eval transform, the pairs a
function of ``seed``), columns are a, b, then the mixer's output at ``steps`` requested lambdas from 0
to 1 (lambda = weight of source a). Everything else on the command line is a config override.

Each requested lambda is passed to the mixer as the training step passes the lambda it draws. Other
random choices (box centre, FMix noise, ResizeMix scale) come from torch's global generator, reseeded
with ``seed`` before every column, so a box grows around the same centre as lambda falls. Box mixers
(CutMix, SaliencyMix, ResizeMix, FMix, Inter-Intra) clip or quantise their boxes: their effective
lambda differs from the requested one, and the column label is the requested lambda.

- ManifoldMix mixes hidden maps at a random layer; the grid shows its pixel-space mix (layers forced
  to ``[0]``) and says so.
- Inter-Intra and SAMix-C read labels: the ODC pseudo-labels of a loaded run when the pairs come from
  the split it trained on, otherwise the dataset labels (-1 = unknown where the split has none).
- SAMix-I/C: the model is built from the config and ``checkpoint=`` (a checkpoint file, or a run
  directory: its newest ``checkpoints/step_*.pt``) is loaded; without one the Mixer is untrained.
  The Mixer reads the target trunk's stage-3 maps (``method.target_trunk()``, eval mode, the trunk
  that feeds it in training). A second figure, ``<out stem>_masks.png``, shows per pair the mixed
  images, the mask of source a actually used (grey = weight of a, after the docs/algorithm.md §3.6
  post-processing) and the raw Mixer output s_a. SAMix-P gets the same figure from its own Mixer.

The sweep runs in eval mode under ``torch.no_grad()`` inside ``torch.random.fork_rng``: it changes
neither the model nor the RNG streams. This module is the command line; the sweep and the drawing live
in :mod:`ssmix.visualize`.
"""

from __future__ import annotations

import os
import sys
from typing import Dict, List, Optional, Sequence, Tuple

import torch.nn as nn

from ssmix.cli import EXPECTED, load_pretrain_config, run_main
from ssmix.config import Config, ConfigError
from ssmix.visualize.figure import mask_figure, mix_figure
from ssmix.visualize.sweep import lambda_sweep, load_pairs, sweep_lambdas

OPTIONS = {"checkpoint": None, "out": "grid.png", "pairs": 6, "steps": 11, "split": None}


def masks_path(out: str) -> str:
    stem, ext = os.path.splitext(out)
    return f"{stem}_masks{ext or '.png'}"


def resolve_checkpoint(path: str) -> str:
    """A checkpoint file, or a run directory -> its newest ``checkpoints/step_*.pt``."""
    from ssmix.engine.checkpoint import latest_checkpoint

    if os.path.isdir(path):
        found = latest_checkpoint(path)
        if found is None:
            raise FileNotFoundError(
                f"checkpoint={path}: a directory without checkpoints/step_*.pt; "
                "pass a run's output_dir or a checkpoint file"
            )
        return found
    if not os.path.isfile(path):
        raise FileNotFoundError(f"checkpoint={path}: no such file or directory")
    return path


def build_model(cfg: Config, checkpoint: Optional[str], device: str) -> nn.Module:
    """Pretrainer(cfg) with ``checkpoint`` loaded. The ODC memory (labels=odc) is sized from the
    checkpoint; without one it stays uninitialised (the sweep then uses dataset labels) and gets a
    nominal size that satisfies its cluster-size checks."""
    from ssmix.data.datasets import dataset_info_from_config
    from ssmix.engine.checkpoint import CheckpointError, load_checkpoint
    from ssmix.engine.pretrainer import Pretrainer

    state = None
    odc = getattr(cfg.mix, "odc", None)
    num_samples = max(odc.num_clusters * max(odc.min_cluster, 1), 2) if odc is not None else 2
    if checkpoint:
        path = resolve_checkpoint(checkpoint)
        loaded = load_checkpoint(path, "checkpoint")
        if not isinstance(loaded, dict) or not isinstance(loaded.get("model"), dict):
            raise CheckpointError(
                f"checkpoint={checkpoint}: {path} is not an ssmix training checkpoint (no 'model'); "
                "pass a checkpoints/step_*.pt file or a run's output_dir"
            )
        state = loaded["model"]
        source = f"checkpoint {os.path.relpath(path)}, step {loaded.get('step', '?')}"
        odc_labels = state.get("mixing.odc.labels")
        if odc_labels is not None:
            num_samples = int(odc_labels.shape[0])
    num_classes = dataset_info_from_config(cfg.data).num_classes
    model = Pretrainer(cfg, num_samples, num_classes)
    if state is not None:
        try:
            model.load_state_dict(state)
        except RuntimeError as exc:
            first = str(exc).splitlines()[0:3]
            raise ConfigError(
                f"checkpoint={checkpoint} does not fit the model this config builds ({' '.join(first)}); "
                "use the run's own config: python -m ssmix.visualize_mix RUN/config.yaml "
                "checkpoint=RUN"
            ) from None
    model.weights_source = source if state is not None else ""
    return model.to(device)


def weights_source(model: nn.Module, checkpoint: Optional[str]) -> str:
    """What the figure's title says about the weights it shows."""
    return getattr(model, "weights_source", "") or ("untrained (no checkpoint=)" if not checkpoint else "")


USAGE = "%(prog)s CONFIG [checkpoint=PATH] [out=grid.png] [pairs=6] [steps=11] [split=NAME] [key=value ...]"


def build_parser():
    from ssmix.cli import command_parser

    parser = command_parser("ssmix-visualize", __doc__, USAGE)
    parser.add_argument(
        "config", nargs="?", help="YAML config file, or a shipped config's name (e.g. mocov2_cutmix)"
    )
    parser.add_argument(
        "items",
        nargs="*",
        metavar="key=value",
        help="this tool's options (checkpoint, out, pairs, steps, split) or config overrides",
    )
    return parser


def parse_args(argv: Sequence[str]) -> Tuple[str, Dict[str, object], List[str]]:
    """CONFIG, this tool's options (``OPTIONS``) and the remaining config overrides."""
    parser = build_parser()
    args = parser.parse_args(list(argv))
    if not args.config:
        parser.error("pass a CONFIG (a YAML file or a shipped name, e.g. mocov2_cutmix)")
    config, options, overrides = args.config, dict(OPTIONS), []
    for item in args.items:
        key, sep, value = item.partition("=")
        if not sep:
            raise ConfigError(f"'{item}': expected key=value (e.g. pairs=4 or mix.type=cutmix)")
        if key in ("pairs", "steps"):
            try:
                options[key] = int(value)
            except ValueError:
                raise ConfigError(f"{key}={value}: expected an integer") from None
        elif key in OPTIONS:
            options[key] = value or None
        else:
            overrides.append(item)
    return config, options, overrides


def main(argv: Optional[Sequence[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    return run_main(lambda: _run(argv), EXPECTED + (ValueError,))


def _run(argv: List[str]) -> int:
    from ssmix.device import resolve_device

    config, opts, overrides = parse_args(argv)
    cfg = load_pretrain_config(config, overrides)
    device = resolve_device(cfg.device)
    split = opts["split"] or cfg.data.split
    pairs = load_pairs(cfg, split, int(opts["pairs"]), device)
    lams = sweep_lambdas(int(opts["steps"]))
    model = build_model(cfg, opts["checkpoint"], device)
    sweep = lambda_sweep(model, pairs, lams, cfg.seed, from_training_split=split == cfg.data.split)
    out = str(opts["out"])
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    source = weights_source(model, opts["checkpoint"])
    mix_figure(cfg, sweep, source).save(out)
    print(
        f"{cfg.method.name} + {cfg.mix.type}, split {split}, pairs (a, b) = "
        f"{list(zip(pairs.index_a.tolist(), pairs.index_b.tolist()))}, lambdas {[round(v, 3) for v in lams]}"
    )
    if sweep.note:
        print(sweep.note)
    if not opts["checkpoint"] and sweep.learned and cfg.mix.type != "samix_p":
        print("note: no checkpoint= given: the Mixer and encoder are untrained")
    print(f"wrote {out}")
    if sweep.learned:
        mask_figure(cfg, sweep, source).save(masks_path(out))
        print(f"wrote {masks_path(out)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
