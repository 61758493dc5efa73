"""Issue 24: no finished run lost, no silently wrong number, and a SIGTERM delivered twice still checkpoints.

Each test's docstring says what the input did before the fix (main at 928e9ff).
"""

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from PIL import Image

import ssmix.engine.checkpoint as ckpt
import ssmix.engine.signals as signals
import ssmix.engine.trainer as trainer
from ssmix import pretrain
from ssmix.data.datasets import build_dataset
from ssmix.detection import convert as det_convert
from ssmix.detection import train as det_train
from ssmix.engine.pretrainer import Pretrainer
from ssmix.evaluation.runner import evaluate
from ssmix.linear_eval import run as linear_run
from tests.detection_helpers import PRESETS, encoder_state
from tests.helpers import (
    LINEAR,
    ROOT,
    assert_same_checkpoint,
    checkpoint_steps,
    pretrain_argv,
    run_pretrain,
    uninterrupted_run,
)

_argv, _pretrain = pretrain_argv, run_pretrain
_steps, _assert_same_state = checkpoint_steps, assert_same_checkpoint


def _files(folder):
    """Every file under ``folder`` (but the lock) with its bytes."""
    out = {}
    for base, _, names in os.walk(folder):
        for name in names:
            if name != ".lock":
                path = os.path.join(base, name)
                with open(path, "rb") as f:
                    out[os.path.relpath(path, folder)] = f.read()
    return out


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """An uninterrupted 6-step run, its final checkpoint."""
    return uninterrupted_run(tmp_path_factory.mktemp("reference"), 6)


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """A finished 2-step run (kept pristine: tests copy it)."""
    out = tmp_path_factory.mktemp("finished")
    assert pretrain.main(_argv(out, "train.max_steps=2")) == 0
    return out


@pytest.fixture
def old_run(finished, tmp_path):
    shutil.copytree(finished, tmp_path / "run")
    return tmp_path / "run"


# ------------------------------------------------------------------------------------------ data loss


def test_overwrite_with_a_bad_data_root_keeps_the_old_run(old_run, capsys):
    """Before: exit 2 and the finished run (backbone, checkpoints, metrics) deleted."""
    before = _files(old_run)
    code, err = _pretrain(capsys, old_run, "overwrite=true", "data.name=folder", "data.root=/nonexistent")
    assert code == 2 and "dataset 'folder' not found" in err
    assert _files(old_run) == before


def test_overwrite_failing_before_its_first_checkpoint_restores_the_old_run(old_run, capsys, monkeypatch):
    """Before: the old run was deleted, and the new one left nothing usable (a NaN at step 1)."""
    before = _files(old_run)
    original = Pretrainer.training_step

    def nan_step(self, *args):
        losses, metrics = original(self, *args)
        return {k: v * float("nan") for k, v in losses.items()}, metrics

    monkeypatch.setattr(Pretrainer, "training_step", nan_step)
    code = pretrain.main(_argv(old_run, "overwrite=true", "seed=1", "train.max_steps=2"))
    out, err = capsys.readouterr()
    assert code == 2 and err.count("\n") == 1 and "non-finite loss at step 1" in err
    assert f"the old run in {old_run} is restored" in out
    assert _files(old_run) == before and not (old_run / ".replaced").exists()


def test_overwrite_deletes_the_old_run_only_at_the_new_runs_first_checkpoint(old_run, capsys, monkeypatch):
    """Before: deleted at the start, before anything was validated."""
    old_backbone = (old_run / "backbone.pth").read_bytes()
    seen = []
    original = ckpt._save_atomic

    def save(obj, path):
        if len(seen) == 0:  # the first checkpoint: the old run is still on disk, set aside
            seen.append((old_run / ".replaced" / "backbone.pth").read_bytes())
        original(obj, path)

    monkeypatch.setattr(ckpt, "_save_atomic", save)
    code, _ = _pretrain(
        capsys, old_run, "overwrite=true", "seed=1", "train.max_steps=3", "train.ckpt_every=1"
    )
    assert code == 0 and seen == [old_backbone]
    assert not (old_run / ".replaced").exists() and _steps(old_run) == [2, 3]
    assert ckpt.load_checkpoint(ckpt.latest_checkpoint(str(old_run)))["config"]["seed"] == 1


def test_resume_auto_without_a_readable_checkpoint_refuses_a_finished_run(old_run, capsys):
    """Before: exit 0, started afresh (any arch and seed accepted) and overwrote backbone.pth and metrics."""
    for path in ckpt.list_checkpoints(str(old_run)):
        with open(path, "r+b") as f:
            f.truncate(100)
    backbone = (old_run / "backbone.pth").read_bytes()
    code, err = _pretrain(
        capsys, old_run, "resume=auto", "model.arch=resnet34", "seed=3", "train.max_steps=2"
    )
    assert code == 2 and err.strip().splitlines()[-1].startswith("error: resume=auto:")
    assert "holds no readable checkpoint but is not empty (backbone.pth" in err and "overwrite=true" in err
    assert (old_run / "backbone.pth").read_bytes() == backbone


def test_resume_auto_before_any_checkpoint_compares_config_yaml(old_run, capsys):
    """A run killed before its first checkpoint leaves config.yaml and metrics: resume=auto restarts it
    with the same config and refuses another one. Before: any config started over it."""
    shutil.rmtree(old_run / "checkpoints")
    os.remove(old_run / "backbone.pth")
    code, err = _pretrain(capsys, old_run, "resume=auto", "seed=1", "train.max_steps=2")
    assert code == 2 and "holds no checkpoint, and its config.yaml differs: seed 0 -> 1" in err
    assert not (old_run / "checkpoints").exists()
    code, _ = _pretrain(capsys, old_run, "resume=auto", "train.max_steps=2")
    assert code == 0 and _steps(old_run) == [2]


def test_the_hint_inside_a_runs_checkpoints_folder_does_not_nest_a_run(old_run, capsys):
    """Before: refused with 'pass resume=auto'; following that started a new run in <run>/checkpoints."""
    before = _files(old_run)
    code, err = _pretrain(capsys, old_run / "checkpoints", "resume=auto", "train.max_steps=2")
    assert code == 2 and f"pass output_dir={old_run} (resume=auto continues that run)" in err
    assert _files(old_run) == before and not (old_run / "checkpoints" / "checkpoints").exists()


def test_a_failed_detection_run_leaves_its_directory_unused(tmp_path, capsys):
    """Before: the retry was refused ('is not empty: config.yaml, log.txt') after a data error."""
    argv = [
        os.path.join(PRESETS, "tiny_voc_c4.yaml"),
        "device=cpu",
        f"output_dir={tmp_path / 'det'}",
        f"data.root={tmp_path / 'none'}",
    ]
    for _ in range(2):
        assert det_train.main(argv) == 2
        err = capsys.readouterr().err
        assert "VOC split list not found" in err and "is not empty" not in err
    # a run refused before it started removes the directory it made (issue 23); nothing marks it as used
    assert not (tmp_path / "det").exists() or os.listdir(tmp_path / "det") in ([], [".lock"])


# -------------------------------------------------------------------------------------------- signals


def _at_step(monkeypatch, index, action):
    """``action()`` just before step ``index`` (0-based) computes."""
    original = trainer.set_learning_rates

    def hook(optimizer, step, total_steps):
        if step == index:
            action()
        original(optimizer, step, total_steps)

    monkeypatch.setattr(trainer, "set_learning_rates", hook)


def _kill(*signums):
    return lambda: [os.kill(os.getpid(), s) for s in signums]


def test_a_double_sigterm_checkpoints_and_resumes_bit_exactly(tmp_path, capsys, monkeypatch, reference):
    """Two TERMs within milliseconds, as GNU timeout delivers them. Before: 'KeyboardInterrupt: second
    SIGTERM: stopped without a checkpoint', a traceback, the steps lost."""
    _at_step(monkeypatch, 3, _kill(signal.SIGTERM, signal.SIGTERM))
    code, err = _pretrain(capsys, tmp_path, "train.max_steps=6")
    assert code == 143 and err.count("\n") == 1 and "Traceback" not in err
    assert "stopped by SIGTERM at step 4" in err and err.strip().endswith("resume=auto")
    monkeypatch.undo()
    assert _pretrain(capsys, tmp_path, "train.max_steps=6", "resume=auto")[0] == 0
    _assert_same_state(ckpt.load_checkpoint(ckpt.latest_checkpoint(str(tmp_path))), reference)


def test_sigterm_twice_during_a_checkpoint_save_does_not_abort_it(tmp_path, capsys, monkeypatch):
    """Before: the second TERM raised KeyboardInterrupt inside torch.save: no checkpoint, a traceback."""
    real_save = torch.save
    calls = []

    def save(obj, f, *args, **kwargs):
        calls.append(1)
        if len(calls) == 1:
            os.kill(os.getpid(), signal.SIGTERM)
            os.kill(os.getpid(), signal.SIGTERM)
        real_save(obj, f, *args, **kwargs)

    monkeypatch.setattr(torch, "save", save)
    monkeypatch.setattr(signals, "GRACE_S", 0.0)  # only the save protects it
    code, err = _pretrain(capsys, tmp_path, "train.max_steps=6", "train.ckpt_every=2")
    assert code == 143 and err.count("\n") == 1 and "stopped by SIGTERM at step 2" in err
    assert (
        _steps(tmp_path) == [2] and ckpt.load_checkpoint(ckpt.checkpoint_path(str(tmp_path), 2))["step"] == 2
    )


def test_sighup_checkpoints_and_exits_129(tmp_path, capsys, monkeypatch):
    """Before: SIGHUP's default action killed the run without a checkpoint."""
    _at_step(monkeypatch, 1, _kill(signal.SIGHUP))
    code, err = _pretrain(capsys, tmp_path, "train.max_steps=4")
    assert code == 129 and "stopped by SIGHUP at step 2" in err and _steps(tmp_path) == [2]


def test_sighup_under_nohup_stays_ignored(tmp_path, capsys, monkeypatch):
    """``nohup`` ignores SIGHUP: the run must not stop when the terminal closes."""
    previous = signal.signal(signal.SIGHUP, signal.SIG_IGN)
    try:
        _at_step(monkeypatch, 1, _kill(signal.SIGHUP))
        code, _ = _pretrain(capsys, tmp_path, "train.max_steps=3")
        assert code == 0 and _steps(tmp_path) == [3]
        assert signal.getsignal(signal.SIGHUP) is signal.SIG_IGN
    finally:
        signal.signal(signal.SIGHUP, previous)


def test_sigint_inside_the_first_step_checkpoints_step_1(tmp_path, capsys, monkeypatch):
    """Ctrl-C in the middle of the first forward (exit 130 with step 1's checkpoint; unchanged)."""
    original = Pretrainer.training_step

    def step_fn(self, views, labels, index, step, total_steps, steps_per_epoch):
        if step == 0:
            os.kill(os.getpid(), signal.SIGINT)
        return original(self, views, labels, index, step, total_steps, steps_per_epoch)

    monkeypatch.setattr(Pretrainer, "training_step", step_fn)
    code, err = _pretrain(capsys, tmp_path, "train.max_steps=3")
    assert code == 130 and "stopped by SIGINT at step 1" in err and _steps(tmp_path) == [1]


def test_a_later_deliberate_second_signal_stops_at_once_in_one_line(tmp_path, capsys, monkeypatch):
    """Outside the grace window a second TERM still forces the exit, now without a traceback."""
    monkeypatch.setattr(signals, "GRACE_S", 0.0)
    original = Pretrainer.training_step

    def step_fn(self, views, labels, index, step, total_steps, steps_per_epoch):
        if step == 2:
            os.kill(os.getpid(), signal.SIGTERM)
            os.kill(os.getpid(), signal.SIGTERM)
        return original(self, views, labels, index, step, total_steps, steps_per_epoch)

    monkeypatch.setattr(Pretrainer, "training_step", step_fn)
    code, err = _pretrain(capsys, tmp_path, "train.max_steps=6", "train.ckpt_every=1")
    assert code == 143 and err.count("\n") == 1 and "Traceback" not in err
    assert "stopped at once by a second SIGTERM" in err and err.strip().endswith("resume=auto")
    assert (
        _steps(tmp_path) == [1, 2]
        and ckpt.load_checkpoint(ckpt.checkpoint_path(str(tmp_path), 2))["step"] == 2
    )


# one thread, as conftest sets for the in-process reference: runs are bit-exact only at one thread count
_SLOW = (
    "import sys, time\nimport torch\ntorch.set_num_threads(1)\nimport ssmix.engine.trainer as t\n"
    "from ssmix import pretrain\n"
    "lr = t.set_learning_rates\n"
    "def slow(*a):\n    time.sleep(0.4)\n    lr(*a)\n"
    "t.set_learning_rates = slow\nsys.exit(pretrain.main(sys.argv[1:]))\n"
)


def test_gnu_timeout_forwarding_sigterm_to_the_process_group(tmp_path, capsys, reference):
    """``timeout`` gets a TERM: it sends TERM to the child, then to its whole process group; 0.1 s later the
    group gets one more (SLURM, torchrun). Before: 'KeyboardInterrupt: second SIGTERM', a traceback, no
    checkpoint. Now: exit 143, the resume command, and the resumed run equals an uninterrupted one."""
    if shutil.which("timeout") is None:
        pytest.skip("GNU timeout not installed")
    argv = ["timeout", "300", sys.executable, "-c", _SLOW, *_argv(tmp_path, "train.max_steps=6")]
    proc = subprocess.Popen(
        argv,
        cwd=ROOT,
        stderr=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        text=True,
        start_new_session=True,
        env={**os.environ, "PYTHONPATH": ROOT},
    )
    try:
        metrics = tmp_path / "metrics.jsonl"
        while proc.poll() is None and not (metrics.exists() and metrics.read_text().count("\n") >= 2):
            time.sleep(0.05)
        os.kill(proc.pid, signal.SIGTERM)  # to timeout itself, as a scheduler or a user would
        time.sleep(0.1)
        os.killpg(proc.pid, signal.SIGTERM)  # and again to the group, as SLURM / torchrun repeat it
        err = proc.communicate(timeout=120)[1]
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode in (124, 143), err  # timeout's status for a signal it forwarded
    assert "Traceback" not in err and "KeyboardInterrupt" not in err
    last = err.strip().splitlines()[-1]
    assert "stopped by SIGTERM at step" in last and last.endswith("resume=auto")
    step = ckpt.checkpoint_step(ckpt.latest_checkpoint(str(tmp_path)))
    assert 2 <= step < 6 and f"at step {step};" in last
    assert _pretrain(capsys, tmp_path, "train.max_steps=6", "resume=auto")[0] == 0
    _assert_same_state(ckpt.load_checkpoint(ckpt.latest_checkpoint(str(tmp_path))), reference)


def test_sigkill_at_five_random_moments_then_resume_equals_the_uninterrupted_run(tmp_path, reference):
    """SIGKILL with keep_ckpts=1 and ckpt_every=1 (a kill during a save or a prune too): every resume
    continues from the newest checkpoint, and the final weights equal the uninterrupted run."""
    argv = _argv(tmp_path, "train.max_steps=6", "train.ckpt_every=1", "train.keep_ckpts=1", "resume=auto")
    rng, progress = random.Random(24), []
    for _ in range(5):
        pid = os.fork()
        if pid == 0:  # the child: one resumed run, killed at a random moment
            code = 1
            try:
                torch.set_num_threads(1)
                sys.stderr = sys.stdout = open(os.devnull, "w")
                code = pretrain.main(argv)
            finally:
                os._exit(code)
        time.sleep(rng.uniform(0.1, 1.0))
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        for path in ckpt.list_checkpoints(str(tmp_path)):  # never a torn checkpoint
            assert ckpt.load_checkpoint(path)["step"] == ckpt.checkpoint_step(path)
        latest = ckpt.latest_checkpoint(str(tmp_path))
        progress.append(ckpt.checkpoint_step(latest) if latest else 0)
    assert progress[0] < 6, progress  # the kills fell inside the run, not after it
    assert pretrain.main(argv) == 0
    _assert_same_state(ckpt.load_checkpoint(ckpt.latest_checkpoint(str(tmp_path))), reference)
    print("latest checkpoint after each kill:", progress)


# --------------------------------------------------------------------------- silently wrong results


def _png(path, value=0, size=16):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (size, size), (value, 255 - value, 60)).save(path)


def test_every_split_of_a_labelled_folder_is_numbered_by_train(tmp_path):
    """Before: val {b} alone was numbered 0 (class a's index): kNN scored it against the wrong class."""
    for cls in "ab":
        _png(tmp_path / "train" / cls / "x.png")
    _png(tmp_path / "val" / "b" / "y.png")
    val = build_dataset("imagefolder", str(tmp_path), "val")
    assert val.classes == ["a", "b"] and list(val.targets) == [1] and val[0][1] == 1


def test_the_feature_cache_sees_changed_images(tmp_path):
    """Swapping two val images between classes. Before: the cached features and labels of the old files
    were reused (the key held name, root, split, size and count only)."""
    for split in ("train", "val"):
        for i, cls in enumerate("ab"):
            for j in range(2):
                _png(tmp_path / "data" / split / cls / f"{j}.png", value=200 * i + j)
    options = dict(
        epochs=1,
        batch_size=4,
        milestones=[1],
        knn_k=2,
        cache_dir=str(tmp_path / "cache"),
        device="cpu",
        log=None,
    )
    data = {"name": "imagefolder", "root": str(tmp_path / "data"), "image_size": 16, "num_workers": 0}
    first = evaluate("random", data, **options)
    assert first["feature_cache"]["misses"] == 2
    val = tmp_path / "data" / "val"
    os.replace(val / "a" / "0.png", tmp_path / "swap.png")
    os.replace(val / "b" / "0.png", val / "a" / "0.png")
    os.replace(tmp_path / "swap.png", val / "b" / "0.png")
    second = evaluate("random", data, **options)
    assert second["feature_cache"] == {"dir": str(tmp_path / "cache"), "hits": 1, "misses": 1}
    assert evaluate("random", data, **options)["feature_cache"]["hits"] == 2  # unchanged: cached


def test_image_modes_are_read_as_8_bit_rgb(tmp_path):
    """16-bit and float images were clipped by convert('RGB') (16-bit PNG: 99.6 % of pixels 255; float
    TIFF: all 0); grey, RGBA, palette and CMYK were and are converted."""
    folder = tmp_path / "modes"
    folder.mkdir()
    Image.fromarray(np.full((4, 4), 32896, np.uint16)).save(folder / "a_16bit.png")  # 32896 / 257 = 128
    Image.fromarray(np.full((4, 4), 0.5, np.float32)).save(folder / "b_float.tif")
    Image.new("L", (4, 4), 128).save(folder / "c_grey.png")
    Image.new("RGBA", (4, 4), (128, 128, 128, 10)).save(folder / "d_rgba.png")
    palette = Image.new("RGB", (4, 4), (128, 128, 128)).convert("P", palette=Image.Palette.ADAPTIVE)
    palette.save(folder / "e_palette.png")
    Image.new("CMYK", (4, 4), (0, 0, 0, 127)).save(folder / "f_cmyk.jpg", quality=100)
    dataset = build_dataset("folder", str(folder), "train")
    for i in range(len(dataset)):
        image, label = dataset[i]
        assert image.mode == "RGB" and label == -1
        assert abs(int(np.asarray(image).mean()) - 128) <= 1, (dataset.paths[i], np.asarray(image).mean())


def test_tiny_and_odd_mode_images_pretrain(tmp_path, capsys):
    """1x1, grey, RGBA, palette and 16-bit images in one folder: a run over them ends with exit 0."""
    folder = tmp_path / "odd"
    folder.mkdir()
    for i in range(2):
        Image.new("RGB", (1, 1), (40 * i, 0, 0)).save(folder / f"one_{i}.png")
        Image.new("L", (9, 9), 20 * i).save(folder / f"grey_{i}.png")
        Image.new("RGBA", (16, 16), (0, 40 * i, 0, 99)).save(folder / f"rgba_{i}.png")
        Image.fromarray(np.full((12, 12), 9000 * (i + 1), np.uint16)).save(folder / f"deep_{i}.png")
    code, err = _pretrain(
        capsys,
        tmp_path / "run",
        "data.name=folder",
        f"data.root={folder}",
        "train.epochs=1",
        "method.bn_splits=1",
    )
    assert code == 0, err


def test_a_symlink_loop_counts_each_image_once(tmp_path):
    """Before: os.walk(followlinks=True) went round the loop: 4 images became 164."""
    for i in range(4):
        _png(tmp_path / "images" / f"{i}.png", value=i)
    os.symlink(tmp_path / "images", tmp_path / "images" / "loop")
    os.symlink(tmp_path / "images" / "0.png", tmp_path / "images" / "same.png")
    assert len(build_dataset("folder", str(tmp_path / "images"), "train")) == 4


def test_a_moved_data_root_on_resume_is_a_warning_with_the_diff(tmp_path, capsys):
    """Before: accepted silently, whatever images were there."""
    for i in range(8):
        _png(tmp_path / "a" / f"{i}.png", value=20 * i)
    shutil.copytree(tmp_path / "a", tmp_path / "b")
    folder = ["data.name=folder", "train.epochs=1", "method.bn_splits=1"]
    assert (
        _pretrain(capsys, tmp_path / "run", *folder, f"data.root={tmp_path / 'a'}", "train.max_steps=1")[0]
        == 0
    )
    code, err = _pretrain(capsys, tmp_path / "run", *folder, f"data.root={tmp_path / 'b'}", "resume=auto")
    assert code == 0 and f"warning: resume: data.root '{tmp_path / 'a'}' -> '{tmp_path / 'b'}'" in err
    assert "8 images there (1 steps per epoch)" in err


def test_knn_k_above_the_bank_is_said_at_the_start(tmp_path, capsys):
    """Before: k was clamped to the bank in silence."""
    code, err = _pretrain(capsys, tmp_path, "train.knn_every=1", "train.knn_k=500", "train.max_steps=1")
    assert code == 0 and "warning: train.knn_k=500 is more than the 32 images of the kNN bank" in err


def test_a_second_linear_eval_of_a_run_keeps_the_first_results(finished, tmp_path, capsys):
    """Before: the second evaluation overwrote <run>/linear_synthetic_cached/results.json."""
    run = tmp_path / "run"
    shutil.copytree(finished, run)
    argv = [
        LINEAR,
        f"weights={run}",
        "device=cpu",
        "cache_dir=",
        "data.num_samples=16",
        "data.image_size=16",
        "epochs=1",
        "milestones=[1]",
        "batch_size=8",
        "knn_k=2",
    ]
    assert linear_run.main(argv) == 0
    first = (run / "linear_synthetic_cached" / "results.json").read_bytes()
    assert linear_run.main([*argv, "seeds=2"]) == 0
    assert (run / "linear_synthetic_cached" / "results.json").read_bytes() == first
    assert json.loads((run / "linear_synthetic_cached_2" / "results.json").read_text())["seeds"] == 2
    out = f"output_dir={run / 'linear_synthetic_cached'}"
    assert linear_run.main([*argv, out, "overwrite=true"]) == 0  # explicit, and asked for
    step = ckpt.latest_checkpoint(str(run))  # a training checkpoint as weights: its online trunk
    assert linear_run.main([*argv[:1], f"weights={step}", *argv[2:], f"output_dir={tmp_path / 'step'}"]) == 0
    capsys.readouterr()


def test_detection_convert_replaces_a_pkl_only_when_asked(tmp_path, capsys):
    """Before: an existing .pkl was replaced silently."""
    torch.save(encoder_state("resnet18"), tmp_path / "backbone.pth")
    out = tmp_path / "out.pkl"
    out.write_bytes(b"an earlier conversion")
    assert det_convert.main([str(tmp_path / "backbone.pth"), str(out)]) == 2
    assert out.read_bytes() == b"an earlier conversion"
    assert det_convert.main([str(tmp_path / "backbone.pth"), str(out), "--overwrite"]) == 0
    assert out.read_bytes() != b"an earlier conversion"
    capsys.readouterr()


class _Payload:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.makedirs, (self.marker,)


def test_train_net_reads_model_weights_without_running_code(tmp_path, capsys):
    """Before: log_loaded_encoder pickle.load-ed MODEL.WEIGHTS unrestricted (a planted .pkl ran code)."""
    import pickle

    from ssmix.detection.train_net import log_loaded_encoder
    from ssmix.safe_load import UnsafePickleError

    marker = tmp_path / "MARKER"
    with open(tmp_path / "evil.pkl", "wb") as f:
        pickle.dump({"model": {"x": _Payload(str(marker))}}, f)
    with pytest.raises(UnsafePickleError, match="makedirs; refused"):
        log_loaded_encoder(torch.nn.Conv2d(3, 64, 7), str(tmp_path / "evil.pkl"))
    assert not marker.exists()
    torch.save(encoder_state("resnet18"), tmp_path / "backbone.pth")
    assert det_convert.main([str(tmp_path / "backbone.pth"), str(tmp_path / "ok.pkl")]) == 0
    message = log_loaded_encoder(torch.nn.Conv2d(3, 64, 7), str(tmp_path / "ok.pkl"))
    assert "encoder: loaded" in message and "tensors from" in message
    capsys.readouterr()


def test_omp_num_threads_0_runs(tmp_path):
    """``OMP_NUM_THREADS=0`` (libgomp says the value is invalid and uses its default): the run ends normally."""
    env = {**os.environ, "OMP_NUM_THREADS": "0", "PYTHONPATH": ROOT}
    proc = subprocess.run(
        [sys.executable, "-m", "ssmix.pretrain", *_argv(tmp_path, "train.max_steps=1")],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr and _steps(tmp_path) == [1]
