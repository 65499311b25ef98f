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

import functools
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
from recsys_export.manifest import ENTRY_POINTS, FORMATS, BundleSpec
from recsys_export.models import BaseModel, DenseNet, build_model, topk_excluding
from recsys_export.plan import (
    BATCH_BYTES,
    BLOCK_BYTES,
    CALL_BYTES,
    DEFAULT_BUDGET,
    PAIR_CHUNK,
    PARITY_TORCH_THREADS,
    ParityPlan,
    describe_plan,
    plan_parity,
)
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
    #: Whether ``score_all`` / ``recommend`` bound their own memory (they chunk and tile
    #: internally), so a parity pass may hand them a whole block of users per call.
    chunks_itself = False

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


#: Bytes of one ``[users, items, hidden]`` tile of the eager DenseNet reference.
EAGER_TILE_BYTES = 4 << 20


class EagerBackend(Backend):
    """The trained eager model (the reference).

    DenseNet's ``score_all`` is the model's own computation (split first layer, ReLU,
    second layer) done in tiles of users x items, so its ``[B, n_items, hidden]``
    activations never exist at once: memory stays at :data:`EAGER_TILE_BYTES` and the
    tile stays in cache.
    """

    name = "eager"

    def __init__(self, model: BaseModel) -> None:
        self.model = model.eval()
        self._item_half: torch.Tensor | None = None

    @torch.no_grad()
    def score(self, users, items):
        return self.model(_t(users), _t(items)).numpy()

    @torch.no_grad()
    def score_all(self, users):
        m = self.model
        if not isinstance(m, DenseNet):
            return m.score_all(_t(users)).numpy()
        k, n_items, hidden = m.n_factors, m.n_items, m.hidden
        w = m.linear1.weight
        if self._item_half is None:  # C = Q Wi^T + b1, as in DenseNet.score_all
            self._item_half = m.item_factors.weight @ w[:, k:].t() + m.linear1.bias
        c = self._item_half
        a = m.user_factors(_t(users)) @ w[:, :k].t()  # [B, H]
        w2, tail = m.linear2.weight.t(), m.linear2.bias
        out = torch.empty((len(users), n_items), dtype=torch.float32)
        width = min(n_items, max(64, EAGER_TILE_BYTES // (4 * hidden * 8)))
        rows = max(1, EAGER_TILE_BYTES // (4 * hidden * width))
        for b0 in range(0, len(users), rows):
            ab = a[b0 : b0 + rows].unsqueeze(1)
            for t0 in range(0, n_items, width):
                h = torch.relu(ab + c[t0 : t0 + width].unsqueeze(0))  # [b, T, H]
                y = (h @ w2).squeeze(2) + tail + m.global_mean
                out[b0 : b0 + rows, t0 : t0 + width] = y
        return out.numpy()

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
        opts.enable_cpu_mem_arena = False  # parity's calls vary in size: free, don't pool
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
    chunks_itself = True

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
        return self._topk(users, int(k))

    def _topk(self, users: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        result = self.rec.recommend(users, k, exclude_seen=True, by_index=True)
        return result.scores, result.items


class TorchEngineBackend(RuntimeBackend):
    """The torch batch engine (:class:`~recsys_export.torch_engine.TorchEngine`) on the
    CPU: the bundle's pt2/TorchScript program with the engine's own exclusion and top-k
    (opt-in: ``verify --formats ...,torch_engine``). Pairs (``score``) do not apply."""

    name = "torch_engine"
    chunks_itself = False

    def __init__(self, path: Path) -> None:
        from recsys_export.torch_engine import TorchEngine

        self.rec = TorchEngine.load(path, device="cpu", verify=False)  # type: ignore[assignment]

    def score(self, users, items):
        raise NotApplicable("the torch engine scores whole rows only")

    def score_all(self, users):
        return self.rec.score_all(users)

    def _topk(self, users: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        return self.rec.topk(users, k, exclude_seen=True)  # type: ignore[attr-defined]


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
    if ({"pt2", "torchscript"} & set(fm)) and "torch_engine" in wanted:
        out["torch_engine"] = TorchEngineBackend(root)
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
            tol = ae * dtype.type(rtol)
            tol += dtype.type(atol)
            self.n_out_of_tolerance += int(np.count_nonzero(diff > tol))
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
    #: formats that could not be checked -> why (a file the installed torch cannot read)
    skipped: dict[str, str] = field(default_factory=dict)
    plan: dict[str, Any] | None = None
    timings: dict[str, dict[str, float]] = field(default_factory=dict)

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


def _libc_trim() -> Callable[[], Any]:
    """glibc's ``malloc_trim(0)`` (a no-op elsewhere)."""
    try:
        import ctypes

        fn = ctypes.CDLL("libc.so.6").malloc_trim
        return lambda: fn(0)
    except (OSError, AttributeError):  # pragma: no cover - not glibc
        return lambda: None


#: Hands freed heap pages back to the OS between blocks. The exported graphs allocate a
#: fresh ``[B, hidden, n_items]`` intermediate per call and glibc keeps freed chunks of
#: that size in its heaps (its mmap threshold rises after the first one is freed): on
#: the 100k x 20k DenseNet, ~100 MB per block were held until the next block.
release_memory = _libc_trim()


def call_users(model: BaseModel, nbytes: int = CALL_BYTES) -> int:
    """Users per exported ``score_all`` / ``recommend`` call within ``nbytes``.

    The exported DenseNet graphs hold a ``[B, hidden, n_items]`` intermediate, MF ones
    only their ``[B, n_items]`` output (and a top-k copy).
    """
    width = 2 + int(getattr(model, "hidden", 0))
    return max(1, min(1024, nbytes // (4 * width * model.n_items)))


class _Run:
    """One parity pass: the comparisons, per-backend clocks and the shared helpers."""

    def __init__(
        self,
        reference: Backend,
        backends: dict[str, Backend],
        n_items: int,
        seen: tuple[np.ndarray, np.ndarray] | None,
        atol: float,
        rtol: float,
        cap: int,
        batch_cap: int,
    ) -> None:
        self.reference, self.backends, self.n_items, self.seen = reference, backends, n_items, seen
        self.atol, self.rtol, self.cap, self.batch_cap = atol, rtol, cap, max(cap, batch_cap)
        self.comps: dict[tuple[str, str, str], Comparison] = {}
        self.clock: dict[str, dict[str, float]] = {b: {} for b in ["eager", *backends]}

    def tick(self, fmt: str, entry: str, t0: float) -> None:
        """Add the seconds since ``t0`` to ``fmt``'s clock for ``entry``."""
        per = self.clock.setdefault(fmt, {})
        per[entry] = per.get(entry, 0.0) + time.perf_counter() - t0

    def timings(self) -> dict[str, dict[str, float]]:
        """Seconds per backend and entry point (``compare``: our own comparisons)."""
        out = {}
        for fmt, per in self.clock.items():
            out[fmt] = {k: round(v, 3) for k, v in per.items()}
            out[fmt]["total"] = round(sum(per.values()), 3)
        return out

    def comp(self, fmt: str, entry: str, case: str) -> Comparison:
        key = (fmt, entry, case)
        if key not in self.comps:
            self.comps[key] = Comparison(fmt, entry, case)
        return self.comps[key]

    def call(self, fmt: str, entry: str, case: str, fn: Callable[..., Any], *args: Any) -> Any:
        """Run ``fn`` on the clock of ``fmt``; a crash is a reported parity failure."""
        t0 = time.perf_counter()
        try:
            return fn(*args)
        except NotApplicable:
            return None
        except Exception as exc:  # a backend crash is a parity failure, reported
            self.comp(fmt, entry, case).problems.append(f"{type(exc).__name__}: {str(exc)[:300]}")
            return None
        finally:
            self.tick(fmt, entry, t0)

    def exclusions(self, users: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        if self.seen is not None:
            return _seen_for(users, *self.seen)
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)

    def by_calls(
        self, be: Backend, entry: str, users: np.ndarray, *rest: Any, cap: int | None = None
    ) -> Any:
        """``be.<entry>`` over sub-blocks of ``cap`` users (unless the backend chunks
        itself); recommend's exclusions are then the users' seen items, re-indexed per
        call (only the plan's pass hands over more users than ``cap``)."""
        fn = getattr(be, entry)
        cap = len(users) if be.chunks_itself else (cap or self.cap)
        if len(users) <= cap:
            return fn(users, *rest)
        out: Any = None
        for s in range(0, len(users), cap):
            u = users[s : s + cap]
            got = fn(u, rest[0], *self.exclusions(u)) if rest else fn(u)
            parts = got if isinstance(got, tuple) else (got,)
            if out is None:  # one output array, filled in place: no list of small
                # results left pinning the heap between the calls' large intermediates
                out = [np.empty((len(users), *p.shape[1:]), dtype=p.dtype) for p in parts]
            for o, p in zip(out, parts):
                o[s : s + len(u)] = p
            del got, parts
        return tuple(out) if rest else out[0]

    def values(
        self, entry: str, case: str, expected: np.ndarray, *args: Any, cap: int | None = None
    ) -> None:
        """Every backend's ``score`` or ``score_all`` on ``args`` against ``expected``."""
        for fmt, be in self.backends.items():
            fn = getattr(be, entry)
            if entry == "score_all":
                got = self.call(
                    fmt, entry, case, functools.partial(self.by_calls, cap=cap), be, entry, *args
                )
            else:
                got = self.call(fmt, entry, case, fn, *args)
            if got is not None:
                t0 = time.perf_counter()
                self.comp(fmt, entry, case).add_values(expected, got, self.atol, self.rtol)
                self.tick("compare", entry, t0)

    def recommend(
        self,
        case: str,
        users: np.ndarray,
        k: int,
        rows: np.ndarray,
        items: np.ndarray,
        masked: np.ndarray,
        excluded: np.ndarray,
        cap: int | None = None,
    ) -> None:
        """``recommend`` of every backend against the top-k of the reference's scores
        (split into calls of ``cap`` users only when the exclusions are the seen items)."""
        t0 = time.perf_counter()
        ref_s, ref_i = (
            t.numpy() for t in topk_excluding(torch.from_numpy(masked), k, _t(rows), _t(items))
        )
        self.tick("eager", "recommend", t0)
        for fmt, be in self.backends.items():
            split = functools.partial(self.by_calls, cap=cap)
            got = self.call(fmt, "recommend", case, split, be, "recommend", users, k, rows, items)
            if got is None:
                continue
            t0 = time.perf_counter()
            c = self.comp(fmt, "recommend", case)
            c.add_values(ref_s, got[0], self.atol, self.rtol)
            if got[1].dtype != np.int64:
                c.dtype_ok = False
                c.problems.append(f"items dtype {got[1].dtype} != int64")
            c.add_topk(masked, ref_i, got[1], excluded, self.atol, self.rtol)
            self.tick("compare", "recommend", t0)

    def ref(self, fn_name: str, *args: Any) -> np.ndarray:
        t0 = time.perf_counter()
        out = getattr(self.reference, fn_name)(*args)
        self.tick("eager", fn_name, t0)
        return out

    def batch(self, rng: np.random.Generator, b: int, n_users: int) -> None:
        """Random ids (repeats, unsorted): ``score`` on ``b`` pairs, ``score_all`` and
        ``recommend`` in one call on up to ``batch_cap`` of the users, with random
        exclusions."""
        n_items = self.n_items
        users = rng.integers(0, n_users, size=b, dtype=np.int64)
        items = rng.integers(0, n_items, size=b, dtype=np.int64)
        self.values("score", f"batch={b}", self.ref("score", users, items), users, items)
        rb = min(b, self.batch_cap)
        users = users[:rb]
        ref_all = self.ref("score_all", users)
        self.values("score_all", f"batch={rb}", ref_all, users, cap=rb)
        k = min(10, n_items)
        rows, ex = _random_exclusions(rng, rb, n_items, min(3, n_items - 1) if n_items > 1 else 0)
        ref_all[rows, ex] = -np.inf
        excluded = _exclusion_mask(rb, n_items, rows, ex)
        self.recommend(f"batch={rb} k={k}", users, k, rows, ex, ref_all, excluded, cap=rb)

    def rows(self, plan: ParityPlan, users: np.ndarray, rng: np.random.Generator) -> None:
        """One block of the plan: whole rows of ``users`` through ``score_all`` and
        ``recommend`` (``k = n_items`` only for those in ``sort_users``)."""
        n_items = self.n_items
        ref_all = self.ref("score_all", users)
        # eager score_all must equal eager pairwise scoring: every item once per block
        pr = rng.integers(0, len(users), size=n_items, dtype=np.int64)
        pi = np.arange(n_items, dtype=np.int64)
        pairwise = self.ref("score", users[pr], pi)
        self.comp("eager", "score_all", "vs pairwise").add_values(
            pairwise, ref_all[pr, pi], self.atol, self.rtol
        )
        who = "all users" if plan.full else "sampled users"
        self.values("score_all", "full matrix" if plan.full else "sampled rows", ref_all, users)
        rows, items = self.exclusions(users)
        ref_all[rows, items] = -np.inf
        excluded = _exclusion_mask(len(users), n_items, rows, items)
        ks = plan.ks
        for k in ks[:-1] if ks[-1] == n_items else ks:
            self.recommend(f"{who} k={k} excluded", users, k, rows, items, ref_all, excluded)
        if ks[-1] != n_items:
            return
        pick = np.isin(users, plan.sort_users, assume_unique=True)
        if not pick.all():
            users = users[pick]
            if not len(users):
                return
            ref_all, excluded = ref_all[pick], excluded[pick]
            rows, items = self.exclusions(users)
        self.recommend(
            f"{who} k={n_items} excluded", users, n_items, rows, items, ref_all, excluded
        )

    def pairs(self, plan: ParityPlan, chunk: int) -> None:
        """The plan's ``score`` pairs, ``chunk`` at a time."""
        for u, i in plan.score_chunks(chunk):
            case = "every pair" if plan.score_exhaustive else "random pairs"
            self.values("score", case, self.ref("score", u, i), u, i)
            release_memory()


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
    plan: ParityPlan | None = None,
    user_chunk: int | None = None,
    max_call_users: int | None = None,
    max_batch_users: int | None = None,
    seed: int = 0,
    progress: bool = False,
) -> ParityReport:
    """Compare ``backends`` with ``reference`` on every entry point, following a plan.

    Parameters
    ----------
    reference : Backend
        Usually :class:`EagerBackend` on the trained model.
    backends : dict
        Format name -> backend.
    n_users, n_items : int
        Model sizes.
    seen : (indptr, items), optional
        CSR of seen items per user: the exclusions of the plan's ``recommend`` checks.
    batch_sizes : iterable of int
        Random id batches (repeats allowed, unsorted); ``score_all`` / ``recommend``
        batches are capped at ``max_batch_users`` (default 1024).
    full_matrix : bool
        Run the plan (``score_all`` and ``recommend`` on its users' whole rows, ``score``
        on its pairs); False checks the random batches only.
    plan : ParityPlan, optional
        Default: :func:`plan_parity` with the default budget and ``seed``.
    user_chunk : int, optional
        Users per block of the plan (default: from :data:`BLOCK_BYTES`).
    max_call_users : int, optional
        Users per exported ``score_all`` / ``recommend`` call (default 1024; see
        :func:`call_users`, which bounds DenseNet's ``[B, hidden, n_items]``).
    max_batch_users : int, optional
        Largest random batch through ``score_all`` / ``recommend`` in one call (default
        1024; ``call_users(model, BATCH_BYTES)`` bounds its memory).
    seed : int
        Seeds the random batches (and the default plan).

    Returns
    -------
    ParityReport
        With the plan's description (``plan``) and seconds per backend (``timings``).
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(min(threads, PARITY_TORCH_THREADS))
    try:
        return _run_parity(
            reference,
            backends,
            n_users,
            n_items,
            seen,
            atol,
            rtol,
            batch_sizes,
            full_matrix,
            plan,
            user_chunk,
            max_call_users,
            max_batch_users,
            seed,
            progress,
        )
    finally:
        torch.set_num_threads(threads)


def _run_parity(
    reference: Backend,
    backends: dict[str, Backend],
    n_users: int,
    n_items: int,
    seen: tuple[np.ndarray, np.ndarray] | None,
    atol: float,
    rtol: float,
    batch_sizes: Iterable[int],
    full_matrix: bool,
    plan: ParityPlan | None,
    user_chunk: int | None,
    max_call_users: int | None,
    max_batch_users: int | None,
    seed: int,
    progress: bool,
) -> ParityReport:
    start = time.perf_counter()
    report = ParityReport(atol=atol, rtol=rtol)
    rng = np.random.default_rng(seed)
    run = _Run(
        reference,
        backends,
        n_items,
        seen,
        atol,
        rtol,
        max_call_users or 1024,
        max_batch_users or 1024,
    )
    for b in batch_sizes:
        run.batch(rng, b, n_users)
    if full_matrix:
        if plan is None:
            plan = plan_parity(n_users, n_items, seen=seen, seed=seed)
        report.plan = plan.to_dict()
        chunk = user_chunk or max(1, min(len(plan.users), BLOCK_BYTES // (40 * n_items)))
        bar = Progress(len(plan.users), unit="users", desc="parity ", enabled=progress)
        with bar:
            for s in range(0, len(plan.users), chunk):
                users = plan.users[s : s + chunk]
                run.rows(plan, users, rng)
                release_memory()
                bar.update(len(users))
        run.pairs(plan, PAIR_CHUNK)
    report.comparisons = list(run.comps.values())
    report.timings = run.timings()
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
    spec = BundleSpec.parse(manifest, f"bundle {root}")
    if spec.seen is None:
        return None
    return read_seen_csr(root, manifest["seen"], spec.model.n_users, spec.model.n_items)


def verify_staged_bundle(
    writer: BundleWriter,
    manifest: dict[str, Any],
    ckpt: Checkpoint,
    *,
    atol: float = 1e-5,
    rtol: float = 1e-5,
    budget: int | None = None,
    full: bool = False,
    progress: bool = False,
) -> ParityReport:
    """Parity of a bundle still being written, before it replaces anything.

    The plan is :func:`plan_parity` with ``budget`` and ``full``.

    The manifest is staged into the writer's temporary directory
    (:meth:`~recsys_export.bundle.BundleWriter.stage`), so the torch-free runtime, fast
    paths included, is checked on the complete bundle too. A failure therefore never
    touches ``dest``: a previous bundle there stays as it was.
    """
    root = writer.stage(manifest)
    backends = load_backends(root, manifest, CHECKED_BACKENDS)
    return _planned_parity(
        ckpt.model, backends, bundle_seen(root, manifest), atol, rtol, budget, full, True, progress
    )


def _planned_parity(
    model: BaseModel,
    backends: dict[str, Backend],
    seen: tuple[np.ndarray, np.ndarray] | None,
    atol: float,
    rtol: float,
    budget: int | None,
    full: bool,
    full_matrix: bool,
    progress: bool,
) -> ParityReport:
    plan = plan_parity(model.n_users, model.n_items, seen=seen, budget=budget, full=full)
    return run_parity(
        EagerBackend(model),
        backends,
        model.n_users,
        model.n_items,
        seen=seen,
        atol=atol,
        rtol=rtol,
        full_matrix=full_matrix,
        plan=plan,
        max_call_users=call_users(model),
        max_batch_users=call_users(model, BATCH_BYTES),
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
    budget: int | None = None,
    full: bool = False,
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
    full_matrix : bool
        Run the plan; False compares the random batches only (``verify --quick``).
    budget : int, optional
        Pair budget of the plan (:func:`plan_parity`; default :data:`DEFAULT_BUDGET`).
    full : bool
        Every user's whole row whatever the budget (``verify --full``).
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
    seen = bundle_seen(bundle.root, manifest)
    report = _planned_parity(model, backends, seen, atol, rtol, budget, full, full_matrix, progress)
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
    "DEFAULT_BUDGET",
    "ParityPlan",
    "ParityReport",
    "Pt2Backend",
    "call_users",
    "describe_plan",
    "plan_parity",
    "TorchScriptBackend",
    "check_tolerances",
    "load_backends",
    "run_parity",
    "verify_bundle",
]
