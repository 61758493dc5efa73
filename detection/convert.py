"""``python -m detection.convert``: runs :mod:`ssmix.detection.convert` (the code lives there)."""

import sys

from ssmix.detection.convert import main

if __name__ == "__main__":
    sys.exit(main())
