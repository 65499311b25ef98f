#!/usr/bin/env python3
"""Follow a command's calls through recsys_export and count module re-entries and climbs.

Issue 29 measures the layout by "following the ``export`` command's arguments from the
CLI": how often the walk enters a module it has already been in ("re-entries") and how
often a call goes from a lower layer up to a higher one ("climbs"). This script makes
that number reproducible: it reads the package with :mod:`ast` only (nothing is
imported, torch is not needed, it runs on any checkout) and

1. indexes every module: top-level functions, classes (methods, bases, properties),
   imports at module level and inside functions (a lazy import is followed too), the
   lazy ``_NAMES`` tables of packages such as ``recsys_export.export``;
2. starts at ``--entry`` (default ``recsys_export.cli.export:cmd_export``) and walks
   the static call graph depth-first, in source order, expanding each function once;
3. resolves a call ``f(...)``, ``mod.f(...)``, ``Class(...)`` (-> ``__init__``,
   ``__post_init__``), ``Class.m(...)``, ``self.m(...)``, ``obj.m(...)`` where ``obj``'s
   class is known from an annotation, an assignment ``obj = Class(...)`` /
   ``Class.load(...)`` / ``f(...) -> Class`` or ``self.obj = ...`` in the class,
   properties read on such objects, and ``with X(...)`` (``__enter__``/``__exit__``).
   A method called on an object of unknown class is followed only when exactly one
   class of the package defines that method name (such edges are marked ``~``; pass
   ``--no-guess`` to drop them);
4. counts, over the distinct (caller, callee) edges of the walk that cross modules:
   ``re-entries``: the callee's module was already visited earlier in the walk;
   (``sideways``: of those, the ones into a module of the caller's own layer, the
   ping-pong between sibling modules such as ``export.build`` / ``export.formats``);
   ``climbs``: the callee's layer is above the caller's (layers below: bottom 0 to
   top 12: the checkout's own table, ``recsys_export/_layers.py``; for an older checkout
   without one, :data:`LAYERS`, the layout of issue 29 with the old modules mapped to the
   layer of the package they moved to).

Usage::

    python scripts/callclimb.py                          # this checkout, follow args
    python scripts/callclimb.py --follow calls --show climbs   # every call; list climbs
    python scripts/callclimb.py --repo ../old --entry recsys_export.cli.export:cmd_export
    python scripts/callclimb.py --json out.json

Exit status 0; with ``--max-climbs N`` it exits 1 when the walk climbs more than N
times (a check for CI or the architecture test).
"""

from __future__ import annotations

import argparse
import ast
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path

PACKAGE = "recsys_export"

#: Layer of each module, by longest matching prefix (a module maps to the layer of the
#: package it belongs to in the target layout; old names map to where they move).
LAYERS: dict[str, int] = {
    # 0 core: the leaves every layer may use
    "recsys_export": 0,
    "recsys_export.errors": 0,
    "recsys_export.core": 0,
    "recsys_export.validation": 0,
    "recsys_export.atomic": 0,
    "recsys_export.progress": 0,
    "recsys_export.ids": 0,
    "recsys_export.topk": 0,
    # 1 bundle: the format (schema, files, writer, loader)
    "recsys_export.bundle": 1,
    "recsys_export.bundle_format": 1,
    "recsys_export.bundle_writer": 1,
    "recsys_export.manifest": 1,
    # 2 torch_runtime: torch programs at run time (I/O, device, ops, the torch engine)
    "recsys_export.torch_runtime": 2,
    "recsys_export.torch_engine": 2,
    # 3 runtime: engine contract, onnxruntime engine, recommender, writers, Ray
    "recsys_export.runtime": 3,
    "recsys_export.scale": 3,
    # 4 serve: the HTTP server over the runtime
    "recsys_export.serve": 4,
    # 5 data: ratings files, splits, item names
    "recsys_export.data": 5,
    "recsys_export.items": 5,
    # 6 models: the networks, checkpoints, synthetic models
    "recsys_export.models": 6,
    "recsys_export.checkpoint": 6,
    "recsys_export.synthetic_models": 6,  # old name (S0 measure)
    # 7 training: recipes, config, objectives, fit, evaluation, baselines, experiments
    "recsys_export.training": 7,
    "recsys_export.train": 7,
    "recsys_export.objectives": 7,
    "recsys_export.history": 7,
    "recsys_export.evaluate": 7,
    "recsys_export.baselines": 7,
    "recsys_export.experiment": 7,
    "recsys_export.recipes": 7,
    # 8 parity: the plan, backends, bounds, reports, verification
    "recsys_export.parity": 8,
    "recsys_export.plan": 8,
    # 9 export: formats, kernels, variants, the bundle build
    "recsys_export.export": 9,
    # 10 byom: models trained elsewhere
    "recsys_export.byom": 10,
    # 11 bench
    "recsys_export.bench": 11,
    "recsys_export.bench.report": 11,
    "recsys_export.bench.rows": 11,
    "recsys_export.bench.timing": 11,
    "recsys_export.bench.graphs": 11,
    "recsys_export.bench.gpu": 11,
    # 12 the command line
    "recsys_export.cli": 12,
    "recsys_export.demo": 12,
}

#: Method names too common on builtins / numpy / torch objects to guess a package class.
_NO_GUESS = frozenset(
    """items keys values get append extend update pop copy join split strip read write close
    format replace add sort tolist reshape astype sum mean max min run load save to cpu
    numpy item encode decode startswith endswith lower upper setdefault index count clear
    remove insert discard result submit flush fill view clone detach eval train forward
    apply mask state_dict load_state_dict parameters named_parameters modules exists
    is_file is_dir mkdir unlink rename stat open resolve iterdir glob rglob write_bytes
    write_text read_bytes read_text fileno isatty seek tell readinto truncate""".split()
)


def use_repo_layers(repo: Path) -> None:
    """Take the layers from ``repo``'s own table (``recsys_export/_layers.py``) when it
    has one; :data:`LAYERS` (today's modules mapped to the target layout) otherwise."""
    path = repo / PACKAGE / "_layers.py"
    if not path.is_file():
        return
    namespace: dict = {}
    exec(compile(path.read_text(encoding="utf-8"), str(path), "exec"), namespace)
    LAYERS.clear()
    for rank, names in enumerate(namespace["LAYERS"]):
        for name in names:
            LAYERS[f"{PACKAGE}.{name}" if name else PACKAGE] = rank


def layer_of(module: str) -> int:
    """Layer of ``module`` (longest prefix of :data:`LAYERS`)."""
    best, rank = -1, 0
    for prefix, value in LAYERS.items():
        if (module == prefix or module.startswith(prefix + ".")) and len(prefix) > best:
            best, rank = len(prefix), value
    return rank


# ------------------------------------------------------------------------- index
@dataclass
class ClassInfo:
    module: str
    name: str
    node: ast.ClassDef
    bases: list[ast.expr]
    methods: dict[str, ast.FunctionDef] = field(default_factory=dict)
    properties: set[str] = field(default_factory=set)
    attr_types: dict[str, tuple[str, str]] = field(default_factory=dict)  # self.x -> class


@dataclass
class ModuleInfo:
    name: str
    path: Path
    is_pkg: bool
    tree: ast.Module
    functions: dict[str, ast.FunctionDef] = field(default_factory=dict)
    classes: dict[str, ClassInfo] = field(default_factory=dict)
    imports: dict[str, tuple[str, str | None]] = field(default_factory=dict)  # alias -> (mod, name)
    lazy: dict[str, str] = field(default_factory=dict)  # name -> submodule (``_NAMES``)
    assigned: set[str] = field(default_factory=set)  # other top-level names


FuncKey = tuple[str, str]  # (module, "func" or "Class.method")


class Index:
    def __init__(self, repo: Path) -> None:
        self.root = repo / PACKAGE
        self.modules: dict[str, ModuleInfo] = {}
        for path in sorted(self.root.rglob("*.py")):
            parts = list(path.relative_to(repo).with_suffix("").parts)
            is_pkg = parts[-1] == "__init__"
            if is_pkg:
                parts.pop()
            name = ".".join(parts)
            tree = ast.parse(path.read_text(encoding="utf-8"))
            self.modules[name] = ModuleInfo(name, path, is_pkg, tree)
        for info in self.modules.values():
            self._index(info)
        self.method_owners: dict[str, list[ClassInfo]] = {}
        for info in self.modules.values():
            for cls in info.classes.values():
                for meth in cls.methods:
                    self.method_owners.setdefault(meth, []).append(cls)
        for info in self.modules.values():
            for cls in info.classes.values():
                self._attr_types(cls)
        self.subclasses: dict[tuple[str, str], list[ClassInfo]] = {}
        for info in self.modules.values():
            for cls in info.classes.values():
                for base in self.class_chain(cls)[1:]:
                    self.subclasses.setdefault((base.module, base.name), []).append(cls)

    def overrides(self, owner: ClassInfo, name: str) -> list[ClassInfo]:
        """Package subclasses of ``owner`` that define ``name`` (virtual dispatch)."""
        return [c for c in self.subclasses.get((owner.module, owner.name), []) if name in c.methods]

    # -- indexing
    def _abs(self, info: ModuleInfo, node: ast.ImportFrom) -> str:
        if not node.level:
            return node.module or ""
        base = info.name if info.is_pkg else info.name.rpartition(".")[0]
        for _ in range(node.level - 1):
            base = base.rpartition(".")[0]
        return f"{base}.{node.module}" if node.module else base

    def _record_import(self, info: ModuleInfo, node: ast.AST, into: dict) -> None:
        if isinstance(node, ast.Import):
            for a in node.names:
                if a.asname:
                    into[a.asname] = (a.name, None)
                else:
                    into[a.name.split(".")[0]] = (a.name.split(".")[0], None)
        elif isinstance(node, ast.ImportFrom):
            src = self._abs(info, node)
            for a in node.names:
                into[a.asname or a.name] = (src, a.name)

    def _index(self, info: ModuleInfo) -> None:
        for node in info.tree.body:
            self._index_stmt(info, node)

    def _index_stmt(self, info: ModuleInfo, node: ast.stmt) -> None:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            info.functions[node.name] = node  # type: ignore[assignment]
        elif isinstance(node, ast.ClassDef):
            cls = ClassInfo(info.name, node.name, node, list(node.bases))
            for item in node.body:
                if isinstance(item, (ast.FunctionDef, ast.AsyncFunctionDef)):
                    cls.methods[item.name] = item  # type: ignore[assignment]
                    for dec in item.decorator_list:
                        if isinstance(dec, ast.Name) and dec.id in ("property", "cached_property"):
                            cls.properties.add(item.name)
            info.classes[node.name] = cls
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            self._record_import(info, node, info.imports)
        elif isinstance(node, ast.If):  # TYPE_CHECKING, try/except ImportError bodies
            for sub in node.body + node.orelse:
                self._index_stmt(info, sub)
        elif isinstance(node, ast.Try):
            for sub in node.body:
                self._index_stmt(info, sub)
        elif isinstance(node, (ast.Assign, ast.AnnAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            for t in targets:
                if isinstance(t, ast.Name):
                    info.assigned.add(t.id)
                    if t.id == "_NAMES" and isinstance(node.value, ast.Dict):
                        for k, v in zip(node.value.keys, node.value.values, strict=False):
                            if isinstance(k, ast.Constant) and isinstance(v, ast.Tuple):
                                for elt in v.elts:
                                    if isinstance(elt, ast.Constant):
                                        info.lazy[elt.value] = f"{info.name}.{k.value}"

    # -- resolution: a name in a module -> ("func", key) | ("class", ClassInfo) | ("module", name)
    def resolve_attr(self, module: str, name: str, depth: int = 0):  # noqa: C901
        if depth > 12:
            return None
        info = self.modules.get(module)
        if info is None:
            return None
        if name in info.functions:
            return ("func", (module, name))
        if name in info.classes:
            return ("class", info.classes[name])
        if name in info.imports:
            src, orig = info.imports[name]
            return self._resolve_import(src, orig, depth + 1)
        if name in info.lazy:
            return self.resolve_attr(info.lazy[name], name, depth + 1)
        sub = f"{module}.{name}"
        if sub in self.modules:
            return ("module", sub)
        return None

    def _resolve_import(self, src: str, orig: str | None, depth: int = 0):
        if orig is None:  # import x.y as z
            return ("module", src) if src in self.modules else None
        if src in self.modules:
            found = self.resolve_attr(src, orig, depth)
            if found is not None:
                return found
        full = f"{src}.{orig}"
        if full in self.modules:
            return ("module", full)
        return None

    def resolve_name(self, module: str, name: str, local_imports: dict):
        if name in local_imports:
            src, orig = local_imports[name]
            return self._resolve_import(src, orig)
        return self.resolve_attr(module, name)

    def class_chain(self, cls: ClassInfo) -> list[ClassInfo]:
        """``cls`` and its package base classes (MRO-ish, depth first)."""
        out, todo, seen = [], [cls], set()
        while todo:
            c = todo.pop(0)
            if (c.module, c.name) in seen:
                continue
            seen.add((c.module, c.name))
            out.append(c)
            for base in c.bases:
                r = self.resolve_expr_static(c.module, base, {})
                if r and r[0] == "class":
                    todo.append(r[1])
        return out

    def find_method(self, cls: ClassInfo, name: str) -> tuple[ClassInfo, str] | None:
        for c in self.class_chain(cls):
            if name in c.methods:
                return c, name
        return None

    def resolve_expr_static(self, module: str, expr: ast.expr, local_imports: dict):
        """Resolve ``Name`` / ``a.b.c`` to a package object (no local variables)."""
        if isinstance(expr, ast.Name):
            return self.resolve_name(module, expr.id, local_imports)
        if isinstance(expr, ast.Attribute):
            base = self.resolve_expr_static(module, expr.value, local_imports)
            if base is None:
                return None
            if base[0] == "module":
                return self.resolve_attr(base[1], expr.attr)
            if base[0] == "class":
                m = self.find_method(base[1], expr.attr)
                if m:
                    return ("method", m)
        return None

    def annotation_class(self, module: str, ann: ast.expr | None, local_imports: dict):
        """The package class an annotation names (``X``, ``X | None``, ``"X"``)."""
        if ann is None:
            return None
        if isinstance(ann, ast.Constant) and isinstance(ann.value, str):
            try:
                ann = ast.parse(ann.value, mode="eval").body
            except SyntaxError:
                return None
        if isinstance(ann, ast.BinOp):
            return self.annotation_class(module, ann.left, local_imports) or self.annotation_class(
                module, ann.right, local_imports
            )
        if isinstance(ann, ast.Subscript):  # Optional[X], list[X], dict[str, X]: X
            inner = ann.slice
            elts = inner.elts if isinstance(inner, ast.Tuple) else [inner]
            for elt in reversed(elts):
                found = self.annotation_class(module, elt, local_imports)
                if found is not None:
                    return found
            return None
        r = self.resolve_expr_static(module, ann, local_imports)
        return r[1] if r and r[0] == "class" else None

    def _attr_types(self, cls: ClassInfo) -> None:
        """``self.x = param`` (annotated) or ``self.x = Class(...)`` in the class's methods."""
        for meth in cls.methods.values():
            params = {
                a.arg: self.annotation_class(cls.module, a.annotation, {})
                for a in meth.args.args + meth.args.kwonlyargs
            }
            local: dict = {}
            for sub in ast.walk(meth):  # lazy imports of the method
                if isinstance(sub, (ast.Import, ast.ImportFrom)):
                    self._record_import(self.modules[cls.module], sub, local)
            for node in ast.walk(meth):
                if not isinstance(node, (ast.Assign, ast.AnnAssign)) or node.value is None:
                    continue
                targets = node.targets if isinstance(node, ast.Assign) else [node.target]
                pairs: list[tuple[ast.expr, ast.expr | None]] = []
                for t in targets:
                    if isinstance(t, ast.Tuple) and isinstance(node.value, ast.Tuple):
                        pairs += list(zip(t.elts, node.value.elts, strict=False))
                    else:
                        pairs.append((t, node.value))
                for t, v in pairs:
                    if not (
                        isinstance(t, ast.Attribute)
                        and isinstance(t.value, ast.Name)
                        and t.value.id == "self"
                    ):
                        continue
                    typ = None
                    if isinstance(node, ast.AnnAssign):
                        typ = self.annotation_class(cls.module, node.annotation, local)
                    if typ is None and isinstance(v, ast.Name) and params.get(v.id):
                        typ = params[v.id]
                    elif typ is None and isinstance(v, ast.Call):
                        r = self.resolve_expr_static(cls.module, v.func, local)
                        if r and r[0] == "class":
                            typ = r[1]
                        elif r and r[0] == "method":
                            owner, mname = r[1]
                            ret = owner.methods[mname].returns
                            label = getattr(ret, "id", None) or getattr(ret, "value", None)
                            typ = (
                                owner
                                if label == owner.name
                                else self.annotation_class(owner.module, ret, {})
                            )
                    if typ is not None:
                        cls.attr_types.setdefault(t.attr, (typ.module, typ.name))


# ------------------------------------------------------------------------- walk
@dataclass
class Edge:
    caller: FuncKey
    callee: FuncKey
    guess: bool
    reentry: bool
    climb: bool
    line: int


ALL = None  # taint marker: follow every call (``--follow calls``)


def _names(expr: ast.AST | None) -> set[str]:
    return {n.id for n in ast.walk(expr) if isinstance(n, ast.Name)} if expr is not None else set()


class Walker:
    """Depth-first walk of the static call graph from one function.

    ``follow="args"``: a call is followed only when an argument (or the object a method
    is called on) carries a value derived from the entry's parameters; ``"calls"``:
    every call is followed.
    """

    def __init__(self, index: Index, guess: bool = True, follow: str = "args") -> None:
        self.ix = index
        self.guess = guess
        self.follow = follow
        self.expanded: set[FuncKey] = set()
        self.visited_modules: list[str] = []
        self.edges: list[Edge] = []
        self.seen_edges: set[tuple[FuncKey, FuncKey]] = set()

    def node_of(self, key: FuncKey) -> tuple[ast.FunctionDef, ClassInfo | None] | None:
        module, qual = key
        info = self.ix.modules.get(module)
        if info is None:
            return None
        if "." in qual:
            cname, meth = qual.split(".", 1)
            cls = info.classes.get(cname)
            if cls is None or meth not in cls.methods:
                return None
            return cls.methods[meth], cls
        fn = info.functions.get(qual)
        return (fn, None) if fn is not None else None

    def walk(self, key: FuncKey, tainted: set[str] | None = ALL) -> None:
        if key in self.expanded:
            return
        self.expanded.add(key)
        if not self.visited_modules or self.visited_modules[-1] != key[0]:
            self.visited_modules.append(key[0])
        got = self.node_of(key)
        if got is None:
            return
        fn, cls = got
        for callee, guessed, line, callee_taint in self.calls(key, fn, cls, tainted):
            self.step(key, callee, guessed, line)
            self.walk(callee, callee_taint)

    def step(self, caller: FuncKey, callee: FuncKey, guessed: bool, line: int) -> None:
        if (caller, callee) in self.seen_edges:
            return
        self.seen_edges.add((caller, callee))
        if caller[0] == callee[0]:
            return
        reentry = callee[0] in self.visited_modules
        climb = layer_of(callee[0]) > layer_of(caller[0])
        self.edges.append(Edge(caller, callee, guessed, reentry, climb, line))

    # -- taint inside one function
    def _tainted_names(self, fn: ast.FunctionDef, tainted: set[str] | None) -> set[str] | None:
        if tainted is ALL:
            return ALL
        names = set(tainted)
        for _ in range(2):  # loops: a second pass picks up names tainted later
            for node in ast.walk(fn):
                if isinstance(node, (ast.Assign, ast.AnnAssign, ast.AugAssign)):
                    value = node.value
                    targets = node.targets if isinstance(node, ast.Assign) else [node.target]
                    if value is not None and _names(value) & names:
                        for t in targets:
                            names |= {n.id for n in ast.walk(t) if isinstance(n, ast.Name)}
                elif isinstance(node, (ast.For, ast.comprehension)):
                    if _names(node.iter) & names:
                        names |= _names(node.target)
                elif isinstance(node, ast.withitem) and node.optional_vars is not None:
                    if _names(node.context_expr) & names:
                        names |= _names(node.optional_vars)
                elif isinstance(node, ast.NamedExpr) and _names(node.value) & names:
                    names.add(node.target.id)
        return names

    def _params(self, key: FuncKey) -> list[str]:
        got = self.node_of(key)
        if got is None:
            return []
        fn, _ = got
        return [a.arg for a in fn.args.posonlyargs + fn.args.args + fn.args.kwonlyargs]

    def _callee_taint(
        self,
        callee: FuncKey,
        call: ast.Call | None,
        names: set[str] | None,
        receiver: bool,
        bound: bool,
    ) -> set[str] | None:
        """Parameters of ``callee`` that receive tainted values at ``call``."""
        if names is ALL:
            return ALL
        params = self._params(callee)
        out: set[str] = set()
        if receiver and params:
            out.add(params[0])  # self
        if call is None:
            return out
        positional = params[1:] if bound and params else params
        for i, arg in enumerate(call.args):
            if isinstance(arg, ast.Starred):
                if _names(arg) & names:
                    return set(params)
                continue
            if _names(arg) & names and i < len(positional):
                out.add(positional[i])
        for kw in call.keywords:
            if _names(kw.value) & names:
                if kw.arg is None:
                    return set(params)
                out.add(kw.arg)
        return out

    # -- calls of one function, in source order
    def calls(self, key, fn, cls, tainted):  # noqa: C901
        module = key[0]
        ix = self.ix
        names = self._tainted_names(fn, tainted)
        is_classmethod = any(
            isinstance(d, ast.Name) and d.id == "classmethod" for d in fn.decorator_list
        )
        local_imports: dict = {}
        types: dict[str, ClassInfo] = {}
        if cls is not None:
            types["self"] = cls
            if is_classmethod:
                types["cls"] = cls
        for a in fn.args.args + fn.args.kwonlyargs + fn.args.posonlyargs:
            t = ix.annotation_class(module, a.annotation, {})
            if t is not None:
                types[a.arg] = t
        for node in ast.walk(fn):  # lazy imports anywhere in the function
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                ix._record_import(ix.modules[module], node, local_imports)
        for node in ast.walk(fn):  # local variable types
            if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
                t = ix.annotation_class(module, node.annotation, local_imports)
                if t is not None:
                    types[node.target.id] = t
            if isinstance(node, ast.Assign) and isinstance(node.value, ast.Call):
                t = self.call_type(module, node.value, local_imports, types, cls, is_classmethod)
                if t is not None:
                    for target in node.targets:
                        if isinstance(target, ast.Name):
                            types[target.id] = t
            if isinstance(node, ast.withitem) and node.optional_vars is not None:
                if isinstance(node.context_expr, ast.Call) and isinstance(
                    node.optional_vars, ast.Name
                ):
                    t = self.call_type(
                        module, node.context_expr, local_imports, types, cls, is_classmethod
                    )
                    if t is not None:
                        types[node.optional_vars.id] = t

        for node in ast.walk(fn):  # for x in objs / objs.items() / objs.values()
            if isinstance(node, (ast.For, ast.comprehension)):
                it = node.iter
                if (
                    isinstance(it, ast.Call)
                    and isinstance(it.func, ast.Attribute)
                    and it.func.attr in ("items", "values")
                ):
                    it = it.func.value
                t = self.expr_class(module, it, local_imports, types, cls, is_classmethod)
                target = node.target
                if isinstance(target, ast.Tuple) and target.elts:
                    target = target.elts[-1]
                if t is not None and isinstance(target, ast.Name):
                    types.setdefault(target.id, t)

        out: list = []

        def carries(expr: ast.AST | None) -> bool:
            return names is ALL or bool(_names(expr) & names)

        def add(target: FuncKey, guessed: bool, line: int, call, receiver: bool, bound: bool):
            if target == key:
                return
            out.append(
                (target, guessed, line, self._callee_taint(target, call, names, receiver, bound))
            )

        def dispatch(owner: ClassInfo, meth: str, line, call, receiver, guessed=False):
            found = ix.find_method(owner, meth)
            if found:
                add(
                    (found[0].module, f"{found[0].name}.{meth}"),
                    guessed,
                    line,
                    call,
                    receiver,
                    True,
                )
            for sub in ix.overrides(owner, meth):
                add((sub.module, f"{sub.name}.{meth}"), guessed, line, call, receiver, True)

        nodes = sorted(
            (n for n in ast.walk(fn) if isinstance(n, (ast.Call, ast.Attribute, ast.With))),
            key=lambda n: (n.lineno, n.col_offset),
        )
        call_funcs = {id(n.func) for n in nodes if isinstance(n, ast.Call)}
        for node in nodes:
            if isinstance(node, ast.With):
                for item in node.items:
                    ctx = item.context_expr
                    if not isinstance(ctx, ast.Call) or not carries(ctx):
                        continue
                    t = self.call_type(module, ctx, local_imports, types, cls, is_classmethod)
                    if t is not None:
                        for special in ("__enter__", "__exit__"):
                            dispatch(t, special, node.lineno, None, True)
                continue
            if isinstance(node, ast.Attribute) and id(node) not in call_funcs:
                if not carries(node.value):
                    continue
                owner = self.expr_class(module, node.value, local_imports, types, cls)
                if owner is not None:
                    m = ix.find_method(owner, node.attr)
                    if m or ix.overrides(owner, node.attr):
                        # a property read, or a bound method handed on as a callback
                        dispatch(owner, node.attr, node.lineno, None, True)
                continue
            if not isinstance(node, ast.Call):
                continue
            func = node.func
            if (
                isinstance(func, ast.Call)
                and isinstance(func.func, ast.Name)
                and func.func.id == "getattr"
                and len(func.args) >= 2
            ):  # getattr(obj, name)(...): that method, or any public one of obj's class
                owner = self.expr_class(module, func.args[0], local_imports, types, cls)
                if owner is not None and (names is ALL or carries(node)):
                    attr = func.args[1]
                    if isinstance(attr, ast.Constant) and isinstance(attr.value, str):
                        wanted = [attr.value]
                    else:
                        wanted = sorted(
                            {m for c in ix.class_chain(owner) for m in c.methods if m[0] != "_"}
                        )
                    for meth in wanted:
                        dispatch(owner, meth, node.lineno, node, carries(func.args[0]))
                continue
            receiver = isinstance(func, ast.Attribute) and carries(func.value)
            args_carry = any(carries(a) for a in node.args) or any(
                carries(k.value) for k in node.keywords
            )
            if names is not ALL and not (receiver or args_carry):
                continue  # follow args: this call passes on nothing of the entry's
            target, guessed, via = self.callee(
                module, func, local_imports, types, cls, is_classmethod
            )
            if isinstance(target, ClassInfo):
                for special in ("__init__", "__post_init__"):
                    dispatch(target, special, node.lineno, node, False)
            elif target is not None:
                if via is not None:  # a method on an object: the subclasses' overrides too
                    dispatch(via, target[1].split(".", 1)[1], node.lineno, node, receiver, guessed)
                else:
                    bound = "." in target[1] and isinstance(func, ast.Attribute)
                    add(target, guessed, node.lineno, node, receiver, bound)
        return out

    def expr_class(self, module, expr, local_imports, types, cls, is_cm=False):
        ix = self.ix
        if isinstance(expr, ast.Name):
            return types.get(expr.id)
        if isinstance(expr, ast.Attribute):
            owner = self.expr_class(module, expr.value, local_imports, types, cls, is_cm)
            if owner is not None:
                for c in ix.class_chain(owner):
                    if expr.attr in c.attr_types:
                        mod, name = c.attr_types[expr.attr]
                        return ix.modules[mod].classes[name]
                m = ix.find_method(owner, expr.attr)
                if m and expr.attr in m[0].properties:
                    return ix.annotation_class(m[0].module, m[0].methods[expr.attr].returns, {})
        if isinstance(expr, ast.Call):
            return self.call_type(module, expr, local_imports, types, cls, is_cm)
        return None

    def call_type(self, module, call, local_imports, types, cls, is_cm=False):
        """The package class a call returns: a constructor, ``cls(...)`` in a
        classmethod, or a function/method whose return annotation names a class."""
        if isinstance(call.func, ast.Name) and call.func.id == "cls" and is_cm and cls is not None:
            return cls
        target, _, _ = self.callee(module, call.func, local_imports, types, cls, is_cm)
        if isinstance(target, ClassInfo):
            return target
        if target is None:
            return None
        got = self.node_of(target)
        if got is None:
            return None
        fn, owner = got
        ret = fn.returns
        label = getattr(ret, "id", None) or getattr(ret, "value", None)
        if owner is not None and label == owner.name:
            return owner
        return self.ix.annotation_class(target[0], ret, {})

    def callee(self, module, func, local_imports, types, cls, is_cm=False):
        """``(FuncKey | ClassInfo | None, guessed, owner class for virtual dispatch)``."""
        ix = self.ix
        if isinstance(func, ast.Name):
            if func.id == "cls" and is_cm and cls is not None:
                return cls, False, None
            r = ix.resolve_name(module, func.id, local_imports)
            if r is None or r[0] == "module":
                return None, False, None
            return r[1], False, None
        if not isinstance(func, ast.Attribute):
            return None, False, None
        r = ix.resolve_expr_static(module, func, local_imports)
        if r is not None:
            if r[0] in ("func", "class"):
                return r[1], False, None
            if r[0] == "method":
                c, name = r[1]
                return (c.module, f"{c.name}.{name}"), False, None
        owner = self.expr_class(module, func.value, local_imports, types, cls, is_cm)
        if owner is not None:
            m = ix.find_method(owner, func.attr)
            if m:
                return (m[0].module, f"{m[0].name}.{func.attr}"), False, owner
            subs = ix.overrides(owner, func.attr)
            if subs:  # declared on the subclasses only (a mixin's hook)
                return (subs[0].module, f"{subs[0].name}.{func.attr}"), False, owner
            if isinstance(func.value, ast.Name) and func.value.id == "self":
                return None, False, None  # an attribute holding a callable, not a method
            # not on the annotated class: a duck-typed object (hasattr): guess below
        if not self.guess or func.attr in _NO_GUESS or func.attr.startswith("__"):
            return None, False, None
        root = func.value
        while isinstance(root, (ast.Attribute, ast.Subscript, ast.Call)):
            root = root.func if isinstance(root, ast.Call) else root.value
        if isinstance(root, ast.Name):
            known = ix.resolve_name(module, root.id, local_imports)
            imported = root.id in local_imports or root.id in ix.modules[module].imports
            if imported and known is None:
                return None, False, None  # an external module's object (np, torch, ...)
        owners = ix.method_owners.get(func.attr, [])
        if len(owners) == 1:
            c = owners[0]
            return (c.module, f"{c.name}.{func.attr}"), True, None
        return None, False, None


def run(repo: Path, entry: str, guess: bool, follow: str = "args") -> dict:
    use_repo_layers(repo)
    ix = Index(repo)
    module, _, qual = entry.partition(":")
    if module not in ix.modules:
        raise SystemExit(f"no module {module} under {repo}")
    w = Walker(ix, guess, follow)
    key = (module, qual)
    w.walk(key, ALL if follow == "calls" else set(w._params(key)))
    edges = w.edges
    return {
        "repo": str(repo),
        "entry": entry,
        "follow": follow,
        "functions_reached": len(w.expanded),
        "modules_reached": len({k[0] for k in w.expanded}),
        "cross_module_edges": len(edges),
        "reentries": sum(e.reentry for e in edges),
        "climbs": sum(e.climb for e in edges),
        "sideways_reentries": sum(
            e.reentry and layer_of(e.callee[0]) == layer_of(e.caller[0]) for e in edges
        ),
        "guessed_edges": sum(e.guess for e in edges),
        "edges": [
            {
                "caller": f"{e.caller[0]}:{e.caller[1]}",
                "callee": f"{e.callee[0]}:{e.callee[1]}",
                "line": e.line,
                "layers": [layer_of(e.caller[0]), layer_of(e.callee[0])],
                "reentry": e.reentry,
                "climb": e.climb,
                "guess": e.guess,
            }
            for e in edges
        ],
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--repo", type=Path, default=Path("."), help="checkout holding recsys_export/")
    p.add_argument("--entry", default="recsys_export.cli.export:cmd_export")
    p.add_argument("--no-guess", action="store_true", help="follow only resolved calls")
    p.add_argument(
        "--follow",
        choices=("args", "calls"),
        default="args",
        help="args (default): only calls that pass on a value derived from the entry's "
        "arguments; calls: every call reachable from the entry",
    )
    p.add_argument("--show", choices=("climbs", "reentries", "edges"), help="list those edges")
    p.add_argument("--json", type=Path, help="write the result as JSON")
    p.add_argument("--max-climbs", type=int, help="exit 1 when the walk climbs more often")
    args = p.parse_args(argv)
    res = run(args.repo.resolve(), args.entry, not args.no_guess, args.follow)
    print(
        f"{res['entry']} (follow {res['follow']}): {res['functions_reached']} functions "
        f"in {res['modules_reached']} modules; {res['cross_module_edges']} cross-module calls "
        f"({res['guessed_edges']} by unique method name): "
        f"{res['reentries']} re-entries ({res['sideways_reentries']} within a layer), "
        f"{res['climbs']} climbs"
    )
    if args.show:
        key = {"climbs": "climb", "reentries": "reentry", "edges": None}[args.show]
        for e in res["edges"]:
            if key is None or e[key]:
                flags = ("^" if e["climb"] else " ") + ("R" if e["reentry"] else " ")
                flags += "~" if e["guess"] else " "
                lo, hi = e["layers"]
                print(f"  {flags} L{lo}->L{hi}  {e['caller']} (line {e['line']}) -> {e['callee']}")
    if args.json:
        args.json.write_text(json.dumps(res, indent=2) + "\n", encoding="utf-8")
    if args.max_climbs is not None and res["climbs"] > args.max_climbs:
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
