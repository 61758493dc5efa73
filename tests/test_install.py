"""A non-editable ``pip install`` of the repository into a fresh virtualenv, used from outside the repository.

The new venv sees the dependencies already installed for this interpreter (torch, lightly, ...) through a
``.pth`` line naming this interpreter's site-packages: a plain path line does not run that folder's own
``.pth`` files, so an editable ssmix installed there stays invisible and ``import ssmix`` must find the
wheel just installed. pip runs offline (``--no-index --no-deps --no-build-isolation``) with this
interpreter's setuptools.
"""

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import tarfile
from pathlib import Path

import pytest

pytestmark = pytest.mark.install

ROOT = Path(__file__).resolve().parents[1]
#: what a build of the repository reads (a copy keeps build/ and *.egg-info out of the checkout)
BUILD_INPUTS = ("pyproject.toml", "setup.py", "README.md", "ssmix", "configs", "detection", "linear_eval")
#: a two-step MoCo v2 job on 32 generated 16 px images
TINY = (
    "device=cpu",
    "train.max_steps=2",
    "train.batch_size=16",
    "data.num_samples=32",
    "data.image_size=16",
    "method.queue_size=32",
    "train.log_every=1",
    "train.progress=false",
)


def _run(cmd, cwd, env, ok=True):
    proc = subprocess.run(
        [str(c) for c in cmd], cwd=cwd, env=env, capture_output=True, text=True, timeout=300
    )
    if ok:
        assert proc.returncode == 0, f"{cmd} exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr}"
    return proc


def _build_inputs(tmp: Path) -> Path:
    """A copy of what a build of the repository reads, in ``tmp/src``."""
    src = tmp / "src"
    src.mkdir()
    for name in BUILD_INPUTS:
        copy = shutil.copytree if (ROOT / name).is_dir() else shutil.copy2
        copy(
            ROOT / name,
            src / name,
            **({"ignore": shutil.ignore_patterns("__pycache__")} if (ROOT / name).is_dir() else {}),
        )
    return src


def _clean_env():
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "PIP_", "VIRTUAL_ENV"))}
    env.update(PYTHONNOUSERSITE="1", PIP_DISABLE_PIP_VERSION_CHECK="1", OMP_NUM_THREADS="1")
    return env


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """(bin folder, site-packages of the new venv, env, a working directory outside the repository)."""
    tmp = tmp_path_factory.mktemp("install")
    src = _build_inputs(tmp)
    venv = tmp / "venv"
    env = _clean_env()
    work = tmp / "work"
    work.mkdir()
    _run([sys.executable, "-m", "venv", "--without-pip", venv], work, env)
    bin_dir = venv / ("Scripts" if os.name == "nt" else "bin")
    python = bin_dir / "python"
    site = Path(
        _run(
            [python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], work, env
        ).stdout.strip()
    )
    (site / "_host_packages.pth").write_text(sysconfig.get_paths()["purelib"] + "\n", encoding="utf-8")
    _run(
        [python, "-m", "pip", "install", "--quiet", "--no-index", "--no-deps", "--no-build-isolation", src],
        work,
        env,
    )
    return bin_dir, site, env, work


def test_the_wheel_installs_ssmix_only_and_imports_it_from_the_venv(installed):
    bin_dir, site, env, work = installed
    probe = (
        "import importlib.util as u, ssmix, ssmix.detection.train, ssmix.linear_eval.run; print(ssmix.__file__); "
        "print(u.find_spec('detection'), u.find_spec('linear_eval'))"
    )
    where, generic = _run([bin_dir / "python", "-c", probe], work, env).stdout.splitlines()
    assert Path(where).resolve() == (site / "ssmix" / "__init__.py").resolve()
    assert generic == "None None"  # no top-level detection / linear_eval package
    assert (site / "ssmix" / "configs" / "mocov2_samix_c.yaml").is_file()
    assert (site / "ssmix" / "configs" / "_base_" / "data" / "stl10.yaml").is_file()
    assert (site / "ssmix" / "detection" / "presets" / "tiny_voc_c4.yaml").is_file()


def test_ssmix_pretrain_runs_a_shipped_config_by_name_outside_the_repository(installed):
    bin_dir, site, env, work = installed
    out = work / "run"
    proc = _run([bin_dir / "ssmix-pretrain", "synthetic/mocov2", f"output_dir={out}", *TINY], work, env)
    assert f"done: 2 steps, outputs in {out}" in proc.stdout
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2]
    assert (out / "checkpoints" / "step_00000002.pt").is_file() and (out / "backbone.pth").is_file()


@pytest.mark.parametrize(
    "config, expected",
    [
        ("mocov2_samix_c", ["name: stl10", "type: samix_c"]),  # _base_ data and mix blocks inherited
        ("configs/digits/mocov2.yaml", ["name: digits", "name: mocov2"]),
    ],
)
def test_shipped_configs_resolve_with_their_bases(installed, config, expected):
    bin_dir, site, env, work = installed
    text = _run([bin_dir / "ssmix-pretrain", config, "--print-config"], work, env).stdout
    assert all(line in text for line in expected), text


def test_an_unknown_config_name_is_one_line_with_close_matches(installed):
    bin_dir, site, env, work = installed
    proc = _run([bin_dir / "ssmix-pretrain", "mocov2_samix"], work, env, ok=False)
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1 and proc.stderr.startswith(
        "error: config file not found: 'mocov2_samix'"
    )
    assert "mocov2_samix_c" in proc.stderr and "mocov2_samix_i" in proc.stderr


@pytest.mark.parametrize(
    "command, expected",
    [
        ("ssmix-linear-eval", "Linear probe and kNN of a frozen encoder"),
        ("ssmix-detect", "Presets: coco_r50_c4_2x, tiny_coco_c4"),
        ("ssmix-visualize", "Mixed-sample grids"),
    ],
)
def test_the_other_console_commands_answer_help(installed, command, expected):
    bin_dir, site, env, work = installed
    assert expected in _run([bin_dir / command, "--help"], work, env).stdout


def test_the_sdist_carries_every_shipped_config_and_module(tmp_path):
    """A source distribution (what PyPI users without a wheel build from) has the config trees that
    setup.py maps into the package and every ssmix module."""
    src = _build_inputs(tmp_path)
    _run([sys.executable, "setup.py", "-q", "sdist", "--dist-dir", tmp_path / "dist"], src, _clean_env())
    (archive,) = (tmp_path / "dist").glob("ssmix-*.tar.gz")
    with tarfile.open(archive) as tar:
        carried = {name.split("/", 1)[1] for name in tar.getnames() if "/" in name}
    wanted = {
        path.relative_to(src).as_posix()
        for path in src.rglob("*")
        if path.suffix in (".yaml", ".sbatch")
        and path.parts[len(src.parts)] in ("configs", "detection")
        or path.suffix == ".py"
        and path.parts[len(src.parts)] == "ssmix"
    }
    assert len(wanted) > 150 and "configs/digits/mocov2.yaml" in wanted
    assert sorted(wanted - carried) == []
