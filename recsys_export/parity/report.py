"""Parity statistics: per-case comparisons against a bound, the pass rule and the report.

Every value is judged by ``|actual - ref64| <= bound`` (:mod:`.bounds`: what float32
rounding allows for that value, or ``atol + rtol * |ref64|`` when tolerances are given).
A comparison keeps the worst ``error / bound`` ratio (a pass is a ratio <= 1), the
error and bound where it occurred, the largest abs difference and its histogram.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from recsys_export.errors import ConfigError, ParityError
from recsys_export.plan import describe_plan

#: Bin edges of the abs-diff histogram: exact 0, then decades up to 1 and beyond.
HIST_EDGES = [0.0, 1e-7, 1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1, 1.0]
HIST_LABELS = ["0", "<1e-7", "<1e-6", "<1e-5", "<1e-4", "<1e-3", "<1e-2", "<1e-1", "<1", ">=1"]
#: ``parity.json``'s schema: 2 judges values by a per-value bound (``max_ratio``).
SCHEMA = "recsys-export-parity/2"
#: The row of checks on the reference itself (its scores must be finite).
REFERENCE_ROW = "reference"
#: Values compared at a time (bounds the comparison's float64 temporaries: ~24 MB).
CHUNK_VALUES = 1 << 20


def json_safe(obj: Any) -> Any:
    """``obj`` with every non-finite float replaced by None (JSON has no NaN/Infinity;
    the counts ``n_nonfinite`` and the ``problems`` say what was not finite)."""
    if isinstance(obj, dict):
        return {k: json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    if isinstance(obj, (float, np.floating)):
        return float(obj) if math.isfinite(obj) else None
    return obj


def check_tolerances(atol: float | None, rtol: float | None) -> None:
    """Refuse tolerances that are negative, NaN or infinite (:class:`ConfigError`);
    None (the error model) is accepted."""
    for name, value in (("atol", atol), ("rtol", rtol)):
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, (int, float, np.floating)):
            raise ConfigError(f"{name} must be a number, got {value!r}")
        if not (np.isfinite(value) and value >= 0):
            raise ConfigError(f"{name} must be a finite number >= 0, got {value!r}")


@dataclass
class Comparison:
    """Aggregated differences of one (format, entry point, case)."""

    format: str
    entry_point: str
    case: str
    n_values: int = 0
    max_abs_diff: float = 0.0
    #: worst ``|actual - ref64| / bound`` (<= 1 passes)
    max_ratio: float = 0.0
    #: the error, bound and reference value where ``max_ratio`` occurred
    worst_error: float = 0.0
    worst_bound: float = 0.0
    worst_reference: float = 0.0
    #: range of the bounds used
    min_bound: float = math.inf
    max_bound: float = 0.0
    n_out_of_bound: int = 0
    #: outputs that are NaN or infinite where the reference is not
    n_nonfinite: int = 0
    histogram: list[int] = field(default_factory=lambda: [0] * len(HIST_LABELS))
    shape_ok: bool = True
    dtype_ok: bool = True
    topk_users: int = 0
    topk_agree: int = 0
    problems: list[str] = field(default_factory=list)

    @property
    def topk_agreement(self) -> float | None:
        return self.topk_agree / self.topk_users if self.topk_users else None

    @property
    def passed(self) -> bool:
        return (
            self.shape_ok
            and self.dtype_ok
            and self.n_out_of_bound == 0
            and self.topk_agree == self.topk_users
            and not self.problems
        )

    def add_values(
        self,
        expected: np.ndarray,
        bound: np.ndarray,
        actual: np.ndarray,
        dtype: Any = np.float32,
    ) -> None:
        """Fold one case's values into the statistics, :data:`CHUNK_VALUES` at a time.

        Parameters
        ----------
        expected, bound : np.ndarray
            Reference values (float64) and their bounds, same shape.
        actual : np.ndarray
            The backend's output; its shape must be ``expected``'s and its dtype
            ``dtype`` (the contract's float32).
        """
        if expected.shape != actual.shape:
            self.shape_ok = False
            self.problems.append(f"shape {actual.shape} != expected {expected.shape}")
            return
        if actual.dtype != np.dtype(dtype):
            self.dtype_ok = False
            self.problems.append(f"dtype {actual.dtype} != expected {np.dtype(dtype)}")
        e, b, a = (np.ravel(x) for x in (expected, bound, actual))
        self.n_values += e.size
        for s in range(0, e.size, CHUNK_VALUES):
            sl = slice(s, s + CHUNK_VALUES)
            self._add_chunk(e[sl], b[sl], a[sl], s)

    def _add_chunk(self, e: np.ndarray, bound: np.ndarray, a: np.ndarray, offset: int) -> None:
        if not e.size:
            return
        b = bound.astype(np.float64)
        diff = a.astype(np.float64)  # a copy, made the difference in place
        with np.errstate(invalid="ignore"):  # inf - inf: handled below
            np.subtract(diff, e, out=diff)
        np.abs(diff, out=diff)
        if not np.isfinite(diff).all():
            self._non_finite(np.asarray(e, dtype=np.float64), a, diff, offset)
        dmax = float(diff.max())
        self.max_abs_diff = max(self.max_abs_diff, dmax)
        self.min_bound = min(self.min_bound, float(b.min()))
        self.max_bound = max(self.max_bound, float(b.max()))
        self.n_out_of_bound += int(np.count_nonzero(diff > b))
        with np.errstate(divide="ignore", invalid="ignore"):
            np.divide(diff, b, out=b)  # the ratios, in the bounds' copy
        b[diff == 0] = 0.0  # 0 / 0: an exact value under a zero bound
        j = int(np.argmax(b))
        if b[j] > self.max_ratio or self.worst_bound == 0.0:
            self.max_ratio = max(self.max_ratio, float(b[j]))
            self.worst_error, self.worst_bound = float(diff[j]), float(bound[j])
            self.worst_reference = float(e[j])
        del b
        # histogram by decade from cumulative counts (edges above the max cost nothing)
        below = [int(np.count_nonzero(diff == 0))]
        for edge in HIST_EDGES[1:]:
            below.append(int(np.count_nonzero(diff < edge)) if edge <= dmax else diff.size)
        below.append(diff.size)
        for k in range(len(HIST_LABELS)):
            self.histogram[k] += below[k] - (below[k - 1] if k else 0)

    def _non_finite(self, e: np.ndarray, a: np.ndarray, diff: np.ndarray, offset: int = 0) -> None:
        """NaN / infinite differences: equal infinities (empty top-k slots) and NaN where
        the reference is NaN (reported on the reference's own row) are exact; anything
        else is infinitely wrong and counted."""
        with np.errstate(invalid="ignore"):
            same = (e == a) | (np.isnan(e) & np.isnan(a))
        bad = ~np.isfinite(diff)
        diff[bad & same] = 0.0
        wrong = bad & ~same
        diff[wrong] = np.inf
        out = wrong & ~np.isfinite(a)
        n = int(np.count_nonzero(out))
        if n:
            if not self.n_nonfinite:
                first = int(np.flatnonzero(out)[0])
                self.problems.append(
                    f"non-finite outputs ({a[first]} at flat position {offset + first} of case "
                    f"{self.case!r}, reference {e[first]:.6g})"
                )
            self.n_nonfinite += n

    def add_topk(
        self,
        ref_scores_full: np.ndarray,
        bound_full: np.ndarray,
        ref_items: np.ndarray,
        cand_items: np.ndarray,
        excluded: np.ndarray,
    ) -> None:
        """Compare top-k item lists rank by rank against the reference's full scores.

        ``ref_scores_full`` is the reference's ``[B, n_items]`` score matrix with excluded
        items already at ``-inf`` and ``bound_full`` its bounds; ``excluded`` is a
        boolean ``[B, n_items]`` mask. At each rank the candidate's item must score, in
        the reference, within ``bound(ref item) + bound(candidate item)`` of the
        reference's item (items tied within their bounds are interchangeable).
        """
        if ref_items.shape != cand_items.shape:
            self.shape_ok = False
            self.problems.append(f"top-k shape {cand_items.shape} != {ref_items.shape}")
            return
        b = ref_items.shape[0]
        rows = np.arange(b)[:, None]
        empty_ref = ref_items < 0
        empty_cand = cand_items < 0
        in_range = (cand_items < ref_scores_full.shape[1]) & (cand_items >= -1)
        safe_cand = np.where(empty_cand | ~in_range, 0, cand_items)
        safe_ref = np.where(empty_ref, 0, ref_items)
        s_ref = ref_scores_full[rows, safe_ref]
        s_cand = ref_scores_full[rows, safe_cand]
        tol = bound_full[rows, safe_ref] + bound_full[rows, safe_cand]
        with np.errstate(invalid="ignore"):
            close = np.abs(np.where(np.isfinite(s_ref), s_ref - s_cand, 0.0)) <= tol
        ok = (empty_ref == empty_cand) & (close | empty_ref)
        ok &= ~(excluded[rows, safe_cand] & ~empty_cand)
        ok &= in_range
        if cand_items.shape[1] <= 64:
            srt = np.sort(cand_items, axis=1)
            distinct = ~((srt[:, 1:] == srt[:, :-1]) & (srt[:, 1:] >= 0)).any(axis=1)
        else:  # long lists (k = n_items): mark the items, no sort
            marks = np.zeros(ref_scores_full.shape, dtype=bool)
            filled = ~empty_cand & in_range
            marks[np.broadcast_to(rows, cand_items.shape)[filled], cand_items[filled]] = True
            distinct = marks.sum(axis=1) == filled.sum(axis=1)
        agree = ok.all(axis=1) & distinct
        self.topk_users += b
        self.topk_agree += int(agree.sum())

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["histogram"] = dict(zip(HIST_LABELS, self.histogram))
        d["topk_agreement"] = self.topk_agreement
        d["passed"] = self.passed
        if not self.n_values:
            d["min_bound"] = None
        return d


def _new_row(c: Comparison) -> dict[str, Any]:
    return {
        "format": c.format,
        "entry_point": c.entry_point,
        "cases": 0,
        "n_values": 0,
        "max_abs_diff": 0.0,
        "max_ratio": 0.0,
        "worst_error": 0.0,
        "worst_bound": 0.0,
        "min_bound": math.inf,
        "max_bound": 0.0,
        "n_nonfinite": 0,
        "topk_users": 0,
        "topk_agree": 0,
        "passed": True,
        "failed_cases": [],
    }


@dataclass
class ParityReport:
    """All comparisons of a parity run, with the rule that bounded them.

    ``atol`` and ``rtol`` are None under the float32 error model (the default) and the
    fixed tolerances when they were given; ``bound`` describes the rule either way.
    """

    atol: float | None = None
    rtol: float | None = None
    comparisons: list[Comparison] = field(default_factory=list)
    seconds: float = 0.0
    reference: str = "eager in float64"
    #: the bound's rule (:attr:`recsys_export.parity.bounds.Reference.rule`)
    bound: dict[str, Any] = field(default_factory=dict)
    #: formats that could not be checked -> why (a file the installed torch cannot read,
    #: or a format asked for by name that the bundle lacks)
    skipped: dict[str, str] = field(default_factory=dict)
    plan: dict[str, Any] | None = None
    timings: dict[str, dict[str, float]] = field(default_factory=dict)
    #: where the torch backends (eager reference included) ran (``verify --device``)
    device: str = "cpu"
    #: onnxruntime execution providers of the ONNX and runtime backends (``verify
    #: --providers``; the default is the runtime's, ``DEFAULT_PROVIDERS``)
    providers: list[str] = field(default_factory=lambda: ["CPUExecutionProvider"])
    #: one line each: what the export did about a failing fast path (kernel fallback)
    notes: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return bool(self.comparisons) and all(c.passed for c in self.comparisons)

    @property
    def max_ratio(self) -> float:
        """The worst ``error / bound`` of the whole run."""
        return max((c.max_ratio for c in self.comparisons), default=0.0)

    def tolerance(self) -> str:
        """The rule in words (table, manifest summary, ``inspect``)."""
        if self.atol is not None or self.rtol is not None:
            return f"atol={self.atol:g} rtol={self.rtol:g}"
        model = self.bound.get("model", "")
        return f"float32 error bound ({model}, docs/parity.md)" if model else "float32 bound"

    def rows(self) -> list[dict[str, Any]]:
        """One row per (format, entry point): worst values over all cases."""
        table: dict[tuple[str, str], dict[str, Any]] = {}
        for c in self.comparisons:
            row = table.setdefault((c.format, c.entry_point), _new_row(c))
            row["cases"] += 1
            row["n_values"] += c.n_values
            row["max_abs_diff"] = max(row["max_abs_diff"], c.max_abs_diff)
            if c.max_ratio > row["max_ratio"] or not row["worst_bound"]:
                row["max_ratio"] = max(row["max_ratio"], c.max_ratio)
                row["worst_error"], row["worst_bound"] = c.worst_error, c.worst_bound
            row["min_bound"] = min(row["min_bound"], c.min_bound)
            row["max_bound"] = max(row["max_bound"], c.max_bound)
            row["n_nonfinite"] += c.n_nonfinite
            row["topk_users"] += c.topk_users
            row["topk_agree"] += c.topk_agree
            if not c.passed:
                row["passed"] = False
                row["failed_cases"].append(c.case)
        return list(table.values())

    def summary(self) -> dict[str, Any]:
        """Compact form for the manifest (JSON-safe: non-finite numbers are null)."""
        rows = self.rows()
        keys = ("format", "entry_point", "max_abs_diff", "max_ratio", "worst_bound", "passed")
        return json_safe(
            {
                "file": "parity.json",
                "passed": self.passed,
                "tolerance": self.tolerance(),
                "atol": self.atol,
                "rtol": self.rtol,
                "bound": self.bound,
                "reference": self.reference,
                "device": self.device,
                "providers": list(self.providers),
                "max_abs_diff": max((r["max_abs_diff"] for r in rows), default=0.0),
                "max_ratio": self.max_ratio,
                "seconds": round(self.seconds, 3),
                "plan": self.plan,
                "notes": list(self.notes),
                "rows": [{k: r[k] for k in keys} for r in rows],
            }
        )

    def to_dict(self) -> dict[str, Any]:
        """The full, machine-readable report (``parity.json``; non-finite numbers null)."""
        return json_safe(
            {
                "schema": SCHEMA,
                "passed": self.passed,
                "tolerance": self.tolerance(),
                "atol": self.atol,
                "rtol": self.rtol,
                "bound": self.bound,
                "max_ratio": self.max_ratio,
                "reference": self.reference,
                "device": self.device,
                "providers": list(self.providers),
                "seconds": round(self.seconds, 3),
                "plan": self.plan,
                "timings": self.timings,
                "notes": list(self.notes),
                "histogram_bins": HIST_LABELS,
                "rows": self.rows(),
                "comparisons": [c.to_dict() for c in self.comparisons],
                "skipped": dict(self.skipped),
            }
        )

    def table(self) -> str:
        """A text table, one row per format x entry point; ``err/bound`` is the worst
        ratio of a difference to its bound (a row passes at <= 1)."""
        head = (
            f"{'format':<12} {'entry point':<10} {'cases':>5} {'values':>11} {'max abs':>10} "
            f"{'err/bound':>10} {'top-k agree':>12}  result"
        )
        lines = [head, "-" * len(head)]
        for r in self.rows():
            agree = f"{r['topk_agree']}/{r['topk_users']}" if r["topk_users"] else "-"
            res = "PASS" if r["passed"] else "FAIL (" + ", ".join(r["failed_cases"][:3]) + ")"
            lines.append(
                f"{r['format']:<12} {r['entry_point']:<10} {r['cases']:>5} {r['n_values']:>11,} "
                f"{r['max_abs_diff']:>10.2e} {r['max_ratio']:>10.3g} {agree:>12}  {res}"
            )
        for c in self.comparisons:
            for problem in c.problems[:1]:
                lines.append(f"{c.format} {c.entry_point} ({c.case}): {problem}")
        lines.extend(self.notes)
        lines.append(
            f"torch device: {self.device}; onnxruntime providers: {', '.join(self.providers)}"
        )
        lines.append(describe_plan(self.plan) if self.plan else "plan: random batches only")
        if self.timings:
            per = ", ".join(f"{k} {v['total']:.2f}" for k, v in self.timings.items())
            lines.append(f"seconds: {per}")
        verdict = "PASS" if self.passed else "FAIL"
        lines.append(
            f"{verdict}: {self.tolerance()}; worst err/bound {self.max_ratio:.3g}, "
            f"{self.seconds:.1f}s"
        )
        return "\n".join(lines)

    def raise_failure(self) -> None:
        failed = [f"{r['format']}:{r['entry_point']}" for r in self.rows() if not r["passed"]]
        why = f"worst err/bound {self.max_ratio:.3g}; {self.tolerance()}"
        if any(c.format == REFERENCE_ROW and not c.passed for c in self.comparisons):
            why = "the model's own scores are not finite; " + why
        exc = ParityError(
            "parity check failed for " + ", ".join(failed) + f" ({why}); see the table "
            f"above or parity.json\n{self.table()}"
        )
        exc.report = self  # type: ignore[attr-defined]
        raise exc
