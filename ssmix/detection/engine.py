"""One training + evaluation run of the embedded backend (docs/detection.md §4.2).

Iteration-based SGD on endless aspect-grouped batches, SyncBN + DDP under torchrun (the analogue of
naiveSyncBN), precise BN before each evaluation, evaluator chosen by the test dataset's name.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass
from typing import Dict, Iterator, List, Optional, Tuple

import numpy as np
import torch
import torch.distributed as dist
import torch.nn as nn
from torch.utils.data import DataLoader

from ssmix.config import ConfigError
from ssmix.detection.coco_eval import COCOEvaluator
from ssmix.detection.datasets import (
    DetectionDataset,
    GroupedInfiniteSampler,
    LoadedDataset,
    collate,
    load_datasets,
    read_coco,
)
from ssmix.detection.model import build_detector, build_resnet
from ssmix.detection.precise_bn import update_bn_stats
from ssmix.detection.schema import DetectionConfig, dataset_root
from ssmix.detection.solver import build_optimizer, build_scheduler
from ssmix.detection.voc_eval import VOCEvaluator
from ssmix.detection.weights import load_encoder_state
from ssmix.engine.checkpoint import load_checkpoint, save_atomic

log = logging.getLogger("detection")
LAST_CHECKPOINT = "last_checkpoint.pth"


@dataclass
class DistEnv:
    rank: int
    world_size: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def setup_distributed(device: str = "auto") -> DistEnv:
    """Join the torchrun process group when ``WORLD_SIZE > 1``; pick this process's device."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = device.startswith("cuda") or (device == "auto" and torch.cuda.is_available())
    if use_cuda and not torch.cuda.is_available():
        raise ConfigError(f"device: '{device}' requested but CUDA is not available; use device=cpu")
    if device not in ("auto", "cpu") and not device.startswith("cuda"):
        raise ConfigError(f"device: expected auto, cpu or cuda, got '{device}'")
    torch_device = torch.device(f"cuda:{local_rank}" if use_cuda else "cpu")
    if use_cuda:
        torch.cuda.set_device(torch_device)
    if world_size > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if use_cuda else "gloo")
    rank = dist.get_rank() if dist.is_initialized() else 0
    return DistEnv(rank, world_size, torch_device)


def _batches(loader: DataLoader, device: torch.device) -> Iterator[Tuple[List, List]]:
    for images, targets, _ in loader:
        yield (
            [im.to(device, non_blocking=True) for im in images],
            [{k: v.to(device, non_blocking=True) for k, v in t.items()} for t in targets],
        )


def build_evaluator(test: LoadedDataset, with_masks: bool):
    """COCO evaluator for a dataset whose name contains 'coco', VOC for 'voc' (as MoCo's train_net)."""
    info = test.infos[0]
    if "coco" in info.name:
        _, _, category_ids = read_coco(info.annotations, info.image_root)
        return COCOEvaluator(info.annotations, test.records, category_ids, with_masks)
    return VOCEvaluator(test.records, test.classes, info.year)


def _gather(results: list, env: DistEnv) -> list:
    if env.world_size == 1:
        return results
    gathered: List[Optional[list]] = [None] * env.world_size
    dist.all_gather_object(gathered, results)
    return [item for part in gathered for item in (part or [])]


@torch.no_grad()
def evaluate(
    model: nn.Module,
    test: LoadedDataset,
    cfg: DetectionConfig,
    env: DistEnv,
    train_batches: Optional[Iterator] = None,
) -> Dict[str, float]:
    """Precise BN (if ``train_batches``), then inference on this rank's share of the test set; the main
    process returns the metrics, the others an empty dict."""
    if train_batches is not None and cfg.test.precise_bn_iters > 0:
        update_bn_stats(model, train_batches, cfg.test.precise_bn_iters)
    evaluator = build_evaluator(test, cfg.model.mask)
    indices = list(range(env.rank, len(test.records), env.world_size))
    loader = DataLoader(
        DetectionDataset(test.records, train=False),
        batch_size=1,
        sampler=indices,
        collate_fn=collate,
        num_workers=cfg.data.num_workers,
    )
    was_training = model.training
    model.eval()
    start = time.perf_counter()
    for images, _, index in loader:
        output = model([images[0].to(env.device)])[0]
        evaluator.process(index[0], output)
    model.train(was_training)
    results = _gather(evaluator.results, env)
    if not env.is_main:
        return {}
    metrics = evaluator.evaluate(results)
    log.info(
        "evaluated %s (%d images, %.1fs): %s",
        test.infos[0].name,
        len(results),
        time.perf_counter() - start,
        _format(metrics),
    )
    return metrics


def _format(metrics: Dict[str, float]) -> str:
    return ", ".join(f"{k}={v:.2f}" for k, v in metrics.items() if "-" not in k)


def load_encoder(cfg: DetectionConfig) -> Tuple[Optional[Dict[str, torch.Tensor]], str]:
    """The encoder's state_dict (None = random init) and architecture, checked against the config."""
    if not cfg.model.weights:
        log.warning("model.weights is not set: the detector starts from a randomly initialised trunk")
        return None, cfg.model.arch or "resnet50"
    state, arch, cifar_stem = load_encoder_state(
        cfg.model.weights, cfg.model.trust_pickle, "model.trust_pickle=true"
    )
    if cifar_stem:
        raise ConfigError(
            f"model.weights: '{cfg.model.weights}' is a CIFAR-stem encoder (3x3 conv1, no "
            f"max-pool), unusable for detection; pre-train with model.cifar_stem=false"
        )
    if cfg.model.arch and cfg.model.arch != arch:
        raise ConfigError(
            f"model.arch={cfg.model.arch} but '{cfg.model.weights}' holds a {arch}; drop model.arch"
        )
    return state, arch


def _trial_data(cfg: DetectionConfig):
    """(train datasets, test dataset, the training records that have boxes) of ``cfg.data``."""
    root = dataset_root(cfg.data)
    train = load_datasets(cfg.data.train, root, cfg.data.classes)
    test = load_datasets([cfg.data.test], root, cfg.data.classes)
    if test.classes != train.classes:
        raise ConfigError(f"data: {cfg.data.test} and {', '.join(cfg.data.train)} have different classes")
    return train, test, [r for r in train.records if len(r.labels)]  # FILTER_EMPTY_ANNOTATIONS


def _train_loader(cfg: DetectionConfig, env: DistEnv, records, start_iter: int) -> DataLoader:
    """This rank's aspect-grouped infinite training loader, reseeded by ``start_iter`` on resume."""
    sampler = GroupedInfiniteSampler(
        records,
        cfg.solver.ims_per_batch // env.world_size,
        seed=cfg.seed * 1000 + start_iter,
        rank=env.rank,
        world_size=env.world_size,
    )
    return DataLoader(
        DetectionDataset(records, train=True, with_masks=cfg.model.mask),
        batch_sampler=sampler,
        collate_fn=collate,
        num_workers=cfg.data.num_workers,
        pin_memory=env.device.type == "cuda",
    )


def run_trial(cfg: DetectionConfig, env: DistEnv) -> Dict[str, float]:
    """Train ``cfg.solver.max_iter`` iterations, evaluate, save ``model_final.pth``; returns the metrics."""
    os.makedirs(cfg.output_dir, exist_ok=True)
    torch.manual_seed(cfg.seed * 1000 + env.rank)
    np.random.seed(cfg.seed * 1000 + env.rank)
    solver = cfg.solver
    if solver.ims_per_batch % env.world_size:
        raise ConfigError(
            f"solver.ims_per_batch={solver.ims_per_batch} is not divisible by the {env.world_size} processes"
        )
    state, arch = load_encoder(cfg)  # first: a bad weights file fails before any data is read
    train, test, train_records = _trial_data(cfg)
    if state is not None and env.is_main:
        log.info(
            "encoder: loaded %d tensors from %s into the %s trunk (the detection heads start from scratch)",
            len(state),
            cfg.model.weights,
            arch,
        )
    model = _detector(cfg, env, len(train.classes), state, arch)
    optimizer = build_optimizer(model, solver.base_lr, solver.weight_decay)
    scheduler = build_scheduler(optimizer, solver.steps, solver.warmup_iters)
    start_iter = _maybe_resume(cfg, model, optimizer, scheduler)
    core = model
    if env.world_size > 1:
        ids = [env.device.index] if env.device.type == "cuda" else None
        model = nn.parallel.DistributedDataParallel(model, device_ids=ids)
    batches = _batches(_train_loader(cfg, env, train_records, start_iter), env.device)
    log.info(
        "%s %s-%s, %d classes, %d training images, %d test images, iterations %d..%d on %s x%d",
        "Mask R-CNN" if cfg.model.mask else "Faster R-CNN",
        arch,
        cfg.model.head,
        len(train.classes),
        len(train_records),
        len(test.records),
        start_iter,
        solver.max_iter,
        env.device,
        env.world_size,
    )
    _train_iterations(cfg, env, model, core, optimizer, scheduler, batches, test, start_iter)
    metrics = evaluate(core, test, cfg, env, batches)
    if env.is_main:
        save_atomic(
            {"model": core.state_dict(), "arch": arch, "classes": train.classes},
            os.path.join(cfg.output_dir, "model_final.pth"),
        )
    return metrics


def _detector(cfg: DetectionConfig, env: DistEnv, num_classes: int, state, arch: str) -> nn.Module:
    """The detector on ``env.device`` around the pre-trained trunk (SyncBatchNorm across CUDA processes)."""
    model = build_detector(
        cfg.model,
        num_classes,
        build_resnet(arch, state),
        arch,
        cfg.data.min_size_train,
        cfg.data.min_size_test,
        cfg.data.max_size,
    ).to(env.device)
    if env.world_size > 1 and env.device.type == "cuda":
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)  # the analogue of naiveSyncBN
    elif env.world_size > 1 and env.is_main:
        log.warning(
            "SyncBatchNorm needs CUDA: the %d CPU processes keep per-process BN statistics", env.world_size
        )
    return model


def _train_iterations(
    cfg: DetectionConfig,
    env: DistEnv,
    model: nn.Module,
    core: nn.Module,
    optimizer,
    scheduler,
    batches,
    test,
    start_iter: int,
) -> None:
    """Iterations ``start_iter`` .. ``solver.max_iter``, with logging, periodic checkpoints and evaluations."""
    solver = cfg.solver
    model.train()
    start = time.perf_counter()
    for iteration in range(start_iter, solver.max_iter):
        images, targets = next(batches)
        losses = model(images, targets)
        total = sum(losses.values())
        if not torch.isfinite(total):
            raise FloatingPointError(
                f"iteration {iteration}: loss is {total.item()} "
                f"({ {k: round(v.item(), 4) for k, v in losses.items()} })"
            )
        optimizer.zero_grad(set_to_none=True)
        total.backward()
        optimizer.step()
        lr = optimizer.param_groups[0]["lr"]
        scheduler.step()
        done = iteration + 1
        if env.is_main and (done % cfg.log_every == 0 or done == solver.max_iter):
            speed = (time.perf_counter() - start) / (done - start_iter)
            log.info(
                "iter %d/%d loss %.4f (%s) lr %.5f %.2fs/iter eta %.0fmin",
                done,
                solver.max_iter,
                total.item(),
                ", ".join(f"{k} {v.item():.4f}" for k, v in losses.items()),
                lr,
                speed,
                speed * (solver.max_iter - done) / 60,
            )
        if env.is_main and done % solver.checkpoint_period == 0 and done < solver.max_iter:
            save_atomic(
                {
                    "model": core.state_dict(),
                    "optimizer": optimizer.state_dict(),
                    "scheduler": scheduler.state_dict(),
                    "iteration": done,
                },
                os.path.join(cfg.output_dir, LAST_CHECKPOINT),
            )
        if cfg.test.eval_period and done % cfg.test.eval_period == 0 and done < solver.max_iter:
            evaluate(core, test, cfg, env, batches)


def _maybe_resume(cfg: DetectionConfig, model: nn.Module, optimizer, scheduler) -> int:
    path = os.path.join(cfg.output_dir, LAST_CHECKPOINT)
    if not (cfg.resume and os.path.isfile(path)):
        return 0
    state = load_checkpoint(path, "resume")
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    log.info("resumed from %s at iteration %d", path, state["iteration"])
    return int(state["iteration"])
