"""What a researcher sees (issue 23): the start-up summary and the per-phase lines of a pre-training run,
named health warnings."""

from __future__ import annotations

import json
import os
import re

from ssmix import pretrain
from ssmix.engine.health import HealthMonitor
from tests.helpers import TINY, moco_overrides

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SAMIX_C = os.path.join(ROOT, "configs", "synthetic", "mocov2_samix_c.yaml")
ODC_SMALL = ["mix.odc.num_clusters=4", "mix.odc.min_cluster=1"]


def test_startup_summary_and_phase_lines(tmp_path, capsys):
    out = tmp_path / "run"
    code = pretrain.main(
        [
            SAMIX_C,
            *TINY,
            *moco_overrides(),
            *ODC_SMALL,
            f"output_dir={out}",
            "train.max_steps=4",
            "train.knn_every=1",
            "train.knn_k=5",
        ]
    )
    captured = capsys.readouterr()
    assert code == 0, captured.err
    lines = captured.out.splitlines()
    assert "[ssmix] data: 32 images found (synthetic, split train); method mocov2, mix samix_c" in lines
    assert (
        "[ssmix] schedule: 4 steps/epoch x 2 epochs = 8 steps, stopping at step 4 (train.max_steps)" in lines
    )
    assert "[ssmix] running on: world size 1, device cpu, precision fp32" in lines
    assert f"[ssmix] outputs: {out}" in lines
    # every long phase has a start line and an end line with its time and rate, in this order
    starts = [
        "[ssmix] ODC init: feature extraction: 32 images ...",
        "[ssmix] ODC init: k-means: 32 x 128 -> 4 clusters ...",
        "[ssmix] epoch 1: kNN monitor: k=5 ...",
    ]
    ends = [
        r"\[ssmix\] ODC init: feature extraction: done in [\d.]+ s, 32 images, \d+ images/s",
        r"\[ssmix\] ODC init: k-means: done in [\d.]+ s, 32 points, \d+ points/s",
        r"\[ssmix\] epoch 1: kNN monitor: done in [\d.]+ s",
    ]
    at = [lines.index(s) for s in starts]
    assert at == sorted(at)
    for start, end in zip(at, ends):
        assert re.fullmatch(end, lines[start + 1]), lines[start + 1]
    knn = [line for line in lines if re.fullmatch(r"\[ssmix\] epoch 1: kNN top-1 [\d.]+ %", line)]
    rows = [json.loads(line) for line in open(out / "metrics.jsonl")]
    logged = [r["knn_top1"] for r in rows if "knn_top1" in r]
    assert len(knn) == 1 and logged and knn[0] == f"[ssmix] epoch 1: kNN top-1 {logged[0]:.2f} %"
    assert "please provide at least" not in captured.err  # faiss's raw warning is silenced


def test_health_warnings_are_named_in_metrics(tmp_path):
    monitor = HealthMonitor(embed_dim=128, total_steps=100, patience=1)
    monitor.check(50, {"mixer_mask_within_var": 0.001, "odc_empty": 2, "collapse_std": 0.09})
    assert monitor.active_names == ["mixer_mask_within_var", "odc_empty"]
    monitor.check(51, {"mixer_mask_within_var": 0.03, "odc_empty": 0})
    assert monitor.active_names == []


def test_linear_eval_extraction_has_start_and_end_lines(capsys):
    from ssmix.evaluation import evaluate

    evaluate(
        "random",
        data={"name": "synthetic", "num_samples": 8, "num_classes": 2, "image_size": 16, "num_workers": 0},
        epochs=1,
        batch_size=4,
        milestones=[1],
        knn_k=3,
        cache_dir=None,
        device="cpu",
    )
    lines = capsys.readouterr().out.splitlines()
    for split in ("train", "test"):
        start = lines.index(f"[ssmix] linear eval: feature extraction: {split} split, 8 images x 1 copy ...")
        assert re.fullmatch(
            r"\[ssmix\] linear eval: feature extraction: done in [\d.]+ s, 8 images, \d+ images/s",
            lines[start + 1],
        )


# ------------------------------------------------------------------------------- resume without overrides

CONFIG = os.path.join(ROOT, "configs", "synthetic", "mocov2.yaml")


def _final(out):
    import ssmix.engine.checkpoint as ckpt

    return ckpt.load_checkpoint(ckpt.latest_checkpoint(str(out)))


def test_resume_run_dir_continues_without_restating_overrides(tmp_path, capsys):
    import torch

    whole, cut = tmp_path / "whole", tmp_path / "cut"
    assert pretrain.main([CONFIG, *TINY, *moco_overrides(), f"output_dir={whole}", "train.max_steps=6"]) == 0
    assert pretrain.main([CONFIG, *TINY, *moco_overrides(), f"output_dir={cut}", "train.max_steps=3"]) == 0
    capsys.readouterr()
    # only the new cap: the tiny overrides (batch size, image size, queue, ...) come from cut/config.yaml
    assert pretrain.main(["--resume", str(cut), "train.max_steps=6"]) == 0
    out = capsys.readouterr().out
    assert f"resumed from {cut / 'checkpoints' / 'step_00000003.pt'} at step 3/8" in out
    a, b = _final(whole), _final(cut)
    assert a["step"] == b["step"] == 6
    for key, value in a["model"].items():
        assert torch.equal(value, b["model"][key]), key


def test_resume_run_dir_refuses_a_changed_key_with_the_difference(tmp_path, capsys):
    out = tmp_path / "run"
    assert pretrain.main([CONFIG, *TINY, *moco_overrides(), f"output_dir={out}", "train.max_steps=1"]) == 0
    capsys.readouterr()
    assert pretrain.main(["--resume", str(out), "train.max_steps=2", "train.lr=0.1"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "was written with a different config: train.lr 0.03 -> 0.1" in err


def test_resume_needs_a_run_dir_with_config_and_pretrain_needs_a_config(tmp_path, capsys):
    assert pretrain.main(["--resume", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert (
        err == f"error: --resume: {tmp_path / 'config.yaml'} not found; pass the output_dir of a run that "
        "started (it holds config.yaml)\n"
    )
    import pytest

    for argv, message in (
        ([], "pass a CONFIG"),
        (["--resume", str(tmp_path), "digits/mocov2"], "is not a key=value"),
    ):
        with pytest.raises(SystemExit) as exit_info:
            pretrain.main(argv)
        err = capsys.readouterr().err
        assert exit_info.value.code == 2 and err.startswith("usage: ssmix-pretrain CONFIG") and message in err


# ------------------------------------------------------------------------------------ output directories


def test_output_dir_defaults_to_runs_dataset_config_name(tmp_path):
    import glob

    from ssmix.cli import load_pretrain_config

    for path in glob.glob(os.path.join(ROOT, "configs", "**", "*.yaml"), recursive=True):
        if os.sep + "_base_" + os.sep in path or os.sep + "linear" + os.sep in path:
            continue
        cfg = load_pretrain_config(path)
        assert cfg.output_dir == os.path.join("runs", cfg.data.name, os.path.basename(path)[:-5]), path
    assert load_pretrain_config(CONFIG).output_dir == os.path.join("runs", "synthetic", "mocov2")
    assert load_pretrain_config("digits/mocov2_samix_c").output_dir == os.path.join(
        "runs", "digits", "mocov2_samix_c"
    )
    folder = load_pretrain_config("mocov2_samix_c", ["data.name=folder"])
    assert folder.output_dir == os.path.join("runs", "folder", "mocov2_samix_c")
    assert load_pretrain_config(CONFIG, ["output_dir=elsewhere"]).output_dir == "elsewhere"
    own = tmp_path / "mine.yaml"
    own.write_text(f"_base_: {CONFIG}\noutput_dir: my_runs/a\n")
    assert load_pretrain_config(str(own), ["data.name=folder"]).output_dir == "my_runs/a"
    own.write_text(f"_base_: {CONFIG}\n")
    assert load_pretrain_config(str(own)).output_dir == os.path.join("runs", "synthetic", "mine")


def test_a_refused_run_leaves_no_directory_behind(tmp_path, capsys):
    out = tmp_path / "a" / "b" / "run"
    refused = [
        CONFIG,
        *TINY,
        *moco_overrides(),
        "data.name=folder",
        f"data.root={tmp_path}",
        "train.knn_every=1",
    ]
    assert pretrain.main([*refused, f"output_dir={out}"]) == 2
    assert "data.eval_root" in capsys.readouterr().err
    assert not (tmp_path / "a").exists()
    kept = tmp_path / "mine"  # a directory the user made stays
    kept.mkdir()
    assert pretrain.main([*refused, f"output_dir={kept}"]) == 2
    assert kept.is_dir()


def test_feature_cache_lives_under_the_run_or_ssmix_cache(tmp_path, monkeypatch):
    from ssmix.evaluation.config import LinearEvalConfig
    from ssmix.evaluation.runner import resolve_cache_dir, run_linear_eval

    monkeypatch.delenv("SSMIX_CACHE", raising=False)
    run = tmp_path / "run"
    run.mkdir()
    assert resolve_cache_dir(LinearEvalConfig(weights=str(run))) == str(run / "feature_cache")
    assert resolve_cache_dir(LinearEvalConfig(weights="random", output_dir="out")) == os.path.join(
        "out", "feature_cache"
    )
    assert resolve_cache_dir(LinearEvalConfig(weights="random")) is None
    assert resolve_cache_dir(LinearEvalConfig(weights=str(run), cache_dir="")) is None
    monkeypatch.setenv("SSMIX_CACHE", str(tmp_path / "cache"))
    assert resolve_cache_dir(LinearEvalConfig(weights=str(run))) == str(tmp_path / "cache" / "features")
    monkeypatch.delenv("SSMIX_CACHE")
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    from ssmix.config import from_dict

    cfg = from_dict(
        LinearEvalConfig,
        {
            "weights": "random",
            "output_dir": str(tmp_path / "eval"),
            "epochs": 1,
            "batch_size": 4,
            "milestones": [1],
            "knn_k": 3,
            "device": "cpu",
            "data": {
                "name": "synthetic",
                "num_samples": 8,
                "num_classes": 2,
                "image_size": 16,
                "num_workers": 0,
            },
        },
    )
    result = run_linear_eval(cfg)
    assert result["feature_cache"] == {
        "dir": str(tmp_path / "eval" / "feature_cache"),
        "hits": 0,
        "misses": 2,
    }
    assert len(os.listdir(tmp_path / "eval" / "feature_cache")) == 2 and os.listdir(cwd) == []


# ------------------------------------------------------------------------------------------ key meanings


def _printed(capsys, name):
    assert pretrain.main([name, "--print-config"]) == 0
    return capsys.readouterr().out


def test_print_config_keeps_meanings_marks_unused_keys_and_loads_back(tmp_path, capsys):
    from ssmix.cli import load_pretrain_config
    from ssmix.config import config_to_dict

    for name in ("mocov2_samix_c", "swav", "digits/mocov2", "synthetic/simclr"):
        text = _printed(capsys, name)
        mine = tmp_path / "mine.yaml"
        mine.write_text(text)
        assert config_to_dict(load_pretrain_config(str(mine))) == config_to_dict(load_pretrain_config(name))
    lines = _printed(capsys, "mocov2_samix_c").splitlines()
    assert "  lr: 0.03  # peak learning rate of the encoder" in lines
    assert "  amp: auto  # auto (bf16 on CUDA, off on CPU) | bf16 | fp16 | off" in lines
    assert "  num_samples: 512  # unused: data.name is not synthetic; synthetic only" in lines
    assert any(line.startswith("    multi_crop:  # unused: data.aug.kind is not swav") for line in lines)
    assert "  mask_loss: l2  # l2 (SSL dev configs) | l1 (SL configs)" in lines
    swav = _printed(capsys, "swav").splitlines()
    assert any(line.startswith("    multi_crop:  # SwAV multi-crop") for line in swav)
    assert not any(
        "unused: data.name" in line
        for line in _printed(capsys, "synthetic/simclr").splitlines()
        if "num_samples" in line
    )


def test_docs_config_md_is_generated_from_the_schema():
    from ssmix.config_doc import config_reference

    with open(os.path.join(ROOT, "docs", "config.md"), encoding="utf-8") as f:
        assert f.read() == config_reference(), (
            "docs/config.md is stale: python -m ssmix.config_doc > docs/config.md"
        )
    text = config_reference()
    for row in (
        "| `train.grad_clip` | float or null | `null` | clip the gradients' global norm to this (null = off) |",
        "| `train.min_lr_ratio` | float | `0.0` | final lr = lr * min_lr_ratio (cosine) |",
        "| `data.num_samples` | int | `512` | synthetic only |",
        "## `mix.type: samix_c`",
        "| `method.queue_size` | int | `16384` | negatives kept in the key queue |",
    ):
        assert row in text, row


# ------------------------------------------------------------------------------------------ help texts


def _commands():
    from ssmix import visualize_mix
    from ssmix.detection import convert, train, train_net
    from ssmix.linear_eval import run

    return {
        "ssmix-pretrain": (pretrain.main, "usage: ssmix-pretrain CONFIG [key=value ...] [--print-config]"),
        "ssmix-linear-eval": (run.main, "usage: ssmix-linear-eval CONFIG [key=value ...]"),
        "ssmix-detect": (train.main, "usage: ssmix-detect PRESET|CONFIG [key=value ...]"),
        "ssmix-visualize": (visualize_mix.main, "usage: ssmix-visualize CONFIG [checkpoint=PATH]"),
        "ssmix-convert": (convert.main, "usage: ssmix-convert INPUT OUTPUT.pkl"),
        "train_net": (train_net.cli, "usage: python -m ssmix.detection.train_net --config-file FILE"),
    }


def test_every_command_has_a_usage_line_and_no_markup(capsys):
    import pytest

    texts = {}
    for name, (main, usage) in _commands().items():
        with pytest.raises(SystemExit) as exit_info:
            main(["--help"])
        text = texts[name] = capsys.readouterr().out
        assert exit_info.value.code == 0 and text.startswith(usage), name
        assert "``" not in text and ":mod:" not in text and ":func:" not in text, name
        assert "options:" in text or "optional arguments:" in text, name
    assert "Presets: coco_r50_c4_2x, tiny_coco_c4" in texts["ssmix-detect"]
    assert (
        "--resume RUN_DIR" in texts["ssmix-pretrain"] and "Linear probe and kNN" in texts["ssmix-linear-eval"]
    )


def test_commands_without_arguments_print_usage_and_exit_2(capsys):
    import pytest

    for name, (main, usage) in _commands().items():
        if name == "train_net":
            continue
        with pytest.raises(SystemExit) as exit_info:
            main([])
        err = capsys.readouterr().err
        assert exit_info.value.code == 2 and err.startswith(usage), name


def test_train_net_help_works_without_detectron2_and_running_says_how_to_install(capsys):
    import importlib.util

    from ssmix.detection import train_net

    if importlib.util.find_spec("detectron2") is None:
        assert train_net.cli(["--config-file", "x.yaml"]) == 2
        assert "detectron2 is not installed" in capsys.readouterr().err
    text = train_net.build_parser().format_help()
    for flag in ("--config-file", "--num-gpus", "--classes", "--eval-only", "--resume"):
        assert flag in text


def test_ssmix_convert_is_a_console_command_and_converts(tmp_path, capsys):
    import pickle

    import torch
    import torchvision

    from ssmix.detection import convert

    sys_path = tmp_path / "backbone.pth"
    model = torchvision.models.resnet18()
    model.fc = torch.nn.Identity()
    torch.save(model.state_dict(), sys_path)
    assert convert.main([str(sys_path), str(tmp_path / "r18.pkl")]) == 0
    assert "wrote" in capsys.readouterr().out
    with open(tmp_path / "r18.pkl", "rb") as f:
        assert "stem.conv1.weight" in pickle.load(f)["model"]
    pyproject = open(os.path.join(ROOT, "pyproject.toml"), encoding="utf-8").read()
    assert 'ssmix-convert = "ssmix.detection.convert:main"' in pyproject


# ------------------------------------------------------------------------------------ online linear probe


def test_online_probe_logs_per_epoch_and_leaves_training_unchanged(tmp_path, capsys):
    import torch

    from ssmix.engine.trainer import train
    from tests.helpers import tiny_config

    def run(name, *extra):
        out = tmp_path / name
        train(tiny_config(*moco_overrides(), f"output_dir={out}", "train.max_steps=8", *extra))
        return out

    off, on = run("off"), run("on", "train.online_probe=auto")
    lines = capsys.readouterr().out.splitlines()
    probe_lines = [line for line in lines if "online linear probe" in line]
    assert [line.split(":")[0] for line in probe_lines] == ["[ssmix] epoch 1", "[ssmix] epoch 2"]
    rows = [json.loads(line) for line in open(on / "metrics.jsonl")]
    logged = [(r["step"], r["online_probe_top1"]) for r in rows if "online_probe_top1" in r]
    assert [step for step, _ in logged] == [4, 8] and all(0 <= top1 <= 100 for _, top1 in logged)
    assert not any("online_probe_top1" in json.loads(line) for line in open(off / "metrics.jsonl"))
    a, b = _final(off), _final(on)
    for key, value in a["model"].items():  # the probe reads detached eval-mode features: same encoder
        assert torch.equal(value, b["model"][key]), key
    assert "online_probe" in b and "online_probe" not in a


def test_online_probe_resumes_exactly(tmp_path):
    import torch

    from ssmix.engine.trainer import train
    from tests.helpers import tiny_config

    def cfg(out, steps, *extra):
        return tiny_config(
            *moco_overrides(),
            f"output_dir={out}",
            f"train.max_steps={steps}",
            "train.online_probe=on",
            *extra,
        )

    train(cfg(tmp_path / "whole", 6))
    train(cfg(tmp_path / "cut", 3))
    train(cfg(tmp_path / "cut", 6, "resume=auto"))
    a, b = _final(tmp_path / "whole")["online_probe"], _final(tmp_path / "cut")["online_probe"]
    for key, value in a["module"].items():
        assert torch.equal(value, b["module"][key]), key
    assert a["counts"] == b["counts"]


def test_online_probe_on_an_unlabelled_split_is_refused_and_auto_stays_off(tmp_path, capsys):
    from PIL import Image

    images = tmp_path / "images"
    images.mkdir()
    for i in range(16):
        Image.new("RGB", (20, 20), (i * 10, 0, 0)).save(images / f"{i}.png")
    common = [
        CONFIG,
        *TINY,
        *moco_overrides(),
        "data.name=folder",
        f"data.root={images}",
        "train.max_steps=2",
    ]
    assert pretrain.main([*common, f"output_dir={tmp_path / 'on'}", "train.online_probe=on"]) == 2
    assert "train.online_probe=on: this split has no labels" in capsys.readouterr().err
    assert pretrain.main([*common, f"output_dir={tmp_path / 'auto'}", "train.online_probe=auto"]) == 0
    assert "online linear probe" not in capsys.readouterr().out


def test_online_probe_learns_separable_features():
    import torch

    from ssmix.evaluation.online_probe import OnlineProbe

    generator = torch.Generator().manual_seed(0)
    labels = torch.arange(64) % 2
    x = torch.randn(64, 8, generator=generator) + 3.0 * labels[:, None]
    probe = OnlineProbe(8, 2)
    trunk = torch.nn.Flatten()
    for _ in range(20):
        probe.step(trunk, x, labels)
    probe.epoch_metrics()  # the first epoch, while it learns
    probe.step(trunk, x, labels)
    assert probe.epoch_metrics()["online_probe_top1"] > 95


# ------------------------------------------------------------------------------------------ W&B (offline)


def test_unknown_or_missing_logger_is_one_line_before_the_run_dir(tmp_path, capsys, monkeypatch):
    import builtins

    out = tmp_path / "run"
    assert pretrain.main([CONFIG, *TINY, f"output_dir={out}", "train.loggers=[tensorboard,neptune]"]) == 2
    assert "train.loggers: unknown logger 'neptune'" in capsys.readouterr().err
    real_import = builtins.__import__

    def no_wandb(name, *args, **kwargs):
        if name == "wandb":
            raise ImportError("No module named 'wandb'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_wandb)
    assert pretrain.main([CONFIG, *TINY, f"output_dir={out}", "train.loggers=[tensorboard,wandb]"]) == 2
    assert "train.loggers: wandb is not installed; pip install 'ssmix[wandb]'" in capsys.readouterr().err
    assert not out.exists()


def test_wandb_offline_run_logs_scalars_and_grids(tmp_path, monkeypatch):
    import glob

    import pytest

    pytest.importorskip("wandb")
    from ssmix.engine.trainer import train
    from ssmix.engine.wandb_logger import run_id
    from tests.helpers import tiny_config

    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    out = tmp_path / "run"
    train(
        tiny_config(
            *moco_overrides(),
            f"output_dir={out}",
            "mix.type=cutmix",
            "train.max_steps=4",
            "train.vis_every=1",
            "train.loggers=[tensorboard,wandb]",
        )
    )
    runs = glob.glob(str(out / "wandb" / "offline-run-*"))
    records = glob.glob(os.path.join(runs[0], "run-*.wandb")) if len(runs) == 1 else []
    assert records and os.path.isdir(out / "tb")  # TensorBoard as well
    data = open(records[0], "rb").read()  # the offline run's protobuf records hold the keys in plain text
    for key in (b"img_per_s", b"mix_lam", b"lr/encoder", b"collapse_std", b"mix/grid"):  # not config keys
        assert key in data, key
    grids = glob.glob(os.path.join(runs[0], "files", "media", "images", "mix", "grid_4_*.png"))
    assert len(grids) == 1  # the epoch-1 grid, logged at step 4
    assert os.path.basename(runs[0]).endswith(run_id(str(out)))  # a resumed run continues the same W&B run
