"""A run's output directory: refused when it holds another run, locked while a run is live, cleaned of
stray temp files, and given ``config.yaml`` only once the run is known to start.

Rules (README "Reliability"): a non-empty ``output_dir`` is refused unless ``resume`` is set (continue the
run) or ``overwrite=true`` (replace the old run). An exclusive ``flock`` on ``output_dir/.lock`` is held
for the whole run, so a second process in the same directory is refused.

``overwrite=true`` deletes nothing up front (issue 24): :meth:`RunDir.start`, called once every check has
passed, moves the old run's outputs into ``output_dir/.replaced``; :meth:`RunDir.commit` (the new run's
first checkpoint) deletes them; a run that fails before that puts the old run back.
"""

from __future__ import annotations

import contextlib
import glob
import json
import os
import shutil
from typing import Any, Callable, Dict, List, Optional, Sequence

import yaml

from ssmix.config import ConfigError

try:
    import fcntl
except ImportError:  # pragma: no cover - not POSIX: no lock
    fcntl = None

LOCK_FILE = ".lock"
REPLACED = ".replaced"  # the old run's outputs while an overwrite=true run has no checkpoint yet
OUTPUTS = (
    "checkpoints",
    "metrics.jsonl",
    "tb",
    "backbone.pth",
    "mixer.pt",
    "config.yaml",
    "figures",
    "wandb",
)


class RunDirError(ConfigError):
    """``output_dir`` cannot be used: a file, not writable, in use, or holding another run."""


class RunDir:
    """``with RunDir(path, resume, overwrite) as run_dir:`` - checks, lock, cleanup; unlock on exit.

    ``outputs``: the glob patterns ``overwrite`` replaces; ``resume_hint``: how the message says to resume;
    ``clean_failed``: a run that fails before :meth:`commit` in a directory that was empty leaves it empty
    again (so that a retry is not refused)."""

    def __init__(
        self,
        path: str,
        resume: bool,
        overwrite: bool,
        outputs: Sequence[str] = OUTPUTS,
        resume_hint: str = "resume=auto",
        clean_failed: bool = False,
    ) -> None:
        self.path, self.resume, self.overwrite = path, resume, overwrite
        self.outputs, self.resume_hint, self.clean_failed = tuple(outputs), resume_hint, clean_failed
        self._lock: Optional[object] = None
        self.was_empty, self.committed, self._set_aside = False, False, False
        self._created: list = []  # directories this RunDir made, removed again if the run leaves them empty

    def __enter__(self) -> "RunDir":
        self._create()
        self._check_not_checkpoints()
        self._acquire()
        try:
            self._check_contents()
            self._remove_temp_files()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        try:
            if exc_type is not None and not self.committed:
                self._undo()
        finally:
            self.close()

    def _create(self) -> None:
        if os.path.exists(self.path) and not os.path.isdir(self.path):
            raise RunDirError(f"output_dir: '{self.path}' is a file; pass a directory path")
        self._created = _missing_dirs(self.path)
        try:
            os.makedirs(self.path, exist_ok=True)
        except OSError as exc:
            raise RunDirError(
                f"output_dir: cannot create '{self.path}' ({exc.strerror}); pass a writable directory"
            ) from None
        if not os.access(self.path, os.W_OK | os.X_OK):
            raise RunDirError(f"output_dir: '{self.path}' is not writable; pass a writable directory")

    def _acquire(self) -> None:
        path = os.path.join(self.path, LOCK_FILE)
        try:
            handle = open(path, "a+", encoding="utf-8")
        except OSError as exc:
            raise RunDirError(
                f"output_dir: cannot write '{path}' ({exc.strerror}); pass a writable directory"
            ) from None
        if fcntl is not None:
            try:
                fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                handle.seek(0)
                owner = handle.read().strip() or "?"
                handle.close()
                raise RunDirError(
                    f"output_dir: '{self.path}' is in use by another run (pid {owner}); wait for it "
                    "to finish or pass another output_dir"
                ) from None
        handle.seek(0)
        handle.truncate()
        handle.write(str(os.getpid()))
        handle.flush()
        self._lock = handle

    def _check_not_checkpoints(self) -> None:
        """``<run>/checkpoints`` is not a run directory: a run there would nest (issue 24)."""
        parent = os.path.dirname(os.path.abspath(self.path))
        inside = glob.glob(os.path.join(self.path, "step_*.pt"))
        if inside or (
            os.path.basename(os.path.abspath(self.path)) == "checkpoints"
            and os.path.isfile(os.path.join(parent, "config.yaml"))
        ):
            raise RunDirError(
                f"output_dir: '{self.path}' is the checkpoints folder of the run in '{parent}'; pass "
                f"output_dir={parent} ({self.resume_hint} continues that run)"
            )

    def _existing(self) -> list:
        return sorted(e for e in os.listdir(self.path) if e != LOCK_FILE and ".tmp." not in e)

    def _check_contents(self) -> None:
        existing = self._existing()
        self.was_empty = not existing
        if not existing or self.resume or self.overwrite:
            return
        shown = ", ".join(existing[:5]) + (", ..." if len(existing) > 5 else "")
        raise RunDirError(
            f"output_dir: '{self.path}' is not empty ({shown}); pass {self.resume_hint} to "
            "continue that run, overwrite=true to replace it, or another output_dir"
        )

    def _outputs(self) -> list:
        return [t for pattern in self.outputs for t in glob.glob(os.path.join(self.path, pattern))]

    def start(self) -> None:
        """Every check has passed and the run is about to write: with ``overwrite=true``, move the old run's
        outputs into ``.replaced`` (a ``.replaced`` left by an earlier attempt that never reached a
        checkpoint is kept, and that attempt's outputs are deleted)."""
        replaced = os.path.join(self.path, REPLACED)
        targets = self._outputs() if self.overwrite and not self.resume else []
        if os.path.isdir(replaced):
            for target in targets:
                _remove(target)
        elif targets:
            os.makedirs(replaced)
            for target in targets:
                os.replace(target, os.path.join(replaced, os.path.basename(target)))
            print(
                f"overwrite=true: the old run's outputs are in {replaced} until this run's first checkpoint",
                flush=True,
            )
        self._set_aside = os.path.isdir(replaced)

    def commit(self) -> None:
        """The new run has its first checkpoint: the old one (``.replaced``) is deleted."""
        if self.committed:
            return
        self.committed = True
        replaced = os.path.join(self.path, REPLACED)
        if self._set_aside and os.path.isdir(replaced):
            shutil.rmtree(replaced)

    def _undo(self) -> None:
        """A run that failed before its first checkpoint: put back the run it was to replace, or (with
        ``clean_failed``) leave a directory that was empty empty again."""
        replaced = os.path.join(self.path, REPLACED)
        if glob.glob(os.path.join(self.path, "checkpoints", "step_*.pt")):
            self.commit()  # the new run has a checkpoint (a signal's): it is the run now
            return
        if self._set_aside and os.path.isdir(replaced):
            for target in self._outputs():
                _remove(target)
            for name in os.listdir(replaced):
                os.replace(os.path.join(replaced, name), os.path.join(self.path, name))
            os.rmdir(replaced)
            print(
                f"the run failed before its first checkpoint: the old run in {self.path} is restored",
                flush=True,
            )
        elif self.clean_failed and self.was_empty:
            for target in self._outputs():
                _remove(target)

    def _remove_temp_files(self) -> None:
        """Half-written ``*.tmp.<pid>`` files of a killed save (no live run can own them: we hold the lock)."""
        for pattern in ("*.tmp.*", os.path.join("checkpoints", "*.tmp.*")):
            for path in glob.glob(os.path.join(self.path, pattern)):
                os.remove(path)

    def write_text(self, name: str, text: str) -> None:
        """Write ``output_dir/name`` atomically."""
        path = os.path.join(self.path, name)
        tmp = f"{path}.tmp.{os.getpid()}"
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, path)

    def close(self) -> None:
        if self._lock is not None:
            self._lock.close()  # closing the descriptor releases the flock
            self._lock = None
            self._remove_if_unused()

    def _remove_if_unused(self) -> None:
        """A run refused before it wrote anything leaves no directory behind (only its ``.lock`` was there)."""
        if not self._created:
            return
        with contextlib.suppress(OSError):
            if os.listdir(self.path) not in ([], [LOCK_FILE]):
                return
            os.remove(os.path.join(self.path, LOCK_FILE))
            # innermost first; stops at a directory something else filled
            for path in reversed(self._created):
                os.rmdir(path)


def _missing_dirs(path: str) -> list:
    """``path`` and those of its parents that do not exist yet, outermost first."""
    missing = []
    path = os.path.abspath(path)
    while path and not os.path.exists(path):
        missing.insert(0, path)
        path = os.path.dirname(path)
    return missing


def _remove(target: str) -> None:
    if os.path.isdir(target) and not os.path.islink(target):
        shutil.rmtree(target)
    else:
        os.remove(target)


# What a run that never wrote a checkpoint may leave (a kill before step ckpt_every); anything else in an
# output_dir without a readable checkpoint is a run that resume=auto must not start over.
RESTARTABLE = {"config.yaml", "metrics.jsonl", "tb", "checkpoints", REPLACED}


def check_fresh_start(
    path: str, current: Dict[str, Any], differences: Callable[[Dict, Dict], List[str]]
) -> None:
    """``resume=auto`` found no readable checkpoint in ``path``: starting from step 0 is allowed only if the
    directory is empty or holds a run of this same config that never wrote a checkpoint (issue 24)."""
    entries = sorted(e for e in os.listdir(path) if e != LOCK_FILE and ".tmp." not in e)
    if not entries:
        return
    leftovers = [e for e in entries if e not in RESTARTABLE]
    ckpt_dir = os.path.join(path, "checkpoints")
    if os.path.isdir(ckpt_dir) and os.listdir(ckpt_dir):
        leftovers.append("checkpoints/" + sorted(os.listdir(ckpt_dir))[0])
    config = os.path.join(path, "config.yaml")
    if leftovers or not os.path.isfile(config):
        shown = ", ".join((leftovers or entries)[:4])
        raise RunDirError(
            f"resume=auto: '{path}' holds no readable checkpoint but is not empty ({shown}); pass "
            "overwrite=true to replace that run, or another output_dir"
        )
    try:
        with open(config, encoding="utf-8") as f:
            saved = yaml.safe_load(f)
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        saved = None
    diffs = differences(saved, current) if isinstance(saved, dict) else ["config.yaml unreadable"]
    if diffs:
        shown = ", ".join(diffs[:4]) + (f" (+{len(diffs) - 4} more)" if len(diffs) > 4 else "")
        raise RunDirError(
            f"resume=auto: '{path}' holds no checkpoint, and its config.yaml differs: {shown}; "
            "resume with its values, pass overwrite=true, or another output_dir"
        )


def continues_in_place(resume: Optional[str], output_dir: str) -> bool:
    """Whether ``resume`` continues the run in ``output_dir`` (``auto``, the directory itself or a file in
    it); resuming from elsewhere starts a new line of checkpoints, which needs an empty ``output_dir``."""
    if not resume:
        return False
    if resume == "auto":
        return True
    target, root = os.path.realpath(resume), os.path.realpath(output_dir)
    return target == root or target.startswith(root + os.sep)


def open_run_dir(
    stack: contextlib.ExitStack, path: str, resume: bool, overwrite: bool, rank: int, world: int
) -> Optional[RunDir]:
    """Rank 0 enters :class:`RunDir` (kept open by ``stack``); with several processes its verdict is
    shared, so every rank raises the same :class:`RunDirError` instead of waiting for rank 0 forever."""
    run_dir, error = None, None
    if rank == 0:
        try:
            run_dir = stack.enter_context(RunDir(path, resume, overwrite))
        except RunDirError as exc:
            error = str(exc)
    if world > 1:
        import torch.distributed as dist

        shared = [error]
        dist.broadcast_object_list(shared, src=0)
        error = shared[0]
    if error is not None:
        raise RunDirError(error)
    return run_dir


def truncate_metrics(path: str, step: int) -> None:
    """Drop the rows of ``metrics.jsonl`` after ``step`` (a resumed run re-logs them); torn lines go too."""
    if not os.path.isfile(path):
        return
    kept = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            try:
                row = json.loads(line)
            except ValueError:
                continue  # a line cut by a kill
            if isinstance(row, dict) and isinstance(row.get("step"), int) and row["step"] <= step:
                kept.append(line if line.endswith("\n") else line + "\n")
    tmp = f"{path}.tmp.{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as f:
        f.writelines(kept)
    os.replace(tmp, path)
