"""Citations in code, configs and READMEs point inside the repository, to a heading of a ``docs/*.md``.

The patterns below are written so that this file does not match them itself (``[_]``, ``\\s+``).
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Dict, Iterator, List, Set, Tuple

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
SKIP_DIRS = {"__pycache__", "build", "dist", "runs", "data", "logs", "venv"}
TEXT_SUFFIXES = (".py", ".yaml", ".yml", ".md")

#: citations of documents that are not in the repository (the old private spec and notes)
FORBIDDEN = re.compile(
    r"\b[Ss]pec(?:\s+sections?)?[\s-]+\d|ecosystem\s+notes|detection[_]notes"
    r"|shared[/]docs|samix[_]spec"
)
#: the shorthand of the old detection notes, only meaningful in the detection code
DETECTION_SHORTHAND = re.compile(r"\bnotes(?:\s+section)?\s+\d")
DOC_NAME = re.compile(r"docs/([\w-]+\.md)")
SECTION = re.compile(r"§(\d+(?:\.\d+)?)(?:-§?(\d+(?:\.\d+)?))?")
HEADING = re.compile(r"^#{1,6}\s+(\d+(?:\.\d+)*)[.\s]", re.MULTILINE)
FENCED = re.compile(r"^```.*?^```", re.MULTILINE | re.DOTALL)


def cited_files(root: Path = ROOT) -> Iterator[Path]:
    """Every .py/.yaml/.md file and Makefile of the repository outside docs/, hidden and output folders."""
    for dirpath, dirnames, filenames in os.walk(root):
        top = Path(dirpath) == root
        dirnames[:] = [
            d
            for d in dirnames
            if not d.startswith(".")
            and d not in SKIP_DIRS
            and not d.endswith(".egg-info")
            and not (top and d == "docs")
        ]
        for name in filenames:
            if name.endswith(TEXT_SUFFIXES) or name == "Makefile":
                yield Path(dirpath) / name


def forbidden_citations(text: str, rel: str) -> List[Tuple[int, str]]:
    """(line, matched text) of each citation of a document outside the repository."""
    hits = [(m.start(), m.group(0)) for m in FORBIDDEN.finditer(text)]
    if rel.startswith(("detection/", "ssmix/detection/")):
        hits += [(m.start(), m.group(0)) for m in DETECTION_SHORTHAND.finditer(text)]
    return sorted((text.count("\n", 0, pos) + 1, hit.replace("\n", " ")) for pos, hit in hits)


def section_numbers(markdown: str) -> Set[str]:
    """Section numbers of the headings: '## 5. ODC' -> '5', '### 2.1 One step' -> '2.1'."""
    return set(HEADING.findall(FENCED.sub("", markdown)))


def unresolved_sections(text: str, docs: Dict[str, Set[str]]) -> List[Tuple[int, str]]:
    """(line, citation) of each §N on a line after ``docs/<file>.md`` whose file or heading is missing.

    Every § after a doc name on the same line refers to that doc ('docs/algorithm.md §4.2, §5.5'); a §
    on a line without a doc name (a paper's section) is not checked.
    """
    bad = []
    for lineno, line in enumerate(text.splitlines(), 1):
        names = list(DOC_NAME.finditer(line))
        for sec in SECTION.finditer(line):
            before = [n for n in names if n.end() <= sec.start()]
            if not before:
                continue
            doc = before[-1].group(1)
            if any(n is not None and n not in docs.get(doc, ()) for n in sec.groups()):
                bad.append((lineno, f"docs/{doc} {sec.group(0)}"))
    return bad


def _docs() -> Dict[str, Set[str]]:
    return {p.name: section_numbers(p.read_text(encoding="utf-8")) for p in DOCS.glob("*.md")}


def test_no_citation_points_outside_the_repository():
    found = []
    for path in cited_files():
        rel = path.relative_to(ROOT).as_posix()
        found += [
            f"{rel}:{line}: {hit}"
            for line, hit in forbidden_citations(path.read_text(encoding="utf-8", errors="replace"), rel)
        ]
    assert not found, "cite docs/algorithm.md or docs/detection.md instead:\n" + "\n".join(found)


def test_every_docs_section_citation_resolves_to_a_heading():
    docs = _docs()
    assert {"algorithm.md", "detection.md"} <= set(docs)
    bad, cited = [], 0
    for path in cited_files():
        text = path.read_text(encoding="utf-8", errors="replace")
        cited += len(DOC_NAME.findall(text))
        bad += [
            f"{path.relative_to(ROOT).as_posix()}:{line}: {c}" for line, c in unresolved_sections(text, docs)
        ]
    assert cited > 100  # the scan really reads the sources
    assert not bad, "no such file or heading in docs/:\n" + "\n".join(bad)


def test_scanners_catch_what_they_must():
    spec, notes, alg = "spec", "notes", "docs/algorithm.md"  # split so that this file passes its own scan
    text = (
        f"x ({spec} 4.2)\ny = 1  # Spec\n  2.1 step 3\nz  # ecosystem {notes} 3.1, detection_{notes}.md 1.6\n"
    )
    assert [line for line, _ in forbidden_citations(text, "ssmix/a.py")] == [1, 2, 4, 4]
    assert forbidden_citations(f"the {notes} 1.2 here", "ssmix/a.py") == []
    assert forbidden_citations(f"the {notes} 1.2 here", "detection/a.py") == [(1, f"{notes} 1")]
    assert forbidden_citations(f"{spec} = ModelSpec(3)\nbuild({spec}, 3)", "detection/a.py") == []
    docs = {
        "algorithm.md": section_numbers(
            "# T\n## 4. L\n### 4.2 C\n```\n# 8 GPUs\n```\n### 5.5 H\n## 9. S\n## 11. D\n"
        )
    }
    assert docs["algorithm.md"] == {"4", "4.2", "5.5", "9", "11"}
    ok = f"a ({alg} §4.2, §5.5) b\nc {alg} §9 and §11\nMoCo v1 §7.7\n"
    assert unresolved_sections(ok, docs) == []
    assert unresolved_sections(f"{alg} §4.2-4.3 step 3.1", docs) == [(1, f"{alg} §4.2-4.3")]
    assert unresolved_sections(f"x\n{alg} §4.2, §12", docs) == [(2, f"{alg} §12")]
    missing = "docs/" + "missing.md §1"  # built, so that this file passes its own scan
    assert unresolved_sections(f"see {missing}", docs) == [(1, missing)]
    assert unresolved_sections("written to docs/results.md by the benchmark", docs) == []
