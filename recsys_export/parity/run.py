"""The parity pass: a plan's inputs through the reference and every backend."""

from __future__ import annotations

import functools
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any

import numpy as np
import torch

from recsys_export.models import BaseModel, topk_excluding
from recsys_export.parity.backends import Backend, EagerBackend, NotApplicable, _seen_for
from recsys_export.parity.bounds import FixedTolerance, Reference, Scored, reference_for
from recsys_export.parity.report import REFERENCE_ROW, Comparison, ParityReport
from recsys_export.plan import (
    BLOCK_BYTES,
    CALL_BYTES,
    PAIR_CHUNK,
    PARITY_TORCH_THREADS,
    PARITY_WORKERS,
    ParityPlan,
    plan_parity,
)
from recsys_export.progress import Progress

BATCH_SIZES = (1, 2, 7, 1024)


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
    only their ``[B, n_items]`` output (and a top-k copy); a generic module (``byom``)
    its own activations per pair, measured (``pair_bytes``).
    """
    measured = getattr(model, "pair_bytes", None)
    if callable(measured):
        per_pair = int(measured())
    else:
        per_pair = 4 * (2 + int(getattr(model, "hidden", 0)))
    return max(1, min(1024, nbytes // (per_pair * model.n_items)))


class _Run:
    """One parity pass: the comparisons, per-backend clocks and the shared helpers."""

    def __init__(
        self,
        reference: Reference,
        backends: dict[str, Backend],
        n_items: int,
        seen: tuple[np.ndarray, np.ndarray] | None,
        cap: int,
        batch_cap: int,
    ) -> None:
        self.reference, self.backends, self.n_items, self.seen = reference, backends, n_items, seen
        self.cap, self.batch_cap = cap, max(cap, batch_cap)
        self.comps: dict[tuple[str, str, str], Comparison] = {}
        self.clock: dict[str, dict[str, float]] = {b: {} for b in [REFERENCE_ROW, *backends]}
        self._lock = threading.Lock()
        self._pool: Any = None
        if PARITY_WORKERS > 1 and len(backends) > 1:
            from concurrent.futures import ThreadPoolExecutor

            self._pool = ThreadPoolExecutor(PARITY_WORKERS, thread_name_prefix="parity")

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown()

    def each_backend(self, task: Callable[[str, Backend], None]) -> None:
        """``task(fmt, backend)`` for every backend, side by side on the pool.

        Comparisons the tasks create are then ordered as a sequential pass would
        create them (backend order), so ``parity.json`` does not depend on timing.
        """
        if self._pool is None:
            for fmt, be in self.backends.items():
                task(fmt, be)
            return
        before = len(self.comps)
        futures = [self._pool.submit(task, fmt, be) for fmt, be in self.backends.items()]
        for f in futures:
            f.result()
        if len(self.comps) > before:
            order = {fmt: j for j, fmt in enumerate(self.backends)}
            items = list(self.comps.items())
            new = sorted(items[before:], key=lambda kv: order.get(kv[0][0], len(order)))
            self.comps = dict(items[:before] + new)

    def tick(self, fmt: str, entry: str, t0: float) -> None:
        """Add the seconds since ``t0`` to ``fmt``'s clock for ``entry``."""
        dt = time.perf_counter() - t0
        with self._lock:
            per = self.clock.setdefault(fmt, {})
            per[entry] = per.get(entry, 0.0) + dt

    def timings(self) -> dict[str, dict[str, float]]:
        """Seconds per backend and entry point (``reference``: the float64 reference and
        its bounds; ``compare``: our own comparisons)."""
        out = {}
        for fmt, per in self.clock.items():
            out[fmt] = {k: round(v, 3) for k, v in per.items()}
            out[fmt]["total"] = round(sum(per.values()), 3)
        return out

    def comp(self, fmt: str, entry: str, case: str) -> Comparison:
        key = (fmt, entry, case)
        with self._lock:
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
        self, entry: str, case: str, expected: Scored, *args: Any, cap: int | None = None
    ) -> None:
        """Every backend's ``score`` or ``score_all`` on ``args`` against ``expected``
        (reference values and bounds)."""

        def one(fmt: str, be: Backend) -> None:
            fn = getattr(be, entry)
            if entry == "score_all":
                got = self.call(
                    fmt, entry, case, functools.partial(self.by_calls, cap=cap), be, entry, *args
                )
            else:
                got = self.call(fmt, entry, case, fn, *args)
            if got is not None:
                t0 = time.perf_counter()
                self.comp(fmt, entry, case).add_values(expected[0], expected[1], got)
                self.tick("compare", entry, t0)

        self.each_backend(one)

    def recommend(
        self,
        case: str,
        users: np.ndarray,
        k: int,
        rows: np.ndarray,
        items: np.ndarray,
        masked: Scored,
        excluded: np.ndarray,
        cap: int | None = None,
    ) -> None:
        """``recommend`` of every backend against the top-k of the reference's scores
        (``masked``: values with the exclusions at ``-inf``, and bounds), split into
        calls of ``cap`` users only when the exclusions are the seen items.

        Each returned score is compared with the reference score of the item returned
        beside it; the lists with :meth:`Comparison.add_topk`."""
        t0 = time.perf_counter()
        ref_i = _topk_items(masked[0], k)
        self.tick(REFERENCE_ROW, "recommend", t0)

        def one(fmt: str, be: Backend) -> None:
            split = functools.partial(self.by_calls, cap=cap)
            got = self.call(fmt, "recommend", case, split, be, "recommend", users, k, rows, items)
            if got is None:
                return
            t0 = time.perf_counter()
            c = self.comp(fmt, "recommend", case)
            if got[1].shape == ref_i.shape:
                c.add_values(*_scores_of(masked, got[1]), got[0])
            else:
                c.add_values(masked[0][:, :k], masked[1][:, :k], got[0])  # reports the shape
            if got[1].dtype != np.int64:
                c.dtype_ok = False
                c.problems.append(f"items dtype {got[1].dtype} != int64")
            c.add_topk(masked[0], masked[1], ref_i, got[1], excluded)
            self.tick("compare", "recommend", t0)

        self.each_backend(one)

    def ref(self, entry: str, case: str, *args: Any) -> Scored:
        """The reference's values and bounds; non-finite values are reported on the
        reference's own row (the model itself scores NaN or infinity)."""
        t0 = time.perf_counter()
        fn = getattr(self.reference, entry)
        if entry == "score_all" and self._pool is not None and len(args[0]) >= 16:
            out = self._both_cores(fn, args[0])
        else:
            out = fn(*args)
        self.tick(REFERENCE_ROW, entry, t0)
        vals = out[0]
        if not np.isfinite(vals).all():
            bad = ~np.isfinite(vals)
            where = np.unravel_index(int(np.flatnonzero(bad)[0]), vals.shape)
            users = args[0]
            item = int(args[1][where[0]]) if entry == "score" else int(where[-1])
            c = self.comp(REFERENCE_ROW, entry, case)
            c.n_values += vals.size
            c.n_nonfinite += int(bad.sum())
            c.problems.append(
                f"the model's own scores are not finite: {int(bad.sum()):,} of {vals.size:,} "
                f"values in {case!r} (first: {vals[where]} for user index "
                f"{int(users[where[0]])}, item index {item}); fix the model or its weights"
            )
        return out

    def _both_cores(self, fn: Callable[[np.ndarray], Scored], users: np.ndarray) -> Scored:
        """``fn(users)`` as two halves of the rows on the pool (the reference costs
        about what a backend does), each written into one output as it finishes."""
        vals = np.empty((len(users), self.n_items), dtype=np.float64)
        bounds = np.empty((len(users), self.n_items), dtype=np.float32)

        def half(sl: slice) -> None:
            v, b = fn(users[sl])
            vals[sl], bounds[sl] = v, b

        mid = len(users) // 2
        for f in [self._pool.submit(half, sl) for sl in (slice(0, mid), slice(mid, None))]:
            f.result()
        return vals, bounds

    def batch(self, rng: np.random.Generator, b: int, n_users: int) -> None:
        """Random ids (repeats, unsorted): ``score`` on ``b`` pairs, ``score_all`` and
        ``recommend`` in one call on up to ``batch_cap`` of the users, with random
        exclusions."""
        n_items = self.n_items
        users = rng.integers(0, n_users, size=b, dtype=np.int64)
        items = rng.integers(0, n_items, size=b, dtype=np.int64)
        case = f"batch={b}"
        self.values("score", case, self.ref("score", case, users, items), users, items)
        rb = min(b, self.batch_cap)
        users = users[:rb]
        case = f"batch={rb}"
        ref_all = self.ref("score_all", case, users)
        self.values("score_all", case, ref_all, users, cap=rb)
        k = min(10, n_items)
        rows, ex = _random_exclusions(rng, rb, n_items, min(3, n_items - 1) if n_items > 1 else 0)
        ref_all[0][rows, ex] = -np.inf
        excluded = _exclusion_mask(rb, n_items, rows, ex)
        self.recommend(f"batch={rb} k={k}", users, k, rows, ex, ref_all, excluded, cap=rb)

    def rows(self, plan: ParityPlan, users: np.ndarray) -> None:
        """One block of the plan: whole rows of ``users`` through ``score_all`` and
        ``recommend`` (``k = n_items`` only for those in ``sort_users``)."""
        n_items = self.n_items
        case = "full matrix" if plan.full else "sampled rows"
        ref_all = self.ref("score_all", case, users)
        who = "all users" if plan.full else "sampled users"
        self.values("score_all", case, ref_all, users)
        rows, items = self.exclusions(users)
        ref_all[0][rows, items] = -np.inf
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
            ref_all, excluded = (ref_all[0][pick], ref_all[1][pick]), excluded[pick]
            rows, items = self.exclusions(users)
        self.recommend(
            f"{who} k={n_items} excluded", users, n_items, rows, items, ref_all, excluded
        )

    def pairs(self, plan: ParityPlan, chunk: int) -> None:
        """The plan's ``score`` pairs, ``chunk`` at a time."""
        case = "every pair" if plan.score_exhaustive else "random pairs"
        for u, i in plan.score_chunks(chunk):
            self.values("score", case, self.ref("score", case, u, i), u, i)
            release_memory()


def _topk_items(masked: np.ndarray, k: int) -> np.ndarray:
    """The reference's top-``k`` items per row of ``masked`` (``-inf`` = excluded; empty
    slots ``-1``), by :func:`~recsys_export.models.topk_excluding` in float64."""
    none = torch.zeros(0, dtype=torch.int64)
    return topk_excluding(torch.from_numpy(masked), k, none, none)[1].numpy()


def _scores_of(masked: Scored, items: np.ndarray) -> Scored:
    """Reference values and bounds of the items a backend returned (``-inf`` for empty
    slots, NaN for items out of range: never equal to a returned score)."""
    vals, bounds = masked
    n = vals.shape[1]
    rows = np.arange(len(items))[:, None]
    valid = (items >= 0) & (items < n)
    safe = np.where(valid, items, 0)
    exp = np.where(valid, vals[rows, safe], np.where(items == -1, -np.inf, np.nan))
    return exp, np.where(valid, bounds[rows, safe], 0.0)


def run_parity(
    model: BaseModel,
    backends: dict[str, Backend],
    n_users: int,
    n_items: int,
    *,
    seen: tuple[np.ndarray, np.ndarray] | None = None,
    atol: float | None = None,
    rtol: float | None = None,
    batch_sizes: Iterable[int] = BATCH_SIZES,
    full_matrix: bool = True,
    plan: ParityPlan | None = None,
    user_chunk: int | None = None,
    max_call_users: int | None = None,
    max_batch_users: int | None = None,
    seed: int = 0,
    progress: bool = False,
    device: torch.device | None = None,
    eager: bool = True,
) -> ParityReport:
    """Compare ``backends`` with ``model``'s float64 reference on every entry point,
    following a plan.

    Parameters
    ----------
    model : BaseModel
        The eager model. The reference is :func:`~recsys_export.parity.bounds.reference_for`
        it: float64 scores, each with the bound float32 rounding allows.
    backends : dict
        Format name -> backend.
    n_users, n_items : int
        Model sizes.
    seen : (indptr, items), optional
        CSR of seen items per user: the exclusions of the plan's ``recommend`` checks.
    atol, rtol : float, optional
        Explicit tolerances: ``|actual - ref64| <= atol + rtol * |ref64|`` replaces the
        error model's bound (one given, the other is 1e-5).
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
    device : torch.device, optional
        Where the eager float32 model runs (the reference is computed on the CPU).
    eager : bool
        Check the eager model in float32 too (row ``eager``): the bound must hold for
        the model's own float32 arithmetic.

    Returns
    -------
    ParityReport
        With the rule of the bound (``bound``), the plan's description (``plan``) and
        seconds per backend (``timings``).
    """
    reference = reference_for(model, atol, rtol)
    if eager:
        backends = {"eager": EagerBackend(model, device), **backends}
    threads = torch.get_num_threads()
    torch.set_num_threads(min(threads, PARITY_TORCH_THREADS))
    start = time.perf_counter()
    report = ParityReport(bound=reference.rule)
    if isinstance(reference, FixedTolerance):  # given, or a module without float64
        report.atol, report.rtol = reference.atol, reference.rtol
    if "reference" in reference.rule:
        report.reference = reference.rule["reference"]
    rng = np.random.default_rng(seed)
    run = _Run(reference, backends, n_items, seen, max_call_users or 1024, max_batch_users or 1024)
    try:
        for b in batch_sizes:
            run.batch(rng, b, n_users)
        if full_matrix:
            if plan is None:
                plan = plan_parity(n_users, n_items, seen=seen, seed=seed)
            report.plan = plan.to_dict()
            _run_plan(run, plan, user_chunk, progress)
    finally:
        run.close()
        torch.set_num_threads(threads)
    report.comparisons = list(run.comps.values())
    report.timings = run.timings()
    report.seconds = time.perf_counter() - start
    return report


#: Bytes a block of the plan holds per (user, item) value: the reference's values and
#: bounds (float64), their masked copy, the backends' outputs and the comparisons'
#: float64 temporaries (two at a time).
VALUE_BYTES = 80


def _run_plan(run: _Run, plan: ParityPlan, user_chunk: int | None, progress: bool) -> None:
    n_items = plan.n_items
    chunk = user_chunk or max(1, min(len(plan.users), BLOCK_BYTES // (VALUE_BYTES * n_items)))
    bar = Progress(len(plan.users), unit="users", desc="parity ", enabled=progress)
    with bar:
        for s in range(0, len(plan.users), chunk):
            users = plan.users[s : s + chunk]
            run.rows(plan, users)
            release_memory()
            bar.update(len(users))
    run.pairs(plan, PAIR_CHUNK)
