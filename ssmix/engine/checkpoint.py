"""Atomic checkpoints (write to a temp file, fsync, rename) and exact-resume RNG state."""
from __future__ import annotations

import glob
import os
import random
from typing import Any, Dict, Optional

import numpy as np
import torch

CKPT_DIR = "checkpoints"


def save_atomic(obj: Any, path: str) -> None:
    """``torch.save`` that never leaves a truncated file at ``path``: a crash leaves the old one."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = f"{path}.tmp.{os.getpid()}"
    try:
        with open(tmp, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def load_checkpoint(path: str) -> Dict[str, Any]:
    """Load a checkpoint with ``weights_only=True`` (plain tensors, numbers, strings, containers)."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"checkpoint not found: {path}")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # a truncated or foreign file
        raise ValueError(f"{path}: not a readable ssmix checkpoint ({type(exc).__name__}: {exc})") from None


def checkpoint_path(output_dir: str, step: int) -> str:
    return os.path.join(output_dir, CKPT_DIR, f"step_{step:08d}.pt")


def latest_checkpoint(output_dir: str) -> Optional[str]:
    paths = sorted(glob.glob(os.path.join(output_dir, CKPT_DIR, "step_*.pt")))
    return paths[-1] if paths else None


def prune_checkpoints(output_dir: str, keep: int) -> None:
    paths = sorted(glob.glob(os.path.join(output_dir, CKPT_DIR, "step_*.pt")))
    for path in paths[: max(len(paths) - keep, 0)]:
        os.remove(path)


def get_rng_state() -> Dict[str, Any]:
    np_state = np.random.get_state()
    state = {
        "python": random.getstate(),
        "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), *np_state[2:]],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: Dict[str, Any]) -> None:
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    name, keys, *rest = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), *rest))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
