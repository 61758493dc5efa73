"""``python -m detection.synthetic``: runs :mod:`ssmix.detection.synthetic` (the code lives there)."""

import sys

from ssmix.detection.synthetic import main

if __name__ == "__main__":
    sys.exit(main())
