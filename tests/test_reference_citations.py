"""Docstrings and comments cite only documents inside the repository (issue "A house of rooms", item 5).

The benchmark, spectra and ecosystem facts the code relies on live in ``docs/reference.md`` (numbered
sections ``## R<n>. ...``); code cites them as ``docs/reference.md §R<n>``. This test fails when a
.py file of the code folders cites ``shared/reference`` (the research briefs outside the repository)
or a ``*.md`` file the repository does not have, or cites a ``§R<n>`` that ``docs/reference.md``
lacks.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
REFERENCE = REPO / "docs" / "reference.md"
#: folders whose .py files may cite documents
CODE_DIRS = ("study", "trainables", "search_spaces", "benchmarks", "scripts")

_URL = re.compile(r"\b[a-z][a-z0-9+.-]*://\S+", re.IGNORECASE)
#: a file name or path ending in .md; not the tail of a longer name (``x.card.md`` suffixes, ``{stem}.md``)
_MD = re.compile(r"(?<![\w<>{}-])([\w./-]*\w\.md)\b")
_SECTION = re.compile(r"§R(\d+)")
_HEADING = re.compile(r"^## R(\d+)\. \S", re.MULTILINE)


def _py_files(dirs: tuple[str, ...]) -> list[Path]:
    out = []
    for d in dirs:
        for root, subdirs, files in os.walk(REPO / d):
            subdirs[:] = [s for s in subdirs if not s.startswith(".") and s != "__pycache__"]
            out += [Path(root) / f for f in files if f.endswith(".py")]
    return sorted(out)


def _repo_md_files() -> set[str]:
    found = set()
    for root, subdirs, files in os.walk(REPO):
        subdirs[:] = [s for s in subdirs if not s.startswith(".") and s not in ("__pycache__", "node_modules")]
        found |= {(Path(root) / f).relative_to(REPO).as_posix() for f in files if f.endswith(".md")}
    return found


def bad_citations(text: str, md_files: set[str]) -> list[str]:
    """The citations in ``text`` that point outside the repository or at a .md file it does not have."""
    bad = []
    if "shared/reference" in text:
        bad.append("shared/reference")
    for token in _MD.findall(_URL.sub(" ", text)):
        if token.startswith(".") and not token.startswith(("./", "../")):
            continue  # a suffix such as ".card.md", not a document
        rel = token.removeprefix("./")
        if rel.startswith(("/", "../")):
            bad.append(token)  # absolute or above the repository root
        elif rel not in md_files and not any(m.endswith("/" + rel) for m in md_files):
            bad.append(token)
    return bad


def reference_sections() -> set[int]:
    numbers = [int(n) for n in _HEADING.findall(REFERENCE.read_text(encoding="utf-8"))]
    assert len(numbers) == len(set(numbers)), "docs/reference.md has duplicate §R headings"
    return set(numbers)


def test_reference_doc_has_numbered_sections():
    assert REFERENCE.is_file()
    assert reference_sections(), "docs/reference.md has no '## R<n>. ' headings"


def test_code_cites_no_document_outside_the_repository():
    md_files = _repo_md_files()
    offenders = []
    for path in _py_files(CODE_DIRS):
        for lineno, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            offenders += [f"{path.relative_to(REPO)}:{lineno}: {b}" for b in bad_citations(line, md_files)]
    assert not offenders, "citations outside the repository or of missing .md files:\n" + "\n".join(offenders)


def test_cited_reference_sections_exist():
    sections = reference_sections()
    missing = []
    for path in _py_files(CODE_DIRS + ("tests",)):
        for lineno, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            missing += [f"{path.relative_to(REPO)}:{lineno}: §R{n}" for n in _SECTION.findall(line)
                        if int(n) not in sections]
    assert not missing, "cited sections absent from docs/reference.md:\n" + "\n".join(missing)


@pytest.mark.parametrize(("text", "bad"), [
    ("(``shared/reference/benchmark.md`` §4.2)", ["shared/reference", "shared/reference/benchmark.md"]),
    ("(benchmark.md §4.4)", ["benchmark.md"]),
    ("see ../shared/design.md", ["../shared/design.md"]),
    ("see /work/notes.md", ["/work/notes.md"]),
    ("(docs/reference.md §R3), design.md §6, docs/performance.md, README.md", []),
    ('``.card.json`` and ``.card.md``; base.name + ".card.md"; ``<ckpt>.md``', []),
    ("https://github.com/nickstheisen/hyperseg/blob/main/README_old.md", []),
])
def test_scanner(text, bad):
    md = {"README.md", "docs/reference.md", "docs/design.md", "docs/performance.md"}
    assert bad_citations(text, md) == bad
