"""Launcher of :mod:`ssmix.linear_eval` for a source checkout; installed, it is ``ssmix-linear-eval``."""
