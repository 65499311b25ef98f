"""The package's shape (issue #18): no import cycles, no huge modules or classes.

Read with :mod:`ast` only (nothing is imported), so it runs anywhere, the runtime-only
install included. An import counts wherever it stands (module level or inside a
function: a lazy import still ties two modules together), except under
``if TYPE_CHECKING:``.

The allow-lists name what is known to break a rule today, in modules other work is
still splitting. They must shrink to empty; a stale entry (a rule no longer broken)
fails, so an entry goes as soon as its module is fixed.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "recsys_export"
MAX_MODULE_LINES = 700
MAX_CLASS_LINES = 450

# Known offenders, to be emptied (issue #18): each is split in its own branch.
LONG_MODULES_ALLOWED: set[str] = set()
LONG_CLASSES_ALLOWED: set[str] = set()
CYCLES_ALLOWED: set[frozenset[str]] = set()


def _modules() -> dict[str, Path]:
    """Dotted module name -> file, for every module of the package."""
    out = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = path
    return out


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _imported(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """The package's modules that module ``name`` imports (outside TYPE_CHECKING)."""
    found: set[str] = set()

    def add(dotted: str) -> None:
        while dotted and dotted not in modules:
            dotted = dotted.rpartition(".")[0]
        if dotted and dotted != name:
            found.add(dotted)

    def visit(node: ast.AST) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and _is_type_checking(child):
                for stmt in child.orelse:
                    visit_one(stmt)
                continue
            visit_one(child)

    def visit_one(node: ast.AST) -> None:
        if isinstance(node, ast.Import):
            for alias in node.names:
                add(alias.name)
        elif isinstance(node, ast.ImportFrom):
            source = node.module or ""
            if node.level:
                base = name if path.name == "__init__.py" else name.rpartition(".")[0]
                for _ in range(node.level - 1):
                    base = base.rpartition(".")[0]
                source = f"{base}.{source}" if source else base
            for alias in node.names:
                # ``from pkg import submodule`` imports the submodule
                add(f"{source}.{alias.name}" if f"{source}.{alias.name}" in modules else source)
        visit(node)

    visit(ast.parse(path.read_text(encoding="utf-8")))
    return found


def _cycles(graph: dict[str, set[str]]) -> list[frozenset[str]]:
    """Strongly connected components of more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[frozenset[str]] = []
    for root in graph:
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = set()
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.add(member)
                    if member == node:
                        break
                if len(component) > 1:
                    out.append(frozenset(component))
    return out


def _rel(path: Path) -> str:
    return path.relative_to(PACKAGE.parent).as_posix()


@pytest.mark.runtime_only
def test_no_import_cycles() -> None:
    modules = _modules()
    graph = {name: _imported(name, path, modules) for name, path in modules.items()}
    cycles = set(_cycles(graph))
    assert not cycles - CYCLES_ALLOWED, f"import cycles: {[sorted(c) for c in cycles]}"
    assert not CYCLES_ALLOWED - cycles, "a cycle is gone: drop it from CYCLES_ALLOWED"


def test_cycle_finder_finds_a_lazy_cycle() -> None:
    """The check itself: a cycle through a function-level import is found."""
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [frozenset({"a", "b", "c"})]
    assert _cycles({"a": {"b"}, "b": set()}) == []


@pytest.mark.runtime_only
def test_no_module_over_700_lines() -> None:
    long = {
        _rel(path): n
        for path in _modules().values()
        if (n := len(path.read_text(encoding="utf-8").splitlines())) > MAX_MODULE_LINES
    }
    assert not set(long) - LONG_MODULES_ALLOWED, f"modules over {MAX_MODULE_LINES} lines: {long}"
    assert not LONG_MODULES_ALLOWED - set(long), (
        f"now at most {MAX_MODULE_LINES} lines: drop "
        f"{sorted(LONG_MODULES_ALLOWED - set(long))} from LONG_MODULES_ALLOWED"
    )


@pytest.mark.runtime_only
def test_no_class_over_450_lines() -> None:
    long = {}
    for path in _modules().values():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ClassDef):
                size = (node.end_lineno or node.lineno) - node.lineno + 1
                if size > MAX_CLASS_LINES:
                    long[f"{_rel(path)}:{node.name}"] = size
    assert not set(long) - LONG_CLASSES_ALLOWED, f"classes over {MAX_CLASS_LINES} lines: {long}"
    assert not LONG_CLASSES_ALLOWED - set(long), (
        f"now at most {MAX_CLASS_LINES} lines: drop "
        f"{sorted(LONG_CLASSES_ALLOWED - set(long))} from LONG_CLASSES_ALLOWED"
    )
