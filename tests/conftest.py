import os
import signal
import sys

import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import ssmix.methods  # noqa: E402,F401  (fills the method registries that configs are checked against)
import ssmix.mixers  # noqa: E402,F401  (and the mixer registries)

# Tests use tiny tensors: one thread avoids OpenMP overhead (and thrashing on a shared machine).
torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    yield


#: what an interactive shell gives a process: the tests of preemption signals assume it, and the children
#: they spawn inherit it, however the suite was launched (``nohup`` ignores SIGHUP, ``cmd &`` SIGINT)
DEFAULT_SIGNAL_ACTIONS = {
    signal.SIGINT: signal.default_int_handler,
    signal.SIGTERM: signal.SIG_DFL,
    signal.SIGHUP: signal.SIG_DFL,
}


@pytest.fixture(autouse=True)
def _default_signal_actions():
    previous = {sig: signal.signal(sig, action) for sig, action in DEFAULT_SIGNAL_ACTIONS.items()}
    yield
    for sig, action in previous.items():
        signal.signal(sig, action)


def pytest_configure(config):
    config.addinivalue_line(
        "markers", "cuda: needs a CUDA GPU (skipped without one; `make bench-gpu` runs them)"
    )
    config.addinivalue_line(
        "markers", "install: installs the repository (non-editable) into a fresh virtualenv"
    )


#: the longest test file (minutes: a real pre-training run) goes first, so that under ``-n`` (pytest-xdist,
#: ``make test``) the other worker runs the rest of the suite beside it instead of after it
RUN_FIRST = "test_learning.py"


def pytest_collection_modifyitems(config, items):
    items.sort(key=lambda item: item.path.name != RUN_FIRST)  # stable: collection order otherwise
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="no CUDA device (run `make bench-gpu` on a GPU machine)")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)
