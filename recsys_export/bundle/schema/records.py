"""The manifest's other sections, typed: the model, the entry points, the seen items,
the library versions, training, timings and the recorded parity check (with its plan).

Each is a frozen dataclass with ``parse`` (raising :class:`ValueError` with what is
wrong; :class:`~.manifest.Manifest` names the bundle and the section) and ``to_dict``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from recsys_export.bundle.schema.contract import at_least
from recsys_export.core.defaults import GENERIC_KIND

__all__ = [
    "EntryPoint",
    "ModelSection",
    "ParityRow",
    "ParitySummary",
    "Port",
    "SeenSection",
    "Timings",
    "TrainingSection",
    "Versions",
    "describe_plan",
]


def _mapping(value: Any) -> dict[str, Any]:
    return dict(value) if isinstance(value, Mapping) else {}


@dataclass(frozen=True)
class ModelSection:
    """``model``: what was exported.

    Attributes
    ----------
    kind : str
        ``"mf"``, ``"densenet"`` or ``"generic"`` (``byom``'s pair-by-pair modules).
    n_users, n_items : int
        Sizes.
    hyperparameters : dict
        Constructor arguments (``generic``: what the export recorded).
    """

    kind: str
    n_users: int
    n_items: int
    hyperparameters: Mapping[str, Any] = field(default_factory=dict)

    @classmethod
    def parse(cls, entry: Any) -> ModelSection:
        if not (
            isinstance(entry, Mapping)
            and isinstance(entry.get("kind"), str)
            and isinstance(entry.get("hyperparameters"), Mapping)
            and all(at_least(entry.get(k), 1) is not None for k in ("n_users", "n_items"))
        ):
            raise ValueError(
                "has no valid 'model' entry (kind, hyperparameters, n_users, n_items); the "
                "manifest is corrupted, export it again"
            )
        return cls(
            entry["kind"], entry["n_users"], entry["n_items"], dict(entry["hyperparameters"])
        )

    @property
    def is_generic(self) -> bool:
        """A module exported pair by pair (``recsys_export.byom``): no eager reference
        to rebuild from the bundle."""
        return self.kind == GENERIC_KIND

    @property
    def hidden(self) -> int:
        """DenseNet's hidden width (0 when the model has none)."""
        return at_least(self.hyperparameters.get("hidden"), 1) or 0

    @property
    def block_users(self) -> int | None:
        """A generic module's users per call, sized by its export (None: not recorded)."""
        return at_least(self.hyperparameters.get("block_users"), 1)

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "hyperparameters": dict(self.hyperparameters),
            "n_users": self.n_users,
            "n_items": self.n_items,
        }


@dataclass(frozen=True)
class Port:
    """One input or output of an entry point."""

    name: str
    dtype: str
    shape: tuple[Any, ...]


@dataclass(frozen=True)
class EntryPoint:
    """``entry_points.<name>``: the documented signature of an entry point."""

    doc: str
    inputs: tuple[Port, ...]
    outputs: tuple[Port, ...]

    @classmethod
    def parse(cls, entry: Any) -> EntryPoint:
        def ports(value: Any) -> tuple[Port, ...]:
            if not isinstance(value, list):
                raise ValueError("'entry_points' lists inputs and outputs")
            return tuple(
                Port(str(p.get("name")), str(p.get("dtype")), tuple(p.get("shape") or ()))
                for p in value
                if isinstance(p, Mapping)
            )

        if not isinstance(entry, Mapping):
            raise ValueError("'entry_points' holds one object per entry point")
        return cls(
            str(entry.get("doc", "")), ports(entry.get("inputs")), ports(entry.get("outputs"))
        )


@dataclass(frozen=True)
class SeenSection:
    """``seen``: the seen-items CSR's two ``.npy`` files."""

    indptr: str
    items: str

    @classmethod
    def parse(cls, entry: Any) -> SeenSection | None:
        if isinstance(entry, Mapping) and "indptr" in entry and "items" in entry:
            return cls(entry["indptr"], entry["items"])
        return None

    def to_dict(self) -> dict[str, Any]:
        return {"indptr": self.indptr, "items": self.items}


@dataclass(frozen=True)
class Versions:
    """``versions``: the libraries the bundle was written and verified with."""

    recsys_export: str | None = None
    torch: str | None = None
    onnx: str | None = None
    onnxruntime: str | None = None
    numpy: str | None = None

    @classmethod
    def parse(cls, entry: Any) -> Versions:
        known = _mapping(entry)
        return cls(
            **{k: str(known[k]) for k in cls.__dataclass_fields__ if known.get(k) is not None}
        )

    def to_dict(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}


@dataclass(frozen=True)
class TrainingSection:
    """``training``: the config, test metrics and data description of the checkpoint."""

    config: Mapping[str, Any] = field(default_factory=dict)
    metrics: Mapping[str, Any] = field(default_factory=dict)
    data: Mapping[str, Any] = field(default_factory=dict)

    @classmethod
    def parse(cls, entry: Any) -> TrainingSection:
        known = _mapping(entry)
        return cls(
            _mapping(known.get("config")),
            _mapping(known.get("metrics")),
            _mapping(known.get("data")),
        )

    def to_dict(self) -> dict[str, Any]:
        return {"config": dict(self.config), "metrics": dict(self.metrics), "data": dict(self.data)}


@dataclass(frozen=True)
class Timings:
    """``timings``: seconds each format took to export."""

    export_seconds: Mapping[str, float] = field(default_factory=dict)

    @classmethod
    def parse(cls, entry: Any) -> Timings:
        seconds = _mapping(_mapping(entry).get("export_seconds"))
        return cls({k: float(v) for k, v in seconds.items() if isinstance(v, (int, float))})

    def to_dict(self) -> dict[str, Any]:
        return {"export_seconds": {k: round(v, 3) for k, v in self.export_seconds.items()}}


@dataclass(frozen=True)
class ParityRow:
    """One (format, entry point) row of a recorded parity check: its worst error over
    its bound (``max_ratio``, the error model) or, in summaries recorded before the
    error model, its ``max_rel_diff``."""

    format: str
    entry_point: str
    passed: bool
    max_abs_diff: float | None = None
    max_ratio: float | None = None
    max_rel_diff: float | None = None

    @classmethod
    def parse(cls, row: Any) -> ParityRow:
        row = _mapping(row)
        return cls(
            str(row.get("format")),
            str(row.get("entry_point")),
            bool(row.get("passed")),
            row.get("max_abs_diff"),
            row.get("max_ratio"),
            row.get("max_rel_diff"),
        )

    def describe(self) -> str:
        if self.max_ratio is not None or self.max_rel_diff is None:
            ratio = self.max_ratio
            shown = f"err/bound {ratio:.3g}" if ratio is not None else "err/bound inf"
        else:
            shown = f"max rel {self.max_rel_diff:.2e}"
        diff = f"{self.max_abs_diff:.2e}" if self.max_abs_diff is not None else "inf"
        return (
            f"  {self.format:<12} {self.entry_point:<10} max abs {diff}  {shown}  "
            f"{'PASS' if self.passed else 'FAIL'}"
        )


@dataclass(frozen=True)
class ParitySummary:
    """``parity``: the summary of the parity check recorded with the bundle (the full
    report is the bundle's ``parity.json``).

    Attributes
    ----------
    passed : bool
    tolerance : str or None
        The rule in words (None in summaries recorded before the error model).
    atol, rtol : float or None
        Explicit tolerances (None under the float32 error model).
    max_abs_diff, max_ratio : float or None
        Worst absolute difference and worst error / bound ratio.
    seconds : float or None
        How long the check took.
    rows : tuple of ParityRow
    notes : tuple of str
        What the export did about a failing fast path.
    plan : dict or None
        The verification plan (:func:`describe_plan`).
    raw : dict
        The summary as recorded (``to_dict``).
    """

    passed: bool
    tolerance: str | None
    atol: float | None
    rtol: float | None
    max_abs_diff: float | None
    max_ratio: float | None
    seconds: float | None
    rows: tuple[ParityRow, ...]
    notes: tuple[str, ...]
    plan: Mapping[str, Any] | None
    raw: Mapping[str, Any] = field(repr=False)

    @classmethod
    def parse(cls, entry: Mapping[str, Any]) -> ParitySummary:
        rows = entry.get("rows")
        plan = entry.get("plan")
        return cls(
            passed=bool(entry.get("passed")),
            tolerance=entry.get("tolerance"),
            atol=entry.get("atol"),
            rtol=entry.get("rtol"),
            max_abs_diff=entry.get("max_abs_diff"),
            max_ratio=entry.get("max_ratio"),
            seconds=entry.get("seconds"),
            rows=tuple(ParityRow.parse(r) for r in rows) if isinstance(rows, list) else (),
            notes=tuple(str(n) for n in entry.get("notes") or ()),
            plan=dict(plan) if isinstance(plan, Mapping) else None,
            raw=dict(entry),
        )

    def to_dict(self) -> dict[str, Any]:
        return dict(self.raw)

    def failed(self) -> list[str]:
        """``format:entry_point`` of every failed row."""
        return [f"{r.format}:{r.entry_point}" for r in self.rows if not r.passed]

    def describe(self, details: bool = True) -> list[str]:
        """Lines describing the summary (``export``, ``inspect``); ``details`` adds one
        line per format x entry point. Under the float32 error model a row shows its
        worst ``error / bound`` (<= 1 passes); summaries recorded before it show their
        max rel diff."""
        rule = self.tolerance
        if rule is None:  # written before the error model
            rule = f"atol {self.atol or 0:g}, rtol {self.rtol or 0:g}"
        head = f"parity: {'PASS' if self.passed else 'FAIL'} ({rule})"
        if self.max_ratio is not None:
            head += f", worst err/bound {self.max_ratio:.3g}"
        elif self.max_abs_diff is not None:
            head += f", max abs diff {self.max_abs_diff:.2e}"
        lines = [head]
        if details:
            lines.extend(row.describe() for row in self.rows)
        lines.extend(self.notes)
        if self.plan:
            lines.append(describe_plan(self.plan))
        return lines


def describe_plan(plan: Mapping[str, Any]) -> str:
    """A one-line description of a recorded verification plan (the ``plan`` of a
    parity summary, :meth:`recsys_export.parity.plan.ParityPlan.to_dict`)."""
    n_u, n_i = plan["n_users"], plan["n_items"]
    if plan["mode"] == "full":
        head = f"full matrix: {n_u:,} users x {n_i:,} items = {plan['matrix_pairs']:,} pairs"
        head += (
            " (--full)" if plan.get("forced_full") else f" (within budget {plan['budget_pairs']:,})"
        )
    else:
        r = plan["edge_users"]
        cost = plan.get("pair_cost", 1)
        per = f" / pair cost {cost}" if cost > 1 else ""
        head = (
            f"sample: {plan['users']:,} of {n_u:,} users x {n_i:,} items = "
            f"{plan['matrix_pairs']:,} pairs ({plan['fraction']:.2%} of the matrix; budget "
            f"{plan['budget_pairs']:,}{per}, seed {plan['seed']}; edges: first, last, "
            f"{len(r['most_active'])} most / {len(r['least_active'])} least active, "
            f"{len(r['no_seen'])} with no seen items; {r['random']:,} random)"
        )
    pairs = "every pair" if plan["score_exhaustive"] else f"{plan['score_pairs']:,} random pairs"
    ks = ", ".join(str(k) for k in plan["recommend_k"])
    return (
        f"plan: {head}; score: {pairs}; recommend k in {{{ks}}} "
        f"(k={plan['recommend_k'][-1]} on {plan['sort_users']:,} users)"
    )
