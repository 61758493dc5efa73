"""Evaluation of frozen encoders: linear probe (paper protocol or cached features) and kNN (docs/algorithm.md §6.3).

Public names resolve lazily, so ``ssmix.evaluation.config`` (used by the CLI to validate its
arguments) imports without torch.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "EvalDataConfig": "config",
    "LinearEvalConfig": "config",
    "load_eval_config": "config",
    "knn_accuracy": "knn",
    "knn_metrics": "knn",
    "knn_monitor": "monitor",
    "evaluate": "runner",
    "run_linear_eval": "runner",
    "LoadedEncoder": "weights",
    "WeightsError": "weights",
    "load_encoder": "weights",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'ssmix.evaluation' has no attribute '{name}'")
    return getattr(importlib.import_module(f"ssmix.evaluation.{_EXPORTS[name]}"), name)
