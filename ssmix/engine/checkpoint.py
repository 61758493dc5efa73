"""Checkpoints: atomic writes (temp file, fsync, rename), safe loading with fallback to the previous
checkpoint, the resume-compatibility check, and exact-resume RNG state."""

from __future__ import annotations

import errno
import glob
import os
import random
import re
import shutil
from typing import Any, Callable, Dict, List, Optional, Tuple

import numpy as np
import torch
from torch import Tensor

from ssmix.config import ConfigError
from ssmix.engine.signals import critical
from ssmix.safe_load import UnreadableFileError, UnsafePickleError, safe_torch_load

CKPT_DIR = "checkpoints"
_STEP = re.compile(r"step_(\d+)\.pt$")

# Keys a resumed run may change: where and how it runs, not what it computes. Every other difference
# from the checkpoint's config is refused (see :func:`check_resume_config`).
RESUME_FREE_KEYS = (
    "output_dir",
    "resume",
    "overwrite",
    "device",
    "deterministic",
    "data.root",
    "data.download",
    "data.num_workers",
    "train.max_steps",
    "train.progress",
    "train.log_every",
    "train.ckpt_every",
    "train.keep_ckpts",
    "train.knn_every",
    "train.vis_every",
)


class CheckpointError(ConfigError):
    """A checkpoint that cannot be used: unreadable, not a training checkpoint, or another run's config."""


class DiskWriteError(OSError):
    """A save that failed (disk full, read-only...); the previous checkpoint is intact."""


def save_atomic(obj: Any, path: str) -> None:
    """``torch.save`` that never leaves a truncated file at ``path``: a crash leaves the old one. No signal
    interrupts it (:func:`ssmix.engine.signals.critical`)."""
    with critical():
        _save_atomic(obj, path)


def _save_atomic(obj: Any, path: str) -> None:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = f"{path}.tmp.{os.getpid()}"
    try:
        with open(tmp, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except (OSError, RuntimeError) as exc:  # torch.save reports a full disk as a RuntimeError
        free = shutil.disk_usage(os.path.dirname(os.path.abspath(path))).free / 2**20
        full = getattr(exc, "errno", None) == errno.ENOSPC or free < 1
        reason = "no space left on device" if full else " ".join(str(exc).split())[:200]
        raise DiskWriteError(
            errno.ENOSPC if full else getattr(exc, "errno", None) or errno.EIO,
            f"cannot write {path}: {reason} ({free:.0f} MiB free there; a save needs room for one "
            f"more file of this size); the previous file is intact",
        ) from None
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


#: model-state prefixes renamed since checkpoints were first written: old -> new
RENAMED_PREFIXES: Dict[str, str] = {"pipeline.": "mixing."}  # Pretrainer.pipeline -> Pretrainer.mixing


def migrate_model_keys(state: Dict[str, Any]) -> Dict[str, Any]:
    """``state`` (a Pretrainer's state dict) with the keys of :data:`RENAMED_PREFIXES` renamed, order kept,
    so checkpoints written before a rename still resume."""

    def renamed(key: str) -> str:
        for old, new in RENAMED_PREFIXES.items():
            if key.startswith(old):
                return new + key[len(old) :]
        return key

    return {renamed(k): v for k, v in state.items()}


def load_checkpoint(path: str, what: str = "resume") -> Dict[str, Any]:
    """Load a checkpoint safely (weights-only: tensors, numbers, strings, containers); a training
    checkpoint's ``model`` state comes with old key names migrated (:func:`migrate_model_keys`)."""
    if not os.path.isfile(path):
        raise CheckpointError(f"{what}: checkpoint not found: {path}")
    try:
        loaded = safe_torch_load(path, what)
    except UnsafePickleError:
        raise
    except UnreadableFileError as exc:
        raise CheckpointError(f"{what}: {path}: not a readable ssmix checkpoint ({exc.reason})") from None
    if isinstance(loaded, dict) and isinstance(loaded.get("model"), dict):
        loaded["model"] = migrate_model_keys(loaded["model"])
    return loaded


def load_training_checkpoint(path: str, what: str = "resume") -> Dict[str, Any]:
    """:func:`load_checkpoint` of a file the trainer wrote (``model``, ``optimizer``, ``step``...)."""
    state = load_checkpoint(path, what)
    keys = state if isinstance(state, dict) else {}
    missing = [k for k in ("model", "optimizer", "scaler", "step", "rng") if k not in keys]
    if missing:
        raise CheckpointError(
            f"{what}: {path} is not an ssmix training checkpoint (no {', '.join(missing)}); "
            "pass a checkpoints/step_*.pt file or a run's output_dir"
        )
    return state


def checkpoint_path(output_dir: str, step: int) -> str:
    return os.path.join(output_dir, CKPT_DIR, f"step_{step:08d}.pt")


def checkpoint_step(path: str) -> int:
    match = _STEP.search(os.path.basename(path))
    return int(match.group(1)) if match else -1


def list_checkpoints(output_dir: str) -> List[str]:
    """``checkpoints/step_*.pt`` of a run, oldest first."""
    return sorted(glob.glob(os.path.join(output_dir, CKPT_DIR, "step_*.pt")), key=checkpoint_step)


def latest_checkpoint(output_dir: str) -> Optional[str]:
    paths = list_checkpoints(output_dir)
    return paths[-1] if paths else None


def load_latest_readable(
    output_dir: str, warn: Callable[[str], None], rename: bool = True
) -> Tuple[Optional[str], Optional[Dict]]:
    """The newest checkpoint that loads; an unreadable newer one is skipped with a warning and (``rename``)
    renamed ``*.corrupt``, kept for inspection but never picked again. ``(None, None)`` if none loads."""
    for path in reversed(list_checkpoints(output_dir)):
        try:
            return path, load_training_checkpoint(path)
        except UnsafePickleError:
            raise
        except CheckpointError as exc:
            if rename and os.path.exists(path):
                os.replace(path, path + ".corrupt")
            warn(
                f"warning: skipping unreadable checkpoint {path} (renamed *.corrupt): "
                f"{' '.join(str(exc).split())[:200]}"
            )
    return None, None


def find_resume(
    resume: Optional[str], output_dir: str, warn: Optional[Callable[[str], None]]
) -> Tuple[Optional[str], Optional[Dict]]:
    """``(path, state)`` of what ``resume`` names: ``auto`` (the newest readable checkpoint of
    ``output_dir``; none yet: ``(None, None)``), a run directory (its newest) or a checkpoint file.
    ``warn`` is None on the processes that must neither print nor rename."""
    if not resume:
        return None, None
    if resume != "auto" and not os.path.isdir(resume):
        return resume, load_training_checkpoint(resume)
    run = output_dir if resume == "auto" else resume
    path, state = load_latest_readable(
        run, warn or (lambda msg: None), rename=warn is not None and run == output_dir
    )
    if state is None and resume != "auto":
        raise CheckpointError(f"resume: {resume} holds no readable checkpoints/step_*.pt")
    return path, state


def set_aside_newer(output_dir: str, step: int, warn: Callable[[str], None]) -> None:
    """Rename checkpoints after ``step`` (an abandoned continuation) ``*.stale``, so that neither pruning
    nor a later ``resume=auto`` mixes them with this run's."""
    for path in list_checkpoints(output_dir):
        if checkpoint_step(path) > step:
            os.replace(path, path + ".stale")
            warn(f"warning: {path} is newer than the resumed step {step}; renamed *.stale")


def prune_checkpoints(output_dir: str, keep: int, upto_step: Optional[int] = None) -> None:
    """Delete all but the newest ``keep`` checkpoints at or before ``upto_step`` (the run's own)."""
    paths = [p for p in list_checkpoints(output_dir) if upto_step is None or checkpoint_step(p) <= upto_step]
    for path in paths[: max(len(paths) - max(keep, 1), 0)]:
        os.remove(path)


def _flatten(tree: Dict[str, Any], prefix: str = "") -> Dict[str, Any]:
    out: Dict[str, Any] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(_flatten(value, name + "."))
        else:
            out[name] = value
    return out


def config_differences(saved: Dict[str, Any], current: Dict[str, Any]) -> List[str]:
    """``key saved -> current`` for every key but :data:`RESUME_FREE_KEYS` (keys one side lacks are skipped)."""
    old, new = _flatten(saved), _flatten(current)
    diffs = []
    for key in new:
        if key in old and key not in RESUME_FREE_KEYS and old[key] != new[key]:
            diffs.append(f"{key} {old[key]!r} -> {new[key]!r}")
    polymorphic = [
        d for d in diffs if d.startswith(("model.", "method.name", "mix.type"))
    ]  # shape-changing first
    return polymorphic + [d for d in diffs if d not in polymorphic]


def check_resume_config(path: str, saved: Optional[Dict[str, Any]], current: Dict[str, Any]) -> None:
    """Refuse to resume from ``path`` with a config that computes something else (one line naming what)."""
    diffs = config_differences(saved or {}, current)
    if diffs:
        shown = ", ".join(diffs[:4]) + (f" (+{len(diffs) - 4} more)" if len(diffs) > 4 else "")
        raise CheckpointError(
            f"resume: {path} was written with a different config: {shown}; resume with the "
            "checkpoint's values, or start a new run in another output_dir"
        )


def warn_moved_data(
    saved: Optional[Dict[str, Any]],
    current: Dict[str, Any],
    num_images: int,
    spe: int,
    warn: Callable[[str], None],
) -> None:
    """``data.root`` may move on resume (a copy on a local disk), but other images change the schedule:
    say so, with the diff (issue 24)."""
    old = ((saved or {}).get("data") or {}).get("root")
    new = current["data"]["root"]
    if old is not None and old != new and current["data"]["name"] not in ("synthetic", "digits"):
        warn(
            f"warning: resume: data.root {old!r} -> {new!r}; the run continues on the {num_images} images there "
            f"({spe} steps per epoch): if they are not the same images, the schedule and results change"
        )


def get_rng_state() -> Dict[str, Any]:
    """Every random stream of this process; on CUDA the generator of its own (current) GPU only."""
    np_state = np.random.get_state()
    state = {
        "python": random.getstate(),
        "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), *np_state[2:]],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda_current"] = torch.cuda.get_rng_state()
    return state


def set_rng_state(state: Dict[str, Any]) -> None:
    """Restore :func:`get_rng_state`'s streams. An older checkpoint's list of every GPU's generator
    (``cuda``) is restored for the GPUs this process sees, however many that is."""
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    name, keys, *rest = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), *rest))
    torch.set_rng_state(state["torch"])
    if not torch.cuda.is_available():
        return
    if "cuda_current" in state:
        torch.cuda.set_rng_state(state["cuda_current"])
    for index, cuda_state in enumerate(state.get("cuda", [])[: torch.cuda.device_count()]):
        torch.cuda.set_rng_state(cuda_state, index)


def rank_rng_state(saved: Any, rank: int) -> Optional[Dict[str, Any]]:
    """This rank's RNG state of a checkpoint (a list: one per rank of the run that wrote it), or None for
    a rank that run did not have (resumed on more processes)."""
    if not isinstance(saved, list):
        return saved if rank == 0 else None
    return saved[rank] if rank < len(saved) else None


def saved_world_size(state: Dict[str, Any]) -> int:
    """The number of processes that wrote ``state`` (older checkpoints: the length of their RNG list)."""
    if "world_size" in state:
        return int(state["world_size"])
    return len(state["rng"]) if isinstance(state["rng"], list) else 1


def check_world_size(path: str, saved_world: int, world: int, steps_per_epoch: Callable[[int], int]) -> str:
    """Refuse a resume on another number of processes that changes the steps per epoch (the checkpoint's
    step would fall elsewhere in the schedule); otherwise the one-line note to print ('' when the same)."""
    if saved_world == world:
        return ""
    before, now = steps_per_epoch(saved_world), steps_per_epoch(world)
    if before != now:
        raise CheckpointError(
            f"resume: {path} was written by {saved_world} process(es) at {before} steps per epoch; "
            f"with {world} this config has {now} (train.batch_size is per process): resume with "
            f"{saved_world}, or start a new run with train.global_batch_size (batch over all "
            "processes) so that the number of processes may change"
        )
    return (
        f"resume: {path} was written by {saved_world} process(es), this run has {world}: same global batch and "
        f"{now} steps per epoch; the rest of the epoch is re-sharded and ranks beyond {saved_world - 1} start "
        "fresh random streams, so the run is not bit-exact with an uninterrupted one"
    )


def convert_split_bn_stats(
    saved: Dict[str, Tensor], expected: Dict[str, Tensor]
) -> Tuple[Dict[str, Tensor], int]:
    """MoCo's split-BN running statistics between one process (``bn_splits`` x C, the shuffle-BN
    emulation) and DDP (C, a real shuffle): averaged over the splits, or repeated per split. Returns the
    converted state and how many tensors changed; every other entry is left as it is."""
    out, changed = dict(saved), 0
    for key, value in saved.items():
        target = expected.get(key)
        if (
            not key.endswith(("running_mean", "running_var"))
            or target is None
            or value.dim() != 1
            or target.dim() != 1
            or value.numel() == target.numel()
        ):
            continue
        if value.numel() % target.numel() == 0:
            out[key] = value.view(-1, target.numel()).mean(0)
        elif target.numel() % value.numel() == 0:
            out[key] = value.repeat(target.numel() // value.numel())
        else:
            continue
        changed += 1
    return out, changed
