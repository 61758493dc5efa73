"""The pre-training loop: plain PyTorch, per-iteration schedules, AMP on CUDA, atomic checkpoints,
exact resume, metrics.jsonl + TensorBoard, ``torchrun``-ready."""
from __future__ import annotations

import contextlib
import json
import os
import random
import sys
import time
from typing import Any, Dict, List, Optional, Tuple

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader
from tqdm import tqdm

from ssmix.config import Config, ConfigError, config_to_dict, dump_config, per_process_batch, scaled_lr
from ssmix.config_checks import check_data_fit, check_runnable
from ssmix.data.datasets import build_dataset, data_info
from ssmix.data.loader import MultiViewDataset, RunLoader, steps_per_epoch
from ssmix.data.transforms import DeviceNormalize, build_eval_transform, build_view_transform
from ssmix.distributed import barrier, broadcast_module_, gather_shards, shard
from ssmix.engine import checkpoint as ckpt
from ssmix.engine.ddp import setup_process, wrap_for_training
from ssmix.engine.finite import FiniteGuard, check_state
from ssmix.engine.health import HealthMonitor
from ssmix.engine.optim import build_optimizer, set_learning_rates
from ssmix.engine.pretrainer import Pretrainer
from ssmix.engine.rundir import check_fresh_start, continues_in_place, open_run_dir, truncate_metrics
from ssmix.engine.signals import Interrupted, StopRequest
from ssmix.engine.wandb_logger import check_loggers
from ssmix.evaluation.online_probe import OnlineProbe, build_probe
from ssmix.models.backbones import export_state_dict
from ssmix.report import phase, say, startup_summary


def resolve_device(name: str) -> str:
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"device: '{name}' was asked for but CUDA is not available; use device=cpu")
    return name


def autocast_dtype(amp: str, device: str) -> Optional[torch.dtype]:
    """None (fp32) or the autocast dtype; ``auto`` is bf16 on CUDA and fp32 on CPU."""
    if amp not in ("auto", "bf16", "fp16", "off"):
        raise ConfigError(f"train.amp: expected auto, bf16, fp16 or off, got '{amp}'")
    if amp == "off" or (amp == "auto" and not device.startswith("cuda")):
        return None
    if amp == "fp16" and not device.startswith("cuda"):
        raise ConfigError("train.amp=fp16 needs CUDA; use train.amp=bf16 or off on CPU")
    return torch.float16 if amp == "fp16" else torch.bfloat16


def memory_format_for(cfg: Config, device: str) -> torch.memory_format:
    """channels_last on CUDA only: on CPU (torch 2.14) it measured 1.03-1.35x slower per MoCo v2 step
    (1.35x with split BN, whose per-split reshape then copies; bench/pretrain_throughput.py)."""
    if cfg.model.channels_last and device.startswith("cuda"):
        return torch.channels_last
    return torch.contiguous_format


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def host_values(values: Dict[str, Any]) -> Dict[str, Any]:
    """Tensors (losses, metrics) as Python floats: a device-to-host sync, so only at logging steps."""
    return {k: float(v.detach()) if isinstance(v, Tensor) else v for k, v in values.items()}


class MetricsLogger:
    """``metrics.jsonl`` rows, plus TensorBoard and / or W&B (``train.loggers``; rank 0 only)."""

    def __init__(self, output_dir: str, enabled: bool, start_step: int = 0, loggers=("tensorboard",),
                 config: Optional[Dict[str, Any]] = None) -> None:
        """Rows after ``start_step`` (left by a run that went further before it was killed) are dropped."""
        self.enabled = enabled
        self.tb = self.wandb = None
        if enabled:
            truncate_metrics(os.path.join(output_dir, "metrics.jsonl"), start_step)
            self.file = open(os.path.join(output_dir, "metrics.jsonl"), "a", encoding="utf-8")
            if "tensorboard" in loggers:
                try:
                    from torch.utils.tensorboard import SummaryWriter

                    self.tb = SummaryWriter(os.path.join(output_dir, "tb"), purge_step=start_step + 1)
                except ImportError:  # tensorboard is optional at run time
                    self.tb = None
            if "wandb" in loggers:
                from ssmix.engine.wandb_logger import WandbLogger

                self.wandb = WandbLogger(output_dir, config or {})

    def log(self, step: int, row: Dict[str, Any]) -> None:
        if not self.enabled:
            return
        self.file.write(json.dumps({"step": step, **row}) + "\n")
        self.file.flush()
        if self.tb is not None:
            for key, value in row.items():
                if isinstance(value, (int, float)):
                    self.tb.add_scalar(key, value, step)
        if self.wandb is not None:
            self.wandb.log(step, row)

    def image(self, tag: str, image: Tensor, step: int) -> None:
        if self.enabled and self.tb is not None:
            self.tb.add_image(tag, image, step)
        if self.enabled and self.wandb is not None:
            self.wandb.image(tag, image, step)

    def close(self) -> None:
        if self.enabled:
            self.file.close()
            if self.tb is not None:
                self.tb.close()
            if self.wandb is not None:
                self.wandb.close()


def _extract_fn(model: Pretrainer, dataset, cfg: Config, device: str, info, batch: int) -> Any:
    """Embeddings of the whole training set through the target branch (ODC's initial k-means). Under
    DDP each rank embeds its shard with rank 0's weights (broadcast first: DDP's own broadcast comes
    later, at the wrap) and the shards are gathered."""

    def extract() -> Tuple[Tensor, Tensor]:
        broadcast_module_(model.method)
        tf = build_eval_transform(cfg.data.image_size, info.mean, info.std)
        part = torch.utils.data.Subset(_Transformed(dataset, tf), shard(len(dataset)))
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


class _Transformed(torch.utils.data.Dataset):
    def __init__(self, base, transform) -> None:
        self.base, self.transform = base, transform

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, i):
        image, label = self.base[i]
        return self.transform(image), label


def check_global_batch(cfg: Config, batch: int, world: int) -> None:
    """What the global batch must divide, checked before anything is built: the method's key queue
    (MoCo v2, SwAV: ``method.queue_size``) and, on one process, MoCo's ``method.bn_splits``."""
    size, splits = getattr(cfg.method, "queue_size", 0), getattr(cfg.method, "bn_splits", 1)
    if size and size % (batch * world):
        raise ConfigError(f"method.queue_size={size} is not a multiple of the global batch {batch * world} "
                          f"({batch} per process x {world}): use a multiple of {batch * world}, or a global batch "
                          f"(train.global_batch_size) that divides {size}")
    if world == 1 and splits > 1 and batch % splits:
        raise ConfigError(f"method.bn_splits={splits} does not divide the batch {batch}: use a divisor of "
                          f"{batch}")


def batch_to_device(views: List[Tensor], labels: Tensor, index: Tensor, device: str,
                    memory_format: torch.memory_format, normalize: Optional[DeviceNormalize] = None
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


def _train(cfg: Config, stack: contextlib.ExitStack, stop: StopRequest) -> Dict[str, Any]:
    # The GPU is bound before the process group starts and before open_run_dir broadcasts (NCCL).
    device, rank, world, _ = setup_process(resolve_device(cfg.device))
    batch = per_process_batch(cfg.train, world)
    check_runnable(cfg, world)  # before the output directory is touched
    check_global_batch(cfg, batch, world)
    check_loggers(cfg.train.loggers)
    run_dir = open_run_dir(stack, cfg.output_dir, continues_in_place(cfg.resume, cfg.output_dir), cfg.overwrite,
                           rank, world)
    if device.startswith("cuda"):
        torch.backends.cudnn.benchmark = not cfg.deterministic
    if cfg.deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
    seed_everything(cfg.seed + rank)
    is_main = rank == 0

    # -- data -------------------------------------------------------------------------------
    dc = cfg.data
    info = data_info(dc)
    if cfg.train.knn_every and dc.name == "folder" and not dc.eval_root:
        raise ConfigError("train.knn_every: data.name=folder has no labels for the kNN monitor; set data.eval_root "
                          "to a labelled folder (<eval_root>/{train,val}/<class>/*) or train.knn_every=0")
    base = build_dataset(dc.name, dc.root, dc.split, download=dc.download, image_size=dc.image_size,
                         num_samples=dc.num_samples, num_classes=info.num_classes, seed=cfg.seed, subset=dc.subset)
    # On CUDA the loader hands over uint8 views, normalised on the GPU (the same values, 4x fewer bytes).
    normalize = DeviceNormalize(info.mean, info.std) if device.startswith("cuda") else None
    uint8 = {"uint8": True} if normalize is not None else {}
    views_tf = build_view_transform(dc.aug, dc.image_size, info.mean, info.std, **uint8)
    dataset = MultiViewDataset(base, views_tf, cfg.seed)
    if dc.name == "folder" and is_main:
        print(f"data.root: {len(base)} images under {dc.root}", flush=True)
    check_data_fit(cfg, len(dataset))
    if cfg.train.knn_every:  # a bad data.eval_root or knn_k fails now, not after epoch 1
        from ssmix.evaluation.monitor import check_monitor

        warning = check_monitor(cfg)
        if warning and is_main:
            _warn(warning)
    spe = steps_per_epoch(len(dataset), batch, world)
    if spe == 0:
        raise ConfigError(f"the global batch {batch * world} ({batch} per process x {world}) is larger than "
                          f"the dataset ({len(dataset)} images): lower train.batch_size or train.global_batch_size")
    total_steps = cfg.train.epochs * spe
    stop_step = min(total_steps, cfg.train.max_steps) if cfg.train.max_steps else total_steps
    num_classes = info.num_classes

    # -- model and optimizer ------------------------------------------------------------------
    try:
        model = Pretrainer(cfg, len(dataset), num_classes).to(device)
    except ValueError as exc:  # a validated config naming an unusable input (e.g. mix.checkpoint)
        raise ConfigError(str(exc)) from None
    memory_format = memory_format_for(cfg, device)
    model = model.to(memory_format=memory_format)
    optimizer = build_optimizer(model.param_groups(), cfg, spe, world)
    if is_main and (world > 1 or cfg.train.lr_reference_batch):
        lr = scaled_lr(cfg.train, batch * world)
        print(f"batch {batch} per process x {world} = {batch * world}; lr {lr:.4g}")
    amp = autocast_dtype(cfg.train.amp, device)
    scaler = torch.amp.GradScaler("cuda", enabled=amp == torch.float16)
    labelled = cfg.train.online_probe != "off" and _labelled(base)  # off: no image is read for it
    probe = build_probe(cfg.train.online_probe, labelled, model.method.export_trunk().out_dim, num_classes, device)
    startup_summary(images=len(dataset), dataset=dc.name, split=dc.split, steps_per_epoch=spe,
                    epochs=cfg.train.epochs, stop_step=stop_step, world=world, device=device,
                    precision=str(amp).replace("torch.", "") if amp else "fp32", output_dir=cfg.output_dir,
                    method=cfg.method.name, mix=cfg.mix.type)

    start_step = 0
    resume, state = ckpt.find_resume(cfg.resume, cfg.output_dir, _warn if is_main else None)
    if state is not None:
        ckpt.check_resume_config(resume, state.get("config"), config_to_dict(cfg))
        saved_world = ckpt.saved_world_size(state)
        note = ckpt.check_world_size(resume, saved_world, world, lambda w: steps_per_epoch(
            len(dataset), per_process_batch(cfg.train, w), w))
        if is_main:
            ckpt.warn_moved_data(state.get("config"), config_to_dict(cfg), len(base), spe, _warn)
        _load_model_state(model, state["model"], resume, _warn if is_main else None)
        optimizer.load_state_dict(state["optimizer"])
        scaler.load_state_dict(state["scaler"])
        start_step = int(state["step"])
        if probe is not None and "online_probe" in state:
            probe.load_checkpoint_state(state["online_probe"])
        rng = ckpt.rank_rng_state(state["rng"], rank)
        if rng is not None:
            ckpt.set_rng_state(rng)
        else:  # a rank the checkpoint's run did not have: a fresh stream of its own, a function of the step
            seed_everything(cfg.seed + rank + 100_003 * start_step)
        if is_main and note:
            _warn(note)
        if is_main:
            ckpt.set_aside_newer(cfg.output_dir, start_step, _warn)
            say(f"resumed from {resume} at step {start_step}/{total_steps}")
    else:
        if cfg.resume == "auto" and run_dir is not None:  # refuse to start over a run it cannot continue
            check_fresh_start(cfg.output_dir, config_to_dict(cfg), ckpt.config_differences)
        resume = None
        model.on_train_start(_extract_fn(model, base, cfg, device, info, batch))
    step_fn = wrap_for_training(model, cfg.model.sync_bn, cfg.method.name == "mocov2", device)
    model.train()
    if run_dir is not None:  # everything checked: this directory now holds this run
        run_dir.start()
        run_dir.write_text("config.yaml", dump_config(cfg))

    logger = MetricsLogger(cfg.output_dir, is_main, start_step, cfg.train.loggers, config_to_dict(cfg))
    health = HealthMonitor(model.method.embed_dim, total_steps)
    guard, last_ckpt = FiniteGuard(skippable=scaler.is_enabled()), resume
    bar = tqdm(total=stop_step, initial=start_step, disable=not (is_main and cfg.train.progress),
               dynamic_ncols=True, desc="pretrain")
    params = [p for g in optimizer.param_groups for p in g["params"]]
    step, last = start_step, {}
    timer, rate = time.perf_counter(), None
    loader = RunLoader(dataset, batch, cfg.seed, dc.num_workers, rank, world, pin_memory=device.startswith("cuda"))
    stack.callback(loader.close)  # the persistent workers end with the run (or its error)
    while step < stop_step:
        epoch, offset = divmod(step, spe)
        for views, labels, index in loader.epoch(epoch, offset):
            if step >= stop_step:
                break
            views, labels, index = batch_to_device(views, labels, index, device, memory_format, normalize)
            set_learning_rates(optimizer, step, total_steps)
            autocast = torch.autocast(device.split(":")[0], dtype=amp) if amp else contextlib.nullcontext()
            with autocast:
                losses, metrics = step_fn(views, labels, index, step, total_steps)
            loss = sum(losses.values())
            guard.observe(losses, loss, step + 1)  # no host sync; read at log and checkpoint steps
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            if cfg.train.grad_clip:
                scaler.unscale_(optimizer)
                torch.nn.utils.clip_grad_norm_(params, cfg.train.grad_clip)
            scaler.step(optimizer)
            scaler.update()
            if probe is not None and bool((labels >= 0).any()):
                probe.step(model.method.export_trunk(), views[0][labels >= 0], labels[labels >= 0])
            step += 1

            now = time.perf_counter()
            inst = batch * world / max(now - timer, 1e-9)
            rate = inst if rate is None else 0.9 * rate + 0.1 * inst
            timer = now
            bar.update(1)
            if step % cfg.train.log_every == 0 or step == stop_step:  # the only reads back to the host
                guard.check(last_ckpt)
                last = host_values({"loss": loss, **losses})
                bar.set_postfix(loss=f"{last['loss']:.3f}", lr=f"{optimizer.param_groups[0]['lr']:.4g}",
                                img_s=f"{rate:.0f}", epoch=epoch)
                lrs = {f"lr/{g['name']}": g["lr"] for g in optimizer.param_groups}
                row = {"epoch": epoch, **last, **host_values({**metrics, **guard.metrics()}), **lrs,
                       "img_per_s": rate}
                if is_main:
                    for message in health.check(step, row):
                        tqdm.write(message, file=sys.stderr)
                logger.log(step, {**row, "health_warnings": health.active_names})
            if step % cfg.train.ckpt_every == 0 or step == stop_step:
                last_ckpt = _save(cfg, model, optimizer, scaler, step, world, is_main, guard, last_ckpt, probe)
                if run_dir is not None:  # overwrite=true: the old run goes now
                    run_dir.commit()
            if step % spe == 0:
                _log_probe(probe, step // spe, step, logger)
                _end_of_epoch(cfg, model, step // spe, step, logger, info, device)
            if step < stop_step and stop.due(step, cfg.train.log_every, world, device):
                if last_ckpt != ckpt.checkpoint_path(cfg.output_dir, step):
                    last_ckpt = _save(cfg, model, optimizer, scaler, step, world, is_main, guard, last_ckpt, probe)
                logger.close()
                raise Interrupted(stop.signum, step, last_ckpt)
    bar.close()
    if is_main:
        ckpt.save_atomic(export_state_dict(model.method.export_trunk()), os.path.join(cfg.output_dir, "backbone.pth"))
        if model.pipeline is not None and hasattr(model.pipeline.mixer, "export"):
            model.pipeline.mixer.export(os.path.join(cfg.output_dir, "mixer.pt"), model.method.target_trunk(),
                                        {"image_size": cfg.data.image_size, "method": cfg.method.name})
    logger.close()
    barrier()
    return {"step": step, "total_steps": total_steps, "last": last, "output_dir": cfg.output_dir}


def _load_model_state(model: Pretrainer, state: Dict[str, Tensor], path: str,
                      warn: Optional[Any] = None) -> None:
    """Load ``state``; MoCo's split-BN statistics of another world size (C x bn_splits on one process,
    C under DDP) are converted first, with a one-line note."""
    state, converted = ckpt.convert_split_bn_stats(state, model.state_dict())
    if converted and warn is not None:
        warn(f"resume: {path}: {converted} BatchNorm statistics converted between MoCo's split-BN of one process "
             "(method.bn_splits x C, averaged over the splits) and DDP's plain BN (C, repeated per split)")
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:  # a config check missed a shape: one line, not 60
        first = " ".join(str(exc).split("\n\t")[:2])
        raise ckpt.CheckpointError(f"resume: {path} does not fit the model this config builds ({first[:300]})") \
            from None


def _save(cfg: Config, model, optimizer, scaler, step: int, world: int, is_main: bool, guard: FiniteGuard,
          last_ckpt: Optional[str], probe: Optional[OnlineProbe] = None) -> str:
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
        state = {"model": model.state_dict(), "optimizer": optimizer.state_dict(), "scaler": scaler.state_dict(),
                 "step": step, "rng": rng, "world_size": world, "config": config_to_dict(cfg)}
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
        say(f"epoch {epoch}: online linear probe top-1 {metrics['online_probe_top1']:.2f} % "
            f"(training batches, loss {metrics['online_probe_loss']:.3f})")
        logger.log(step, metrics)


def _end_of_epoch(cfg: Config, model: Pretrainer, epoch: int, step: int, logger: MetricsLogger, info,
                  device: str) -> None:
    """Online monitors: kNN accuracy of the online trunk, mixed-sample grids. They leave every random
    stream as they found it, so a run computes the same weights with or without them."""
    rng = ckpt.get_rng_state()
    try:
        _run_monitors(cfg, model, epoch, step, logger, device)
    finally:
        ckpt.set_rng_state(rng)


def _run_monitors(cfg: Config, model: Pretrainer, epoch: int, step: int, logger: MetricsLogger, device: str
                  ) -> None:
    tc = cfg.train
    if tc.knn_every and epoch % tc.knn_every == 0:  # every rank embeds its shard of the bank and queries
        from ssmix.evaluation.monitor import knn_monitor

        with phase(f"epoch {epoch}: kNN monitor", f"k={tc.knn_k}"):
            top1 = knn_monitor(cfg, model.method.export_trunk(), device, k=tc.knn_k)
        say(f"epoch {epoch}: kNN top-1 {top1:.2f} %")
        logger.log(step, {"knn_top1": top1})
        model.train()
    if tc.vis_every and epoch % tc.vis_every == 0 and logger.enabled and model.pipeline is not None:
        from ssmix.visualize import epoch_grid

        with phase(f"epoch {epoch}: mixed-sample grid"):
            logger.image("mix/grid", epoch_grid(cfg, model, device, epoch, step), step)
        model.train()
