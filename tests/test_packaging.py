"""setup.py: exactly one faiss package per install choice (they all provide the `faiss` module)."""
import os
import runpy
from unittest import mock

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _setup_kwargs():
    with mock.patch("setuptools.setup") as setup:
        cwd = os.getcwd()
        os.chdir(ROOT)
        try:
            runpy.run_path(os.path.join(ROOT, "setup.py"))
        finally:
            os.chdir(cwd)
    return setup.call_args.kwargs


def _faiss(requirements):
    return [r for r in requirements if r.lower().startswith("faiss")]


def test_each_install_choice_gets_one_faiss_package():
    kwargs = _setup_kwargs()
    extras = kwargs["extras_require"]
    assert _faiss(kwargs["install_requires"]) == []
    assert len(_faiss(extras["cpu"])) == 1 and _faiss(extras["cpu"])[0].startswith("faiss-cpu")
    assert len(_faiss(extras["gpu"])) == 1 and _faiss(extras["gpu"])[0].startswith("faiss-gpu")
    for name in ("test", "detection"):
        assert _faiss(extras[name]) == [], name  # combinable with either choice
    makefile = open(os.path.join(ROOT, "Makefile"), encoding="utf-8").read()
    assert "EXTRAS ?= cpu,test" in makefile and "-e '.[$(EXTRAS)]'" in makefile
