"""Linear / kNN evaluation of a frozen encoder (docs/algorithm.md §6.3).

    python linear_eval/run.py configs/linear/stl10.yaml weights=runs/stl10_samix mode=protocol
    python linear_eval/run.py configs/linear/digits.yaml weights=random seeds=3

Keys: see ``ssmix.evaluation.config.LinearEvalConfig``. A bad key or value exits with code 2 and a
one-line message.
"""
from __future__ import annotations

import argparse
import os
import sys
from typing import List, Optional

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from ssmix.cli import run_main  # noqa: E402
from ssmix.evaluation.config import load_eval_config  # noqa: E402 - no torch: bad keys fail fast


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description="Linear probe and kNN of a frozen encoder (docs/algorithm.md §6.3).")
    parser.add_argument("config", help="YAML under configs/linear/ (or any file with the same keys)")
    parser.add_argument("overrides", nargs="*", help="dotted.key=value, e.g. weights=runs/x mode=protocol")
    args = parser.parse_args(argv)
    return run_main(lambda: _run(args))


def _run(args: argparse.Namespace) -> int:
    cfg = load_eval_config(args.config, args.overrides)
    from ssmix.evaluation.runner import MARKDOWN_HEADER, default_output_dir, run_linear_eval

    if cfg.output_dir is None:
        cfg.output_dir = default_output_dir(cfg)
    result = run_linear_eval(cfg, log=lambda msg: print(msg, flush=True))
    print(result["summary"])
    print(MARKDOWN_HEADER)
    print(result["markdown_row"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
