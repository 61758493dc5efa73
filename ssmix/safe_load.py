"""The one loader of files a user passes in: ``torch.load(weights_only=True)`` plus a short allow-list.

A weights-only load rebuilds tensors, numbers, strings and containers and refuses every other pickled
object, so a planted ``__reduce__`` payload never runs. The allow-list adds types that ordinary
checkpoints hold and that cannot run code: ``argparse.Namespace`` (the ``args`` of torchvision reference
checkpoints). Anything else needs an explicit opt-in (``trust_pickle=True``, the ``--trust-pickle`` /
``model.trust_pickle=true`` switches), which runs the file's code and is for files you made yourself.
Failures raise one-line :class:`UnreadableFileError` / :class:`UnsafePickleError` (both
:class:`~ssmix.config.ConfigError`), whose messages never recommend unsafe loading.
"""

from __future__ import annotations

import argparse
import pickle
import re
import warnings
from typing import Any

import torch

from ssmix.config import ConfigError

SAFE_GLOBALS = [argparse.Namespace]


class UnreadableFileError(ConfigError):
    """A file that is missing, truncated or not a torch checkpoint; ``reason`` is the short cause."""

    def __init__(self, message: str, reason: str = "") -> None:
        super().__init__(message)
        self.reason = reason or message


class UnsafePickleError(UnreadableFileError):
    """A file whose loading would construct arbitrary objects (and could run code)."""


def _refused_global(message: str) -> str:
    """The global a weights-only load refused (``os.system``), or "" for other failures."""
    match = re.search(r"GLOBAL ([\w.]+)", message)
    return match.group(1) if match else ""


def safe_torch_load(path: str, what: str = "file", trust_pickle: bool = False, opt_in: str = "") -> Any:
    """``torch.load`` of ``path`` on the CPU, weights-only unless ``trust_pickle``.

    ``what`` names the option the file came from (``resume``, ``weights``...) in error messages;
    ``opt_in`` names the switch that sets ``trust_pickle`` where the entry point has one."""
    try:
        if trust_pickle:
            return torch.load(path, map_location="cpu", weights_only=False)
        with torch.serialization.safe_globals(SAFE_GLOBALS), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch's pickle-protocol notice
            return torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise UnreadableFileError(f"{what}: '{path}' does not exist") from None
    except IsADirectoryError:
        raise UnreadableFileError(f"{what}: '{path}' is a directory, expected a checkpoint file") from None
    except pickle.UnpicklingError as exc:
        name = _refused_global(str(exc))
        if trust_pickle or not name:
            reason = (
                "not a torch.save file of tensors and containers"
                if "Weights only" in str(exc)
                else _short(exc)
            )
            raise UnreadableFileError(
                f"{what}: '{path}' is truncated or not a torch checkpoint ({reason})", reason
            ) from None
        raise UnsafePickleError(
            f"{what}: '{path}' holds a pickled {name}; refused, since loading it could run code from the file "
            "(only tensors, numbers, strings and containers are read); re-save the weights as a plain state "
            "dict" + (f", or, only for a file you made yourself, pass {opt_in}" if opt_in else "")
        ) from None
    except Exception as exc:  # noqa: BLE001 - truncated zip, foreign format, bad tensor storage
        reason = f"{type(exc).__name__}: {_short(exc)}"
        raise UnreadableFileError(
            f"{what}: '{path}' is truncated or not a torch checkpoint ({reason})", reason
        ) from None


def _short(exc: BaseException) -> str:
    """The first sentence of an exception message, on one line."""
    text = " ".join(str(exc).split())
    return text.split(". ")[0][:200]


# What a detectron2 weights .pkl pickles: dicts, lists, strings, numbers and numpy arrays / scalars.
_ARRAY_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"),
    ("numpy._core.multiarray", "scalar"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
}


class _ArrayUnpickler(pickle.Unpickler):
    """Rebuilds containers and numpy arrays only; any other global is refused, so no code runs."""

    def find_class(self, module: str, name: str):
        if (module, name) in _ARRAY_GLOBALS:
            return super().find_class(module, name)
        raise UnsafePickleError(f"holds a pickled {module}.{name}; refused, since loading it could run code")


def safe_pickle_load(path: str, what: str = "file") -> Any:
    """``pickle.load`` of ``path`` restricted to containers and numpy arrays (a detectron2 ``.pkl``)."""
    try:
        with open(path, "rb") as f:
            return _ArrayUnpickler(f, encoding="latin1").load()
    except UnsafePickleError as exc:
        raise UnsafePickleError(f"{what}: '{path}' {exc}") from None
    except (OSError, pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError) as exc:
        raise UnreadableFileError(f"{what}: '{path}' is not a readable pickle ({_short(exc)})") from None
