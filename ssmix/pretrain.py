"""Pre-train an encoder with the method and mixer a config names.

Outputs go to output_dir: config.yaml (resolved), metrics.jsonl, tb/ (TensorBoard),
checkpoints/step_*.pt and, at the end, backbone.pth (a torchvision ResNet state_dict without fc).

A non-empty ``output_dir`` is refused unless ``resume=auto|PATH`` (continue) or ``overwrite=true``
(replace); ``--resume RUN_DIR`` continues a run from its own config.yaml, without restating its
overrides (a key that would change what it computes is refused with the difference). SIGTERM / SIGINT /
SIGHUP write a checkpoint at the next step and exit 143 / 130 / 129 (a repeat within a few seconds, or
during a save, is ignored; a later one stops at once). Expected errors (config, files, disk, divergence)
print one line and exit 2.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import List, Optional

from ssmix.cli import command_parser, load_pretrain_config, run_main
from ssmix.config import ConfigError


def build_parser() -> argparse.ArgumentParser:
    parser = command_parser(
        "ssmix-pretrain",
        __doc__,
        "%(prog)s CONFIG [key=value ...] [--print-config]\n       %(prog)s --resume RUN_DIR [key=value ...]",
    )
    parser.add_argument(
        "config",
        nargs="?",
        help="YAML config file, or a shipped config's name: mocov2_samix_c, digits/mocov2",
    )
    parser.add_argument("overrides", nargs="*", help="dotted.key=value overrides, e.g. train.epochs=10")
    parser.add_argument(
        "--resume",
        metavar="RUN_DIR",
        help="continue the run in RUN_DIR from its config.yaml (= RUN_DIR/config.yaml resume=auto)",
    )
    parser.add_argument(
        "--print-config",
        action="store_true",
        help="print the resolved config, each key's meaning as a comment (docs/config.md), and exit",
    )
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.resume:  # argparse puts the first override into `config`
        args.overrides = [a for a in [args.config, *args.overrides] if a]
        args.config = None
        stray = [a for a in args.overrides if "=" not in a]
        if stray:
            parser.error(
                f"--resume takes the run's own config.yaml; '{stray[0]}' is not a key=value override"
            )
    elif not args.config:
        parser.error("pass a CONFIG (a YAML file or a shipped name, e.g. digits/mocov2) or --resume RUN_DIR")
    return run_main(lambda: _run(args))


def resume_config(run_dir: str) -> str:
    """``RUN_DIR/config.yaml``, the resolved config a run wrote when it started (README "Pre-training")."""
    path = os.path.join(run_dir, "config.yaml")
    if not os.path.isfile(path):
        raise ConfigError(
            f"--resume: {path} not found; pass the output_dir of a run that started (it holds config.yaml)"
        )
    return path


def _run(args: argparse.Namespace) -> int:
    if args.resume:
        args.config = resume_config(args.resume)
        args.overrides = [f"output_dir={args.resume}", "resume=auto", "overwrite=false", *args.overrides]
    cfg = load_pretrain_config(args.config, args.overrides)
    if args.print_config:
        from ssmix.config_doc import commented_yaml

        print(commented_yaml(cfg), end="")
        return 0
    from ssmix.engine.signals import ForcedStop, Interrupted
    from ssmix.engine.trainer import train

    try:
        summary = train(cfg)
    except (Interrupted, ForcedStop) as stop:
        kept = [o for o in args.overrides if not o.startswith(("resume=", "overwrite="))]
        print(
            f"{stop}; continue with: ssmix-pretrain --resume {cfg.output_dir}, or python -m ssmix.pretrain "
            f"{' '.join([args.config, *kept])} resume=auto",
            file=sys.stderr,
            flush=True,
        )
        return stop.exit_code
    print(f"done: {summary['step']} steps, outputs in {summary['output_dir']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
