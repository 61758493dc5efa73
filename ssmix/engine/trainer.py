"""The pre-training loop: plain PyTorch, per-iteration schedules, AMP on CUDA, atomic checkpoints,
exact resume, metrics.jsonl + TensorBoard, ``torchrun``-ready."""

from __future__ import annotations

import contextlib
import os
import random
import sys
import time
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional, Tuple

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader
from tqdm import tqdm

from ssmix.config import Config, ConfigError, config_to_dict, dump_config, per_process_batch, scaled_lr
from ssmix.config_checks import check_data_fit, check_runnable
from ssmix.data.datasets import build_dataset, dataset_info_from_config
from ssmix.data.loader import MultiViewDataset, RunLoader, steps_per_epoch
from ssmix.data.transforms import DeviceNormalize, build_eval_transform, build_view_transform
from ssmix.device import autocast_dtype, memory_format_for, resolve_device
from ssmix.distributed import barrier, broadcast_module_, gather_shards, shard
from ssmix.engine import checkpoint as ckpt
from ssmix.engine.ddp import setup_process, wrap_for_training
from ssmix.engine.finite import FiniteGuard, check_state
from ssmix.engine.health import HealthMonitor
from ssmix.engine.metrics_log import MetricsLogger, host_values
from ssmix.engine.optim import build_optimizer, set_learning_rates
from ssmix.engine.pretrainer import Pretrainer
from ssmix.engine.rundir import check_fresh_start, continues_in_place, open_run_dir
from ssmix.engine.signals import Interrupted, StopRequest
from ssmix.engine.step import OptimStep
from ssmix.engine.wandb_logger import check_loggers
from ssmix.evaluation.features import TransformedDataset
from ssmix.evaluation.online_probe import OnlineProbe, build_probe
from ssmix.models.backbones import export_state_dict
from ssmix.report import phase, say, startup_summary


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _extract_fn(model: Pretrainer, dataset, cfg: Config, device: str, info, batch: int) -> Any:
    """Embeddings of the whole training set through the target branch (ODC's initial k-means). Under
    DDP each rank embeds its shard with rank 0's weights (broadcast first: DDP's own broadcast comes
    later, at the wrap) and the shards are gathered."""

    def extract() -> Tuple[Tensor, Tensor]:
        broadcast_module_(model.method)
        tf = build_eval_transform(cfg.data.image_size, info.mean, info.std)
        part = torch.utils.data.Subset(TransformedDataset(dataset, tf), shard(len(dataset)))
        loader = DataLoader(part, batch_size=max(batch, 64), num_workers=cfg.data.num_workers)
        feats, labels = [], []
        was_training = model.training
        model.eval()
        with torch.no_grad(), phase("ODC init: feature extraction", f"{len(dataset)} images", len(dataset)):
            for x, y in loader:
                feats.append(model.method.embed_target(x.to(device)).float().cpu())
                labels.append(y)
        model.train(was_training)
        return gather_shards(torch.cat(feats), len(dataset)), gather_shards(torch.cat(labels), len(dataset))

    return extract


def check_global_batch(cfg: Config, batch: int, world: int) -> None:
    """What the global batch must divide, checked before anything is built: the method's key queue
    (MoCo v2, SwAV: ``method.queue_size``) and, on one process, MoCo's ``method.bn_splits``."""
    size, splits = getattr(cfg.method, "queue_size", 0), getattr(cfg.method, "bn_splits", 1)
    if size and size % (batch * world):
        raise ConfigError(
            f"method.queue_size={size} is not a multiple of the global batch {batch * world} "
            f"({batch} per process x {world}): use a multiple of {batch * world}, or a global batch "
            f"(train.global_batch_size) that divides {size}"
        )
    if world == 1 and splits > 1 and batch % splits:
        raise ConfigError(
            f"method.bn_splits={splits} does not divide the batch {batch}: use a divisor of {batch}"
        )


def batch_to_device(
    views: List[Tensor],
    labels: Tensor,
    index: Tensor,
    device: str,
    memory_format: torch.memory_format,
    normalize: Optional[DeviceNormalize] = None,
) -> Tuple[List[Tensor], Tensor, Tensor]:
    """A loader batch on the step's device, every copy ``non_blocking`` (the loader pins its memory on
    CUDA), so the host queues the step without waiting; uint8 views are normalised there (``normalize``)."""
    views = [v.to(device, non_blocking=True) for v in views]
    if normalize is not None:
        views = [normalize(v) for v in views]
    views = [v.contiguous(memory_format=memory_format) for v in views]
    return views, labels.to(device, non_blocking=True), index.to(device, non_blocking=True)


def _warn(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def train(cfg: Config) -> Dict[str, Any]:
    """Run (or resume) pre-training; returns a summary (final step, last losses, output paths).

    ``output_dir`` is checked and locked first (:class:`~ssmix.engine.rundir.RunDir`); SIGTERM / SIGINT
    stop at the next step boundary with a checkpoint (:class:`~ssmix.engine.signals.Interrupted`)."""
    with contextlib.ExitStack() as stack, StopRequest() as stop:
        return _train(cfg, stack, stop)


@dataclass
class Run:
    """What setup decided: the process's device and rank, the per-process batch, the run directory."""

    cfg: Config
    device: str
    rank: int
    world: int
    batch: int
    run_dir: Optional[Any]

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def warn(self) -> Optional[Callable[[str], None]]:
        """:func:`_warn` on rank 0, else None (one copy of each note)."""
        return _warn if self.is_main else None


@dataclass
class RunData:
    """The pre-training data and the step counts it fixes."""

    info: Any
    base: Any
    dataset: MultiViewDataset
    normalize: Optional[DeviceNormalize]
    spe: int
    total_steps: int
    stop_step: int


@dataclass
class RunModel:
    """The model and everything that steps with it."""

    model: Pretrainer
    optimizer: Any
    scaler: torch.amp.GradScaler
    amp: Optional[torch.dtype]
    memory_format: torch.memory_format
    probe: Optional[OnlineProbe]


def _train(cfg: Config, stack: contextlib.ExitStack, stop: StopRequest) -> Dict[str, Any]:
    run = _setup(cfg, stack)
    data = _data(run)
    parts = _model(run, data)
    start_step, resume = _resume(run, data, parts)
    step_fn = wrap_for_training(
        parts.model, cfg.model.sync_bn, parts.model.method.uses_shuffle_bn, run.device
    )
    parts.model.train()
    if run.run_dir is not None:  # everything checked: this directory now holds this run
        run.run_dir.start()
        run.run_dir.write_text("config.yaml", dump_config(cfg))
    step, last = _loop(run, data, parts, step_fn, start_step, resume, stack, stop)
    return _finish(run, data, parts, step, last)


def _setup(cfg: Config, stack: contextlib.ExitStack) -> Run:
    """Device, process group, config checks, the run directory and the seeds, in that order."""
    # The GPU is bound before the process group starts and before open_run_dir broadcasts (NCCL).
    device, rank, world, _ = setup_process(resolve_device(cfg.device))
    batch = per_process_batch(cfg.train, world)
    check_runnable(cfg, world)  # before the output directory is touched
    check_global_batch(cfg, batch, world)
    check_loggers(cfg.train.loggers)
    run_dir = open_run_dir(
        stack, cfg.output_dir, continues_in_place(cfg.resume, cfg.output_dir), cfg.overwrite, rank, world
    )
    if device.startswith("cuda"):
        torch.backends.cudnn.benchmark = not cfg.deterministic
    if cfg.deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
    seed_everything(cfg.seed + rank)
    return Run(cfg, device, rank, world, batch, run_dir)


def _data(run: Run) -> RunData:
    """The multi-view training set, checked against the config, and the step counts it fixes."""
    cfg, dc = run.cfg, run.cfg.data
    info = dataset_info_from_config(dc)
    if cfg.train.knn_every and dc.name == "folder" and not dc.eval_root:
        raise ConfigError(
            "train.knn_every: data.name=folder has no labels for the kNN monitor; set data.eval_root "
            "to a labelled folder (<eval_root>/{train,val}/<class>/*) or train.knn_every=0"
        )
    base = build_dataset(
        dc.name,
        dc.root,
        dc.split,
        download=dc.download,
        image_size=dc.image_size,
        num_samples=dc.num_samples,
        num_classes=info.num_classes,
        seed=cfg.seed,
        subset=dc.subset,
    )
    # On CUDA the loader hands over uint8 views, normalised on the GPU (the same values, 4x fewer bytes).
    normalize = DeviceNormalize(info.mean, info.std) if run.device.startswith("cuda") else None
    uint8 = {"uint8": True} if normalize is not None else {}
    dataset = MultiViewDataset(
        base, build_view_transform(dc.aug, dc.image_size, info.mean, info.std, **uint8), cfg.seed
    )
    if dc.name == "folder" and run.is_main:
        print(f"data.root: {len(base)} images under {dc.root}", flush=True)
    check_data_fit(cfg, len(dataset))
    if cfg.train.knn_every:  # a bad data.eval_root or knn_k fails now, not after epoch 1
        from ssmix.evaluation.monitor import check_monitor

        warning = check_monitor(cfg)
        if warning and run.is_main:
            _warn(warning)
    spe = steps_per_epoch(len(dataset), run.batch, run.world)
    if spe == 0:
        raise ConfigError(
            f"the global batch {run.batch * run.world} ({run.batch} per process x {run.world}) is "
            f"larger than the dataset ({len(dataset)} images): lower train.batch_size or "
            "train.global_batch_size"
        )
    total_steps = cfg.train.epochs * spe
    stop_step = min(total_steps, cfg.train.max_steps) if cfg.train.max_steps else total_steps
    return RunData(info, base, dataset, normalize, spe, total_steps, stop_step)


def _model(run: Run, data: RunData) -> RunModel:
    """The model in its memory format, its optimizer, the loss scaler and the online probe."""
    cfg, device = run.cfg, run.device
    try:
        model = Pretrainer(cfg, len(data.dataset), data.info.num_classes).to(device)
    except ValueError as exc:  # a validated config naming an unusable input (e.g. mix.checkpoint)
        raise ConfigError(str(exc)) from None
    memory_format = memory_format_for(cfg.model.channels_last, device)
    model = model.to(memory_format=memory_format)
    optimizer = build_optimizer(model.param_groups(), cfg, data.spe, run.world)
    if run.is_main and (run.world > 1 or cfg.train.lr_reference_batch):
        lr = scaled_lr(cfg.train, run.batch * run.world)
        print(f"batch {run.batch} per process x {run.world} = {run.batch * run.world}; lr {lr:.4g}")
    amp = autocast_dtype(cfg.train.amp, device)
    scaler = torch.amp.GradScaler("cuda", enabled=amp == torch.float16)
    labelled = cfg.train.online_probe != "off" and _labelled(data.base)  # off: no image is read for it
    probe = build_probe(
        cfg.train.online_probe, labelled, model.method.export_trunk().out_dim, data.info.num_classes, device
    )
    startup_summary(
        images=len(data.dataset),
        dataset=cfg.data.name,
        split=cfg.data.split,
        steps_per_epoch=data.spe,
        epochs=cfg.train.epochs,
        stop_step=data.stop_step,
        world=run.world,
        device=device,
        precision=str(amp).replace("torch.", "") if amp else "fp32",
        output_dir=cfg.output_dir,
        method=cfg.method.name,
        mix=cfg.mix.type,
    )
    return RunModel(model, optimizer, scaler, amp, memory_format, probe)


def _resume(run: Run, data: RunData, parts: RunModel) -> Tuple[int, Optional[str]]:
    """(start step, checkpoint resumed from): the checkpoint's state and RNG streams restored, or a fresh
    start (with the mixer's start hook, e.g. ODC's initial clustering)."""
    cfg = run.cfg
    resume, state = ckpt.find_resume(cfg.resume, cfg.output_dir, run.warn)
    if state is None:
        if cfg.resume == "auto" and run.run_dir is not None:  # refuse to start over a run it cannot continue
            check_fresh_start(cfg.output_dir, config_to_dict(cfg), ckpt.config_differences)
        parts.model.on_train_start(_extract_fn(parts.model, data.base, cfg, run.device, data.info, run.batch))
        return 0, None
    ckpt.check_resume_config(resume, state.get("config"), config_to_dict(cfg))
    note = ckpt.check_world_size(
        resume,
        ckpt.saved_world_size(state),
        run.world,
        lambda w: steps_per_epoch(len(data.dataset), per_process_batch(cfg.train, w), w),
    )
    if run.is_main:
        ckpt.warn_moved_data(state.get("config"), config_to_dict(cfg), len(data.base), data.spe, _warn)
    _load_model_state(parts.model, state["model"], resume, run.warn)
    parts.optimizer.load_state_dict(state["optimizer"])
    parts.scaler.load_state_dict(state["scaler"])
    start_step = int(state["step"])
    if parts.probe is not None and "online_probe" in state:
        parts.probe.load_checkpoint_state(state["online_probe"])
    rng = ckpt.rank_rng_state(state["rng"], run.rank)
    if rng is not None:
        ckpt.set_rng_state(rng)
    else:  # a rank the checkpoint's run did not have: a fresh stream of its own, a function of the step
        seed_everything(cfg.seed + run.rank + 100_003 * start_step)
    if run.is_main and note:
        _warn(note)
    if run.is_main:
        ckpt.set_aside_newer(cfg.output_dir, start_step, _warn)
        say(f"resumed from {resume} at step {start_step}/{data.total_steps}")
    return start_step, resume


class _Loop:
    """The training loop's state between steps: logger, health monitor, finite guard, progress bar and
    the smoothed image rate."""

    def __init__(
        self, run: Run, data: RunData, parts: RunModel, start_step: int, resume: Optional[str]
    ) -> None:
        cfg = run.cfg
        self.logger = MetricsLogger(
            cfg.output_dir, run.is_main, start_step, cfg.train.loggers, config_to_dict(cfg)
        )
        self.health = HealthMonitor(parts.model.method.embed_dim, data.total_steps)
        self.guard, self.last_ckpt = FiniteGuard(skippable=parts.scaler.is_enabled()), resume
        self.bar = tqdm(
            total=data.stop_step,
            initial=start_step,
            disable=not (run.is_main and cfg.train.progress),
            dynamic_ncols=True,
            desc="pretrain",
        )
        self.timer, self.rate, self.last = time.perf_counter(), None, {}

    def tick(self, images: int) -> None:
        now = time.perf_counter()
        inst = images / max(now - self.timer, 1e-9)
        self.rate = inst if self.rate is None else 0.9 * self.rate + 0.1 * inst
        self.timer = now
        self.bar.update(1)


def _loop(
    run: Run,
    data: RunData,
    parts: RunModel,
    step_fn: Any,
    start_step: int,
    resume: Optional[str],
    stack: contextlib.ExitStack,
    stop: StopRequest,
) -> Tuple[int, Dict[str, Any]]:
    """Steps from ``start_step`` to the stop step, with logging, checkpoints and the epoch monitors;
    (the step reached, the last logged losses)."""
    cfg, model, probe = run.cfg, parts.model, parts.probe
    state = _Loop(run, data, parts, start_step, resume)
    # read here: tests hook the step through it
    optim_step = OptimStep(
        step_fn,
        parts.optimizer,
        run.device,
        parts.amp,
        cfg.train.grad_clip,
        parts.scaler,
        schedule=set_learning_rates,
    )
    loader = RunLoader(
        data.dataset,
        run.batch,
        cfg.seed,
        cfg.data.num_workers,
        run.rank,
        run.world,
        pin_memory=run.device.startswith("cuda"),
    )
    stack.callback(loader.close)  # the persistent workers end with the run (or its error)
    step = start_step
    while step < data.stop_step:
        epoch, offset = divmod(step, data.spe)
        for views, labels, index in loader.epoch(epoch, offset):
            if step >= data.stop_step:
                break
            views, labels, index = batch_to_device(
                views, labels, index, run.device, parts.memory_format, data.normalize
            )
            loss, losses, metrics = optim_step(views, labels, index, step, data.total_steps, data.spe)
            state.guard.observe(losses, loss, step + 1)  # no host sync; read at log and checkpoint steps
            if probe is not None and bool((labels >= 0).any()):
                probe.step(model.method.export_trunk(), views[0][labels >= 0], labels[labels >= 0])
            step += 1
            state.tick(run.batch * run.world)
            if step % cfg.train.log_every == 0 or step == data.stop_step:  # the only reads back to the host
                _log_step(run, parts, state, step, epoch, loss, losses, metrics)
            _after_step(run, data, parts, state, step, stop)
    state.bar.close()
    state.logger.close()
    return step, state.last


def _log_step(
    run: Run,
    parts: RunModel,
    state: _Loop,
    step: int,
    epoch: int,
    loss: Tensor,
    losses: Dict[str, Tensor],
    metrics: Dict[str, Any],
) -> None:
    """The metrics row of ``step``: progress bar, health warnings, metrics.jsonl / TensorBoard / W&B."""
    state.guard.check(state.last_ckpt)
    state.last = host_values({"loss": loss, **losses})
    groups = parts.optimizer.param_groups
    state.bar.set_postfix(
        loss=f"{state.last['loss']:.3f}", lr=f"{groups[0]['lr']:.4g}", img_s=f"{state.rate:.0f}", epoch=epoch
    )
    lrs = {f"lr/{g['name']}": g["lr"] for g in groups}
    row = {
        "epoch": epoch,
        **state.last,
        **host_values({**metrics, **state.guard.metrics()}),
        **lrs,
        "img_per_s": state.rate,
    }
    if run.is_main:
        for message in state.health.check(step, row):
            tqdm.write(message, file=sys.stderr)
    state.logger.log(step, {**row, "health_warnings": state.health.active_names})


def _after_step(run: Run, data: RunData, parts: RunModel, state: _Loop, step: int, stop: StopRequest) -> None:
    """Checkpoint at ``train.ckpt_every``, the epoch's monitors at its end, and a checkpointed stop when a
    signal asked for one (:class:`~ssmix.engine.signals.Interrupted`)."""
    cfg = run.cfg

    def save() -> str:
        return _save(
            cfg,
            parts.model,
            parts.optimizer,
            parts.scaler,
            step,
            run.world,
            run.is_main,
            state.guard,
            state.last_ckpt,
            parts.probe,
        )

    if step % cfg.train.ckpt_every == 0 or step == data.stop_step:
        state.last_ckpt = save()
        if run.run_dir is not None:  # overwrite=true: the old run goes now
            run.run_dir.commit()
    if step % data.spe == 0:
        _log_probe(parts.probe, step // data.spe, step, state.logger)
        _end_of_epoch(cfg, parts.model, step // data.spe, step, state.logger, data.info, run.device)
    if step < data.stop_step and stop.due(step, cfg.train.log_every, run.world, run.device):
        if state.last_ckpt != ckpt.checkpoint_path(cfg.output_dir, step):
            state.last_ckpt = save()
        state.logger.close()
        raise Interrupted(stop.signum, step, state.last_ckpt)


def _finish(run: Run, data: RunData, parts: RunModel, step: int, last: Dict[str, Any]) -> Dict[str, Any]:
    """The exported backbone (and a learned mixer's ``mixer.pt``) on rank 0; the run's summary."""
    cfg, model = run.cfg, parts.model
    if run.is_main:
        ckpt.save_atomic(
            export_state_dict(model.method.export_trunk()), os.path.join(cfg.output_dir, "backbone.pth")
        )
        if model.mixing is not None and hasattr(model.mixing.mixer, "export"):
            model.mixing.mixer.export(
                os.path.join(cfg.output_dir, "mixer.pt"),
                model.method.target_trunk(),
                {"image_size": cfg.data.image_size, "method": cfg.method.name},
            )
    barrier()
    return {"step": step, "total_steps": data.total_steps, "last": last, "output_dir": cfg.output_dir}


def _load_model_state(
    model: Pretrainer, state: Dict[str, Tensor], path: str, warn: Optional[Any] = None
) -> None:
    """Load ``state``; MoCo's split-BN statistics of another world size (C x bn_splits on one process,
    C under DDP) are converted first, with a one-line note."""
    state, converted = ckpt.convert_split_bn_stats(state, model.state_dict())
    if converted and warn is not None:
        warn(
            f"resume: {path}: {converted} BatchNorm statistics converted between MoCo's split-BN of one process "
            "(method.bn_splits x C, averaged over the splits) and DDP's plain BN (C, repeated per split)"
        )
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:  # a config check missed a shape: one line, not 60
        first = " ".join(str(exc).split("\n\t")[:2])
        raise ckpt.CheckpointError(
            f"resume: {path} does not fit the model this config builds ({first[:300]})"
        ) from None


def _save(
    cfg: Config,
    model,
    optimizer,
    scaler,
    step: int,
    world: int,
    is_main: bool,
    guard: FiniteGuard,
    last_ckpt: Optional[str],
    probe: Optional[OnlineProbe] = None,
) -> str:
    """Check that the loss and every weight and buffer are finite, then write the checkpoint of ``step``
    (rank 0) and prune this run's older ones; returns its path."""
    guard.check(last_ckpt)
    check_state(model.state_dict(), step, last_ckpt)
    rng = ckpt.get_rng_state()
    if world > 1:  # every rank's RNG stream, so each resumes exactly
        gathered = [None] * world
        torch.distributed.all_gather_object(gathered, rng)
        rng = gathered
    if is_main:
        state = {
            "model": model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "scaler": scaler.state_dict(),
            "step": step,
            "rng": rng,
            "world_size": world,
            "config": config_to_dict(cfg),
        }
        if probe is not None:
            state["online_probe"] = probe.checkpoint_state()
        ckpt.save_atomic(state, ckpt.checkpoint_path(cfg.output_dir, step))
        ckpt.prune_checkpoints(cfg.output_dir, cfg.train.keep_ckpts, upto_step=step)
    barrier()
    return ckpt.checkpoint_path(cfg.output_dir, step)


def _labelled(dataset) -> bool:
    """Whether the pre-training split has labels (its first item's label is not -1)."""
    return len(dataset) > 0 and int(dataset[0][1]) >= 0


def _log_probe(probe: Optional[OnlineProbe], epoch: int, step: int, logger: MetricsLogger) -> None:
    """The online probe's epoch: its top-1 on this epoch's training batches, logged and printed."""
    metrics = probe.epoch_metrics() if probe is not None else {}
    if metrics:
        say(
            f"epoch {epoch}: online linear probe top-1 {metrics['online_probe_top1']:.2f} % "
            f"(training batches, loss {metrics['online_probe_loss']:.3f})"
        )
        logger.log(step, metrics)


def _end_of_epoch(
    cfg: Config, model: Pretrainer, epoch: int, step: int, logger: MetricsLogger, info, device: str
) -> None:
    """Online monitors: kNN accuracy of the online trunk, mixed-sample grids. They leave every random
    stream as they found it, so a run computes the same weights with or without them."""
    rng = ckpt.get_rng_state()
    try:
        _run_monitors(cfg, model, epoch, step, logger, device)
    finally:
        ckpt.set_rng_state(rng)


def _run_monitors(
    cfg: Config, model: Pretrainer, epoch: int, step: int, logger: MetricsLogger, device: str
) -> None:
    tc = cfg.train
    if tc.knn_every and epoch % tc.knn_every == 0:  # every rank embeds its shard of the bank and queries
        from ssmix.evaluation.monitor import knn_monitor

        with phase(f"epoch {epoch}: kNN monitor", f"k={tc.knn_k}"):
            top1 = knn_monitor(cfg, model.method.export_trunk(), device, k=tc.knn_k)
        say(f"epoch {epoch}: kNN top-1 {top1:.2f} %")
        logger.log(step, {"knn_top1": top1})
        model.train()
    if tc.vis_every and epoch % tc.vis_every == 0 and logger.enabled and model.mixing is not None:
        from ssmix.visualize import epoch_grid

        with phase(f"epoch {epoch}: mixed-sample grid"):
            logger.image("mix/grid", epoch_grid(cfg, model, device, epoch, step), step)
        model.train()
