"""No function in ``ssmix/`` is longer than 60 lines (from ``def`` to its last line, decorators excluded), so each
reads on one screen (issue 22). Read from the source with :mod:`ast`."""

from __future__ import annotations

import ast
from pathlib import Path
from typing import List

PACKAGE = Path(__file__).resolve().parents[1] / "ssmix"
MAX_LINES = 60


def long_functions(package: Path = PACKAGE, limit: int = MAX_LINES) -> List[str]:
    """``path:line name (N lines)`` of every function or method that spans more than ``limit`` lines."""
    found = []
    for path in sorted(package.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                span = node.end_lineno - node.lineno + 1
                if span > limit:
                    found.append(
                        f"{path.relative_to(package.parent)}:{node.lineno} {node.name} ({span} lines)"
                    )
    return found


def test_no_function_in_the_package_is_over_60_lines():
    offenders = long_functions()
    assert not offenders, "functions over 60 lines:\n" + "\n".join(offenders)


def test_the_length_check_sees_a_long_function(tmp_path):
    (tmp_path / "ssmix").mkdir()
    body = "\n".join(f"    x{i} = {i}" for i in range(60))  # def + 60 = 61 lines
    (tmp_path / "ssmix" / "m.py").write_text(f"@staticmethod\ndef f():\n{body}\n\n\ndef g():\n    pass\n")
    assert long_functions(tmp_path / "ssmix") == ["ssmix/m.py:2 f (61 lines)"]
