"""``python -m ssmix.pretrain CONFIG [dotted.key=value ...] [--print-config]``

Pre-trains an encoder with the method and mixer the config names. Outputs go to ``output_dir``:
``config.yaml`` (resolved), ``metrics.jsonl``, ``tb/`` (TensorBoard), ``checkpoints/step_*.pt`` and,
at the end, ``backbone.pth`` (a torchvision ResNet state_dict without ``fc``).
"""
from __future__ import annotations

import argparse
import sys
from typing import List, Optional

from ssmix.config import ConfigError, dump_config, load_config


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ssmix.pretrain", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("config", help="YAML config file (see configs/)")
    parser.add_argument("overrides", nargs="*", help="dotted.key=value overrides, e.g. train.epochs=10")
    parser.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    args = parser.parse_args(argv)
    try:
        cfg = load_config(args.config, args.overrides)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.print_config:
        print(dump_config(cfg), end="")
        return 0
    from ssmix.data.datasets import CorruptImageError, DatasetNotFoundError
    from ssmix.engine.trainer import train

    try:
        summary = train(cfg)
    except (ConfigError, CorruptImageError, DatasetNotFoundError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"done: {summary['step']} steps, outputs in {summary['output_dir']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
