"""One linear-evaluation run: load the encoder, (cached) features, kNN, probe(s), results (docs/algorithm.md §6.3).

:func:`run_linear_eval` is what ``linear_eval/run.py`` calls; :func:`evaluate` is the same from
Python (used by the quickstart to compare a pre-trained and a random encoder).
"""

from __future__ import annotations

import dataclasses
import json
import os
import statistics
import sys
import time
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Mapping, Optional, Tuple, Union

import torch
import yaml
from torch import Tensor
from torch.utils.data import Dataset

from ssmix.config import ConfigError, from_dict
from ssmix.config_checks import knn_bank_warning
from ssmix.device import resolve_device
from ssmix.evaluation.config import EvalDataConfig, LinearEvalConfig, validate
from ssmix.evaluation.features import (
    FeatureCache,
    TransformedDataset,
    dataset_identity,
    extract_copies,
    file_fingerprint,
    test_transform,
    train_transform,
)
from ssmix.evaluation.knn import knn_metrics
from ssmix.evaluation.linear import (
    ProbeHistory,
    ProbeSchedule,
    select_lr,
    train_probe_cached,
    train_probe_in_loop,
)
from ssmix.evaluation.weights import LoadedEncoder, load_encoder
from ssmix.report import phase

Logger = Optional[Callable[[str], None]]
MARKDOWN_HEADER = (
    "| weights | arch | dataset | px | mode | epochs | seeds | top-1 | top-5 | kNN top-1 |\n"
    "|---|---|---|---|---|---|---|---|---|---|"
)


@dataclass
class EvalFeatures:
    """Frozen features of one evaluation: ``train`` (clean, for kNN) and ``probe`` (what the linear probe
    trains on: augmented copies in cached mode with ``aug_copies``, else ``train``), each (copies, N, D)."""

    train: Tensor
    train_labels: Tensor
    test: Tensor
    test_labels: Tensor
    probe: Tensor
    num_classes: int
    seconds: float


@dataclass
class EvalData:
    """The labelled splits (PIL images) and their transforms."""

    name: str
    train_set: Dataset
    test_set: Dataset
    train_id: Dict[str, Any]
    test_id: Dict[str, Any]
    image_size: int
    num_classes: int
    test_tf: Any
    train_tf: Any


def _load_eval_split(
    data: EvalDataConfig, key: str, split: str, info, image_size: int
) -> Tuple[Dataset, Dict]:
    """(dataset, identity for the feature cache) of one split; ``key`` names the config key in errors."""
    from ssmix.data.datasets import build_dataset

    if info.splits and split not in info.splits:
        raise ConfigError(
            f"{key}: '{data.name}' has no split '{split}', expected one of {', '.join(info.splits)}"
        )
    subset = data.train_subset if key == "data.train_split" else 0
    try:
        dataset = build_dataset(
            data.name,
            data.root,
            split,
            download=data.download,
            image_size=image_size,
            num_samples=data.num_samples,
            num_classes=info.num_classes,
            seed=0,
            subset=subset,
        )
    except (OSError, RuntimeError, ValueError) as exc:
        raise ConfigError(
            f"data: cannot load '{data.name}' split '{split}' from root '{data.root}': {exc}"
        ) from None
    synthetic = (
        {"num_samples": data.num_samples, "num_classes": info.num_classes} if data.name == "synthetic" else {}
    )
    fingerprint = file_fingerprint(dataset)
    files = {"files": fingerprint} if fingerprint else {}
    identity = dataset_identity(
        data.name,
        data.root,
        split,
        image_size=image_size,
        size=len(dataset),
        **synthetic,
        **files,
        **({"subset": subset} if subset else {}),
    )
    return dataset, identity


def build_eval_data(data: EvalDataConfig) -> EvalData:
    """Build both splits with ``ssmix.data.datasets`` and the docs/algorithm.md §6.3 transforms."""
    from ssmix.data.datasets import dataset_info_from_config

    info = dataset_info_from_config(data)
    if info.num_classes == 0:
        raise ConfigError(
            f"data.name: '{data.name}' has no labels; evaluate on a labelled folder with "
            "data.name=imagefolder (<root>/train/<class>/*, <root>/val/<class>/*)"
        )
    image_size = data.image_size or info.image_size
    if data.test_resize is not None and data.test_resize < image_size:  # CenterCrop would pad with black
        raise ConfigError(
            f"data.test_resize={data.test_resize}: the centre crop of {image_size} px is larger than "
            f"the resized image; set data.test_resize >= {image_size} (or null)"
        )
    test_split = data.test_split or ("val" if "val" in info.splits else "test")
    train_set, train_id = _load_eval_split(data, "data.train_split", data.train_split, info, image_size)
    test_set, test_id = _load_eval_split(data, "data.test_split", test_split, info, image_size)
    num_classes = info.num_classes
    if data.name == "imagefolder" and data.num_classes is None:  # the class sub-folders, not ImageNet's 1000
        num_classes = len(train_set.classes)
    return EvalData(
        data.name,
        train_set,
        test_set,
        train_id,
        test_id,
        image_size,
        num_classes,
        test_transform(image_size, info.mean, info.std, data.test_resize),
        train_transform(image_size, info.mean, info.std),
    )


def default_output_dir(cfg: LinearEvalConfig) -> str:
    """``<run_dir>/linear_<data>_<mode>`` for a run directory, else ``runs/linear/<weights>_<data>_<mode>``."""
    leaf = f"linear_{cfg.data.name}_{cfg.mode}"
    if os.path.isdir(cfg.weights):
        return os.path.join(cfg.weights, leaf)
    if cfg.weights.startswith("random"):
        stem = cfg.weights.replace(":", "")
    else:
        stem = os.path.splitext(os.path.basename(cfg.weights))[0]
    return os.path.join("runs", "linear", f"{stem}_{leaf}")


def free_output_dir(path: str) -> str:
    """``path``, or ``path_2``, ``path_3``... if an earlier evaluation wrote its results.json there (a default
    output_dir is never overwritten, issue 24)."""
    candidate, n = path, 1
    while os.path.exists(os.path.join(candidate, "results.json")):
        n += 1
        candidate = f"{path}_{n}"
    return candidate


def check_output_dir(cfg: LinearEvalConfig) -> None:
    """An ``output_dir`` holding another evaluation's results is refused unless ``overwrite=true``."""
    if not cfg.output_dir:
        return
    if os.path.exists(cfg.output_dir) and not os.path.isdir(cfg.output_dir):
        raise ConfigError(f"output_dir: '{cfg.output_dir}' is a file; pass a directory path")
    results = os.path.join(cfg.output_dir, "results.json")
    if os.path.exists(results) and not cfg.overwrite:
        raise ConfigError(
            f"output_dir: {results} exists (an earlier evaluation); pass overwrite=true to replace "
            "it, or another output_dir"
        )


def resolve_cache_dir(cfg: LinearEvalConfig) -> Optional[str]:
    """Where the feature cache lives: ``cache_dir`` as given, or for ``auto`` ``$SSMIX_CACHE/features``,
    else ``<run_dir>/feature_cache`` when ``weights`` is a run directory, else ``<output_dir>/feature_cache``
    (never a folder relative to wherever the command was started; None: no disk cache)."""
    if cfg.cache_dir != "auto":
        return cfg.cache_dir or None
    if os.environ.get("SSMIX_CACHE"):
        return os.path.join(os.environ["SSMIX_CACHE"], "features")
    if os.path.isdir(cfg.weights):
        return os.path.join(cfg.weights, "feature_cache")
    return os.path.join(cfg.output_dir, "feature_cache") if cfg.output_dir else None


def _mean_std(values: List[float]) -> Tuple[float, float]:
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def _features(
    encoder: LoadedEncoder,
    cache: FeatureCache,
    dataset: Dataset,
    identity: Mapping[str, Any],
    transform: Any,
    copies: int,
    cfg: LinearEvalConfig,
    device: torch.device,
) -> Tuple[Tensor, Tensor]:
    parts = {
        "weights": encoder.weights_hash,
        "arch": encoder.arch,
        "cifar_stem": encoder.cifar_stem,
        "data": dict(identity),
        "transform": repr(transform),
        "copies": copies,
        "seed": 0,
    }

    def compute() -> Tuple[Tensor, Tensor]:
        count = len(dataset) * copies
        with phase(
            "linear eval: feature extraction",
            f"{identity.get('split')} split, {len(dataset)} images x "
            f"{copies} cop{'y' if copies == 1 else 'ies'}",
            count,
        ):
            return extract_copies(
                encoder.backbone, dataset, transform, copies, 0, device, cfg.batch_size, cfg.data.num_workers
            )

    return cache.get_or_compute(parts, compute)


def summary_line(result: Mapping[str, Any]) -> str:
    return (
        f"linear-eval {result['dataset']} {result['mode']} {result['arch']} ({result['weights']}): "
        f"top1 {result['top1']:.2f} +- {result['top1_std']:.2f}  top5 {result['top5']:.2f}  "
        f"kNN top1 {result['knn_top1']:.2f}  [{result['seeds']} seed(s), median of last 10 of "
        f"{result['epochs']} epochs, {result['image_size']} px]"
    )


def markdown_row(result: Mapping[str, Any]) -> str:
    arch = result["arch"] + (" (cifar stem)" if result["cifar_stem"] else "")
    return (
        f"| {result['weights']} | {arch} | {result['dataset']} | {result['image_size']} | {result['mode']} | "
        f"{result['epochs']} | {result['seeds']} | {result['top1']:.2f} ± {result['top1_std']:.2f} | "
        f"{result['top5']:.2f} | {result['knn_top1']:.2f} |"
    )


def write_results(result: Mapping[str, Any], cfg: LinearEvalConfig, output_dir: str) -> None:
    """``results.json``, ``results.md`` (header + row) and the resolved ``config.yaml``."""
    os.makedirs(output_dir, exist_ok=True)
    with open(os.path.join(output_dir, "results.json"), "w", encoding="utf-8") as f:
        json.dump(result, f, indent=2)
    with open(os.path.join(output_dir, "results.md"), "w", encoding="utf-8") as f:
        f.write(f"{MARKDOWN_HEADER}\n{result['markdown_row']}\n")
    with open(os.path.join(output_dir, "config.yaml"), "w", encoding="utf-8") as f:
        yaml.safe_dump(dataclasses.asdict(cfg), f, sort_keys=False)


def _warn(message: str, warnings: List[str]) -> None:
    """A warning the user always sees (stderr), also kept in the results (``warnings``)."""
    warnings.append(message)
    print(f"warning: {message}", file=sys.stderr, flush=True)


def _pick_lr(
    cfg: LinearEvalConfig,
    schedule: ProbeSchedule,
    train_features: Tensor,
    train_labels: Tensor,
    num_classes: int,
    device: torch.device,
    say: Callable[[str], None],
) -> Tuple[ProbeSchedule, Dict[float, float]]:
    """``schedule`` with the best lr of ``cfg.lr_grid`` (scored on a carve-out of the training images), and
    every lr's score; ``schedule`` itself when no grid is set."""
    if not cfg.lr_grid:
        return schedule, {}
    best, lr_scores = select_lr(train_features, train_labels, num_classes, schedule, cfg.lr_grid, 0, device)
    say(
        "lr pick (top-1 on a 10 % carve-out of the training images): "
        + ", ".join(f"{lr:g}: {score:.2f}" for lr, score in lr_scores.items())
        + f" -> lr {best:g}"
    )
    return dataclasses.replace(schedule, lr=best), lr_scores


def _train_probes(
    cfg: LinearEvalConfig,
    encoder: LoadedEncoder,
    data: EvalData,
    train_features: Tensor,
    train_labels: Tensor,
    test_features: Tensor,
    test_labels: Tensor,
    num_classes: int,
    device: torch.device,
    say: Callable[[str], None],
    log: Logger,
    warnings: List[str],
) -> Tuple[ProbeSchedule, Dict[float, float], List[ProbeHistory]]:
    """(the schedule used, the lr grid's scores, one history per seed): the lr pick when ``cfg.lr_grid``
    is set, then ``cfg.seeds`` linear probes (cached features or in the loop)."""
    schedule, lr_scores = _pick_lr(
        cfg, ProbeSchedule.from_config(cfg), train_features, train_labels, num_classes, device, say
    )
    histories: List[ProbeHistory] = []
    for seed in range(cfg.seeds):
        say(
            f"probe seed {seed} ({cfg.mode}, {cfg.epochs} epochs, lr {schedule.lr}, milestones {list(cfg.milestones)})"
        )
        if cfg.mode == "cached":
            history = train_probe_cached(
                train_features, train_labels, test_features[0], test_labels, num_classes, schedule, seed,
                device, log,
            )  # fmt: skip
        else:
            history = train_probe_in_loop(
                encoder.backbone, TransformedDataset(data.train_set, data.train_tf),
                TransformedDataset(data.test_set, data.test_tf), num_classes, schedule, seed, device,
                cfg.data.num_workers, log,
            )  # fmt: skip
        histories.append(history)
        reason = history.divergence(num_classes)
        if reason:
            _warn(
                f"linear probe (seed {seed}) diverged: {reason}; its accuracy is not to be trusted - lower lr "
                f"(now {schedule.lr:g}){'' if cfg.feature_bn else ' or set feature_bn=true'}",
                warnings,
            )
    return schedule, lr_scores, histories


def _all_features(
    encoder, cache: FeatureCache, data: EvalData, cfg: LinearEvalConfig, device: torch.device
) -> EvalFeatures:
    """:class:`EvalFeatures` of both splits (from the cache where it holds them)."""
    started = time.perf_counter()
    train, train_labels = _features(
        encoder, cache, data.train_set, data.train_id, data.test_tf, 1, cfg, device
    )
    test, test_labels = _features(encoder, cache, data.test_set, data.test_id, data.test_tf, 1, cfg, device)
    probe = train
    if cfg.mode == "cached" and cfg.aug_copies > 0:
        probe, _ = _features(
            encoder, cache, data.train_set, data.train_id, data.train_tf, cfg.aug_copies, cfg, device
        )
    num_classes = max(data.num_classes, int(max(train_labels.max(), test_labels.max())) + 1)
    return EvalFeatures(
        train, train_labels, test, test_labels, probe, num_classes, time.perf_counter() - started
    )


def _result_record(
    cfg: LinearEvalConfig,
    encoder: LoadedEncoder,
    data: EvalData,
    feats: EvalFeatures,
    probes: Tuple[ProbeSchedule, Dict[float, float], List[ProbeHistory]],
    knn: Dict[str, float],
    device: torch.device,
    cache: FeatureCache,
    warnings: List[str],
    timing_s: Dict[str, float],
) -> Dict[str, Any]:
    """``results.json``'s record of one evaluation (before its summary line and markdown row)."""
    schedule, lr_scores, histories = probes
    summaries = [h.summary(10) for h in histories]
    top1, top1_std = _mean_std([s["top1"] for s in summaries])
    top5, top5_std = _mean_std([s["top5"] for s in summaries])
    return {
        "weights": cfg.weights,
        "source": encoder.source,
        "weights_hash": encoder.weights_hash,
        "arch": encoder.arch,
        "cifar_stem": encoder.cifar_stem,
        "dataset": data.name,
        "train_split": data.train_id["split"],
        "test_split": data.test_id["split"],
        "image_size": data.image_size,
        "mode": cfg.mode,
        "epochs": cfg.epochs,
        "lr": schedule.lr,
        "batch_size": cfg.batch_size,
        "feature_bn": cfg.feature_bn,
        "lr_grid": {f"{lr:g}": score for lr, score in lr_scores.items()},
        "milestones": list(cfg.milestones),
        "gamma": cfg.gamma,
        "aug_copies": cfg.aug_copies,
        "seeds": cfg.seeds,
        "top1": top1,
        "top1_std": top1_std,
        "top5": top5,
        "top5_std": top5_std,
        "final_top1": statistics.fmean(s["final_top1"] for s in summaries),
        **knn,
        "knn_k": cfg.knn_k,
        "knn_t": cfg.knn_t,
        "num_train": int(feats.train_labels.numel()),
        "num_test": int(feats.test_labels.numel()),
        "feature_dim": int(feats.test.shape[-1]),
        "num_classes": feats.num_classes,
        "device": str(device),
        "per_seed": [
            {"seed": i, **s, "history": dataclasses.asdict(h)}
            for i, (s, h) in enumerate(zip(summaries, histories))
        ],
        "feature_cache": {"dir": cache.cache_dir, "hits": cache.hits, "misses": cache.misses},
        "timing_s": timing_s,
        "warnings": warnings,
    }


def _knn(
    cfg: LinearEvalConfig,
    data: EvalData,
    feats: EvalFeatures,
    device: torch.device,
    say: Callable[[str], None],
    warnings: List[str],
) -> Dict[str, float]:
    """kNN top-1 / top-5 of the clean features (a note when ``knn_k`` exceeds the training bank)."""
    clipped = knn_bank_warning(
        "knn_k", cfg.knn_k, feats.train_labels.numel(), f"{data.name} {data.train_id['split']}"
    )
    if clipped:
        _warn(clipped, warnings)
    knn = knn_metrics(
        feats.train[0],
        feats.train_labels,
        feats.test[0],
        feats.test_labels,
        feats.num_classes,
        cfg.knn_k,
        cfg.knn_t,
        device,
    )
    say(f"kNN (k={cfg.knn_k}, t={cfg.knn_t}): top1 {knn['knn_top1']:.2f} top5 {knn['knn_top5']:.2f}")
    return knn


def run_linear_eval(cfg: LinearEvalConfig, log: Logger = None) -> Dict[str, Any]:
    """Run kNN plus ``cfg.seeds`` linear probes; write results when ``cfg.output_dir`` is set."""
    validate(cfg)
    check_output_dir(cfg)
    say = log or (lambda _msg: None)
    warnings: List[str] = []
    started = time.perf_counter()
    device = torch.device(resolve_device(cfg.device))
    data = build_eval_data(cfg.data)
    encoder = load_encoder(cfg.weights, cfg.arch, cfg.cifar_stem)
    encoder.backbone.to(device)
    say(
        f"encoder {encoder.arch} (cifar_stem={encoder.cifar_stem}) from {encoder.source} "
        f"[prefix '{encoder.prefix}', hash {encoder.weights_hash}] on {device}"
    )
    cache = FeatureCache(resolve_cache_dir(cfg))
    feats = _all_features(encoder, cache, data, cfg, device)
    say(
        f"features: train {tuple(feats.probe.shape)} test {tuple(feats.test.shape[1:])} "
        f"({cache.hits} cached, {cache.misses} extracted, {feats.seconds:.1f} s)"
    )

    t0 = time.perf_counter()
    knn = _knn(cfg, data, feats, device, say, warnings)
    knn_s = time.perf_counter() - t0

    t0 = time.perf_counter()
    probes = _train_probes(
        cfg,
        encoder,
        data,
        feats.probe,
        feats.train_labels,
        feats.test,
        feats.test_labels,
        feats.num_classes,
        device,
        say,
        log,
        warnings,
    )
    timing = {
        "features": feats.seconds,
        "knn": knn_s,
        "probe": time.perf_counter() - t0,
        "total": time.perf_counter() - started,
    }
    result = _result_record(cfg, encoder, data, feats, probes, knn, device, cache, warnings, timing)
    result["summary"] = summary_line(result)
    result["markdown_row"] = markdown_row(result)
    if cfg.output_dir:
        write_results(result, cfg, cfg.output_dir)
        say(f"results: {os.path.join(cfg.output_dir, 'results.json')}")
    return result


def evaluate(
    weights: str,
    data: Union[EvalDataConfig, Mapping[str, Any], None] = None,
    mode: str = "cached",
    *,
    log: Logger = None,
    **options: Any,
) -> Dict[str, Any]:
    """Frozen-encoder accuracy from Python: ``dict(top1, top5, knn_top1, knn_top5, ...)`` (percent).

    ``data`` is an :class:`EvalDataConfig` or its keys (e.g. ``{"name": "digits"}``); ``options`` are
    any other :class:`LinearEvalConfig` keys (``epochs``, ``arch``, ``cifar_stem``, ``cache_dir``,
    ``output_dir`` - results are written only when it is given - ...). Unknown keys raise ConfigError.
    """
    data_dict = dataclasses.asdict(data) if isinstance(data, EvalDataConfig) else dict(data or {})
    cfg = from_dict(LinearEvalConfig, {"weights": weights, "mode": mode, "data": data_dict, **options}, "")
    return run_linear_eval(cfg, log)
