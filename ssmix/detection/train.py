"""Embedded detection transfer: ``ssmix-detect CONFIG [key=value ...]`` (``python -m detection.train`` in a checkout).

CONFIG is a YAML file or the name of a preset shipped in ``detection/presets/`` (e.g. ``tiny_voc_c4``).

Runs ``trials`` independent trainings (seeds ``seed .. seed+trials-1``; MoCo reports VOC as the mean
of 5) and writes ``output_dir/metrics.json`` with the mean, the sample std and every trial's metrics,
plus ``output_dir/log.txt``. Multi-GPU: ``torchrun --nproc_per_node=8 -m ssmix.detection.train CONFIG``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import math
import os
import sys
from typing import Dict, List, Optional, Sequence

import yaml

from ssmix.cli import EXPECTED, command_parser, run_main
from ssmix.detection.engine import LAST_CHECKPOINT, log, run_trial, setup_distributed
from ssmix.detection.schema import DetectionConfig, load_detection_config
from ssmix.engine.rundir import RunDir
from ssmix.shipped import DETECTION


def summarize(per_trial: List[Dict[str, float]]) -> Dict[str, object]:
    """Mean and sample standard deviation (ddof 1; 0 for one trial) of every metric."""
    keys = per_trial[0].keys() if per_trial else []
    mean, std = {}, {}
    for key in keys:
        values = [m[key] for m in per_trial]
        mu = sum(values) / len(values)
        mean[key] = mu
        std[key] = (
            math.sqrt(sum((v - mu) ** 2 for v in values) / (len(values) - 1)) if len(values) > 1 else 0.0
        )
    return {"num_trials": len(per_trial), "mean": mean, "std": std, "per_trial": per_trial}


def _setup_logging(output_dir: str, is_main: bool) -> None:
    log.setLevel(logging.INFO if is_main else logging.WARNING)
    log.propagate = False
    for handler in list(log.handlers):
        log.removeHandler(handler)
        handler.close()
    formatter = logging.Formatter("%(asctime)s %(message)s", "%H:%M:%S")
    handlers: List[logging.Handler] = [logging.StreamHandler(sys.stdout)]
    if is_main:
        os.makedirs(output_dir, exist_ok=True)
        handlers.append(logging.FileHandler(os.path.join(output_dir, "log.txt")))
    for handler in handlers:
        handler.setFormatter(formatter)
        log.addHandler(handler)


def _write_json(path: str, data: object) -> None:
    """Write, then rename: a kill never leaves half a metrics.json."""
    tmp = f"{path}.tmp.{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(data, f, indent=2)
    os.replace(tmp, path)


# What overwrite=true deletes from a previous run's output_dir.
OUTPUTS = ("config.yaml", "log.txt", "metrics.json", LAST_CHECKPOINT, "model_final.pth", "trial_*")


def run(cfg: DetectionConfig) -> Dict[str, object]:
    """All trials of ``cfg``; returns the summary written to ``output_dir/metrics.json`` (main process).
    ``output_dir`` is refused if it holds another run (unless ``resume`` / ``overwrite``) and locked."""
    env = setup_distributed(cfg.device)
    run_dir = (
        RunDir(cfg.output_dir, cfg.resume, cfg.overwrite, OUTPUTS, "resume=true", clean_failed=True)
        if env.is_main
        else contextlib.nullcontext()
    )
    with run_dir as opened:
        try:
            summary = _run(cfg, env, opened)
        except BaseException:
            _close_logging()
            if opened is not None and _has_checkpoint(cfg.output_dir):
                opened.commit()  # a failed run that can resume keeps its directory
            raise
        if opened is not None:
            opened.commit()
        return summary


def _has_checkpoint(output_dir: str) -> bool:
    return any(
        os.path.exists(os.path.join(folder, LAST_CHECKPOINT))
        for folder in [
            output_dir,
            *[os.path.join(output_dir, d) for d in os.listdir(output_dir) if d.startswith("trial_")],
        ]
    )


def _close_logging() -> None:
    """Release log.txt, so that a failed run's directory can be cleaned."""
    for handler in list(log.handlers):
        if isinstance(handler, logging.FileHandler):
            log.removeHandler(handler)
            handler.close()


def _run(cfg: DetectionConfig, env, run_dir: Optional[RunDir]) -> Dict[str, object]:
    if run_dir is not None:
        run_dir.start()  # overwrite=true: the old run is set aside only now (restored if this one fails)
    _setup_logging(cfg.output_dir, env.is_main)
    if env.is_main:
        with open(os.path.join(cfg.output_dir, "config.yaml"), "w", encoding="utf-8") as f:
            yaml.safe_dump(dataclasses.asdict(cfg), f, sort_keys=False)
    per_trial = []
    for trial in range(cfg.trials):
        trial_dir = cfg.output_dir if cfg.trials == 1 else os.path.join(cfg.output_dir, f"trial_{trial}")
        trial_cfg = dataclasses.replace(cfg, seed=cfg.seed + trial, output_dir=trial_dir)
        log.info("trial %d/%d (seed %d) -> %s", trial + 1, cfg.trials, trial_cfg.seed, trial_dir)
        metrics = run_trial(trial_cfg, env)
        if env.is_main and cfg.trials > 1:
            _write_json(os.path.join(trial_dir, "metrics.json"), metrics)
        per_trial.append(metrics)
    if not env.is_main:
        return {}
    summary = summarize(per_trial)
    _write_json(os.path.join(cfg.output_dir, "metrics.json"), summary)
    log.info(
        "result over %d trial(s): %s",
        cfg.trials,
        ", ".join(
            f"{k} {summary['mean'][k]:.2f} +- {summary['std'][k]:.2f}"
            for k in summary["mean"]
            if "-" not in k
        ),
    )
    return summary


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = command_parser(
        "ssmix-detect",
        __doc__,
        "%(prog)s PRESET|CONFIG [key=value ...]",
        epilog=f"Presets: {', '.join(DETECTION.names())}; e.g. ssmix-detect voc_r50_c4_24k "
        "model.weights=runs/mocov2/backbone.pth",
    )
    parser.add_argument("config", nargs="?", help="a YAML file, or a preset's name from detection/presets/")
    parser.add_argument("overrides", nargs="*", help="dotted.key=value, e.g. model.weights=runs/x trials=5")
    args = parser.parse_args(argv)
    if not args.config or "=" in args.config:
        parser.error("pass a PRESET (e.g. tiny_voc_c4) or a YAML config first, then key=value overrides")

    def body() -> int:
        run(load_detection_config(args.config, args.overrides))
        return 0

    return run_main(body, EXPECTED + (ImportError,))


if __name__ == "__main__":
    sys.exit(main())
