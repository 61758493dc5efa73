"""``python -m detection.train_net``: runs :mod:`ssmix.detection.train_net` (the code lives there)."""

import sys

from ssmix.detection.train_net import cli

if __name__ == "__main__":
    sys.exit(cli())
