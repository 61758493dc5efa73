"""Every bad input to an entry point is one line on stderr and exit code 2 (issue 11).

Each row: the entry point, its arguments (``{tmp}`` = a fresh folder holding the files built by
:func:`files`, ``{run}`` = a finished 1-step resnet18 pre-training run) and words the message must hold.
"""

import os

import pytest
import torch
from PIL import Image

from ssmix import pretrain, visualize_mix
from ssmix.config import load_config
from ssmix.detection import convert as det_convert
from ssmix.detection import train as det_train
from ssmix.linear_eval import run as linear_run
from tests.detection_helpers import PRESETS, encoder_state
from tests.helpers import TINY, moco_overrides

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = os.path.join(ROOT, "configs", "synthetic", "mocov2.yaml")
FRAGMENT = os.path.join(ROOT, "configs", "_base_", "mix", "samix_c.yaml")
LINEAR = os.path.join(ROOT, "configs", "linear", "synthetic.yaml")
DETECTION = os.path.join(PRESETS, "tiny_voc_c4.yaml")
MAINS = {
    "pretrain": pretrain.main,
    "linear_eval": linear_run.main,
    "detection.train": det_train.main,
    "detection.convert": det_convert.main,
    "visualize_mix": visualize_mix.main,
}


def P(*args):  # pretrain: the tiny synthetic MoCo v2 run plus ``args``
    return ("pretrain", [CONFIG, *TINY, *moco_overrides(), "output_dir={tmp}/out", *args])


def L(*args):  # linear_eval on synthetic images
    return ("linear_eval", [LINEAR, "device=cpu", "output_dir={tmp}/linear", "cache_dir=", *args])


def D(*args):  # detection transfer, tiny VOC preset
    return (
        "detection.train",
        [DETECTION, "device=cpu", "output_dir={tmp}/det", "data.root={tmp}/none", *args],
    )


def C(*args):  # detection.convert
    return ("detection.convert", list(args))


def V(*args):  # visualize_mix
    return ("visualize_mix", [CONFIG, *TINY, "out={tmp}/grid.png", *args])


CASES = {
    # pretrain: value ranges and types
    "batch_size=0": (P("train.batch_size=0"), ["train.batch_size: expected a positive number, got 0"]),
    "batch_size<0": (P("train.batch_size=-4"), ["train.batch_size", "got -4"]),
    "epochs=0": (P("train.epochs=0"), ["train.epochs: expected a positive number"]),
    "max_steps=0": (P("train.max_steps=0"), ["train.max_steps: expected a positive number"]),
    "ckpt_every=0": (P("train.ckpt_every=0"), ["train.ckpt_every: expected a positive number"]),
    "log_every=0": (P("train.log_every=0"), ["train.log_every: expected a positive number"]),
    "keep_ckpts=0": (P("train.keep_ckpts=0"), ["train.keep_ckpts: expected a number >= 1, got 0"]),
    "lr<0": (P("train.lr=-0.1"), ["train.lr: expected a positive number, got -0.1"]),
    "lr=nan": (P("train.lr=nan"), ["train.lr: expected a finite number, got nan"]),
    "lr=.inf": (P("train.lr=.inf"), ["train.lr: expected a finite number, got inf"]),
    "weight_decay=.nan": (P("train.weight_decay=.nan"), ["train.weight_decay: expected a finite number"]),
    "grad_clip=inf": (P("train.grad_clip=inf"), ["train.grad_clip: expected a finite number, got inf"]),
    "lr=word": (P("train.lr=fast"), ["train.lr: expected float, got str 'fast'"]),
    "image_size=0": (P("data.image_size=0"), ["data.image_size: expected a positive number"]),
    "device=tpu": (P("device=tpu"), ["device: invalid value 'tpu'", "cuda:N"]),
    "unknown key": (P("train.lrr=1"), ["unknown key 'train.lrr'", "did you mean 'train.lr'"]),
    "batch>dataset": (
        P("train.batch_size=64", "method.queue_size=64"),  # queue 16 < batch: refused first
        ["larger than the dataset", "lower train.batch_size"],
    ),
    "unknown split": (P("data.split=bogus"), ["unknown split 'bogus'", "data.split"]),
    # pretrain: files and directories
    "_base_ fragment": (("pretrain", [FRAGMENT, "device=cpu"]), ["_base_ fragment", "not a runnable config"]),
    "missing config": (("pretrain", ["{tmp}/nope.yaml"]), ["config file not found", "nope.yaml"]),
    "output_dir is a file": (P("output_dir={tmp}/a_file"), ["output_dir", "a_file' is a file"]),
    "output_dir under a file": (
        P("output_dir={tmp}/a_file/run"),
        ["output_dir: cannot create", "a_file/run"],
    ),
    "used output_dir": (P("output_dir={run}"), ["is not empty", "resume=auto", "overwrite=true"]),
    "resume elsewhere into a used dir": (
        P("output_dir={tmp}/folder", "resume={run}"),
        ["folder' is not empty"],
    ),
    "resume missing": (P("resume={tmp}/gone.pt"), ["resume: checkpoint not found", "gone.pt"]),
    "resume garbage": (P("resume={tmp}/garbage.pt"), ["garbage.pt: not a readable ssmix checkpoint"]),
    "resume backbone.pth": (P("resume={tmp}/backbone.pth"), ["not an ssmix training checkpoint"]),
    "resume other arch": (
        P("resume={run}", "model.arch=resnet34"),
        ["different config", "model.arch 'resnet18' -> 'resnet34'"],
    ),
    "resume other size": (
        P("resume={run}/checkpoints/step_00000001.pt", "data.image_size=24"),
        ["different config", "data.image_size 16 -> 24"],
    ),
    # (method.bn_splits=1: split BN with 1 image per split at 16 px cannot run, refused since issue 24)
    "corrupt image": (
        P(
            "data.name=imagefolder",
            "data.root={tmp}/folder",
            "train.batch_size=2",
            "method.bn_splits=1",
            "train.epochs=1",
        ),
        ["bad.png: not a readable image", "delete or replace the file"],
    ),
    "corrupt image, loader worker": (
        P(
            "data.name=imagefolder",
            "data.root={tmp}/folder",
            "train.batch_size=2",
            "method.bn_splits=1",
            "train.epochs=1",
            "data.num_workers=1",
        ),
        ["bad.png: not a readable image"],
    ),
    "cifar missing": (
        P("data.name=cifar10", "data.root={tmp}/none"),
        ["dataset 'cifar10' not found", "Expected layout"],
    ),
    "mix.checkpoint not a Mixer": (
        P("mix.type=samix_p", "mix.checkpoint={tmp}/state.pt"),
        ["mix.checkpoint", "not a SAMix Mixer checkpoint"],
    ),
    # linear_eval
    "linear no weights": (L(), ["weights: required"]),
    "linear weights missing": (L("weights={tmp}/gone.pth"), ["weights", "gone.pth' does not exist"]),
    "linear weights garbage": (L("weights={tmp}/garbage.pt"), ["cannot read", "garbage.pt"]),
    "linear arch mismatch": (
        L("weights={tmp}/backbone.pth", "arch=resnet34"),
        ["does not match resnet34", "missing keys"],
    ),
    "linear lr<0": (L("weights=random", "lr=-1"), ["lr: expected a positive number, got -1"]),
    "linear lr=nan": (L("weights=random", "lr=.nan"), ["lr: expected a finite number"]),
    "linear epochs=0": (L("weights=random", "epochs=0"), ["epochs: expected a positive integer"]),
    "linear device": (L("weights=random", "device=tpu"), ["device: invalid value 'tpu'"]),
    "linear mode": (L("weights=random", "mode=fast"), ["mode: unknown value 'fast'"]),
    "linear image_size=0": (
        L("weights=random", "data.image_size=0"),
        ["data.image_size: expected a positive"],
    ),
    # detection.train
    "detection lr<0": (D("solver.base_lr=-1"), ["solver.base_lr", "must be positive"]),
    "detection lr=nan": (D("solver.base_lr=nan"), ["solver.base_lr: expected a finite number"]),
    "detection max_iter=0": (D("solver.max_iter=0"), ["solver.max_iter", "must be positive"]),
    "detection log_every=0": (D("log_every=0"), ["log_every: expected a positive number"]),
    "detection checkpoint_period=0": (
        D("solver.checkpoint_period=0"),
        ["solver.checkpoint_period: expected a positive"],
    ),
    "detection device": (D("device=tpu"), ["device: invalid value 'tpu'"]),
    "detection head": (D("model.head=c5"), ["model.head: unknown head 'c5'"]),
    "detection weights missing": (D("model.weights={tmp}/gone.pth"), ["gone.pth' does not exist"]),
    "detection weights garbage": (D("model.weights={tmp}/garbage.pt"), ["cannot read", "garbage.pt"]),
    "detection output_dir is a file": (D("output_dir={tmp}/a_file"), ["a_file' is a file"]),
    # detection.convert
    "convert missing": (C("{tmp}/gone.pth", "{tmp}/out.pkl"), ["gone.pth' does not exist"]),
    "convert garbage": (C("{tmp}/garbage.pt", "{tmp}/out.pkl"), ["cannot read", "garbage.pt"]),
    "convert not .pkl": (C("{tmp}/backbone.pth", "{tmp}/out.pth"), [".pkl"]),
    # visualize_mix
    "visualize pairs=0": (V("pairs=0"), ["pairs=0: expected at least 1 pair"]),
    "visualize steps=x": (V("steps=x"), ["steps=x: expected an integer"]),
    "visualize checkpoint missing": (V("checkpoint={tmp}/gone.pt"), ["checkpoint=", "gone.pt: no such file"]),
    "visualize checkpoint garbage": (V("checkpoint={tmp}/garbage.pt"), ["not a readable ssmix checkpoint"]),
    "visualize checkpoint backbone": (
        V("checkpoint={tmp}/backbone.pth"),
        ["not an ssmix training checkpoint"],
    ),
    "visualize _base_ fragment": (("visualize_mix", [FRAGMENT]), ["_base_ fragment"]),
    "visualize device": (V("device=tpu"), ["device: invalid value 'tpu'"]),
}


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A finished 1-step pre-training run (resnet18, 16 px)."""
    out = tmp_path_factory.mktemp("run")
    assert pretrain.main([CONFIG, *TINY, *moco_overrides(), f"output_dir={out}", "train.max_steps=1"]) == 0
    return out


@pytest.fixture
def files(tmp_path):
    (tmp_path / "garbage.pt").write_bytes(b"not a checkpoint")
    (tmp_path / "a_file").write_text("a file, not a folder")
    torch.save(encoder_state("resnet18"), tmp_path / "backbone.pth")
    torch.save({"step": 1}, tmp_path / "state.pt")
    folder = tmp_path / "folder" / "train" / "cls"
    folder.mkdir(parents=True)
    for i in range(3):
        Image.new("RGB", (16, 16), (60 * i, 0, 0)).save(folder / f"ok{i}.png")
    (folder / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    return tmp_path


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input_is_one_line_and_exit_2(case, files, run, capsys):
    (tool, args), words = CASES[case]
    argv = [a.replace("{tmp}", str(files)).replace("{run}", str(run)) for a in args]
    code = MAINS[tool](argv)
    out, err = capsys.readouterr()
    assert code == 2, (out, err)
    assert err.startswith("error: ") and err.count("\n") == 1, err
    for word in words:
        assert word.replace("{tmp}", str(files)) in err, err
    assert "Traceback" not in out + err and "weights_only=False" not in err


def test_table_covers_every_entry_point():
    tools = [tool for (tool, _), _ in CASES.values()]
    assert len(CASES) >= 30 and set(tools) == set(MAINS)


def test_yaml_floats_without_a_dot_are_floats():
    cfg = load_config(None, ["train.lr=1e-4", "train.weight_decay=5e-5", "train.grad_clip=3"])
    assert cfg.train.lr == 1e-4 and cfg.train.weight_decay == 5e-5 and cfg.train.grad_clip == 3.0


def test_a_real_bug_is_not_swallowed(tmp_path, monkeypatch):
    """Exit 1 with a traceback stays for errors that are not the user's input."""
    import ssmix.engine.trainer as trainer

    def broken(*args, **kwargs):
        raise RuntimeError("a bug")

    monkeypatch.setattr(trainer, "_train", broken)
    with pytest.raises(RuntimeError, match="a bug"):
        pretrain.main([CONFIG, *TINY, f"output_dir={tmp_path}"])
