"""Pre-training on a plain folder of your own images and evaluating on a labelled folder."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import yaml
from PIL import Image

from tests.helpers import TINY, tiny_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MEAN, STD = [0.25, 0.5, 0.75], [0.2, 0.3, 0.4]


def _write_images(root, names, seed=0):
    rng = np.random.default_rng(seed)
    for name in names:
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (20, 24, 3), dtype=np.uint8)).save(path)


def _folder_overrides(root, out):
    return [
        "data.name=folder",
        f"data.root={root}",
        f"data.mean={MEAN}",
        f"data.std={STD}",
        "train.max_steps=2",
        "method.name=simsiam",
        f"output_dir={out}",
    ]


def test_pretrain_on_a_nested_folder_uses_the_configured_normalisation(tmp_path, monkeypatch):
    from ssmix.data import transforms
    from ssmix.engine.trainer import train

    names = [
        f"day{d}/cam{c}/img{i}.{ext}"
        for d in range(2)
        for c in range(2)
        for i, ext in enumerate(["PNG", "jpeg", "tif"])
    ]
    _write_images(tmp_path / "images", names)
    seen = []
    build = transforms.build_view_transform
    monkeypatch.setattr(
        "ssmix.engine.trainer.build_view_transform",
        lambda aug, size, mean, std: seen.append((list(mean), list(std))) or build(aug, size, mean, std),
    )
    summary = train(tiny_config(*_folder_overrides(tmp_path / "images", tmp_path / "run")))
    assert summary["step"] == 2 and np.isfinite(summary["last"]["loss"])
    assert seen == [(MEAN, STD)]
    assert os.path.isfile(tmp_path / "run" / "backbone.pth")
    saved = yaml.safe_load(open(tmp_path / "run" / "config.yaml"))
    assert (
        saved["data"]["mean"] == MEAN and saved["data"]["std"] == STD and saved["data"]["num_classes"] is None
    )


def test_cli_names_a_corrupt_image_in_one_line(tmp_path):
    _write_images(tmp_path / "images", [f"a/{i}.png" for i in range(9)])
    bad = tmp_path / "images" / "a" / "3.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n broken")
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "ssmix.pretrain",
            os.path.join(ROOT, "configs", "synthetic", "simsiam.yaml"),
            *TINY,
            *_folder_overrides(tmp_path / "images", tmp_path / "run"),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert out.returncode == 2, out.stderr[-2000:]
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: {bad}: not a readable image ("), lines


def test_linear_eval_on_a_labelled_folder_counts_its_classes(tmp_path):
    from ssmix.evaluation import evaluate

    for split in ("train", "val"):
        _write_images(
            tmp_path / split,
            [f"{cls}/{i}.JPG" for cls in ("oak", "pine", "fir") for i in range(2)],
            seed=len(split),
        )
    result = evaluate(
        "random",
        data={
            "name": "imagefolder",
            "root": str(tmp_path),
            "image_size": 16,
            "num_workers": 0,
            "mean": MEAN,
            "std": STD,
        },
        epochs=1,
        batch_size=4,
        milestones=[1],
        knn_k=3,
        cache_dir=None,
        device="cpu",
    )
    assert (result["num_train"], result["num_test"], result["num_classes"]) == (6, 6, 3)


def test_knn_monitor_of_a_folder_run_uses_the_labelled_eval_root(tmp_path):
    import json

    import pytest

    from ssmix.config import ConfigError
    from ssmix.engine.trainer import train

    _write_images(tmp_path / "images", [f"{i}.png" for i in range(8)])
    overrides = [
        *_folder_overrides(tmp_path / "images", tmp_path / "run"),
        "train.knn_every=1",
        "train.max_steps=1",
    ]
    with pytest.raises(
        ConfigError,
        match="^train.knn_every: data.name=folder has no labels for the kNN monitor; set data.eval_root",
    ):
        train(tiny_config(*overrides))
    for split in ("train", "val"):
        _write_images(tmp_path / "labelled" / split, [f"{c}/{i}.png" for c in ("a", "b") for i in range(3)])
    train(tiny_config(*overrides, f"data.eval_root={tmp_path / 'labelled'}"))
    rows = [json.loads(line) for line in open(tmp_path / "run" / "metrics.jsonl")]
    assert [r["step"] for r in rows if "knn_top1" in r] == [1]
    assert all(0.0 <= r["knn_top1"] <= 100.0 for r in rows if "knn_top1" in r)
