"""Launchers of :mod:`ssmix.detection` for a source checkout (``python -m detection.train ...``), beside the
presets and detectron2 configs users edit. Installed, the same code runs as ``ssmix-detect`` and
``python -m ssmix.detection.<module>``; this folder is not installed."""
