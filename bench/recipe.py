"""One pre-training run on digits, judged by frozen features: what ``bench/learning.py`` and
``bench/digits_sweep.py`` share.

A run pre-trains a config (plus overrides and a seed) into its own directory, then evaluates the
exported trunk on held-out digits exactly as ``make demo`` does (linear probe on cached features and
kNN, ``configs/linear/digits.yaml``), and reads the last logged health metrics from ``metrics.jsonl``.
A finished run is not trained again (its ``result.json`` is read back), so a long sweep can be
stopped and restarted.
"""
from __future__ import annotations

import json
import os
import statistics
import sys
import time
from typing import Any, Dict, List, Optional, Sequence

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from ssmix.config import load_config  # noqa: E402
from ssmix.evaluation.config import load_eval_config  # noqa: E402

EVAL_CONFIG = os.path.join(ROOT, "configs", "linear", "digits.yaml")
#: the last logged value of these metrics goes into a run's result
HEALTH_KEYS = ("loss", "collapse_std", "mixer_mask_within_var", "mixer_mask_between_var",
               "mixer_mask_saturated", "cluster_head_acc", "cluster_head_ce", "odc_empty", "odc_largest")


def evaluate_trunk(weights: str, image_size: int, arch: Optional[str] = None,
                   cifar_stem: Optional[bool] = None) -> Dict[str, float]:
    """Linear top-1 and kNN top-1 (percent) on held-out digits for a run dir or ``random``."""
    from ssmix.evaluation.runner import run_linear_eval

    overrides = [f"weights={weights}", f"data.image_size={image_size}", "cache_dir=", "output_dir=null"]
    if arch is not None:
        overrides += [f"arch={arch}", f"cifar_stem={str(bool(cifar_stem)).lower()}"]
    result = run_linear_eval(load_eval_config(EVAL_CONFIG, overrides))
    return {"linear": result["top1"], "knn": result["knn_top1"]}


def last_metrics(run_dir: str) -> Dict[str, float]:
    """The last logged value of each :data:`HEALTH_KEYS` metric in ``metrics.jsonl``."""
    found: Dict[str, float] = {}
    with open(os.path.join(run_dir, "metrics.jsonl"), encoding="utf-8") as f:
        for line in f:
            row = json.loads(line)
            found.update({k: row[k] for k in HEALTH_KEYS if k in row})
    return found


def run(config: str, overrides: Sequence[str], seed: int, run_dir: str) -> Dict[str, Any]:
    """Pre-train ``config`` + ``overrides`` with ``seed`` into ``run_dir`` and evaluate it."""
    done = os.path.join(run_dir, "result.json")
    if os.path.exists(done):
        with open(done, encoding="utf-8") as f:
            return json.load(f)
    from ssmix.engine.trainer import train

    cfg = load_config(config, [*overrides, f"seed={seed}", f"output_dir={run_dir}", "resume=null",
                               "train.progress=false"])
    start = time.perf_counter()
    train(cfg)
    minutes = (time.perf_counter() - start) / 60
    result = {"config": os.path.relpath(config, ROOT), "overrides": list(overrides), "seed": seed,
              "minutes": minutes, **evaluate_trunk(run_dir, cfg.data.image_size), **last_metrics(run_dir)}
    with open(done, "w", encoding="utf-8") as f:
        json.dump(result, f, indent=1)
    return result


def mean_std(values: List[float]) -> str:
    if not values:
        return "-"
    if len(values) == 1:
        return f"{values[0]:.1f}"
    return f"{statistics.fmean(values):.1f} ± {statistics.stdev(values):.1f}"
