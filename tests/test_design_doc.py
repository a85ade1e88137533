"""docs/design.md's concept table stays true: every row names files that exist and definitions in them.

Why: the table is the map a newcomer follows ("where does X live?"); a file moved or a function
renamed without the map following would send them to nothing. Checked with ``ast`` (nothing imported).
"""

from __future__ import annotations

import ast
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DESIGN = ROOT / "docs" / "design.md"
#: `path/to/file.py` or `path/to/file.py: Name, Other` inside backticks
_PLACE = re.compile(r"`((?:study|trainables|search_spaces|tests|benchmarks)/[\w/]+\.py)(?::\s*([^`]+))?`")


def concept_rows() -> list[tuple[str, str]]:
    """(concept, the-one-place cell) of every row of §3's table."""
    text = DESIGN.read_text()
    section = text[text.index("## 3. Where each concept lives"):text.index("## 4.")]
    rows = []
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 3 and cells[0] not in ("concept", "---") and not set(cells[0]) <= {"-"}:
            rows.append((cells[0], cells[1]))
    return rows


def definitions(path: Path) -> set[str]:
    """Top-level functions, classes and assigned names of a module, plus ``Class.method`` for methods."""
    names: set[str] = set()
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            names.add(node.name)
            if isinstance(node, ast.ClassDef):
                names |= {f"{node.name}.{m.name}" for m in node.body if isinstance(m, ast.FunctionDef)}
        elif isinstance(node, ast.Assign):
            names |= {t.id for t in node.targets if isinstance(t, ast.Name)}
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            names.add(node.target.id)
    return names


def problems() -> list[str]:
    out = []
    rows = concept_rows()
    if len(rows) < 10:
        out.append(f"§3 has {len(rows)} rows: the table was not found or not parsed")
    for concept, place in rows:
        found = _PLACE.findall(place)
        if not found:
            out.append(f"{concept!r}: names no file")
        for rel, names in found:
            path = ROOT / rel
            if not path.is_file():
                out.append(f"{concept!r}: {rel} does not exist")
                continue
            have = definitions(path)
            for name in filter(None, (n.strip() for n in (names or "").split(","))):
                if name not in have:
                    out.append(f"{concept!r}: {rel} defines no {name}")
    return out


def test_every_concept_row_names_existing_files_and_definitions() -> None:
    bad = problems()
    assert not bad, "docs/design.md §3 is out of date:\n" + "\n".join(bad)


def test_the_check_notices_a_wrong_row(tmp_path: Path, monkeypatch) -> None:
    """The check can fail: a row naming a missing definition and one naming a missing file are reported."""
    fake = tmp_path / "design.md"
    fake.write_text("## 3. Where each concept lives\n\n| concept | the one place | who reads it |\n|---|---|---|\n"
                    + "".join(f"| c{i} | `study/hashing.py: json_digest` | x |\n" for i in range(10))
                    + "| gone | `study/hashing.py: no_such_function` | x |\n"
                    + "| moved | `study/nowhere.py` | x |\n\n## 4.\n")
    monkeypatch.setattr(sys.modules[__name__], "DESIGN", fake)
    assert problems() == ["'gone': study/hashing.py defines no no_such_function",
                          "'moved': study/nowhere.py does not exist"]
