"""Shipped configs by name (ssmix.shipped): the forms a user types, from any working directory."""

from pathlib import Path

import pytest

from ssmix import pretrain
from ssmix.config import ConfigError, load_config
from ssmix.evaluation.config import load_eval_config
from ssmix.shipped import DETECTION, DETECTRON2, LINEAR, PRETRAIN, Shelf

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def outside_the_repository(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)


@pytest.mark.parametrize("arg", ["mocov2_samix_c", "mocov2_samix_c.yaml", "configs/mocov2_samix_c.yaml"])
def test_a_top_level_config_resolves_by_name_or_repository_path(arg):
    assert PRETRAIN.resolve(arg) == str(ROOT / "configs" / "mocov2_samix_c.yaml")


@pytest.mark.parametrize("arg", ["digits/mocov2", "configs/digits/mocov2.yaml"])
def test_a_dataset_config_resolves_with_its_folder(arg):
    assert PRETRAIN.resolve(arg) == str(ROOT / "configs" / "digits" / "mocov2.yaml")


@pytest.mark.parametrize(
    "shelf, arg, expected",
    [
        (LINEAR, "digits", "configs/linear/digits.yaml"),
        (LINEAR, "linear/digits", "configs/linear/digits.yaml"),
        (LINEAR, "configs/linear/digits.yaml", "configs/linear/digits.yaml"),
        (DETECTION, "tiny_voc_c4", "detection/presets/tiny_voc_c4.yaml"),
        (DETECTION, "detection/presets/tiny_voc_c4.yaml", "detection/presets/tiny_voc_c4.yaml"),
        (DETECTRON2, "pascal_voc_R_50_C4_24k_moco", "detection/configs/pascal_voc_R_50_C4_24k_moco.yaml"),
    ],
)
def test_each_shelf_resolves_its_own_tree(shelf, arg, expected):
    assert shelf.resolve(arg) == str(ROOT / expected)


def test_an_existing_file_wins_over_a_shipped_name(tmp_path):
    (tmp_path / "mocov2").write_text("seed: 3\n")
    assert PRETRAIN.resolve("mocov2") == "mocov2"
    assert PRETRAIN.resolve(str(tmp_path / "gone.yaml")) == str(tmp_path / "gone.yaml")  # absolute: as given


def test_names_are_runnable_configs_only():
    names = PRETRAIN.names()
    assert {"mocov2_samix_c", "digits/mocov2", "synthetic/mocov2", "imagenet/byol"} <= set(names)
    assert not [n for n in names if n.startswith(("_base_", "linear", "slurm"))]
    assert "_base" not in LINEAR.names() and "digits" in LINEAR.names()
    assert DETECTION.names() == ["coco_r50_c4_2x", "tiny_coco_c4", "tiny_voc_c4", "voc_r50_c4_24k"]


def test_an_unknown_name_lists_the_close_ones():
    with pytest.raises(ConfigError) as err:
        PRETRAIN.resolve("mocov2_samix")
    assert str(err.value) == (
        "config file not found: 'mocov2_samix' is neither a file nor a config shipped with "
        "ssmix (did you mean mocov2_samix_p, mocov2_samix_i, mocov2_samix_c, mocov2_fmix, "
        "mocov2_mixup?)"
    )
    with pytest.raises(ConfigError, match=r"did you mean cifar100/mocov2, mocov2_samix_c, cifar10/mocov2, "):
        PRETRAIN.resolve("cifar100/mocov2_samix_c")


def test_a_name_without_close_matches_names_the_folder():
    with pytest.raises(ConfigError) as err:
        PRETRAIN.resolve("qqqqqqqq")
    assert str(err.value).endswith(f"(shipped names are the .yaml files under {ROOT / 'configs'}, e.g. byol)")
    with pytest.raises(
        ConfigError, match="^config file not found: 'x' is neither a file nor a config shipped with ssmix$"
    ):
        Shelf("no/such/tree").resolve("x")


def test_loaders_take_names_and_keep_base_inheritance():
    cfg = load_config("digits/mocov2", ["train.epochs=3"])
    assert (cfg.data.name, cfg.method.name, cfg.train.epochs) == ("digits", "mocov2", 3)
    assert load_eval_config("digits", ["weights=random"]).data.name == "digits"
    with pytest.raises(ConfigError, match="a _base_ fragment"):
        load_config("_base_/data/digits")


def test_pretrain_reports_an_unknown_name_in_one_line(capsys):
    assert pretrain.main(["digits/mocov3", "--print-config"]) == 2
    err = capsys.readouterr().err
    assert err == (
        "error: config file not found: 'digits/mocov3' is neither a file nor a config shipped with "
        "ssmix (did you mean digits/mocov2, digits/mocov2_cutmix, digits/mocov2_samix_i, "
        "digits/mocov2_samix_c, digits/simclr?)\n"
    )
