"""Config schema: inheritance, overrides, validation errors and the CLI contract."""

import glob
import os
import subprocess
import sys

import pytest
import yaml

from ssmix.config import ConfigError, load_config, parse_overrides

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ALL_CONFIGS = sorted(
    p
    for p in glob.glob(os.path.join(ROOT, "configs", "**", "*.yaml"), recursive=True)
    if "_base_" not in p and os.sep + "linear" + os.sep not in p
)


def _write(tmp_path, name, text):
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def test_base_inheritance_and_override_order(tmp_path):
    _write(tmp_path, "base.yaml", "train: {lr: 0.5, epochs: 3}\ndata: {name: digits, image_size: 24}\n")
    child = _write(tmp_path, "child.yaml", "_base_: base.yaml\ntrain: {lr: 0.1}\n")
    cfg = load_config(child, ["train.epochs=7", "data.aug.blur_prob=0"])
    assert cfg.train.lr == 0.1 and cfg.train.epochs == 7  # child over base, override over child
    assert cfg.data.name == "digits" and cfg.data.image_size == 24
    assert cfg.data.aug.blur_prob == 0.0 and isinstance(cfg.data.aug.blur_prob, float)


@pytest.mark.parametrize(
    "override, message",
    [
        ("train.lrr=0.1", "unknown key 'train.lrr' (did you mean 'train.lr'?)"),
        ("train.lr=fast", "train.lr: expected float, got str 'fast'"),
        ("train.epochs=1.5", "train.epochs: expected int"),
        ("train.max_steps=ten", "train.max_steps: expected int or null"),
        ("method.name=mocov3", "method.name: unknown value 'mocov3'"),
        ("method.queue_sise=8", "did you mean 'method.queue_size'"),
        ("data.aug=3", "data.aug: expected a mapping"),
        ("nokey", "not of the form dotted.key=value"),
    ],
)
def test_bad_values_are_one_line_errors_naming_the_key(override, message):
    with pytest.raises(ConfigError) as err:
        load_config(None, [override])
    assert message in str(err.value)
    assert "\n" not in str(err.value)


def test_missing_file_and_bad_yaml(tmp_path):
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(str(tmp_path / "nope.yaml"))
    bad = _write(tmp_path, "bad.yaml", "train: [1, 2\n")
    with pytest.raises(ConfigError, match="invalid YAML"):
        load_config(bad)
    missing_base = _write(tmp_path, "child.yaml", "_base_: gone.yaml\n")
    with pytest.raises(ConfigError, match="gone.yaml"):
        load_config(missing_base)


def test_method_fields_follow_the_method_name():
    cfg = load_config(None, ["method.name=mocov2", "method.queue_size=64"])
    assert cfg.method.queue_size == 64
    with pytest.raises(ConfigError, match="unknown key 'mix.alpha'"):
        load_config(None, ["mix.alpha=2"])  # mix.type none has no alpha


def test_override_values_are_parsed_as_yaml_scalars():
    assert parse_overrides(["a.b=1", "a.c=null", "d=[1, 2]", "e=true", "f=x=y"]) == {
        "a": {"b": 1, "c": None},
        "d": [1, 2],
        "e": True,
        "f": "x=y",
    }


@pytest.mark.parametrize("path", ALL_CONFIGS, ids=lambda p: os.path.relpath(p, ROOT))
def test_every_shipped_config_is_valid(path):
    cfg = load_config(path)
    assert (cfg.train.batch_size or cfg.train.global_batch_size) > 0 and cfg.output_dir


def _cli(*args):
    return subprocess.run(
        [sys.executable, "-m", "ssmix.pretrain", *args], cwd=ROOT, capture_output=True, text=True, timeout=120
    )


def test_cli_print_config_and_exit_codes():
    path = os.path.join(ROOT, "configs", "mocov2.yaml")
    out = _cli(path, "train.epochs=3", "--print-config")
    assert out.returncode == 0, out.stderr
    printed = yaml.safe_load(out.stdout)
    assert printed["train"]["epochs"] == 3 and printed["method"]["name"] == "mocov2"
    bad = _cli(path, "train.lrr=1")
    assert bad.returncode == 2
    assert bad.stderr.strip() == "error: unknown key 'train.lrr' (did you mean 'train.lr'?)"


def test_dataset_bases_are_listed_after_method_bases():
    """A dataset's choices (crops, blur at low resolution) override a method's defaults, so a config lists
    its data base after its method base (later files win)."""
    checked = 0
    for path in glob.glob(os.path.join(ROOT, "configs", "**", "*.yaml"), recursive=True):
        with open(path, encoding="utf-8") as f:
            bases = (yaml.safe_load(f) or {}).get("_base_") or []
        bases = [bases] if isinstance(bases, str) else bases
        kinds = ["data" if "/data/" in b else "method" if "/methods/" in b else "other" for b in bases]
        if "data" in kinds and "method" in kinds:
            assert kinds.index("data") > kinds.index("method"), (path, bases)
            checked += 1
    assert checked >= 30


DIGITS_CONFIGS = sorted(glob.glob(os.path.join(ROOT, "configs", "digits", "*.yaml")))


@pytest.mark.parametrize("path", DIGITS_CONFIGS, ids=os.path.basename)
def test_every_digits_config_trains_on_the_recipes_views(path):
    """The digits data base sets the recipe's views over the method bases' (BYOL's and SimCLR's crops
    from 8 %): every digits config must end with the recipe's."""
    cfg = load_config(path)
    aug = cfg.data.aug
    assert (cfg.data.image_size, cfg.model.cifar_stem) == (16, True)
    assert (aug.min_scale, aug.hflip_prob, aug.blur_prob) == (0.7, 0.0, 0.0), path
    if aug.kind == "swav":  # multi-crop: the high-resolution crops are the recipe's
        assert (aug.multi_crop.sizes[0], aug.multi_crop.min_scales[0]) == (16, 0.7)


def _pretrain_with_8_workers():
    return load_config(os.path.join(ROOT, "configs", "digits", "mocov2.yaml"), ["data.num_workers=8"])


def _imagenet_linear_eval():  # the shipped config asks for 8 workers
    from ssmix.evaluation.config import load_eval_config

    return load_eval_config(os.path.join(ROOT, "configs", "linear", "imagenet.yaml"), ["weights=random"])


def _detection_with_8_workers():
    from ssmix.detection.schema import load_detection_config

    return load_detection_config("tiny_voc_c4", ["data.num_workers=8"])


@pytest.mark.parametrize("load", [_pretrain_with_8_workers, _imagenet_linear_eval, _detection_with_8_workers])
def test_more_workers_than_usable_cpus_are_lowered_with_one_note(load, monkeypatch, capsys):
    from ssmix import config_checks

    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1}, raising=False)
    monkeypatch.setattr(os, "cpu_count", lambda: 2)
    config_checks._note_workers.cache_clear()
    assert load().data.num_workers == 2 and load().data.num_workers == 2  # the resolved config says what runs
    err = capsys.readouterr().err
    assert (
        err.count("data.num_workers: 8 asked for, but this process may use 2 CPU(s); using 2 worker(s)") == 1
    )


def test_usable_workers_keeps_what_fits(monkeypatch, capsys):
    from ssmix.config_checks import _note_workers, usable_workers

    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1, 2}, raising=False)
    assert [usable_workers(n) for n in (0, 1, 3)] == [0, 1, 3]
    assert capsys.readouterr().err == ""  # nothing to say when the workers fit
    _note_workers.cache_clear()
    assert usable_workers(4) == 3
    assert "data.num_workers: 4 asked for" in capsys.readouterr().err
