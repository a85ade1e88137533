"""The house rules of the code, checked on its source with ``ast`` (nothing is imported).

Why a test: import circles and reaches into another module's ``_private`` names are how a
layout decays; both are cheap to see in the syntax tree and expensive to untangle later.
Every import counts, including those inside functions and under ``TYPE_CHECKING``.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("study", "trainables", "search_spaces")
#: modules allowed directly in study/ (entry points and the ground floor); docs/design.md §2 lists their roles
MAX_TOP_LEVEL = 12


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _modules() -> dict[str, Path]:
    found = {}
    for pkg in PACKAGES:
        for path in (ROOT / pkg).rglob("*.py"):
            found[_module_name(path)] = path
    return found


def _is_package(name: str, modules: dict[str, Path]) -> bool:
    return modules[name].name == "__init__.py"


def _imports(name: str, path: Path, modules: dict[str, Path]) -> list[tuple[str, str | None, int]]:
    """(imported module, imported name or None, line) for every import in the file."""
    tree = ast.parse(path.read_text(), filename=str(path))
    out: list[tuple[str, str | None, int]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(a.name, None, node.lineno) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                pkg = name if _is_package(name, modules) else name.rpartition(".")[0]
                for _ in range(node.level - 1):
                    pkg = pkg.rpartition(".")[0]
                base = f"{pkg}.{base}" if base else pkg
            for a in node.names:
                sub = f"{base}.{a.name}"
                if sub in modules:  # `from pkg import module`
                    out.append((sub, None, node.lineno))
                else:
                    out.append((base, a.name, node.lineno))
    return [(m, n, line) for m, n, line in out if m.split(".")[0] in PACKAGES]


def import_graph() -> dict[str, set[str]]:
    """Module -> the project modules it imports (a package's face counts as the package module)."""
    modules = _modules()
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        targets = set()
        for mod, _, _ in _imports(name, path, modules):
            while mod not in modules and "." in mod:
                mod = mod.rpartition(".")[0]
            if mod in modules and mod != name:
                targets.add(mod)
        graph[name] = targets
    return graph


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Every strongly connected component with more than one module (Tarjan), as sorted lists."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []
    counter = [0]

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_find_cycles_sees_a_circle_and_a_clean_chain() -> None:
    assert find_cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert find_cycles({"a": {"b"}, "b": {"c"}, "c": set()}) == []


def test_no_import_cycles() -> None:
    cycles = find_cycles(import_graph())
    assert not cycles, "import circles (every import counts, TYPE_CHECKING too): " + "; ".join(
        " <-> ".join(c) for c in cycles)


def test_no_module_imports_another_modules_private_names() -> None:
    modules = _modules()
    bad = []
    for name, path in modules.items():
        for mod, imported, line in _imports(name, path, modules):
            if imported and imported.startswith("_") and not re.fullmatch(r"__\w+__", imported) and mod != name:
                bad.append(f"{path.relative_to(ROOT)}:{line}: {imported} from {mod}")
    assert not bad, "private names imported across modules:\n" + "\n".join(bad)


def test_tests_and_benchmarks_import_no_private_names() -> None:
    modules = _modules()
    bad = []
    for folder in ("tests", "benchmarks"):
        for path in (ROOT / folder).rglob("*.py"):
            for mod, imported, line in _imports(_module_name(path), path, modules):
                if imported and imported.startswith("_") and not re.fullmatch(r"__\w+__", imported):
                    bad.append(f"{path.relative_to(ROOT)}:{line}: {imported} from {mod}")
    assert not bad, "private names imported by tests / benchmarks:\n" + "\n".join(bad)


def test_study_has_few_top_level_modules() -> None:
    top = sorted(p.name for p in (ROOT / "study").glob("*.py"))
    assert len(top) <= MAX_TOP_LEVEL, f"{len(top)} modules directly in study/ (at most {MAX_TOP_LEVEL}): {top}"


@pytest.mark.parametrize("pkg", sorted(p.parent.name for p in (ROOT / "study").glob("*/__init__.py")))
def test_every_role_package_has_a_face(pkg: str) -> None:
    """Each role package says what it is for and exports its public names in one place (``__all__``)."""
    init = ROOT / "study" / pkg / "__init__.py"
    tree = ast.parse(init.read_text())
    assert ast.get_docstring(tree), f"study/{pkg}/__init__.py: no docstring saying what the package is for"
    assert any(isinstance(n, ast.Assign) and any(getattr(t, "id", "") == "__all__" for t in n.targets)
               for n in tree.body), f"study/{pkg}/__init__.py: no __all__ (its public names)"
