"""The package's shape (issues #18, #29): no import cycles, no import from a lower layer
back up (``recsys_export/_layers.py``), no private name imported across modules, no
huge modules or classes, and the ``export`` command's calls do not climb back up
(``scripts/callclimb.py``).

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
import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest

from recsys_export._layers import LAYERS, layer_of

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "recsys_export"
MAX_MODULE_LINES = 500
MAX_CLASS_LINES = 400
#: A function's lines, docstring included (a parser's option table is data, not a body).
MAX_FUNCTION_LINES = 120

# Known offenders, to be emptied (issue #18): each is split in its own branch.
LONG_MODULES_ALLOWED: set[str] = set()
LONG_CLASSES_ALLOWED: set[str] = set()
CYCLES_ALLOWED: set[frozenset[str]] = set()
#: Imports of a higher layer (importer, imported), issue #29's refactor removes them.
LAYER_VIOLATIONS_ALLOWED: set[tuple[str, str]] = set()
#: ``from recsys_export.X import _name`` in another module (importer, "X._name").
PRIVATE_IMPORTS_ALLOWED: set[tuple[str, str]] = set()
#: Climbs of the ``export`` command's calls (``scripts/callclimb.py --follow calls``):
#: 6 with the script of the issue's plan, 4 once it stopped guessing at an attribute
#: holding a callable and at file methods (issue #29's start); 0 since byom's module
#: reaches the exporters through ``export.frozen.InferenceSource`` (not duck typing).
MAX_EXPORT_CLIMBS = 0
EXPORT_ENTRY = "recsys_export.cli.export:cmd_export"


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
def test_no_module_over_500_lines() -> None:
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
def test_no_class_over_400_lines() -> None:
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


@pytest.mark.runtime_only
def test_no_function_over_120_lines() -> None:
    long = {}
    for path in _modules().values():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                size = (node.end_lineno or node.lineno) - node.lineno + 1
                if size > MAX_FUNCTION_LINES:
                    long[f"{_rel(path)}:{node.name}"] = size
    assert not long, f"functions over {MAX_FUNCTION_LINES} lines: {long}"


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    return {name: _imported(name, path, modules) for name, path in modules.items()}


@pytest.mark.runtime_only
def test_every_module_has_a_layer() -> None:
    """A new top-level module or package is placed in ``_layers.LAYERS``."""
    missing = sorted(name for name in _modules() if layer_of(name) is None)
    assert not missing, f"add to recsys_export/_layers.py LAYERS: {missing}"
    names = [n for layer in LAYERS for n in layer]
    assert len(names) == len(set(names)), "a name is in two layers"


@pytest.mark.runtime_only
def test_layer_order() -> None:
    """No module imports a module of a higher layer (lazily either)."""
    up = {
        (name, dep)
        for name, deps in _graph().items()
        for dep in deps
        if (layer_of(dep) or 0) > (layer_of(name) or 0)
    }
    new = sorted(up - LAYER_VIOLATIONS_ALLOWED)
    assert not new, f"imports of a higher layer (recsys_export/_layers.py): {new}"
    assert not LAYER_VIOLATIONS_ALLOWED - up, (
        f"gone: drop {sorted(LAYER_VIOLATIONS_ALLOWED - up)} from LAYER_VIOLATIONS_ALLOWED"
    )


@pytest.mark.runtime_only
def test_no_private_imports() -> None:
    """No module imports another module's private (``_name``) names."""
    found = set()
    for name, path in _modules().items():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if not isinstance(node, ast.ImportFrom) or node.level:
                continue
            source = node.module or ""
            if source.split(".")[0] != "recsys_export" or source == name:
                continue
            for alias in node.names:
                if alias.name.startswith("_") and not alias.name.startswith("__"):
                    found.add((name, f"{source}.{alias.name}"))
    assert not found - PRIVATE_IMPORTS_ALLOWED, (
        f"private names imported across modules: {sorted(found - PRIVATE_IMPORTS_ALLOWED)}"
    )
    assert not PRIVATE_IMPORTS_ALLOWED - found, (
        f"gone: drop {sorted(PRIVATE_IMPORTS_ALLOWED - found)} from PRIVATE_IMPORTS_ALLOWED"
    )


def _callclimb() -> ModuleType:
    spec = importlib.util.spec_from_file_location("callclimb", ROOT / "scripts" / "callclimb.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("callclimb", module)
    spec.loader.exec_module(module)
    return module


@pytest.mark.runtime_only
def test_export_call_climbs() -> None:
    """Following every call of ``export`` from the CLI climbs back up at most
    :data:`MAX_EXPORT_CLIMBS` times (a lower layer calling a higher one)."""
    result = _callclimb().run(ROOT, EXPORT_ENTRY, True, "calls")
    assert result["functions_reached"] > 100  # the walk really followed the export
    climbs = [f"{e['caller']} -> {e['callee']}" for e in result["edges"] if e["climb"]]
    assert len(climbs) <= MAX_EXPORT_CLIMBS, climbs


def test_callclimb_counts_a_climb(tmp_path: Path) -> None:
    """The measure itself: a call from a lower layer to a higher one is a climb."""
    pkg = tmp_path / "recsys_export"
    (pkg / "cli").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "_layers.py").write_text('LAYERS = (("",), ("bundle",), ("export",), ("cli",))\n')
    sources = {
        "bundle.py": "def low():\n    from recsys_export.export import high\n    high()\n",
        "export.py": "from recsys_export.bundle import low\n\n"
        "def high():\n    pass\n\ndef run():\n    low()\n",
        "cli/__init__.py": "",
        "cli/main.py": "from recsys_export.export import run\n\ndef cmd():\n    run()\n",
    }
    for rel, source in sources.items():
        (pkg / rel).write_text(source)
    result = _callclimb().run(tmp_path, "recsys_export.cli.main:cmd", True, "calls")
    assert [(e["caller"], e["callee"]) for e in result["edges"] if e["climb"]] == [
        ("recsys_export.bundle:low", "recsys_export.export:high")
    ]


#: Keys only a manifest has. Generic ones ("model", "n_users", "files", "items", ...)
#: are left out: checkpoints, plans and reports use them too; a read of those needs
#: the raw dict, which nothing outside ``recsys_export.bundle`` gets (checked below).
MANIFEST_ONLY_KEYS = frozenset(
    {
        "id_maps", "entry_points", "formats", "graphs", "kernels", "kernels_fallback",
        "variants", "programs", "torchscript", "pt2", "seen", "reference", "state_dict",
        "versions", "training", "timings", "parity", "hyperparameters", "block_users",
    }
)  # fmt: skip
#: Reads of those keys that are not the manifest's: (module, key) -> what they read.
NOT_MANIFEST_READS = {
    ("recsys_export.parity.bounds", "reference"): "the bound rule's reference (parity.json)",
    ("recsys_export.parity.run", "reference"): "the bound rule's reference (parity.json)",
    ("recsys_export.parity.verify", "variants"): "parity.json's variants (verify --record)",
}


def _key_read(node: ast.AST) -> str | None:
    """The constant key of ``X["key"]`` (a load) or ``X.get/pop/setdefault("key", ...)``."""
    if isinstance(node, ast.Subscript) and isinstance(node.ctx, ast.Load):
        key = node.slice
        return key.value if isinstance(key, ast.Constant) and isinstance(key.value, str) else None
    if (
        isinstance(node, ast.Call)
        and isinstance(node.func, ast.Attribute)
        and node.func.attr in ("get", "pop", "setdefault")
        and node.args
        and isinstance(node.args[0], ast.Constant)
        and isinstance(node.args[0].value, str)
    ):
        return node.args[0].value
    return None


@pytest.mark.runtime_only
def test_no_raw_manifest_keys() -> None:
    """Only ``recsys_export.bundle.schema`` reads manifest keys; nothing outside the bundle
    package gets at the raw JSON (``Manifest._raw``) or names ``manifest.json``."""
    bad, seen_allowed = [], set()
    for name, path in _modules().items():
        in_schema = name == "recsys_export.bundle.schema" or name.startswith(
            "recsys_export.bundle.schema."
        )
        in_bundle = name == "recsys_export.bundle" or name.startswith("recsys_export.bundle.")
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            where = f"{_rel(path)}:{getattr(node, 'lineno', 0)}"
            if not in_bundle:
                if isinstance(node, ast.Attribute) and node.attr == "_raw":
                    bad.append(f"{where} ._raw")
                if isinstance(node, ast.Constant) and node.value == "manifest.json":
                    bad.append(f"{where} 'manifest.json'")
            key = _key_read(node)
            if in_schema or key not in MANIFEST_ONLY_KEYS:
                continue
            if (name, key) in NOT_MANIFEST_READS:
                seen_allowed.add((name, key))
                continue
            bad.append(f"{where} {key!r}")
    assert not bad, f"manifest keys read outside recsys_export.bundle.schema: {bad}"
    assert seen_allowed == set(NOT_MANIFEST_READS), (
        f"gone: drop {sorted(set(NOT_MANIFEST_READS) - seen_allowed)} from NOT_MANIFEST_READS"
    )


def test_raw_key_check_finds_a_read() -> None:
    """The check itself: a subscript load and a ``.get`` of a manifest key are found."""
    tree = ast.parse("a = m['parity']\nb = m.get('formats')\nm['seen'] = 1\n")
    keys = [k for node in ast.walk(tree) if (k := _key_read(node)) in MANIFEST_ONLY_KEYS]
    assert sorted(keys) == ["formats", "parity"]
