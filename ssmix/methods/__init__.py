"""SSL methods behind one interface (:class:`ssmix.methods.base.Method`)."""
from ssmix.config import Config
from ssmix.methods.base import METHODS, Method, MethodOutput, MixedBatch
from ssmix.methods import byol, mocov2, simclr, simsiam, swav  # noqa: F401  (each module registers itself)


def build_method(cfg: Config) -> Method:
    return METHODS[cfg.method.name](cfg)


__all__ = ["METHODS", "Method", "MethodOutput", "MixedBatch", "build_method"]
