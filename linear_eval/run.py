"""``python linear_eval/run.py CONFIG [key=value ...]``: runs :mod:`ssmix.linear_eval.run` (the code lives there)."""

import os
import sys

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from ssmix.linear_eval.run import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
