"""The one error policy of every entry point: expected failures (bad config or input file, unusable
``output_dir``, disk full, unreadable image or checkpoint, diverged training) print one line on stderr
and exit 2; anything else is a bug and keeps its traceback (exit 1)."""

from __future__ import annotations

import argparse
import re
import sys
import warnings
from typing import Callable, Optional, Sequence, Tuple, Type

from ssmix.config import Config, ConfigError, load_config

# OSError covers missing datasets, unreadable images, permissions and a full disk; FloatingPointError a
# diverged run (ssmix.engine.finite.NonFiniteError); ImportError an optional dependency.
EXPECTED: Tuple[Type[BaseException], ...] = (ConfigError, OSError, FloatingPointError)
_WRAPPED = re.compile(r"^[\w.]+(Error|Exception|Interrupt): ")
_TORCH_ADVICE = re.compile(
    # torch's text, which suggests unsafe loading
    r"(\()?Weights only load failed.*",
    re.S,
)


_ROLE = re.compile(r":(?:mod|func|class|meth|attr|data):`~?([^`]+)`")


def plain(text: str) -> str:
    """``text`` without reStructuredText markup (double backquotes, ``:mod:`x``` roles), for ``--help``."""
    return _ROLE.sub(r"\1", text).replace("``", "")


def command_parser(
    prog: str, doc: Optional[str], usage: str, epilog: Optional[str] = None
) -> argparse.ArgumentParser:
    """The one argparse style of every ssmix command: its name, usage lines, the module docstring as the
    description (markup removed, line breaks kept) and an optional epilog."""
    return argparse.ArgumentParser(
        prog=prog,
        usage=usage,
        description=plain(doc or "").strip(),
        epilog=epilog,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )


def load_pretrain_config(path: Optional[str], overrides: Sequence[str] = ()) -> Config:
    """:func:`ssmix.config.load_config` with every built-in method and mixer registered (their packages
    fill the config registries when imported)."""
    import ssmix.methods  # noqa: F401
    import ssmix.mixers  # noqa: F401

    return load_config(path, overrides)


def one_line(exc: BaseException) -> str:
    """The message of ``exc`` on one line; a DataLoader worker's re-raised traceback becomes its last line."""
    text = str(exc)
    if "Traceback (most recent call last)" in text:
        lines = [line for line in text.splitlines() if line.strip()]
        text = _WRAPPED.sub("", lines[-1].strip()) if lines else text
    text = _TORCH_ADVICE.sub(
        lambda m: (
            "(refused by weights-only loading: it holds pickled objects)"
            if m.group(1)
            else "refused by weights-only loading: it holds pickled objects"
        ),
        text,
    )
    if isinstance(exc, OSError) and exc.filename and str(exc.filename) not in text:
        text = f"{text}: {exc.filename}"
    return " ".join(text.split()) or type(exc).__name__


def fail(exc: BaseException) -> int:
    print(f"error: {one_line(exc)}", file=sys.stderr, flush=True)
    return 2


def run_main(body: Callable[[], int], expected: Tuple[Type[BaseException], ...] = EXPECTED) -> int:
    """``body()``, with the expected errors turned into one line and exit code 2."""
    # torch's notice, not the user's problem
    warnings.filterwarnings("ignore", message="Detected pickle protocol")
    try:
        return body()
    except expected as exc:
        return fail(exc)
