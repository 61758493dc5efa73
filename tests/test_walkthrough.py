"""The README's walkthrough ("Pre-train on your own images") runs as written: each line of its block,
through the installed console commands, from a fresh directory, on tiny folders of images.

Only what makes the commands fit a test changes: ``/data/my_images`` and ``/data/my_labelled`` point at
tiny folders written here, and size overrides are appended to the commands that take ``key=value``
(later overrides win): 16 px, 32 images, one epoch of 4 steps, small MoCo queue and ODC. The first
pre-training line is capped at step 2 (``train.max_steps=2``), the stop that line 2 continues from.
"""

from __future__ import annotations

import os
import pickle
import re
import shlex
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BLOCK = re.compile(r"<!-- walkthrough:begin.*?-->\n```bash\n(.*?)```\n<!-- walkthrough:end -->", re.S)
COMMANDS = ("ssmix-pretrain", "ssmix-visualize", "ssmix-linear-eval", "ssmix-convert")
#: appended to the pre-training line: the sizes of tests/helpers.py TINY, MoCo's queue and ODC made small
PRETRAIN_SIZE = [
    "device=cpu",
    "data.image_size=16",
    "data.num_workers=0",
    "model.channels_last=false",
    "train.batch_size=8",
    "train.epochs=1",
    "train.progress=false",
    "train.log_every=1",
    "method.queue_size=16",
    "method.bn_splits=2",
    "mix.mixer_warmup_epochs=0",
    "mix.odc.num_clusters=4",
    "mix.odc.min_cluster=4",
]
EVAL_SIZE = ["device=cpu", "data.image_size=16", "data.num_workers=0", "epochs=2"]


def walkthrough_lines(readme: str) -> list:
    """The commands of the README's walkthrough block: continuation lines joined, comments dropped."""
    found = BLOCK.search(readme)
    assert found, "README.md: no <!-- walkthrough:begin --> ```bash ... ``` <!-- walkthrough:end --> block"
    text = found.group(1).replace("\\\n", " ")
    return [
        shlex.split(line) for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")
    ]


def _images(root, paths, size=(20, 24), seed=0):
    rng = np.random.default_rng(seed)
    for path in paths:
        path = root / path
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (*size, 3), dtype=np.uint8)).save(path)


def _sized(argv: list) -> list:
    """``argv`` with the test's size overrides (see the module docstring)."""
    command = argv[0]
    if command == "ssmix-pretrain" and "--resume" not in argv:
        return [*argv, *PRETRAIN_SIZE, "train.max_steps=2"]
    if command == "ssmix-pretrain":  # continue the capped run to the end of its schedule
        return [*argv, "train.max_steps=null"]
    if command == "ssmix-linear-eval":
        return [*argv, *EVAL_SIZE]
    return argv


def test_the_walkthrough_block_is_found_and_names_only_ssmix_commands():
    lines = walkthrough_lines(open(os.path.join(ROOT, "README.md"), encoding="utf-8").read())
    assert [line[0] for line in lines] == [
        "ssmix-pretrain",
        "ssmix-pretrain",
        "ssmix-visualize",
        "ssmix-linear-eval",
        "ssmix-convert",
    ]
    assert "--resume" in lines[1]
    with pytest.raises(AssertionError, match="walkthrough"):
        walkthrough_lines("# README without the block\n")


def test_the_readme_walkthrough_runs_as_written(tmp_path):
    bin_dir = os.path.dirname(sys.executable)
    if not os.path.exists(os.path.join(bin_dir, "ssmix-pretrain")):
        pytest.skip(f"ssmix's console commands are not installed next to {sys.executable} (pip install -e .)")
    _images(tmp_path / "my_images", [f"cam{i % 2}/img{i}.jpg" for i in range(32)])
    _images(
        tmp_path / "my_labelled",
        [f"{split}/{cls}/{i}.png" for split in ("train", "val") for cls in ("cat", "dog") for i in range(6)],
        seed=1,
    )
    readme = open(os.path.join(ROOT, "README.md"), encoding="utf-8").read()
    readme = readme.replace("/data/my_images", str(tmp_path / "my_images"))
    readme = readme.replace("/data/my_labelled", str(tmp_path / "my_labelled"))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}  # a fresh directory: runs/ is created here
    outputs = []
    for argv in map(_sized, walkthrough_lines(readme)):
        done = subprocess.run(
            [os.path.join(bin_dir, argv[0]), *argv[1:]],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert done.returncode == 0, f"{shlex.join(argv)}\n{done.stderr[-3000:]}"
        outputs.append(done.stdout + done.stderr)
    run = tmp_path / "runs" / "my_images"
    assert "done: 2 steps" in outputs[0]
    assert "resumed from runs/my_images/checkpoints/step_00000002.pt at step 2/4" in outputs[1]
    assert "done: 4 steps" in outputs[1]
    for name in ("mix.png", "mix_masks.png"):  # the lambda sweep and the SAMix Mixer's masks
        with Image.open(run / name) as image:
            assert image.width > 100 and image.height > 50
    results = (run / "linear_imagefolder_cached" / "results.json").read_text()
    assert '"top1"' in results and '"knn_top1"' in results
    with open(run / "r18.pkl", "rb") as f:
        assert "stem.conv1.weight" in pickle.load(f)["model"]
