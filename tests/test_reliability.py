"""Reliability of pre-training runs (issue 11): run directories, locks, signals, non-finite steps, resume
fallback and compatibility, disk full, and files that try to run code when loaded."""

import argparse
import os
import pickle
import shutil
import signal
import subprocess
import sys
import time

import pytest
import torch
import yaml

import ssmix.engine.checkpoint as ckpt
import ssmix.engine.trainer as trainer
from ssmix import pretrain, visualize_mix
from ssmix.detection import convert as det_convert
from ssmix.detection import train as det_train
from ssmix.engine.pretrainer import Pretrainer
from ssmix.linear_eval import run as linear_run
from tests.detection_helpers import PRESETS, encoder_state
from tests.helpers import (
    CONFIG,
    LINEAR,
    ROOT,
    TINY,
    assert_same_checkpoint,
    checkpoint_steps,
    pretrain_argv,
    run_pretrain,
    uninterrupted_run,
)

_argv, _pretrain = pretrain_argv, run_pretrain
_steps, _assert_same_state = checkpoint_steps, assert_same_checkpoint


def _metric_steps(out):
    with open(os.path.join(out, "metrics.jsonl"), encoding="utf-8") as f:
        return [yaml.safe_load(line)["step"] for line in f]


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """An uninterrupted 6-step run (4 steps per epoch), its final checkpoint."""
    return uninterrupted_run(tmp_path_factory.mktemp("reference"), 6)


# ------------------------------------------------------------------------------------ run directories


def test_second_run_into_a_used_output_dir_is_refused_and_changes_nothing(tmp_path, capsys):
    assert _pretrain(capsys, tmp_path, "train.max_steps=2")[0] == 0
    before = {
        name: (tmp_path / name).read_bytes() for name in ("config.yaml", "metrics.jsonl", "backbone.pth")
    }
    ckpts = sorted(os.listdir(tmp_path / "checkpoints"))
    code, err = _pretrain(capsys, tmp_path, "train.max_steps=2", "seed=1")
    assert code == 2
    assert err.count("\n") == 1 and "is not empty" in err and "resume=auto" in err and "overwrite=true" in err
    assert {name: (tmp_path / name).read_bytes() for name in before} == before
    assert sorted(os.listdir(tmp_path / "checkpoints")) == ckpts


def test_overwrite_replaces_the_old_run_and_prunes_only_the_new_one(tmp_path, capsys):
    assert _pretrain(capsys, tmp_path, "train.max_steps=4", "train.ckpt_every=1")[0] == 0
    assert _steps(tmp_path) == [3, 4]
    code, _ = _pretrain(
        capsys, tmp_path, "train.max_steps=2", "train.ckpt_every=1", "seed=1", "overwrite=true"
    )
    assert code == 0
    assert _steps(tmp_path) == [1, 2] and _metric_steps(tmp_path) == [1, 2]
    assert yaml.safe_load((tmp_path / "config.yaml").read_text())["seed"] == 1
    assert ckpt.load_checkpoint(ckpt.latest_checkpoint(str(tmp_path)))["config"]["seed"] == 1


def test_a_second_process_in_the_same_output_dir_is_refused(tmp_path, capsys):
    script = (
        "import sys\nfrom ssmix.engine.rundir import RunDir\nwith RunDir(sys.argv[1], False, False):\n"
        "    print('locked', flush=True)\n    sys.stdin.read()\n"
    )
    holder = subprocess.Popen(
        [sys.executable, "-c", script, str(tmp_path)],
        cwd=ROOT,
        text=True,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        code, err = _pretrain(capsys, tmp_path, "train.max_steps=1")
        assert code == 2 and err.count("\n") == 1
        assert f"in use by another run (pid {holder.pid})" in err
        assert sorted(os.listdir(tmp_path)) == [".lock"]  # the refused run wrote nothing
    finally:
        holder.stdin.close()
        holder.wait(timeout=60)
    assert _pretrain(capsys, tmp_path, "train.max_steps=1")[0] == 0  # the lock died with its process


def test_a_read_only_output_dir_is_one_line(tmp_path, capsys, monkeypatch):
    import ssmix.engine.rundir as rundir

    monkeypatch.setattr(rundir.os, "access", lambda path, mode: False)  # as root, chmod would not stop us
    code, err = _pretrain(capsys, tmp_path / "ro", "train.max_steps=1")
    assert (
        code == 2
        and err == f"error: output_dir: '{tmp_path / 'ro'}' is not writable; pass a writable directory\n"
    )


def test_stray_temp_files_of_a_killed_save_are_removed(tmp_path, capsys):
    assert _pretrain(capsys, tmp_path, "train.max_steps=1")[0] == 0
    stray = tmp_path / "checkpoints" / "step_00000002.pt.tmp.12345"
    stray.write_bytes(b"half a checkpoint")
    assert _pretrain(capsys, tmp_path, "train.max_steps=2", "resume=auto")[0] == 0
    assert not stray.exists() and _steps(tmp_path) == [1, 2]


# --------------------------------------------------------------------------------------------- signals


def _signal_at(monkeypatch, index, signum):
    """Send ``signum`` to this process just before step ``index`` (0-based) computes."""
    original = trainer.set_learning_rates

    def hook(optimizer, step, total_steps):
        if step == index:
            os.kill(os.getpid(), signum)
        original(optimizer, step, total_steps)

    monkeypatch.setattr(trainer, "set_learning_rates", hook)


def test_sigterm_checkpoints_then_resume_equals_the_uninterrupted_run(
    tmp_path, capsys, monkeypatch, reference
):
    _signal_at(monkeypatch, 3, signal.SIGTERM)
    code, err = _pretrain(capsys, tmp_path, "train.max_steps=6")
    assert code == 143
    assert err.count("\n") == 1 and "stopped by SIGTERM at step 4" in err
    assert "step_00000004.pt written" in err and err.strip().endswith("resume=auto")
    assert _steps(tmp_path) == [4] and not (tmp_path / "backbone.pth").exists()
    monkeypatch.undo()
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # handlers restored
    assert _pretrain(capsys, tmp_path, "train.max_steps=6", "resume=auto")[0] == 0
    _assert_same_state(ckpt.load_checkpoint(ckpt.latest_checkpoint(str(tmp_path))), reference)
    assert _metric_steps(tmp_path) == [1, 2, 3, 4, 5, 6]


def test_sigint_exits_130_with_a_checkpoint(tmp_path, capsys, monkeypatch):
    _signal_at(monkeypatch, 0, signal.SIGINT)
    code, err = _pretrain(capsys, tmp_path, "train.max_steps=3")
    assert code == 130 and "stopped by SIGINT at step 1" in err
    assert _steps(tmp_path) == [1]


# ---------------------------------------------------------------------------------------- non-finite


def _corrupt_from(monkeypatch, index, corrupt):
    """``corrupt(model, losses)`` at steps >= ``index`` (0-based): before the forward when ``losses`` is None."""
    original = Pretrainer.training_step

    def step_fn(self, views, labels, idx, step, total_steps, steps_per_epoch):
        if step >= index:
            corrupt(self, None)
        losses, metrics = original(self, views, labels, idx, step, total_steps, steps_per_epoch)
        return (corrupt(self, losses) if step >= index else losses), metrics

    monkeypatch.setattr(Pretrainer, "training_step", step_fn)


def _all_finite(path):
    state = ckpt.load_checkpoint(path)["model"]
    return all(torch.isfinite(v).all() for v in state.values() if v.is_floating_point())


def test_nan_loss_leaves_only_finite_checkpoints(tmp_path, capsys, monkeypatch):
    _corrupt_from(
        monkeypatch, 3, lambda model, losses: losses and {k: v * float("nan") for k, v in losses.items()}
    )
    code, err = _pretrain(capsys, tmp_path, "train.max_steps=6", "train.ckpt_every=2", "train.log_every=100")
    assert code == 2 and err.count("\n") == 1
    good = ckpt.checkpoint_path(str(tmp_path), 2)
    assert "non-finite loss at step 4 (moco=nan)" in err and f"last good checkpoint: {good}" in err
    assert _steps(tmp_path) == [2] and _all_finite(good)
    assert not (tmp_path / "backbone.pth").exists()


def test_non_finite_batchnorm_statistics_are_never_saved(tmp_path, capsys, monkeypatch):
    def poison(model, losses):
        if losses is None:
            bn = next(m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm))
            bn.running_var.fill_(float("inf"))
        return losses

    _corrupt_from(monkeypatch, 3, poison)
    code, err = _pretrain(capsys, tmp_path, "train.max_steps=6", "train.ckpt_every=2")
    assert code == 2 and err.count("\n") == 1
    assert "non-finite weights or statistics after step 4" in err and "running_var" in err
    assert _steps(tmp_path) == [2] and _all_finite(ckpt.checkpoint_path(str(tmp_path), 2))


# ------------------------------------------------------------------------------------------ resume


def test_truncated_newest_checkpoint_falls_back_to_the_previous(tmp_path, capsys, reference):
    assert _pretrain(capsys, tmp_path, "train.max_steps=4", "train.ckpt_every=2")[0] == 0
    newest = ckpt.checkpoint_path(str(tmp_path), 4)
    with open(newest, "r+b") as f:
        f.truncate(1000)
    code, err = _pretrain(capsys, tmp_path, "train.max_steps=6", "train.ckpt_every=2", "resume=auto")
    assert code == 0 and f"skipping unreadable checkpoint {newest}" in err
    assert os.path.exists(newest + ".corrupt")
    _assert_same_state(ckpt.load_checkpoint(ckpt.latest_checkpoint(str(tmp_path))), reference)
    assert _metric_steps(tmp_path) == [
        1,
        2,
        3,
        4,
        5,
        6,
    ]  # rows 3, 4 of the lost steps were dropped, then re-run


def test_resume_from_an_older_checkpoint_prunes_only_its_own_line(tmp_path, capsys):
    assert (
        _pretrain(capsys, tmp_path, "train.max_steps=4", "train.ckpt_every=1", "train.keep_ckpts=4")[0] == 0
    )
    older = ckpt.checkpoint_path(str(tmp_path), 2)
    code, err = _pretrain(capsys, tmp_path, "train.max_steps=3", "train.ckpt_every=1", f"resume={older}")
    assert code == 0 and "renamed *.stale" in err
    assert _steps(tmp_path) == [2, 3] and ckpt.latest_checkpoint(str(tmp_path)).endswith("step_00000003.pt")
    assert _metric_steps(tmp_path) == [1, 2, 3]


@pytest.mark.parametrize(
    "override, message",
    [
        ("train.lr=0.1", "train.lr 0.03 -> 0.1"),
        ("model.arch=resnet34", "model.arch 'resnet18' -> 'resnet34'"),
        ("mix.type=mixup", "mix.type 'none' -> 'mixup'"),
    ],
)
def test_resume_with_a_different_config_is_refused(tmp_path, capsys, override, message):
    assert _pretrain(capsys, tmp_path, "train.max_steps=1")[0] == 0
    config = (tmp_path / "config.yaml").read_bytes()
    code, err = _pretrain(capsys, tmp_path, "train.max_steps=2", "resume=auto", override)
    assert code == 2 and err.count("\n") == 1
    assert "was written with a different config" in err and message in err
    assert (tmp_path / "config.yaml").read_bytes() == config and _steps(tmp_path) == [1]


def test_disk_full_is_one_line_and_keeps_the_previous_checkpoint(tmp_path, capsys, monkeypatch):
    real_save = torch.save
    calls = []

    def save(obj, f, *args, **kwargs):
        calls.append(1)
        if len(calls) > 1:
            f.write(b"partial")
            raise RuntimeError("PytorchStreamWriter failed writing file data/3: file write failed")
        real_save(obj, f, *args, **kwargs)

    monkeypatch.setattr(torch, "save", save)
    monkeypatch.setattr(ckpt.shutil, "disk_usage", lambda path: shutil._ntuple_diskusage(100, 100, 0))
    code, err = _pretrain(capsys, tmp_path, "train.max_steps=4", "train.ckpt_every=2")
    assert code == 2 and err.count("\n") == 1
    assert "cannot write" in err and "no space left on device" in err and "previous file is intact" in err
    monkeypatch.undo()
    assert (
        _steps(tmp_path) == [2] and ckpt.load_checkpoint(ckpt.checkpoint_path(str(tmp_path), 2))["step"] == 2
    )
    assert not [f for f in os.listdir(tmp_path / "checkpoints") if ".tmp." in f]


# ------------------------------------------------------------------------------------ unsafe pickles


class _Payload:
    """Unpickling this calls os.makedirs(marker): proof that the file ran code."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.makedirs, (self.marker,)


class Harmless:
    """An ordinary pickled object (not allow-listed): loads only with an explicit opt-in."""


def _cifar_root(root, marker):
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    for i in range(1, 6):
        with open(folder / f"data_batch_{i}", "wb") as f:
            pickle.dump({b"data": _Payload(marker), b"labels": [0]}, f)
    return root


ENTRY_POINTS = {
    "pretrain resume=": lambda evil, tmp: pretrain.main(_argv(tmp / "run", f"resume={evil}")),
    "pretrain data_batch_1": lambda evil, tmp: pretrain.main(
        _argv(tmp / "run", "data.name=cifar10", f"data.root={tmp / 'cifar'}")
    ),
    "pretrain mix.checkpoint=": lambda evil, tmp: pretrain.main(
        _argv(tmp / "run", "mix.type=samix_p", f"mix.checkpoint={evil}")
    ),
    "linear_eval weights=": lambda evil, tmp: linear_run.main([LINEAR, f"weights={evil}", "device=cpu"]),
    "detection.train model.weights=": lambda evil, tmp: det_train.main(
        [
            os.path.join(PRESETS, "tiny_voc_c4.yaml"),
            f"model.weights={evil}",
            f"output_dir={tmp / 'det'}",
            "device=cpu",
        ]
    ),
    "detection.convert": lambda evil, tmp: det_convert.main([str(evil), str(tmp / "out.pkl")]),
    "visualize_mix checkpoint=": lambda evil, tmp: visualize_mix.main(
        [CONFIG, *TINY, f"checkpoint={evil}", f"out={tmp / 'grid.png'}"]
    ),
}


@pytest.mark.parametrize("legacy", [False, True], ids=["torch.save", "pickle.dump"])
@pytest.mark.parametrize("entry", list(ENTRY_POINTS))
def test_a_malicious_pickle_runs_nothing_through_any_entry_point(tmp_path, capsys, entry, legacy):
    marker = tmp_path / "MARKER"
    evil = tmp_path / "evil.pt"
    payload = {"model": {"conv1.weight": torch.zeros(1)}, "x": _Payload(str(marker))}
    if legacy:
        with open(evil, "wb") as f:
            pickle.dump(payload, f)
    else:
        torch.save(payload, evil)
    _cifar_root(tmp_path / "cifar", str(marker))
    code = ENTRY_POINTS[entry](evil, tmp_path)
    err = capsys.readouterr().err
    assert not marker.exists()
    assert code == 2 and err.startswith("error: ") and err.count("\n") == 1, err
    assert "weights_only=False" not in err
    assert not (tmp_path / "out.pkl").exists()


def test_trust_pickle_is_an_explicit_opt_in(tmp_path, capsys):
    state = encoder_state("resnet18")
    torch.save({"state_dict": state, "extra": Harmless()}, tmp_path / "odd.pth")
    out = tmp_path / "out.pkl"
    assert det_convert.main([str(tmp_path / "odd.pth"), str(out)]) == 2
    err = capsys.readouterr().err
    assert "test_reliability.Harmless; refused" in err and "--trust-pickle" in err
    assert not out.exists()
    assert det_convert.main([str(tmp_path / "odd.pth"), str(out), "--trust-pickle"]) == 0
    assert out.exists()
    # The allow-list: a torchvision reference checkpoint's argparse.Namespace needs no opt-in.
    torch.save({"model": state, "args": argparse.Namespace(lr=0.1)}, tmp_path / "reference.pth")
    assert det_convert.main([str(tmp_path / "reference.pth"), str(tmp_path / "ref.pkl")]) == 0


def test_sigterm_to_the_process_group_with_loader_workers(tmp_path):
    """Preemption as a scheduler does it: SIGTERM to the whole process group, DataLoader workers included."""
    argv = [
        sys.executable,
        "-m",
        "ssmix.pretrain",
        *_argv(tmp_path, "data.num_workers=1", "train.epochs=100"),
    ]
    proc = subprocess.Popen(
        argv, cwd=ROOT, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True, start_new_session=True
    )
    try:
        metrics = tmp_path / "metrics.jsonl"
        while proc.poll() is None and not (metrics.exists() and metrics.read_text().count("\n") >= 2):
            time.sleep(0.05)
        os.killpg(proc.pid, signal.SIGTERM)
        err = proc.communicate(timeout=120)[1]
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 143, err
    last = err.strip().splitlines()[-1]
    assert "stopped by SIGTERM at step" in last and last.endswith("resume=auto")
    step = ckpt.checkpoint_step(ckpt.latest_checkpoint(str(tmp_path)))
    assert step >= 2 and ckpt.load_checkpoint(ckpt.latest_checkpoint(str(tmp_path)))["step"] == step
    assert f"at step {step};" in last
