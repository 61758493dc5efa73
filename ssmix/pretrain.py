"""``ssmix-pretrain CONFIG [dotted.key=value ...] [--print-config]`` (or ``python -m ssmix.pretrain``)

Pre-trains an encoder with the method and mixer the config names. Outputs go to ``output_dir``:
``config.yaml`` (resolved), ``metrics.jsonl``, ``tb/`` (TensorBoard), ``checkpoints/step_*.pt`` and,
at the end, ``backbone.pth`` (a torchvision ResNet state_dict without ``fc``).

A non-empty ``output_dir`` is refused unless ``resume=auto|PATH`` (continue) or ``overwrite=true``
(replace); SIGTERM / SIGINT / SIGHUP write a checkpoint at the next step and exit 143 / 130 / 129
(a repeat within a few seconds, or during a save, is ignored; a later one stops at once). Expected errors
(config, files, disk, divergence) print one line and exit 2.
"""
from __future__ import annotations

import argparse
import sys
from typing import List, Optional

from ssmix.cli import load_pretrain_config, run_main
from ssmix.config import dump_config


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="ssmix-pretrain", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("config", help="YAML config file, or a shipped config's name: mocov2_samix_c, digits/mocov2")
    parser.add_argument("overrides", nargs="*", help="dotted.key=value overrides, e.g. train.epochs=10")
    parser.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    args = parser.parse_args(argv)
    return run_main(lambda: _run(args))


def _run(args: argparse.Namespace) -> int:
    cfg = load_pretrain_config(args.config, args.overrides)
    if args.print_config:
        print(dump_config(cfg), end="")
        return 0
    from ssmix.engine.signals import ForcedStop, Interrupted
    from ssmix.engine.trainer import train

    try:
        summary = train(cfg)
    except (Interrupted, ForcedStop) as stop:
        kept = [o for o in args.overrides if not o.startswith(("resume=", "overwrite="))]
        print(f"{stop}; continue with: python -m ssmix.pretrain {' '.join([args.config, *kept])} resume=auto",
              file=sys.stderr, flush=True)
        return stop.exit_code
    print(f"done: {summary['step']} steps, outputs in {summary['output_dir']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
