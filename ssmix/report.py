"""What a run tells the researcher on the console: one ``[ssmix]`` line per fact, and a start line plus
an end line (count, seconds, rate) around every phase that can take a while (ODC's feature extraction
and k-means, the kNN monitor, linear-eval extraction; README "Pre-training").

Lines go to stdout through ``tqdm.write``, so they never tear a live progress bar. Only rank 0 prints
(:func:`ssmix.distributed.rank`).
"""

from __future__ import annotations

import contextlib
import sys
import time
from typing import Iterator, Optional

from tqdm import tqdm

from ssmix.distributed import rank

PREFIX = "[ssmix]"


def say(message: str) -> None:
    """Print ``[ssmix] message`` on rank 0."""
    if rank() == 0:
        tqdm.write(f"{PREFIX} {message}", file=sys.stdout)
        sys.stdout.flush()


def _rate(count: Optional[int], unit: str, seconds: float) -> str:
    if not count:
        return ""
    return f", {count} {unit}, {count / max(seconds, 1e-9):.0f} {unit}/s"


@contextlib.contextmanager
def phase(name: str, detail: str = "", count: Optional[int] = None, unit: str = "images") -> Iterator[None]:
    """``[ssmix] name: detail ...`` before the block, ``[ssmix] name: done in 1.2 s, N images, R images/s``
    after it (nothing after an exception: the error line says what happened)."""
    say(f"{name}: {detail} ..." if detail else f"{name} ...")
    start = time.perf_counter()
    yield
    seconds = time.perf_counter() - start
    say(f"{name}: done in {seconds:.1f} s{_rate(count, unit, seconds)}")


def startup_summary(
    *,
    images: int,
    dataset: str,
    split: str,
    steps_per_epoch: int,
    epochs: int,
    stop_step: int,
    world: int,
    device: str,
    precision: str,
    output_dir: str,
    method: str,
    mix: str,
) -> None:
    """The few lines a pre-training run starts with: data, schedule, where it runs, where outputs go."""
    total = steps_per_epoch * epochs
    stop = "" if stop_step == total else f", stopping at step {stop_step} (train.max_steps)"
    say(f"data: {images} images found ({dataset}, split {split}); method {method}, mix {mix}")
    say(f"schedule: {steps_per_epoch} steps/epoch x {epochs} epochs = {total} steps{stop}")
    say(f"running on: world size {world}, device {device}, precision {precision}")
    say(f"outputs: {output_dir}")
