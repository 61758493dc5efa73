"""The import structure of ``ssmix``: every module imports on its own, the import graph has no cycles,
and nothing imports upward (the layers: ``config`` / ``distributed`` / ``mixup`` at the bottom; models,
losses, clustering, data, methods and mixers above them; ``engine`` above those; the entry points on
top). Methods and mixers sit side by side and never import each other.

The graph is read from the source with :mod:`ast`. It holds every ``import`` of an ``ssmix`` module,
including those inside functions (a deferred import still ties the two modules together: a cycle
through one is a circle in the design, only hidden from the interpreter), except under
``if TYPE_CHECKING:``.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path
from typing import Dict, List, Optional, Set

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "ssmix"

#: (importer prefix, imported prefix): a module under the first may not import one under the second
FORBIDDEN = [
    (low, "ssmix.engine")
    for low in (
        "ssmix.methods",
        "ssmix.mixers",
        "ssmix.losses",
        "ssmix.clustering",
        "ssmix.models",
        "ssmix.data",
        "ssmix.mixup",
        "ssmix.config",
        "ssmix.distributed",
    )
]
FORBIDDEN += [
    ("ssmix.methods", "ssmix.mixers"),
    ("ssmix.mixers", "ssmix.methods"),
    ("ssmix.config", "ssmix.methods"),
    ("ssmix.config", "ssmix.mixers"),
    ("ssmix.mixup", "ssmix.methods"),
    ("ssmix.mixup", "ssmix.mixers"),
    ("ssmix.losses", "ssmix.methods"),
    ("ssmix.losses", "ssmix.mixers"),
    ("ssmix.clustering", "ssmix.methods"),
    ("ssmix.clustering", "ssmix.mixers"),
    ("ssmix.clustering", "ssmix.losses"),
    ("ssmix.visualize", "ssmix.engine"),
    ("ssmix.engine", "ssmix.visualize_mix"),
    ("ssmix.engine", "ssmix.pretrain"),
]


def module_name(path: Path, package: Path = PACKAGE) -> str:
    parts = list(path.relative_to(package.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def all_modules(package: Path = PACKAGE) -> Dict[str, Path]:
    return {module_name(p, package): p for p in sorted(package.rglob("*.py"))}


def _under(name: str, prefix: str) -> bool:
    return name == prefix or name.startswith(prefix + ".")


def _type_checking(node: ast.AST) -> bool:
    test = getattr(node, "test", None)
    return isinstance(node, ast.If) and (
        (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING")
        or (isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")
    )


def _statements(tree: ast.AST):
    """Every import statement of ``tree`` outside ``if TYPE_CHECKING:`` blocks."""
    stack = [tree]
    while stack:
        node = stack.pop()
        if _type_checking(node):
            continue
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            yield node
        stack.extend(ast.iter_child_nodes(node))


def imports_of(name: str, path: Path, modules: Dict[str, Path]) -> Set[str]:
    """The ``ssmix`` modules ``name`` imports: ``from ssmix.a import b`` counts as ``ssmix.a.b`` when that is
    a module, else as ``ssmix.a``; a relative import is resolved against ``name``'s package."""
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: Set[str] = set()
    for node in _statements(tree):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        else:
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join(anchor + ([base] if base else []))
            targets = [
                f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base for alias in node.names
            ]
        found.update(t for t in targets if t in modules and t != name)
    return found


def import_graph(package: Path = PACKAGE) -> Dict[str, Set[str]]:
    modules = all_modules(package)
    return {name: imports_of(name, path, modules) for name, path in modules.items()}


def find_cycle(graph: Dict[str, Set[str]]) -> Optional[List[str]]:
    """One cycle of ``graph`` as ``[a, b, ..., a]``, or None (iterative depth-first search)."""
    state: Dict[str, int] = {}  # 1 = on the current path, 2 = done
    for root in sorted(graph):
        if state.get(root):
            continue
        path, iters = [root], [iter(sorted(graph[root]))]
        state[root] = 1
        while path:
            nxt = next(iters[-1], None)
            if nxt is None:
                state[path.pop()] = 2
                iters.pop()
            elif state.get(nxt) == 1:
                return path[path.index(nxt) :] + [nxt]
            elif not state.get(nxt):
                state[nxt] = 1
                path.append(nxt)
                iters.append(iter(sorted(graph.get(nxt, ()))))
    return None


def upward_imports(graph: Dict[str, Set[str]]) -> List[str]:
    return sorted(
        f"{a} imports {b}"
        for a, targets in graph.items()
        for b in targets
        for low, high in FORBIDDEN
        if _under(a, low) and _under(b, high)
    )


# -- the checker itself ------------------------------------------------------------------------------


def test_find_cycle_reports_a_cycle_and_accepts_a_dag():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b", "c"}, "b": {"c"}, "c": set()}) is None


def test_graph_reads_deferred_and_from_imports_and_skips_type_checking(tmp_path):
    pkg = tmp_path / "ssmix"
    (pkg / "sub").mkdir(parents=True)
    for rel in ("__init__.py", "sub/__init__.py", "sub/leaf.py", "top.py"):
        (pkg / rel).write_text("")
    (pkg / "top.py").write_text(
        "from typing import TYPE_CHECKING\nfrom ssmix.sub import leaf\n"
        "if TYPE_CHECKING:\n    import ssmix.sub\n"
        "def f():\n    from .sub.leaf import x\n"
    )
    (pkg / "sub" / "leaf.py").write_text("def g():\n    import ssmix.top\n")
    graph = import_graph(pkg)
    assert graph["ssmix.top"] == {"ssmix.sub.leaf"}
    assert graph["ssmix.sub.leaf"] == {"ssmix.top"}
    assert find_cycle(graph) == ["ssmix.sub.leaf", "ssmix.top", "ssmix.sub.leaf"]
    assert upward_imports({"ssmix.methods.x": {"ssmix.engine.y", "ssmix.models.z"}}) == [
        "ssmix.methods.x imports ssmix.engine.y"
    ]


# -- the package --------------------------------------------------------------------------------------


def test_the_ssmix_import_graph_has_no_cycle():
    cycle = find_cycle(import_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_no_module_imports_upward():
    assert upward_imports(import_graph()) == []


def test_no_module_imports_a_private_name_of_another():
    private = []
    for name, path in all_modules().items():
        for node in _statements(ast.parse(path.read_text(encoding="utf-8"))):
            if (
                isinstance(node, ast.ImportFrom)
                and (node.module or "").startswith("ssmix")
                and node.module != name
            ):
                private += [f"{name}: {node.module}.{a.name}" for a in node.names if a.name.startswith("_")]
    assert private == []


def test_config_does_not_import_methods_or_mixers():
    assert not {
        m for m in import_graph()["ssmix.config"] if _under(m, "ssmix.methods") or _under(m, "ssmix.mixers")
    }


#: One interpreter imports the third-party libraries once, then forks a child per module that imports
#: that module alone (no ``ssmix`` module is loaded before the fork), and reports the failures.
ISOLATED_IMPORTS = r"""
import os, sys, traceback
import numpy, torch, torchvision, yaml, PIL.Image, lightly  # noqa: F401  (shared, loaded once)
failures = []
for name in sys.argv[1:]:
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(read)
        code = 0
        try:
            __import__(name)
        except BaseException:
            os.write(write, traceback.format_exc().strip().splitlines()[-1].encode())
            code = 1
        os.close(write)
        os._exit(code)
    os.close(write)
    message = os.read(read, 4096).decode()
    os.close(read)
    if os.waitpid(pid, 0)[1]:
        failures.append(f"{name}: {message}")
print("\\n".join(failures))
sys.exit(1 if failures else 0)
"""


def test_every_module_imports_alone():
    assert "ssmix" not in ISOLATED_IMPORTS.split("failures = []")[0]
    out = subprocess.run(
        [sys.executable, "-c", ISOLATED_IMPORTS, *sorted(all_modules())],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert out.returncode == 0, out.stdout + out.stderr[-2000:]


@pytest.mark.parametrize("name", ["ssmix.pretrain", "ssmix.visualize_mix"])
def test_entry_points_expose_main(name):
    out = subprocess.run(
        [sys.executable, "-c", f"import {name} as m; print(callable(m.main))"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.stdout.strip() == "True", out.stderr
