"""Linear probe and kNN of a frozen encoder (docs/algorithm.md §6.3).

    ssmix-linear-eval stl10 weights=runs/stl10_samix mode=protocol      # a shipped name: configs/linear/stl10.yaml
    ssmix-linear-eval configs/linear/digits.yaml weights=random seeds=3   # or a path
    python linear_eval/run.py configs/linear/digits.yaml weights=random    # from a source checkout

Keys: see ``ssmix.evaluation.config.LinearEvalConfig``. A bad key or value exits with code 2 and a
one-line message.
"""

from __future__ import annotations

import argparse
import sys
from typing import List, Optional

from ssmix.cli import command_parser, run_main
from ssmix.evaluation.config import load_eval_config  # no torch: bad keys fail fast


def main(argv: Optional[List[str]] = None) -> int:
    parser = command_parser("ssmix-linear-eval", __doc__, "%(prog)s CONFIG [key=value ...]")
    parser.add_argument("config", help="a YAML file, or the name of one under configs/linear/ (e.g. digits)")
    parser.add_argument("overrides", nargs="*", help="dotted.key=value, e.g. weights=runs/x mode=protocol")
    args = parser.parse_args(argv)
    return run_main(lambda: _run(args))


def _run(args: argparse.Namespace) -> int:
    cfg = load_eval_config(args.config, args.overrides)
    from ssmix.evaluation.runner import MARKDOWN_HEADER, default_output_dir, free_output_dir, run_linear_eval

    if cfg.output_dir is None:  # the default folder of an earlier evaluation gets a numbered sibling
        cfg.output_dir = free_output_dir(default_output_dir(cfg))
    result = run_linear_eval(cfg, log=lambda msg: print(msg, flush=True))
    print(result["summary"])
    print(MARKDOWN_HEADER)
    print(result["markdown_row"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
