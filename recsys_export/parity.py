"""Parity: compare the eager model with every exported format, entry point by entry point.

Backends (:class:`EagerBackend`, :class:`TorchScriptBackend`, :class:`Pt2Backend`,
:class:`OnnxBackend`) expose the three entry points on index inputs and return numpy
arrays. :func:`run_parity` runs the same inputs through the eager reference and each
format and aggregates, per (format, entry point, case), the max abs / rel difference,
a histogram of abs differences by decade, shape/dtype checks and, for top-k, the
fraction of users whose lists agree. Used by ``export`` (verify by default), by the
``verify`` command and by the test suite.

Pass rule (per value): ``|actual - expected| <= atol + rtol * |expected|``. Top-k lists
agree when, rank by rank, the candidate's item has a reference score within that same
tolerance of the reference item's score (so items tied within tolerance are
interchangeable), no excluded item appears, and empty slots (-1) coincide.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from recsys_export.bundle import Bundle, BundleWriter, read_seen_csr, update_bundle
from recsys_export.checkpoint import Checkpoint, load_checkpoint
from recsys_export.errors import BundleError, ConfigError, ParityError
from recsys_export.export import quiet_exporters
from recsys_export.ids import runs_to_coo
from recsys_export.manifest import ENTRY_POINTS, FORMATS
from recsys_export.models import BaseModel, build_model
from recsys_export.progress import Progress

#: Bin edges of the abs-diff histogram: exact 0, then decades up to 1 and beyond.
HIST_EDGES = [0.0, 1e-7, 1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1, 1.0]
HIST_LABELS = ["0", "<1e-7", "<1e-6", "<1e-5", "<1e-4", "<1e-3", "<1e-2", "<1e-1", "<1", ">=1"]
BATCH_SIZES = (1, 2, 7, 1024)
REL_EPS = 1e-7

# --------------------------------------------------------------------------- backends


#: What export and ``verify`` check by default: every format, and the torch-free runtime.
CHECKED_BACKENDS = (*FORMATS, "runtime")


class Backend:
    """The three entry points on dense indices, returning numpy arrays."""

    name = ""

    def score(self, users: np.ndarray, items: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def score_all(self, users: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def recommend(
        self, users: np.ndarray, k: int, rows: np.ndarray, items: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        raise NotImplementedError


def _t(a: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(a, dtype=np.int64))


class EagerBackend(Backend):
    """The trained eager model (the reference)."""

    name = "eager"

    def __init__(self, model: BaseModel) -> None:
        self.model = model.eval()

    @torch.no_grad()
    def score(self, users, items):
        return self.model(_t(users), _t(items)).numpy()

    @torch.no_grad()
    def score_all(self, users):
        return self.model.score_all(_t(users)).numpy()

    @torch.no_grad()
    def recommend(self, users, k, rows, items):
        s, i = self.model.recommend(_t(users), int(k), _t(rows), _t(items))
        return s.numpy(), i.numpy()


class TorchScriptBackend(Backend):
    """``torch.jit.load`` of the bundle's scripted module."""

    name = "torchscript"

    def __init__(self, path: Path) -> None:
        with quiet_exporters():
            self.module = torch.jit.load(str(path), map_location="cpu")

    @torch.no_grad()
    def score(self, users, items):
        return self.module.score(_t(users), _t(items)).numpy()

    @torch.no_grad()
    def score_all(self, users):
        return self.module.score_all(_t(users)).numpy()

    @torch.no_grad()
    def recommend(self, users, k, rows, items):
        s, i = self.module.recommend(_t(users), int(k), _t(rows), _t(items))
        return s.numpy(), i.numpy()


class Pt2Backend(Backend):
    """``torch.export.load`` of the bundle's ExportedPrograms, one per entry point."""

    name = "pt2"

    def __init__(self, paths: dict[str, Path]) -> None:
        with quiet_exporters():
            self.modules = {e: torch.export.load(str(p)).module() for e, p in paths.items()}

    @torch.no_grad()
    def score(self, users, items):
        return self.modules["score"](_t(users), _t(items)).numpy()

    @torch.no_grad()
    def score_all(self, users):
        return self.modules["score_all"](_t(users)).numpy()

    @torch.no_grad()
    def recommend(self, users, k, rows, items):
        s, i = self.modules["recommend"](_t(users), torch.tensor(int(k)), _t(rows), _t(items))
        return s.numpy(), i.numpy()


class OnnxBackend(Backend):
    """onnxruntime sessions on the bundle's ONNX graphs (indices validated by callers)."""

    name = "onnx"

    def __init__(self, paths: dict[str, Path]) -> None:
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.inter_op_num_threads = 1
        self.sessions = {
            e: ort.InferenceSession(str(p), opts, providers=["CPUExecutionProvider"])
            for e, p in paths.items()
        }

    def score(self, users, items):
        return self.sessions["score"].run(None, {"users": users, "items": items})[0]

    def score_all(self, users):
        return self.sessions["score_all"].run(None, {"users": users})[0]

    def recommend(self, users, k, rows, items):
        feeds = {
            "users": users,
            "k": np.array(k, dtype=np.int64),
            "exclude_rows": rows,
            "exclude_items": items,
        }
        s, i = self.sessions["recommend"].run(None, feeds)
        return s, i


class NotApplicable(Exception):
    """A backend cannot express this case (e.g. arbitrary exclusions); the case is skipped."""


class RuntimeBackend(Backend):
    """The torch-free :class:`~recsys_export.runtime.Recommender` (with its fast paths).

    ``score`` and ``score_all`` take any indices. ``recommend`` runs the runtime's own
    ``exclude_seen`` path, so it applies where the exclusions are exactly the users' seen
    items (the full-matrix pass); other cases raise :class:`NotApplicable`.
    """

    name = "runtime"

    def __init__(self, path: Path) -> None:
        from recsys_export.runtime import Recommender

        self.rec = Recommender.load(path, verify=False)  # checksums: verified by the caller

    def score(self, users, items):
        return self.rec.score(users, items, by_index=True)

    def score_all(self, users):
        return self.rec.score_all(users, by_index=True)

    def recommend(self, users, k, rows, items):
        if len(np.unique(users)) != len(users):
            raise NotApplicable("repeated users")
        want_rows, want_items = _seen_for(users, *self.rec.seen_csr())
        got = np.lexsort((items, rows))
        want = np.lexsort((want_items, want_rows))
        if not (
            np.array_equal(rows[got], want_rows[want])
            and np.array_equal(items[got], want_items[want])
        ):
            raise NotApplicable("exclusions other than the seen items")
        result = self.rec.recommend(users, int(k), exclude_seen=True, by_index=True)
        return result.scores, result.items


def load_backends(
    root: Path,
    manifest: dict[str, Any],
    formats: Iterable[str] | None = None,
    *,
    skipped: dict[str, str] | None = None,
) -> dict[str, Backend]:
    """Backends for the formats present in a bundle (optionally a subset).

    Parameters
    ----------
    skipped : dict, optional
        When given, a TorchScript or ``.pt2`` file the installed torch cannot read (one
        written by a newer torch) is left out and ``skipped[format]`` says why, naming
        both torch versions; without it the load error propagates.
    """
    wanted = list(formats) if formats is not None else list(FORMATS)
    fm = manifest.get("formats", {})
    out: dict[str, Backend] = {}
    torch_loaded: dict[str, Callable[[], Backend]] = {}
    if "torchscript" in fm and "torchscript" in wanted:
        torch_loaded["torchscript"] = lambda: TorchScriptBackend(root / fm["torchscript"]["module"])
    if "pt2" in fm and "pt2" in wanted:
        torch_loaded["pt2"] = lambda: Pt2Backend(
            {e: root / p for e, p in fm["pt2"]["programs"].items()}
        )
    for name, make in torch_loaded.items():
        try:
            out[name] = make()
        except Exception as exc:  # torch raises KeyError, RuntimeError, ... for newer files
            if skipped is None:
                raise
            written = (manifest.get("versions") or {}).get("torch", "an unknown version")
            detail = " ".join(f"{type(exc).__name__}: {exc}".split())[:200]
            skipped[name] = (
                f"{name} not checked: the installed torch {torch.__version__} cannot read the "
                f"{name} files written by torch {written} ({detail}); check them with torch "
                f"{written}"
            )
    if "onnx" in fm and "onnx" in wanted:
        out["onnx"] = OnnxBackend({e: root / p for e, p in fm["onnx"]["graphs"].items()})
    if "onnx" in fm and "runtime" in wanted and (root / "manifest.json").exists():
        out["runtime"] = RuntimeBackend(root)
    return out


def check_tolerances(atol: float, rtol: float) -> None:
    """Refuse tolerances that are negative, NaN or infinite (:class:`ConfigError`)."""
    for name, value in (("atol", atol), ("rtol", rtol)):
        if isinstance(value, bool) or not isinstance(value, (int, float, np.floating)):
            raise ConfigError(f"{name} must be a number, got {value!r}")
        if not (np.isfinite(value) and value >= 0):
            raise ConfigError(f"{name} must be a finite number >= 0, got {value!r}")


# --------------------------------------------------------------------------- statistics


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
        e = expected.astype(np.float64).ravel()
        a = actual.astype(np.float64).ravel()
        same = e == a  # also covers matching infinities (empty top-k slots)
        with np.errstate(invalid="ignore"):
            diff = np.where(same, 0.0, np.abs(e - a))
        diff = np.where(np.isnan(diff), np.inf, diff)
        rel = diff / (np.abs(np.where(np.isinf(e), 1.0, e)) + REL_EPS)
        self.n_values += diff.size
        if diff.size:
            self.max_abs_diff = max(self.max_abs_diff, float(diff.max()))
            self.max_rel_diff = max(self.max_rel_diff, float(rel.max()))
        tol = atol + rtol * np.abs(np.where(np.isinf(e), 0.0, e))
        self.n_out_of_tolerance += int(np.count_nonzero(diff > tol))
        zero = int(np.count_nonzero(diff == 0))
        counts = np.histogram(diff[diff > 0], bins=HIST_EDGES[1:] + [np.inf])[0]
        below = int(np.count_nonzero((diff > 0) & (diff < HIST_EDGES[1])))
        self.histogram[0] += zero
        self.histogram[1] += below
        for j, c in enumerate(counts):
            self.histogram[2 + j] += int(c)

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
        safe_cand = np.where(empty_cand, 0, cand_items)
        safe_ref = np.where(empty_ref, 0, ref_items)
        s_ref = ref_scores_full[rows, safe_ref]
        s_cand = ref_scores_full[rows, safe_cand]
        tol = atol + rtol * np.abs(np.where(np.isfinite(s_ref), s_ref, 0.0))
        with np.errstate(invalid="ignore"):
            close = np.abs(np.where(np.isfinite(s_ref), s_ref - s_cand, 0.0)) <= tol
        ok = (empty_ref == empty_cand) & (close | empty_ref)
        ok &= ~(excluded[rows, safe_cand] & ~empty_cand)
        in_range = (cand_items < ref_scores_full.shape[1]) & (cand_items >= -1)
        ok &= in_range
        srt = np.sort(cand_items, axis=1)
        distinct = ~((srt[:, 1:] == srt[:, :-1]) & (srt[:, 1:] >= 0)).any(axis=1)
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
    #: formats that could not be checked -> why (a file the installed torch cannot read)
    skipped: dict[str, str] = field(default_factory=dict)

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
            "max_abs_diff": max((r["max_abs_diff"] for r in rows), default=0.0),
            "max_rel_diff": max((r["max_rel_diff"] for r in rows), default=0.0),
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
            "seconds": round(self.seconds, 3),
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
        lines.append(f"{verdict}: atol={self.atol:g} rtol={self.rtol:g}, {self.seconds:.1f}s")
        return "\n".join(lines)

    def raise_failure(self) -> None:
        failed = [f"{r['format']}:{r['entry_point']}" for r in self.rows() if not r["passed"]]
        raise ParityError(
            "parity check failed for " + ", ".join(failed) + f" (atol={self.atol:g}, "
            f"rtol={self.rtol:g}); see the table above or parity.json\n{self.table()}"
        )


# --------------------------------------------------------------------------- the run


def _random_exclusions(
    rng: np.random.Generator, batch: int, n_items: int, per_user: int
) -> tuple[np.ndarray, np.ndarray]:
    rows = np.repeat(np.arange(batch, dtype=np.int64), per_user)
    items = rng.integers(0, n_items, size=batch * per_user, dtype=np.int64)
    return rows, items


def _exclusion_mask(b: int, n_items: int, rows: np.ndarray, items: np.ndarray) -> np.ndarray:
    mask = np.zeros((b, n_items), dtype=bool)
    mask[rows, items] = True
    return mask


def _seen_for(
    users: np.ndarray, indptr: np.ndarray, seen: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    return runs_to_coo(indptr[users], indptr[users + 1], seen)


def run_parity(
    reference: Backend,
    backends: dict[str, Backend],
    n_users: int,
    n_items: int,
    *,
    seen: tuple[np.ndarray, np.ndarray] | None = None,
    atol: float = 1e-5,
    rtol: float = 1e-5,
    batch_sizes: Iterable[int] = BATCH_SIZES,
    full_matrix: bool = True,
    user_chunk: int | None = None,
    seed: int = 0,
    progress: bool = False,
) -> ParityReport:
    """Compare ``backends`` with ``reference`` on every entry point.

    Parameters
    ----------
    reference : Backend
        Usually :class:`EagerBackend` on the trained model.
    backends : dict
        Format name -> backend.
    n_users, n_items : int
        Model sizes.
    seen : (indptr, items), optional
        CSR of seen items per user; used as the exclusions of the full recommend pass.
    batch_sizes : iterable of int
        Random id batches (repeats allowed, unsorted).
    full_matrix : bool
        Also compare ``score`` and ``score_all`` over every (user, item) pair, and
        ``recommend`` for every user with k in {1, 10, n_items}.
    user_chunk : int, optional
        Users per call in the full-matrix pass (default: ~4M scores per chunk).
    """
    start = time.perf_counter()
    report = ParityReport(atol=atol, rtol=rtol)
    rng = np.random.default_rng(seed)
    comps: dict[tuple[str, str, str], Comparison] = {}

    def comp(fmt: str, entry: str, case: str) -> Comparison:
        key = (fmt, entry, case)
        if key not in comps:
            comps[key] = Comparison(fmt, entry, case)
            report.comparisons.append(comps[key])
        return comps[key]

    def guarded(fmt: str, entry: str, case: str, fn: Callable[..., Any], *args: Any) -> Any:
        try:
            return fn(*args)
        except NotApplicable:
            return None
        except Exception as exc:  # a backend crash is a parity failure, reported
            comp(fmt, entry, case).problems.append(f"{type(exc).__name__}: {str(exc)[:300]}")
            return None

    def check_recommend(
        case: str,
        users: np.ndarray,
        k: int,
        rows: np.ndarray,
        items: np.ndarray,
        ref_all: np.ndarray | None = None,
    ) -> None:
        ref_full = (reference.score_all(users) if ref_all is None else ref_all).copy()
        ref_full[rows, items] = -np.inf
        excluded = _exclusion_mask(len(users), n_items, rows, items)
        ref_s, ref_i = reference.recommend(users, k, rows, items)
        for fmt, be in backends.items():
            got = guarded(fmt, "recommend", case, be.recommend, users, k, rows, items)
            if got is None:
                continue
            c = comp(fmt, "recommend", case)
            c.add_values(ref_s, got[0], atol, rtol)
            if got[1].dtype != np.int64:
                c.dtype_ok = False
                c.problems.append(f"items dtype {got[1].dtype} != int64")
            c.add_topk(ref_full, ref_i, got[1], excluded, atol, rtol)

    # (a) random batches
    for b in batch_sizes:
        case = f"batch={b}"
        users = rng.integers(0, n_users, size=b, dtype=np.int64)
        items = rng.integers(0, n_items, size=b, dtype=np.int64)
        ref = reference.score(users, items)
        ref_all = reference.score_all(users)
        for fmt, be in backends.items():
            got = guarded(fmt, "score", case, be.score, users, items)
            if got is not None:
                comp(fmt, "score", case).add_values(ref, got, atol, rtol)
            got = guarded(fmt, "score_all", case, be.score_all, users)
            if got is not None:
                comp(fmt, "score_all", case).add_values(ref_all, got, atol, rtol)
        k = min(10, n_items)
        rows, ex_items = _random_exclusions(
            rng, b, n_items, min(3, n_items - 1) if n_items > 1 else 0
        )
        check_recommend(f"batch={b} k={k}", users, k, rows, ex_items, ref_all)

    # (b) + (c) full matrix, chunked over users
    if full_matrix:
        chunk = user_chunk or max(1, min(n_users, 4_000_000 // max(n_items, 1)))
        all_users = np.arange(n_users, dtype=np.int64)
        ks = sorted({1, min(10, n_items), n_items})
        bar = Progress(n_users, unit="users", desc="parity full matrix ", enabled=progress)
        with bar:
            for s in range(0, n_users, chunk):
                users = all_users[s : s + chunk]
                ref_all = reference.score_all(users)
                pu = np.repeat(users, n_items)
                pi = np.tile(np.arange(n_items, dtype=np.int64), len(users))
                ref_pairs = reference.score(pu, pi)
                for fmt, be in backends.items():
                    got = guarded(fmt, "score_all", "full matrix", be.score_all, users)
                    if got is not None:
                        comp(fmt, "score_all", "full matrix").add_values(ref_all, got, atol, rtol)
                    got = guarded(fmt, "score", "full matrix", be.score, pu, pi)
                    if got is not None:
                        comp(fmt, "score", "full matrix").add_values(ref_pairs, got, atol, rtol)
                # score_all must equal pairwise scoring of the reference itself
                comp("eager", "score_all", "vs pairwise").add_values(
                    ref_pairs.reshape(len(users), n_items), ref_all, atol, rtol
                )
                if seen is not None:
                    rows, items = _seen_for(users, *seen)
                else:
                    rows, items = _random_exclusions(rng, len(users), n_items, 1)
                for k in ks:
                    check_recommend(f"all users k={k} excluded", users, k, rows, items, ref_all)
                bar.update(len(users))
    report.seconds = time.perf_counter() - start
    return report


# --------------------------------------------------------------------------- bundles


def reference_model(root: Path, manifest: dict[str, Any]) -> BaseModel:
    """Rebuild the eager model from a bundle's reference state dict (weights only)."""
    ref = manifest.get("reference", {}).get("state_dict")
    if not ref:
        raise BundleError(
            f"bundle {root} has no eager reference weights; pass --checkpoint CKPT to verify"
        )
    if manifest["model"].get("kind") == "generic":  # recsys_export.byom's generic path
        raise BundleError(
            f"bundle {root} was exported from your own module: its eager reference is that "
            "module; verify it from Python with recsys_export.byom.verify_module(module, bundle)"
        )
    state = torch.load(root / ref, map_location="cpu", weights_only=True)
    model = build_model(manifest["model"]["kind"], **manifest["model"]["hyperparameters"])
    model.load_state_dict(state)
    return model.eval()


def bundle_seen(root: Path, manifest: dict[str, Any]) -> tuple[np.ndarray, np.ndarray] | None:
    """The bundle's seen-items CSR, validated (:class:`BundleError`), or None."""
    seen = manifest.get("seen")
    if not seen:
        return None
    model = manifest["model"]
    return read_seen_csr(root, seen, int(model["n_users"]), int(model["n_items"]))


def verify_staged_bundle(
    writer: BundleWriter,
    manifest: dict[str, Any],
    ckpt: Checkpoint,
    *,
    atol: float = 1e-5,
    rtol: float = 1e-5,
    progress: bool = False,
) -> ParityReport:
    """Parity of a bundle still being written, before it replaces anything.

    The manifest is staged into the writer's temporary directory
    (:meth:`~recsys_export.bundle.BundleWriter.stage`), so the torch-free runtime, fast
    paths included, is checked on the complete bundle too. A failure therefore never
    touches ``dest``: a previous bundle there stays as it was.
    """
    root = writer.stage(manifest)
    backends = load_backends(root, manifest, CHECKED_BACKENDS)
    m = ckpt.model
    return run_parity(
        EagerBackend(m),
        backends,
        m.n_users,
        m.n_items,
        seen=bundle_seen(root, manifest),
        atol=atol,
        rtol=rtol,
        progress=progress,
    )


def verify_bundle(
    path: str | Path,
    *,
    checkpoint: str | Path | None = None,
    formats: Iterable[str] | None = None,
    atol: float = 1e-5,
    rtol: float = 1e-5,
    full_matrix: bool = True,
    record: bool = True,
    progress: bool = False,
) -> ParityReport:
    """Verify a written bundle against its eager reference and record the report.

    Parameters
    ----------
    path : path
        The bundle (checksums are verified first).
    checkpoint : path, optional
        Compare against this checkpoint's model instead of the bundle's reference
        weights (a bundle checked against the wrong checkpoint fails).
    record : bool
        Write ``parity.json`` into the bundle and the summary into the manifest,
        atomically (checksums rewritten).
    """
    check_tolerances(atol, rtol)
    bundle = Bundle.load(path)
    manifest = bundle.manifest
    _check_model_entry(bundle)
    if checkpoint is not None:
        ckpt = load_checkpoint(checkpoint)
        model = ckpt.model
        if (model.n_users, model.n_items) != (
            manifest["model"]["n_users"],
            manifest["model"]["n_items"],
        ):
            report = ParityReport(atol=atol, rtol=rtol, reference=str(checkpoint))
            c = Comparison("checkpoint", "all", "sizes")
            c.problems.append(
                f"checkpoint has {model.n_users} users x {model.n_items} items, the bundle "
                f"{manifest['model']['n_users']} x {manifest['model']['n_items']}"
            )
            report.comparisons.append(c)
            return report
        ref_name = str(checkpoint)
    else:
        model = reference_model(bundle.root, manifest)
        ref_name = "eager (bundle reference weights)"
    wanted = list(formats) if formats is not None else list(CHECKED_BACKENDS)
    skipped: dict[str, str] = {}
    backends = load_backends(bundle.root, manifest, wanted, skipped=skipped)
    if not backends:
        raise BundleError(
            f"bundle {bundle.root} holds none of the formats {list(formats or FORMATS)}"
        )
    report = run_parity(
        EagerBackend(model),
        backends,
        model.n_users,
        model.n_items,
        seen=bundle_seen(bundle.root, manifest),
        atol=atol,
        rtol=rtol,
        full_matrix=full_matrix,
        progress=progress,
    )
    report.reference = ref_name
    report.skipped = skipped
    if record:
        try:
            update_bundle(
                bundle.root,
                manifest_updates={"parity": report.summary()},
                new_files={
                    "parity.json": (
                        json.dumps(report.to_dict(), indent=2).encode(),
                        "parity:report",
                    )
                },
            )
        except BundleError as exc:  # e.g. a read-only bundle: the result is not lost
            exc.report = report  # type: ignore[attr-defined]
            raise
    return report


def _check_model_entry(bundle: Bundle) -> None:
    """The manifest's ``model`` (kind, sizes, hyperparameters), or :class:`BundleError`."""
    model = bundle.manifest.get("model")
    if not (
        isinstance(model, dict)
        and isinstance(model.get("kind"), str)
        and isinstance(model.get("hyperparameters"), dict)
        and all(
            isinstance(model.get(k), int) and not isinstance(model.get(k), bool)
            for k in ("n_users", "n_items")
        )
    ):
        raise BundleError(
            f"bundle {bundle.root}: manifest.json has no valid 'model' entry (kind, "
            "hyperparameters, n_users, n_items); the manifest is corrupted, export it again"
        )


__all__ = [
    "ENTRY_POINTS",
    "Backend",
    "Comparison",
    "EagerBackend",
    "OnnxBackend",
    "ParityReport",
    "Pt2Backend",
    "TorchScriptBackend",
    "check_tolerances",
    "load_backends",
    "run_parity",
    "verify_bundle",
]
