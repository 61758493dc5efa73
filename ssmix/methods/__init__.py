"""SSL methods behind one interface (:class:`ssmix.methods.base.Method`).

Importing this package registers every method and its ``method.*`` config schema (``METHODS``,
``ssmix.config.METHOD_SCHEMAS``).
"""

from ssmix.config import Config
from ssmix.methods import byol, mocov2, simclr, simsiam, swav  # noqa: F401,E402  (each module registers itself)
from ssmix.methods.base import METHODS, Method


def build_method(cfg: Config) -> Method:
    """The method ``cfg.method.name`` built from its own section (and what it needs of the rest)."""
    return METHODS[cfg.method.name].from_config(cfg)


__all__ = ["METHODS", "Method", "build_method"]
