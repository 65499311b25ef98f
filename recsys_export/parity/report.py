"""Parity statistics: per-case comparisons, the pass rule and the report."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from recsys_export.errors import ConfigError, ParityError
from recsys_export.plan import (
    describe_plan,
)

#: Bin edges of the abs-diff histogram: exact 0, then decades up to 1 and beyond.
HIST_EDGES = [0.0, 1e-7, 1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1, 1.0]
HIST_LABELS = ["0", "<1e-7", "<1e-6", "<1e-5", "<1e-4", "<1e-3", "<1e-2", "<1e-1", "<1", ">=1"]
REL_EPS = 1e-7


def check_tolerances(atol: float, rtol: float) -> None:
    """Refuse tolerances that are negative, NaN or infinite (:class:`ConfigError`)."""
    for name, value in (("atol", atol), ("rtol", rtol)):
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
    max_rel_diff: float = 0.0
    n_out_of_tolerance: int = 0
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
            and self.n_out_of_tolerance == 0
            and self.topk_agree == self.topk_users
            and not self.problems
        )

    def add_values(
        self, expected: np.ndarray, actual: np.ndarray, atol: float, rtol: float
    ) -> None:
        """Fold one chunk of values into the statistics (shapes and dtypes checked)."""
        if expected.shape != actual.shape:
            self.shape_ok = False
            self.problems.append(f"shape {actual.shape} != expected {expected.shape}")
            return
        if expected.dtype != actual.dtype:
            self.dtype_ok = False
            self.problems.append(f"dtype {actual.dtype} != expected {expected.dtype}")
        dtype = np.result_type(expected.dtype, actual.dtype, np.float32)
        e = np.asarray(expected, dtype=dtype).ravel()  # no copy when already float32
        a = np.asarray(actual, dtype=dtype).ravel()
        self.n_values += e.size
        if not e.size:
            return
        with np.errstate(invalid="ignore"):  # inf - inf: handled below
            diff = np.subtract(e, a)
        np.abs(diff, out=diff)
        ae = np.abs(e)
        dmax = float(diff.max())  # NaN if any difference is NaN
        if not np.isfinite(dmax):  # infinities / NaN: the general path
            same = e == a  # matching infinities (empty top-k slots) are exact
            with np.errstate(invalid="ignore"):
                diff = np.where(same, 0.0, diff).astype(dtype)
            diff[np.isnan(diff)] = np.inf
            ae[~np.isfinite(ae)] = 0.0  # tolerance of an infinite or NaN reference: atol
            dmax = float(diff.max())
        self.max_abs_diff = max(self.max_abs_diff, dmax)
        with np.errstate(invalid="ignore", over="ignore"):
            if not dmax <= float(dtype.type(atol)):  # else all are within atol <= tolerance
                tol = ae * dtype.type(rtol)
                tol += dtype.type(atol)
                self.n_out_of_tolerance += int(np.count_nonzero(diff > tol))
                del tol
            ae += dtype.type(REL_EPS)
            np.divide(diff, ae, out=ae)
            self.max_rel_diff = max(self.max_rel_diff, float(ae.max()))
        # histogram by decade from cumulative counts (edges above the max cost nothing)
        below = [int(np.count_nonzero(diff == 0))]
        for edge in HIST_EDGES[1:]:
            below.append(int(np.count_nonzero(diff < edge)) if edge <= dmax else diff.size)
        below.append(diff.size)
        for j in range(len(HIST_LABELS)):
            self.histogram[j] += below[j] - (below[j - 1] if j else 0)

    def add_topk(
        self,
        ref_scores_full: np.ndarray,
        ref_items: np.ndarray,
        cand_items: np.ndarray,
        excluded: np.ndarray,
        atol: float,
        rtol: float,
    ) -> None:
        """Compare top-k item lists rank by rank against the reference's full scores.

        ``ref_scores_full`` is the reference's ``[B, n_items]`` score matrix with excluded
        items already at ``-inf``; ``excluded`` is a boolean ``[B, n_items]`` mask.
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
        tol = atol + rtol * np.abs(np.where(np.isfinite(s_ref), s_ref, 0.0))
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
        return d


@dataclass
class ParityReport:
    """All comparisons of a parity run, with the tolerances used."""

    atol: float
    rtol: float
    comparisons: list[Comparison] = field(default_factory=list)
    seconds: float = 0.0
    reference: str = "eager"
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

    @property
    def passed(self) -> bool:
        return bool(self.comparisons) and all(c.passed for c in self.comparisons)

    def rows(self) -> list[dict[str, Any]]:
        """One row per (format, entry point): worst values over all cases."""
        table: dict[tuple[str, str], dict[str, Any]] = {}
        for c in self.comparisons:
            key = (c.format, c.entry_point)
            row = table.setdefault(
                key,
                {
                    "format": c.format,
                    "entry_point": c.entry_point,
                    "cases": 0,
                    "n_values": 0,
                    "max_abs_diff": 0.0,
                    "max_rel_diff": 0.0,
                    "topk_users": 0,
                    "topk_agree": 0,
                    "passed": True,
                    "failed_cases": [],
                },
            )
            row["cases"] += 1
            row["n_values"] += c.n_values
            row["max_abs_diff"] = max(row["max_abs_diff"], c.max_abs_diff)
            row["max_rel_diff"] = max(row["max_rel_diff"], c.max_rel_diff)
            row["topk_users"] += c.topk_users
            row["topk_agree"] += c.topk_agree
            if not c.passed:
                row["passed"] = False
                row["failed_cases"].append(c.case)
        return list(table.values())

    def summary(self) -> dict[str, Any]:
        """Compact form for the manifest."""
        rows = self.rows()
        return {
            "file": "parity.json",
            "passed": self.passed,
            "atol": self.atol,
            "rtol": self.rtol,
            "reference": self.reference,
            "device": self.device,
            "providers": list(self.providers),
            "max_abs_diff": max((r["max_abs_diff"] for r in rows), default=0.0),
            "max_rel_diff": max((r["max_rel_diff"] for r in rows), default=0.0),
            "seconds": round(self.seconds, 3),
            "plan": self.plan,
            "rows": [
                {
                    k: r[k]
                    for k in ("format", "entry_point", "max_abs_diff", "max_rel_diff", "passed")
                }
                for r in rows
            ],
        }

    def to_dict(self) -> dict[str, Any]:
        """The full, machine-readable report (``parity.json``)."""
        return {
            "schema": "recsys-export-parity/1",
            "passed": self.passed,
            "atol": self.atol,
            "rtol": self.rtol,
            "reference": self.reference,
            "device": self.device,
            "providers": list(self.providers),
            "seconds": round(self.seconds, 3),
            "plan": self.plan,
            "timings": self.timings,
            "histogram_bins": HIST_LABELS,
            "rows": self.rows(),
            "comparisons": [c.to_dict() for c in self.comparisons],
            "skipped": dict(self.skipped),
        }

    def table(self) -> str:
        """A text table, one row per format x entry point."""
        head = (
            f"{'format':<12} {'entry point':<10} {'cases':>5} {'values':>11} {'max abs':>10} "
            f"{'max rel':>10} {'top-k agree':>12}  result"
        )
        lines = [head, "-" * len(head)]
        for r in self.rows():
            agree = f"{r['topk_agree']}/{r['topk_users']}" if r["topk_users"] else "-"
            res = "PASS" if r["passed"] else "FAIL (" + ", ".join(r["failed_cases"][:3]) + ")"
            lines.append(
                f"{r['format']:<12} {r['entry_point']:<10} {r['cases']:>5} {r['n_values']:>11,} "
                f"{r['max_abs_diff']:>10.2e} {r['max_rel_diff']:>10.2e} {agree:>12}  {res}"
            )
        verdict = "PASS" if self.passed else "FAIL"
        lines.append(
            f"torch device: {self.device}; onnxruntime providers: {', '.join(self.providers)}"
        )
        lines.append(describe_plan(self.plan) if self.plan else "plan: random batches only")
        if self.timings:
            per = ", ".join(f"{k} {v['total']:.2f}" for k, v in self.timings.items())
            lines.append(f"seconds: {per}")
        lines.append(f"{verdict}: atol={self.atol:g} rtol={self.rtol:g}, {self.seconds:.1f}s")
        return "\n".join(lines)

    def raise_failure(self) -> None:
        failed = [f"{r['format']}:{r['entry_point']}" for r in self.rows() if not r["passed"]]
        raise ParityError(
            "parity check failed for " + ", ".join(failed) + f" (atol={self.atol:g}, "
            f"rtol={self.rtol:g}); see the table above or parity.json\n{self.table()}"
        )
