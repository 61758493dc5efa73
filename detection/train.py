"""``python -m detection.train``: runs :mod:`ssmix.detection.train` (the code lives there)."""

import sys

from ssmix.detection.train import main

if __name__ == "__main__":
    sys.exit(main())
