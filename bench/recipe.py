"""One pre-training run on digits, judged by frozen features: what ``bench/learning.py`` and
``bench/digits_sweep.py`` share.

A run pre-trains a config (plus overrides and a seed) into its own directory, then evaluates the
exported trunk on held-out digits exactly as ``make demo`` does (linear probe on cached features and
kNN, ``configs/linear/digits.yaml``), and reads the last logged health metrics from ``metrics.jsonl``.
Runs live in ``runs/recipes/<config stem>[,<override>...]/seed<k>``: a finished run is not trained
again (its ``result.json`` is read back) and an interrupted one resumes, so a long sweep can be
stopped and restarted, and the sweep and the learning benchmark share runs. ``runs/`` is not kept in
git, so every finished run's result is also appended to ``bench/results.jsonl`` (committed): a fresh
checkout rebuilds the tables from that ledger without training again. After changing a config file,
delete its runs and its ledger lines.
"""

from __future__ import annotations

import json
import os
import statistics
import time
from typing import Any, Dict, List, Optional, Sequence, Tuple

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

from torch import Tensor  # noqa: E402

from ssmix.cli import load_pretrain_config  # noqa: E402
from ssmix.config import Config  # noqa: E402
from ssmix.evaluation.config import load_eval_config  # noqa: E402
from ssmix.quickstart import heldout_accuracy, last_metrics  # noqa: E402  (the demo's evaluation)

RUNS = os.path.join(ROOT, "runs", "recipes")
#: one JSON line per finished run (``result.json`` as :func:`run` wrote it), kept in git
LEDGER = os.path.join(ROOT, "bench", "results.jsonl")


def resolve(config: str, overrides: Sequence[str], seed: int) -> Tuple[Config, str]:
    """The run's config and its directory: ``[<dataset folder>/]<config stem>[,<override>...]/seed<k>``
    (digits runs have no dataset folder, as before other data sets had recipes)."""
    cfg = load_pretrain_config(config, [*overrides, f"seed={seed}", "resume=auto", "train.progress=false"])
    name = ",".join([os.path.splitext(os.path.basename(config))[0], *overrides]).replace(os.sep, "_")
    folder = os.path.basename(os.path.dirname(os.path.abspath(config)))
    cfg.output_dir = os.path.join(RUNS, *([] if folder == "digits" else [folder]), name, f"seed{seed}")
    return cfg, cfg.output_dir


def eval_config(cfg: Config) -> str:
    """The linear-eval config that judges a run: ``configs/linear/<data.name>.yaml``."""
    return os.path.join(ROOT, "configs", "linear", f"{cfg.data.name}.yaml")


def _key(config: str, overrides: Sequence[str], seed: int) -> Tuple[str, Tuple[str, ...], int]:
    return os.path.relpath(os.path.abspath(config), ROOT), tuple(overrides), seed


def ledger() -> Dict[Tuple[str, Tuple[str, ...], int], Dict[str, Any]]:
    """The recorded results (:data:`LEDGER`) by (config relative to the repository, overrides, seed)."""
    if not os.path.exists(LEDGER):
        return {}
    with open(LEDGER, encoding="utf-8") as f:
        rows = [json.loads(line) for line in f if line.strip()]
    return {_key(os.path.join(ROOT, r["config"]), r["overrides"], r["seed"]): r for r in rows}


def record(result: Dict[str, Any]) -> None:
    """Append a finished run's result to :data:`LEDGER` (a later line for the same run replaces it)."""
    with open(LEDGER, "a", encoding="utf-8") as f:
        f.write(json.dumps(result, sort_keys=True) + "\n")


def finished(config: str, overrides: Sequence[str], seed: int) -> Optional[Dict[str, Any]]:
    """The result of a finished run (its ``result.json``, else its ledger line), or None. A SAMix run's
    result gets its held-out mask statistics (:func:`heldout_masks`) the first time it is read without
    them while its checkpoint is still here, and keeps them in ``result.json`` and the ledger."""
    done = os.path.join(resolve(config, overrides, seed)[1], "result.json")
    if not os.path.exists(done):
        return ledger().get(_key(config, overrides, seed))
    with open(done, encoding="utf-8") as f:
        result = json.load(f)
    recorded = ledger().get(_key(config, overrides, seed))
    cfg = resolve(config, overrides, seed)[0]
    missing = {}
    if "mixer_mask_within_var" in result and "heldout_mask_digit_corr" not in result:  # a learned Mixer
        missing.update(heldout_masks(config, overrides, seed))
    if cfg.data.name != "digits" and cfg.mix.type != "none" and "heldout_object_corr" not in result:
        missing["heldout_object_corr"] = heldout_object_corr(config, overrides, seed)
    if "online_knn" not in result:
        missing["online_knn"] = online_knn_curve(os.path.dirname(done), cfg)
    if missing:
        result.update(missing)
        with open(done, "w", encoding="utf-8") as f:
            json.dump(result, f, indent=1)
    if recorded != result:
        record(result)
    return result


def online_knn_curve(run_dir: str, cfg) -> List[List[float]]:
    """``[[epoch, top-1], ...]`` of the online kNN monitor (``train.knn_every``) in ``run_dir``'s
    ``metrics.jsonl``, kept in the result so that the curve outlives the run directory."""
    path = os.path.join(run_dir, "metrics.jsonl")
    if not os.path.exists(path):
        return []
    with open(path, encoding="utf-8") as f:
        rows = [json.loads(line) for line in f if line.strip()]
    steps_per_epoch = max(row.get("step", 0) for row in rows) / max(cfg.train.epochs, 1)
    return [[round(row["step"] / steps_per_epoch, 2), row["knn_top1"]] for row in rows if "knn_top1" in row]


def standardised(result: Dict[str, Any]) -> bool:
    """Whether a result was scored by the standardised probe (``feature_bn``, docs/algorithm.md §6.3, since
    2026-12-03; every Fashion-MNIST run was). Digits runs before it were scored on raw features."""
    return bool(result.get("feature_bn"))


def run(config: str, overrides: Sequence[str], seed: int) -> Dict[str, Any]:
    """Pre-train ``config`` + ``overrides`` with ``seed`` and evaluate it, or read the finished run when
    it was scored by today's probe (:func:`standardised`); one scored on raw features is run again."""
    result = finished(config, overrides, seed)
    if result is not None and standardised(result):
        return result
    cfg, run_dir = resolve(config, overrides, seed)
    if result is not None and os.path.exists(os.path.join(run_dir, "result.json")):
        return rescore(result, cfg, run_dir)
    from ssmix.engine.trainer import train

    start = time.perf_counter()
    train(cfg)
    minutes = (time.perf_counter() - start) / 60
    result = {
        "config": os.path.relpath(config, ROOT),
        "overrides": list(overrides),
        "seed": seed,
        "run_dir": os.path.relpath(run_dir, ROOT),
        "minutes": minutes,
        **heldout_accuracy(run_dir, cfg.data.image_size, eval_config=eval_config(cfg)),
        "feature_bn": load_eval_config(eval_config(cfg), [f"weights={run_dir}"]).feature_bn,
        **last_metrics(run_dir),
        "online_knn": online_knn_curve(run_dir, cfg),
    }
    with open(os.path.join(run_dir, "result.json"), "w", encoding="utf-8") as f:
        json.dump(result, f, indent=1)
    record(result)
    return result


#: the linear-eval override that scores on the tuning carve-out instead of the test split (Fashion-MNIST)
VAL_SPLIT = ["data.test_split=val"]


def rescore(result: Dict[str, Any], cfg, run_dir: str) -> Dict[str, Any]:
    """Score a finished run's encoder again with today's probe (:func:`standardised`): the encoder and its
    minutes are those of the run; only the linear and kNN figures are new."""
    result.update(
        heldout_accuracy(run_dir, cfg.data.image_size, eval_config=eval_config(cfg)),
        feature_bn=load_eval_config(eval_config(cfg), [f"weights={run_dir}"]).feature_bn,
    )
    with open(os.path.join(run_dir, "result.json"), "w", encoding="utf-8") as f:
        json.dump(result, f, indent=1)
    record(result)
    return result


def val_accuracy(config: str, overrides: Sequence[str], seed: int) -> Dict[str, float]:
    """A run's linear and kNN top-1 on the ``val`` carve-out, the split recipes are tuned on (pre-trained
    first when it has not been): kept in ``result.json`` and the ledger as ``val_linear`` / ``val_knn``
    beside the test figures, which a sweep does not read."""
    result = run(config, overrides, seed)
    if "val_linear" not in result:
        cfg, run_dir = resolve(config, overrides, seed)
        found = heldout_accuracy(
            run_dir, cfg.data.image_size, eval_config=eval_config(cfg), overrides=VAL_SPLIT
        )
        result.update(val_linear=found["linear"], val_knn=found["knn"])
        with open(os.path.join(run_dir, "result.json"), "w", encoding="utf-8") as f:
            json.dump(result, f, indent=1)
        record(result)
    return {"linear": result["val_linear"], "knn": result["val_knn"]}


def random_accuracy(config: str, seed: int, eval_overrides: Sequence[str] = ()) -> Dict[str, float]:
    """Linear and kNN top-1 of a random encoder of ``config``'s geometry (arch, stem, image size) built
    with ``seed``, through the config's linear eval (+ ``eval_overrides``): evaluated once, then read back
    from ``runs/recipes/[<dataset folder>/]random_init[,<override>...]/seed<k>/result.json``, as a
    finished run is (the tables are rebuilt without evaluating random encoders again)."""
    cfg, run_dir = resolve(config, [], seed)
    name = ",".join(["random_init", *eval_overrides]).replace(os.sep, "_")
    path = os.path.join(os.path.dirname(os.path.dirname(run_dir)), name, f"seed{seed}", "result.json")
    if os.path.exists(path):
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    result = heldout_accuracy(
        f"random:{seed}",
        cfg.data.image_size,
        cfg.model.arch,
        cfg.model.cifar_stem,
        eval_config=eval_config(cfg),
        overrides=list(eval_overrides),
    )
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(f"{path}.tmp", "w", encoding="utf-8") as f:
        json.dump(result, f, indent=1)
    os.replace(f"{path}.tmp", path)
    return result


def pixel_accuracy(image_size: int, eval_config_path: Optional[str] = None) -> Dict[str, float]:
    """Linear top-1 and kNN top-1 (percent) of the images themselves as features (the held-out split of
    ``eval_config_path``, default digits, at ``image_size``, normalised as the encoders see them,
    flattened): the same probe and kNN as :func:`heldout_accuracy`, a reference for what the pixels
    alone give."""
    import torch

    from ssmix.evaluation.config import load_eval_config
    from ssmix.evaluation.features import TransformedDataset
    from ssmix.evaluation.knn import knn_metrics
    from ssmix.evaluation.linear import ProbeSchedule, train_probe_cached
    from ssmix.evaluation.runner import build_eval_data
    from ssmix.quickstart import EVAL_CONFIG

    cfg = load_eval_config(
        eval_config_path or EVAL_CONFIG, ["weights=random", f"data.image_size={image_size}"]
    )
    data = build_eval_data(cfg.data)
    (train, train_labels), (test, test_labels) = [
        (torch.stack([x.flatten() for x, _ in items]), torch.tensor([y for _, y in items]))
        for items in (TransformedDataset(split, data.test_tf) for split in (data.train_set, data.test_set))
    ]
    knn = knn_metrics(train, train_labels, test, test_labels, data.num_classes, cfg.knn_k, cfg.knn_t)
    schedule = ProbeSchedule.from_config(cfg)
    probe = train_probe_cached(train, train_labels, test, test_labels, data.num_classes, schedule, seed=0)
    return {"linear": probe.summary(10)["top1"], "knn": knn["knn_top1"]}


#: lambdas at which a learned Mixer's held-out masks are summarised
HELDOUT_LAMS = (0.25, 0.75)


def heldout_masks(config: str, overrides: Sequence[str], seed: int, pairs: int = 64) -> Dict[str, float]:
    """A finished SAMix run's raw Mixer masks on ``pairs`` held-out digit pairs, as ``visualize_mix`` draws
    them (eval mode, docs/algorithm.md §3.2): mean mask at each of :data:`HELDOUT_LAMS` (a Mixer that
    follows lambda gives 0.25 / 0.75), within-image variance and saturated share over both, and whether
    the masks follow the digits (:func:`digit_corr`; the value net reads b, docs/algorithm.md §3.4)."""
    from ssmix.mixers.base import mask_statistics
    from ssmix.visualize.sweep import lambda_sweep, load_pairs
    from ssmix.visualize_mix import build_model

    cfg, run_dir = resolve(config, overrides, seed)
    model = build_model(cfg, run_dir, "cpu")
    sweep = lambda_sweep(model, load_pairs(cfg, "test", pairs), HELDOUT_LAMS, seed, from_training_split=False)
    found = {
        f"heldout_mask_mean_{int(lam * 100)}": float(masks.mean())
        for lam, masks in zip(HELDOUT_LAMS, sweep.raw_masks)
    }
    stats = mask_statistics(sweep.raw_masks.flatten(0, 1), "heldout_mask_")
    found.update({key: float(stats[key]) for key in ("heldout_mask_within_var", "heldout_mask_saturated")})
    found["heldout_mask_digit_corr"] = statistics.fmean(
        digit_corr(masks, sweep.xb) for masks in sweep.raw_masks
    )
    return found


def heldout_object_corr(
    config: str, overrides: Sequence[str], seed: int, pairs: int = 64, lam: float = 0.5
) -> float:
    """Whether a finished run's mixer follows the objects on ``pairs`` held-out pairs (any mixer, the masks
    it applies at ``lam``, eval mode as ``visualize_mix`` draws them): ``ssmix.visualize.mask_stats.object_corr``."""
    from ssmix.visualize.mask_stats import object_corr
    from ssmix.visualize.sweep import lambda_sweep, load_pairs
    from ssmix.visualize_mix import build_model

    cfg, run_dir = resolve(config, overrides, seed)
    model = build_model(cfg, run_dir, "cpu")
    sweep = lambda_sweep(model, load_pairs(cfg, "test", pairs), (lam,), seed, from_training_split=False)
    if sweep.masks is None:
        raise ValueError(f"{config}: its mixer ({cfg.mix.type}) returns no pixel mask")
    return object_corr(sweep.masks[0], sweep.xa, sweep.xb)


def digit_corr(masks: Tensor, xb: Tensor) -> float:
    """Whether masks of source a, (P, 1, H, W), follow images b, (P, C, H, W): the mean over pairs of the
    Pearson correlation between how a pair's s_b departs from the average s_b and how its image b departs
    from the average image (0: a layout shared by every pair)."""
    image_b = _departure(xb.mean(dim=1).flatten(1))
    return float(_pearson(_departure(1 - masks.flatten(1)), image_b).mean())


def _departure(rows: Tensor) -> Tensor:
    return rows - rows.mean(dim=0, keepdim=True)


def _pearson(a: Tensor, b: Tensor) -> Tensor:
    """Row-wise Pearson correlation of two (P, D) tensors."""
    a, b = a - a.mean(dim=1, keepdim=True), b - b.mean(dim=1, keepdim=True)
    return (a * b).sum(dim=1) / (a.norm(dim=1) * b.norm(dim=1)).clamp_min(1e-12)


def earlier_row(path: str, name: str, seeds_column: int, results: List[Dict[str, Any]]) -> Optional[str]:
    """The row ``name`` of the table in ``path`` as last written, when it holds more seeds (its
    ``seeds_column``-th cell) than ``results``: a table keeps the rows of runs that finished before
    :data:`LEDGER` existed (their ``runs/`` are gone) until as many seeds have run again."""
    if not os.path.exists(path):
        return None
    with open(path, encoding="utf-8") as f:
        for line in f:
            cells = [cell.strip() for cell in line.split("|")[1:-1]]
            if line.startswith("| ") and cells[0] == name and cells[seeds_column].isdigit():
                return line.rstrip("\n") if int(cells[seeds_column]) > len(results) else None
    return None


def mean_std(values: List[float], fmt: str = "{:.1f}") -> str:
    """``mean ± std`` of ``values`` (one value as is, none as ``-``)."""
    if not values:
        return "-"
    if len(values) == 1:
        return fmt.format(values[0])
    return f"{fmt.format(statistics.fmean(values))} ± {fmt.format(statistics.stdev(values))}"
