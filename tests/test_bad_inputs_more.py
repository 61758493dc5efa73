"""Issue 24: more bad inputs, each one line on stderr naming the problem and the fix, exit code 2, and
nothing already on disk lost. Beyond the table of tests/test_bad_inputs.py.

Each row: the entry point, its arguments (``{tmp}`` = a folder holding the files built by :func:`files`,
``{run}`` = a finished 1-step resnet18 run), words the message must hold, and what the input did before
issue 24 (on main at 928e9ff), kept as the note the issue asks for.
"""

import os
import shutil
import time

import numpy as np
import pytest
import torch
from PIL import Image

from ssmix import pretrain
from ssmix.detection import convert as det_convert
from ssmix.detection import train as det_train
from ssmix.linear_eval import run as linear_run
from tests.detection_helpers import PRESETS, encoder_state
from tests.helpers import TINY, moco_overrides

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = os.path.join(ROOT, "configs", "synthetic", "mocov2.yaml")
LINEAR = os.path.join(ROOT, "configs", "linear", "synthetic.yaml")
DETECTION = os.path.join(PRESETS, "tiny_voc_c4.yaml")
MAINS = {
    "pretrain": pretrain.main,
    "linear_eval": linear_run.main,
    "detection.train": det_train.main,
    "detection.convert": det_convert.main,
}


def P(*args):  # pretrain: the tiny synthetic MoCo v2 run plus ``args``
    return ("pretrain", [CONFIG, *TINY, *moco_overrides(), "output_dir={tmp}/out", *args])


def M(*args):  # pretrain: the tiny synthetic run with another method (no MoCo keys)
    return ("pretrain", [CONFIG, *TINY, "output_dir={tmp}/out", *args])


def Y(name, *args):  # pretrain of the YAML file ``{tmp}/<name>``
    return ("pretrain", ["{tmp}/" + name, *TINY, "output_dir={tmp}/out", *args])


def F(*args):  # pretrain on the image folder data.root={tmp}/<...>
    return P("data.name=folder", "data.image_size=16", "train.epochs=1", "method.bn_splits=1", *args)


def L(*args):  # linear_eval on synthetic images
    return (
        "linear_eval",
        [
            LINEAR,
            "device=cpu",
            "output_dir={tmp}/linear",
            "cache_dir=",
            "data.num_samples=16",
            "epochs=1",
            "milestones=[1]",
            "batch_size=8",
            *args,
        ],
    )


# id: ((tool, args), words the one line holds, what it did before issue 24)
CASES = {
    # --- YAML oddities ---------------------------------------------------------------------------
    "yaml duplicate key": (
        Y("dup.yaml"),
        ["dup.yaml: line 4: duplicate key 'train' (first at line 2)", "merge the two"],
        "exit 0: the first train block silently dropped",
    ),
    "yaml _base_ cycle": (
        Y("cycle_a.yaml"),
        ["circular _base_ chain", "cycle_b.yaml"],
        "exit 2 (already one line)",
    ),
    "yaml missing _base_": (
        Y("missing_base.yaml"),
        ["missing_base.yaml: _base_ file not found", "gone.yaml"],
        "exit 2, 'config file not found' not naming the file that included it",
    ),
    "yaml _base_: 5": (
        Y("base_int.yaml"),
        ["_base_: expected a path or a list of paths, got 5"],
        "TypeError traceback, exit 1",
    ),
    "yaml empty file": (
        Y("empty.yaml"),
        ["empty.yaml: the file is empty"],
        "ran the built-in defaults (here: a split-BN ValueError traceback)",
    ),
    "yaml binary file": (
        Y("binary.yaml"),
        ["binary.yaml: a binary file", "NUL bytes"],
        "UnicodeDecodeError traceback, exit 1",
    ),
    "yaml Latin-1 file": (
        Y("latin1.yaml"),
        ["latin1.yaml: not UTF-8 text (byte 0xe9 on line 1)", "save the file as"],
        "UnicodeDecodeError traceback, exit 1",
    ),
    "yaml top-level list": (
        Y("list.yaml"),
        ["expected a mapping at the top level, got list"],
        "exit 2 (unchanged)",
    ),
    "yaml deep nesting": (
        Y("deep.yaml"),
        ["deep.yaml: nested too deeply to read"],
        "RecursionError traceback",
    ),
    "yaml nested 40 levels": (
        Y("deep40.yaml"),
        ["nested more than 32 levels deep"],
        "exit 2: 'unknown key a' after merging 40 levels",
    ),
    "yaml alias bomb": (
        Y("bomb.yaml"),
        ["expands to more than 100000 values", "alias bomb"],
        "hung: the error message repr'd the 10^9-element expanded value",
    ),
    "yaml recursive alias": (
        Y("recursive.yaml"),
        ["alias refers to itself"],
        "exit 2 already (repr stops at the cycle)",
    ),
    "override duplicate key": (P("train={lr: 1, lr: 2}"), ["duplicate key 'lr'"], "lr=2 kept silently"),
    # --- values that validated but could not run ------------------------------------------------
    "seed=-1": (
        P("seed=-1"),
        ["seed: expected an integer in [0, 4294967295]"],
        "ValueError traceback from numpy.random.seed, exit 1",
    ),
    "min_scale=5": (
        P("data.aug.min_scale=5"),
        ["data.aug.min_scale: expected a value in (0, 1], got 5"],
        "RuntimeError traceback (uniform_ range) in the first batch",
    ),
    "min_scale=0": (
        P("data.aug.min_scale=0"),
        ["data.aug.min_scale: expected a value in (0, 1], got 0"],
        "ran with crops of zero area allowed",
    ),
    "cj_prob=7": (
        P("data.aug.cj_prob=7"),
        ["data.aug.cj_prob: expected a value in [0, 1], got 7"],
        "ValueError traceback in the first batch",
    ),
    "hflip_prob=-1": (
        P("data.aug.hflip_prob=-1"),
        ["data.aug.hflip_prob: expected a value in [0, 1]"],
        "ValueError traceback in the first batch",
    ),
    "bn_splits=3": (
        P("method.bn_splits=3"),
        ["method.bn_splits=3 does not fit train.batch_size=8", "multiple of 6"],
        "ValueError traceback from SplitBatchNorm, exit 1",
    ),
    "bn_splits=8 at batch 8": (
        P("method.bn_splits=8", "method.queue_size=16"),
        ["at least 2 values per channel in each split"],
        "'Expected more than 1 value per channel', exit 1",
    ),
    "bn_splits=0": (
        P("method.bn_splits=0"),
        ["method.bn_splits: expected an integer >= 1"],
        "exit 0 after an 18-line tensorboard error",
    ),
    "queue not a multiple of the batch": (
        P("method.queue_size=20"),
        ["method.queue_size=20 must be a multiple", "global batch 8"],
        "one line, but only at step 1 inside the run directory",
    ),
    "queue smaller than the batch": (
        P("method.queue_size=4"),
        ["method.queue_size=4 must be a multiple"],
        "one line at step 1 inside the run directory",
    ),
    "batch_size=1": (
        P("train.batch_size=1", "method.bn_splits=1"),
        ["at least 2 images per process"],
        "'Expected more than 1 value per channel' traceback",
    ),
    "temperature=0": (
        P("method.temperature=0"),
        ["method.temperature: expected a positive temperature"],
        "exit 2 blaming divergence: 'non-finite loss at step 1'",
    ),
    "simclr temperature<0": (
        M("method.name=simclr", "method.temperature=-0.1"),
        ["method.temperature"],
        "trained with a negated similarity",
    ),
    "momentum=2": (
        P("method.momentum=2"),
        ["method.momentum: expected a value in [0, 1], got 2"],
        "exit 0: the momentum encoder diverged silently",
    ),
    "byol base > final momentum": (
        M("method.name=byol", "method.base_momentum=0.99", "method.final_momentum=0.9"),
        ["need 0 <= base <= final <= 1"],
        "exit 2 (only once the model was built)",
    ),
    "mix.labels=dataset on a folder": (
        F("data.root={tmp}/images", "train.batch_size=2", "mix.type=interintra", "mix.labels=dataset"),
        ["mix.labels=dataset: data.name=folder", "mix.labels=odc"],
        "ValueError traceback at step 1",
    ),
    "odc clusters > images": (
        P("mix.type=samix_c", "mix.odc.num_clusters=64"),
        ["mix.odc.num_clusters=64 is more than the 32 training images"],
        "one line, but only once the run directory was taken",
    ),
    "device=cuda:7 without CUDA": (
        P("device=cuda:7"),
        ["device: 'cuda:7' was asked for but CUDA is not available"],
        "exit 2 (unchanged)",
    ),
    # --- image folders -------------------------------------------------------------------------
    "empty folder": (
        F("data.root={tmp}/empty_dir"),
        ["dataset 'folder' not found", "image files"],
        "exit 2 (unchanged)",
    ),
    "only corrupt files": (
        F("data.root={tmp}/corrupt", "train.batch_size=2"),
        ["not a readable image", "delete or replace the file"],
        "exit 2 (unchanged)",
    ),
    "dangling symlink image": (
        F("data.root={tmp}/dangling", "train.batch_size=2"),
        ["No such file or directory", "gone.png"],
        "exit 2",
    ),
    "fewer images than the batch": (
        F("data.root={tmp}/images"),
        ["larger than the dataset (4 images)"],
        "exit 2 (unchanged)",
    ),
    "symlink loop": (
        F("data.root={tmp}/loop"),
        ["larger than the dataset (4 images)"],
        "exit 0: the loop multiplied 4 images 41x",
    ),
    "float image out of range": (
        F("data.root={tmp}/float_bad", "train.batch_size=2"),
        ["F pixels in [0, 70000] have no 8-bit reading"],
        "exit 0: every pixel clipped to 255",
    ),
    "bad data.eval_root": (
        F("data.root={tmp}/images", "train.batch_size=2", "train.knn_every=1", "data.eval_root={tmp}/none"),
        ["data.eval_root:", "not found"],
        "exit 2 only after epoch 1 (run directory used)",
    ),
    "eval_root val class unknown to train": (
        F(
            "data.root={tmp}/images",
            "train.batch_size=2",
            "train.knn_every=1",
            "train.knn_k=2",
            "data.eval_root={tmp}/labelled",
        ),
        ["class folder(s) c are not in"],
        "exit 0: kNN scored class c as class b",
    ),
    "output_dir inside a run's checkpoints": (
        P("output_dir={run}/checkpoints"),
        ["is the checkpoints folder of the run in", "output_dir={run} "],
        "refused, but its hint 'pass resume=auto' nested a new run there",
    ),
    # --- resume from another run's checkpoint --------------------------------------------------
    "resume from another method": (
        M("resume={run}", "method.name=simclr"),
        ["different config", "method.name 'mocov2' -> 'simclr'"],
        "exit 2 (unchanged)",
    ),
    "resume from another mixer": (
        P("resume={run}/checkpoints/step_00000001.pt", "mix.type=cutmix"),
        ["different config", "mix.type 'none' -> 'cutmix'"],
        "exit 2 (unchanged)",
    ),
    "resume from another arch": (
        P("resume={run}", "model.arch=resnet50"),
        ["model.arch 'resnet18' -> 'resnet50'"],
        "exit 2 (unchanged)",
    ),
    # --- linear evaluation -----------------------------------------------------------------------
    "linear weights mixer.pt": (
        L("weights={tmp}/mixer.pt"),
        ["mixer.pt", "SAMix Mixer"],
        "exit 2 'no ResNet encoder found', not naming a mixer export",
    ),
    "linear weights other arch": (
        L("weights={tmp}/r34.pth", "arch=resnet18"),
        ["does not match resnet18"],
        "exit 2 (unchanged)",
    ),
    "linear weights empty file": (
        L("weights={tmp}/empty.pt"),
        ["cannot read", "empty.pt"],
        "exit 2 (unchanged)",
    ),
    "linear device=cuda:7": (
        L("weights=random", "device=cuda:7"),
        ["CUDA is not available"],
        "exit 2 (unchanged)",
    ),
    "linear output_dir is a file": (
        L("weights=random", "output_dir={tmp}/a_file"),
        ["a_file' is a file"],
        "'[Errno 17] File exists' after the whole evaluation",
    ),
    "linear results.json exists": (
        L("weights=random", "output_dir={tmp}/evaluated"),
        ["results.json exists", "overwrite=true"],
        "exit 0: results.json overwritten",
    ),
    "linear crop larger than the image": (
        L("weights=random", "data.image_size=32", "data.test_resize=16"),
        ["data.test_resize=16: the centre crop of 32 px is larger"],
        "exit 0: CenterCrop padded every test image with a black border",
    ),
    "linear imagefolder val class unknown": (
        L(
            "weights=random",
            "data.name=imagefolder",
            "data.root={tmp}/labelled",
            "data.image_size=16",
            "data.test_split=val",
            "knn_k=2",
        ),
        ["class folder(s) c are not in"],
        "exit 0: val class c scored as train class b",
    ),
    # --- detection -----------------------------------------------------------------------------
    "convert onto an existing .pkl": (
        ("detection.convert", ["{tmp}/backbone.pth", "{tmp}/existing.pkl"]),
        ["existing.pkl' exists", "--overwrite"],
        "exit 0: the .pkl replaced",
    ),
}


def _yaml_files(tmp):
    base = f"_base_: {CONFIG}\n"
    (tmp / "dup.yaml").write_text(base + "train: {lr: 0.1}\nseed: 0\ntrain: {epochs: 3}\n")
    (tmp / "cycle_a.yaml").write_text("_base_: cycle_b.yaml\n")
    (tmp / "cycle_b.yaml").write_text("_base_: cycle_a.yaml\n")
    (tmp / "missing_base.yaml").write_text("_base_: gone.yaml\n")
    (tmp / "base_int.yaml").write_text("_base_: 5\n")
    (tmp / "empty.yaml").write_text("# nothing here\n")
    (tmp / "binary.yaml").write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR")
    (tmp / "latin1.yaml").write_bytes("output_dir: runs/caf\u00e9\n".encode("latin-1"))
    (tmp / "list.yaml").write_text("- a\n- b\n")
    (tmp / "deep.yaml").write_text("a: " + "[" * 5000 + "]" * 5000 + "\n")
    (tmp / "deep40.yaml").write_text("a: " + "{a: " * 40 + "1" + "}" * 40 + "\n")
    lines = ['l0: &l0 ["x", "x", "x", "x", "x", "x", "x", "x", "x", "x"]']
    lines += [f"l{i}: &l{i} [" + ", ".join([f"*l{i - 1}"] * 10) + "]" for i in range(1, 9)]
    (tmp / "bomb.yaml").write_text(base + "\n".join(lines) + "\ntrain: {lr: *l8}\n")
    (tmp / "recursive.yaml").write_text(base + "train: &t {lr: [*t]}\n")


def _png(path, size=16, value=0):
    Image.new("RGB", (size, size), (value, 60, 120)).save(path)


def _image_folders(tmp):
    (tmp / "empty_dir").mkdir()
    (tmp / "corrupt").mkdir()
    for i in range(3):
        (tmp / "corrupt" / f"bad{i}.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    (tmp / "dangling").mkdir()
    _png(tmp / "dangling" / "ok.png")
    os.symlink(tmp / "gone.png", tmp / "dangling" / "gone.png")
    (tmp / "images" / "sub").mkdir(parents=True)
    for i in range(4):
        _png(tmp / "images" / ("sub" if i % 2 else "") / f"im{i}.png", value=40 * i)
    (tmp / "loop").mkdir()
    for i in range(4):
        _png(tmp / "loop" / f"im{i}.png", value=40 * i)
    os.symlink(tmp / "loop", tmp / "loop" / "again")
    (tmp / "float_bad").mkdir()
    for i in range(2):
        pixels = np.linspace(0, 70000.0 * i, 256, dtype=np.float32).reshape(16, 16)
        Image.fromarray(pixels).save(tmp / "float_bad" / f"f{i}.tif")
    for split, classes in (("train", "ab"), ("val", "ac")):
        for cls in classes:
            folder = tmp / "labelled" / split / cls
            folder.mkdir(parents=True)
            for i in range(2):
                _png(folder / f"{cls}{i}.png", value=100 * (ord(cls) - 97) + i)


def _weight_files(tmp):
    from ssmix.mixers.samix.pretrained import FORMAT, VERSION

    state = encoder_state("resnet18")
    torch.save(state, tmp / "backbone.pth")
    torch.save(encoder_state("resnet34"), tmp / "r34.pth")
    trunk = {k: v for k, v in state.items() if not k.startswith("layer4.")}
    torch.save(
        {
            "format": FORMAT,
            "version": VERSION,
            "mixer": {"w": torch.zeros(1)},
            "trunk": trunk,
            "meta": {"arch": "resnet18"},
        },
        tmp / "mixer.pt",
    )
    (tmp / "empty.pt").write_bytes(b"")
    (tmp / "a_file").write_text("a file, not a folder")
    (tmp / "existing.pkl").write_bytes(b"an earlier conversion")
    (tmp / "evaluated").mkdir()
    (tmp / "evaluated" / "results.json").write_text('{"top1": 50.0}')


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("inputs")
    _yaml_files(tmp)
    _image_folders(tmp)
    _weight_files(tmp)
    return tmp


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A finished 1-step pre-training run (resnet18, 16 px)."""
    out = tmp_path_factory.mktemp("run")
    assert pretrain.main([CONFIG, *TINY, *moco_overrides(), f"output_dir={out}", "train.max_steps=1"]) == 0
    return out


def _snapshot(folder):
    """Every file under ``folder`` with its size and modification time (what a refused input must leave alone)."""
    out = {}
    for base, dirs, names in os.walk(folder):
        dirs[:] = [d for d in dirs if os.path.join(base, d) != os.path.join(str(folder), "out")]
        for name in names:
            path = os.path.join(base, name)
            if name != ".lock" and not os.path.islink(path):
                stat = os.stat(path)
                out[os.path.relpath(path, folder)] = (stat.st_size, stat.st_mtime_ns)
    return out


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input_is_one_line_exit_2_and_loses_nothing(case, files, run, capsys):
    (tool, args), words, _before = CASES[case]
    argv = [a.replace("{tmp}", str(files)).replace("{run}", str(run)) for a in args]
    shutil.rmtree(files / "out", ignore_errors=True)  # each case starts from a fresh output_dir
    before = _snapshot(files), _snapshot(run)
    started = time.perf_counter()
    code = MAINS[tool](argv)
    out, err = capsys.readouterr()
    assert code == 2, (out, err)
    assert err.startswith("error: ") and err.count("\n") == 1, err
    for word in words:
        assert word.replace("{tmp}", str(files)).replace("{run}", str(run)) in err, err
    assert "Traceback" not in out + err
    assert time.perf_counter() - started < 30  # the alias bomb among them: refused, not expanded
    assert (_snapshot(files), _snapshot(run)) == before
    assert not os.path.exists(os.path.join(str(run), "checkpoints", "checkpoints"))


def test_the_table_has_40_new_cases():
    assert len(CASES) >= 40
