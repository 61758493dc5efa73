"""pyproject.toml: exactly one faiss package per install choice (they all provide the `faiss` module)."""

import os

import pytest

try:
    import tomllib
except ModuleNotFoundError:  # Python < 3.11
    tomllib = pytest.importorskip("tomli")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _project():
    with open(os.path.join(ROOT, "pyproject.toml"), "rb") as f:
        return tomllib.load(f)["project"]


def _faiss(requirements):
    return [r for r in requirements if r.lower().startswith("faiss")]


def test_each_install_choice_gets_one_faiss_package():
    project = _project()
    extras = project["optional-dependencies"]
    assert _faiss(project["dependencies"]) == []
    assert len(_faiss(extras["cpu"])) == 1 and _faiss(extras["cpu"])[0].startswith("faiss-cpu")
    assert len(_faiss(extras["gpu"])) == 1 and _faiss(extras["gpu"])[0].startswith("faiss-gpu")
    for name in ("test", "detection"):
        assert _faiss(extras[name]) == [], name  # combinable with either choice
    makefile = open(os.path.join(ROOT, "Makefile"), encoding="utf-8").read()
    assert "EXTRAS ?= cpu,test" in makefile and "-e '.[$(EXTRAS)]'" in makefile


def test_console_commands_point_at_main_functions():
    import importlib

    scripts = _project()["scripts"]
    assert set(scripts) == {
        "ssmix-pretrain",
        "ssmix-linear-eval",
        "ssmix-detect",
        "ssmix-visualize",
        "ssmix-convert",
    }
    for target in scripts.values():
        module, func = target.split(":")
        assert callable(getattr(importlib.import_module(module), func)), target
