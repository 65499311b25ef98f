"""The two scoring engines of the runtime (sessions: :mod:`.sessions`).

An engine is chosen once, when a bundle is loaded: :class:`KernelEngine` runs the
bundle's fast-path graphs (``formats.onnx.kernels``: MF ``score_all`` as one MatMul of
augmented factors, DenseNet ``score_all`` over cache-sized item tiles, a TopK graph fed
with scores masked in numpy, a one-call single-user recommend); :class:`GraphEngine`
runs the three entry-point graphs (older bundles, or ``fast_paths=False``). Both answer
the same three questions: scores of a block of users into a buffer, the top-k of one
user, and the top-k of many users in blocks.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import onnxruntime as ort

from recsys_export.bundle import Bundle
from recsys_export.manifest import BundleSpec
from recsys_export.runtime.group_topk import GroupTopK
from recsys_export.runtime.sessions import (  # noqa: F401  (re-exported)
    DEFAULT_PROVIDERS,
    OPT_LEVELS,
    THREADS_PER_CORE,
    Sessions,
    check_providers,
    max_threads,
)
from recsys_export.topk import EMPTY_SCORE, fill_empty, mask_pairs
from recsys_export.validation import check_choice, check_int

__all__ = [
    "OPT_LEVELS",
    "Engine",
    "GraphEngine",
    "KernelEngine",
    "Sessions",
    "check_providers",
    "iter_blocks",
    "make_engine",
]

#: Target size (x2 margin) of the [block, n_items] score matrix one graph call produces.
#: MF at 20k items: blocks of 26 users ran at 2.55 ns/pair, 128-256 users at 2.0 (the
#: GEMM needs rows to amortise streaming the item factors), so ~200 users per call.
_BLOCK_BYTES = 32 << 20
_MAX_BLOCK = 1024
_K_CACHED = (1, 5, 10, 20, 50, 100)
_K_SCALARS = {k: np.array(k, dtype=np.int64) for k in _K_CACHED}
_K_VECTORS = {k: np.array([k], dtype=np.int64) for k in _K_CACHED}


def _k_scalar(k: int) -> np.ndarray:
    arr = _K_SCALARS.get(k)
    return arr if arr is not None else np.array(k, dtype=np.int64)


def _k_vector(k: int) -> np.ndarray:
    arr = _K_VECTORS.get(k)
    return arr if arr is not None else np.array([k], dtype=np.int64)


def iter_blocks(
    b: int, block: int, rows: np.ndarray, ex_items: np.ndarray
) -> Iterator[tuple[int, int, np.ndarray, np.ndarray]]:
    """Split ``b`` users into blocks: ``(start, stop, rows - start, items)`` per block.

    ``rows``/``ex_items`` are COO exclusions (row positions in ``0..b-1``).
    """
    # rows are sorted by construction only for the seen part; sort to slice by block
    if rows.size and b > block and bool(np.any(rows[1:] < rows[:-1])):
        order = np.argsort(rows, kind="stable")
        rows, ex_items = rows[order], ex_items[order]
    bounds = np.searchsorted(rows, np.arange(0, b + block, block)) if b > block else None
    for j, start in enumerate(range(0, b, block)):
        stop = min(start + block, b)
        if bounds is None:
            yield start, stop, rows, ex_items
        else:
            lo, hi = bounds[j], bounds[j + 1]
            yield start, stop, rows[lo:hi] - start, ex_items[lo:hi]


class Engine:
    """What the runtime asks of a scoring engine (the base class of both).

    Attributes
    ----------
    fast : bool
        Whether the engine runs the fast-path kernels.
    bytes_per_user : int
        Bytes of intermediates per user in one ``score_all`` call (chunk sizing).
    block : int
        Users per top-k block.
    call_users : int
        Users per ``score_all`` session call.
    """

    fast = False

    def __init__(self, spec: BundleSpec, sessions: Sessions, threads: int) -> None:
        self.spec = spec
        self.sessions = sessions
        self.n_items = spec.model.n_items
        self.threads = threads
        self.python_threads = 1  # Python threads driving score_all calls
        self._pool: ThreadPoolExecutor | None = None
        self._lock = threading.Lock()
        self.bytes_per_user = self.n_items * 4 * 2
        self.block = self._default_block()
        self.call_users = self.block

    def _default_block(self) -> int:
        return int(min(_MAX_BLOCK, max(1, _BLOCK_BYTES // self.bytes_per_user)))

    def resize(self, block: int | None, call_users: int | None) -> None:
        """Override the top-k block and the users per ``score_all`` call (None: keep)."""
        if block is not None:
            self.block = block
        if call_users is not None:
            self.call_users = call_users

    def first_session(self) -> None:
        """Open the ``recommend`` entry-point graph: fail early on one onnxruntime refuses."""
        self.sessions.get("recommend", self.spec.require_onnx()["recommend"])

    # ---------------------------------------------------------------- score_all
    def _score_session(self) -> ort.InferenceSession:  # pragma: no cover - abstract
        raise NotImplementedError

    def score(self, users: np.ndarray, items: np.ndarray) -> np.ndarray:  # pragma: no cover
        """Pairwise scores of validated indices."""
        raise NotImplementedError

    def score_all_into(self, users: np.ndarray, out: np.ndarray) -> None:
        """Fill ``out[len(users), n_items]`` (C-contiguous) with validated users' scores.

        One session call per ``call_users`` users writes straight into ``out``; with
        ``python_threads > 1`` the calls are spread over that many threads (the caller
        is one of them), each on its own blocks.
        """
        sess = self._score_session()
        n_items, block = self.n_items, self.call_users
        starts = list(range(0, users.size, block))

        def work(my_starts: list[int]) -> None:
            for start in my_starts:
                u = np.ascontiguousarray(users[start : start + block])
                dst = out[start : start + u.size]
                binding = sess.io_binding()
                binding.bind_cpu_input("users", u)
                binding.bind_output(
                    "scores", "cpu", 0, np.float32, [u.size, n_items], dst.ctypes.data
                )
                sess.run_with_iobinding(binding)
                self._after_call(u, dst)

        self.spread(starts, work, self.python_threads)

    def _after_call(self, users: np.ndarray, scores: np.ndarray) -> None:
        """Finish one ``score_all`` call's scores in place (nothing here)."""

    def spread(self, chunks: list[Any], work: Callable[[list[Any]], None], threads: int) -> None:
        """Run ``work`` on ``chunks[i::threads]`` in ``threads`` threads (the caller is
        one of them) and wait for all; the first exception is raised."""
        threads = min(threads, len(chunks))
        if threads <= 1:
            work(chunks)
            return
        pool = self._thread_pool()
        futures = [pool.submit(work, chunks[i::threads]) for i in range(1, threads)]
        try:
            work(chunks[0::threads])
        finally:
            for fut in futures:
                fut.result()

    def _thread_pool(self) -> ThreadPoolExecutor:
        if self._pool is None:
            with self._lock:
                if self._pool is None:
                    self._pool = ThreadPoolExecutor(
                        max_workers=max(1, self.threads - 1), thread_name_prefix="recsys-rt"
                    )
        return self._pool

    # ---------------------------------------------------------------- top-k
    def recommend_one(
        self, user: int, k: int, ex_items: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:  # pragma: no cover - abstract
        """Top-``k`` ``(scores [1, k], items [1, k])`` of one user, ``ex_items`` excluded."""
        raise NotImplementedError

    def topk(
        self, users: np.ndarray, k: int, rows: np.ndarray, ex_items: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """Top-``k`` of validated users with COO exclusions, in blocks of ``block`` users.

        Returns
        -------
        (np.ndarray, np.ndarray)
            ``float32[B, k]`` scores and ``int64[B, k]`` items (the empty-slot rule).
        """
        b = users.size
        scores = np.empty((b, k), dtype=np.float32)
        items = np.empty((b, k), dtype=np.int64)
        state = self._topk_state(b, k)
        for start, stop, r, e in iter_blocks(b, self.block, rows, ex_items):
            s, it = self._topk_block(users[start:stop], k, r, e, state)
            scores[start:stop], items[start:stop] = s, it
        return scores, items

    def _topk_state(self, b: int, k: int) -> Any:
        return None

    def _topk_block(
        self, u: np.ndarray, k: int, r: np.ndarray, e: np.ndarray, state: Any
    ) -> tuple[np.ndarray, np.ndarray]:  # pragma: no cover - abstract
        raise NotImplementedError


class GraphEngine(Engine):
    """The three entry-point graphs (``formats.onnx.graphs``)."""

    def __init__(self, spec: BundleSpec, sessions: Sessions, threads: int) -> None:
        self._graphs = spec.require_onnx()
        super().__init__(spec, sessions, threads)
        if spec.model.kind == "densenet":
            hidden = int(spec.model.hyperparameters.get("hidden", 1))
            self.bytes_per_user = self.n_items * (hidden + 2) * 4
            self.block = self.call_users = self._default_block()
        elif spec.model.kind == "generic":
            # a module scored pair by pair (byom): the export sized its calls
            users = spec.model.hyperparameters.get("block_users")
            if isinstance(users, int) and not isinstance(users, bool) and users >= 1:
                self.call_users = self.block = users

    def _session(self, name: str) -> ort.InferenceSession:
        return self.sessions.get(name, self._graphs[name])

    def _score_session(self) -> ort.InferenceSession:
        return self._session("score_all")

    def score(self, users: np.ndarray, items: np.ndarray) -> np.ndarray:
        """Pairwise scores of validated indices (the ``score`` graph)."""
        return self._session("score").run(None, {"users": users, "items": items})[0]

    def recommend_one(
        self, user: int, k: int, ex_items: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        res = self._session("recommend").run(
            None,
            {
                "users": np.array([user], dtype=np.int64),
                "k": _k_scalar(k),
                "exclude_rows": np.zeros(ex_items.size, dtype=np.int64),
                "exclude_items": ex_items,
            },
        )
        return res[0], res[1]

    def _topk_state(self, b: int, k: int) -> Any:
        return self._session("recommend"), _k_scalar(k)

    def _topk_block(
        self, u: np.ndarray, k: int, r: np.ndarray, e: np.ndarray, state: Any
    ) -> tuple[np.ndarray, np.ndarray]:
        sess, k_arr = state
        s, it = sess.run(None, {"users": u, "k": k_arr, "exclude_rows": r, "exclude_items": e})
        return s, it


class KernelEngine(GraphEngine):
    """The fast-path kernels (``formats.onnx.kernels``); ``score`` keeps its graph.

    Top-k scores a cache-sized block with the ``score_all`` kernel, writes ``-inf`` at
    the exclusions in numpy and runs the TopK graph: at 20k x 20k this measured 3.7
    ns/pair for MF against 5.3 for its recommend graph, and DenseNet's recommend graph
    is untiled.

    Parameters
    ----------
    python_threads : bool
        Single-threaded ``score_all`` (and MF ``score_groups``) calls driven by
        ``threads`` Python threads on alternating blocks (DenseNet: of the manifest's
        ``block_users`` users, each core keeping its own tile in cache; MF: a block's
        users shared between the threads; on the shared 2-core machine, with other
        processes running, one intra-op pool's threads waited on each other: MF
        score_all ran 1.57x the best bare product with them, 1.0-1.1x this way); False:
        one caller thread and onnxruntime's intra-op threads. ``recsys-export bench``
        measures both for DenseNet.
    """

    fast = True

    def __init__(
        self, spec: BundleSpec, sessions: Sessions, threads: int, python_threads: bool = True
    ) -> None:
        super().__init__(spec, sessions, threads)
        assert spec.kernels is not None
        self._kernels = spec.kernels.files
        self._dn = spec.model.kind == "densenet"
        self.bytes_per_user = self.n_items * 4 * 2
        self.block = self.call_users = self._default_block()
        if self._dn:
            # tiled: the [B, H, T] intermediate is bounded by the tile, not by B. The
            # tiles are sized for the manifest's block_users per call; a top-k block
            # gives every Python thread several calls
            self.call_users = spec.kernels.block_users
            self.block = self.call_users * 4 * max(1, threads)
        elif python_threads:  # MF: a block's calls shared between the threads
            self.call_users = max(1, -(-self.block // threads))
        if python_threads:
            self.python_threads = threads
        self._kernel_threads = 1 if python_threads else None
        self._user_kernel = "recommend_user" in self._kernels
        self._neg_inf = np.full((1, 256), EMPTY_SCORE, dtype=np.float32)  # grown on need
        self._groups: GroupTopK | None = None
        if spec.kernels.groups:
            self._groups = GroupTopK(
                self._kernel,
                self.n_items,
                spec.kernels.groups,
                spec.kernels.group_width,
                self._full_topk,
            )
            self._group_threads = threads if python_threads else 1

    def _kernel(self, name: str, threads: int | None = None) -> ort.InferenceSession:
        key = f"kernel:{name}" if threads is None else f"kernel:{name}:{threads}"
        return self.sessions.get(key, self._kernels[name], threads)

    def _score_session(self) -> ort.InferenceSession:
        return self._kernel("score_all", self._kernel_threads)

    def recommend_one(
        self, user: int, k: int, ex_items: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        if self._user_kernel:  # MF: four nodes, the -inf given here
            m = ex_items.size
            neg_inf = self._neg_inf
            if m > neg_inf.size:
                self._neg_inf = neg_inf = np.full((1, 2 * m), EMPTY_SCORE, dtype=np.float32)
            s, it = self._kernel("recommend_user").run(
                None,
                {
                    "users": np.array([user], dtype=np.int64),
                    "k": _k_vector(k),
                    "exclude": ex_items.reshape(1, m),
                    "exclude_scores": neg_inf[:, :m],
                },
            )
            return s, fill_empty(it, s)
        res = self._kernel("recommend_one").run(
            None,
            {
                "users": np.array([user], dtype=np.int64),
                "k": _k_vector(k),
                "exclude_items": ex_items,
            },
        )
        return res[0], res[1]

    def topk(
        self, users: np.ndarray, k: int, rows: np.ndarray, ex_items: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """Top-``k`` of validated users: the threshold path of the MF ``score_groups``
        kernel where the bundle has it and ``k`` is small, else blocks of scores masked in
        numpy and the TopK kernel (the same lists)."""
        if self._groups is None or not self._groups.serves(k) or users.size == 0:
            return super().topk(users, k, rows, ex_items)
        blocks = list(iter_blocks(users.size, self.block, rows, ex_items))
        return self._groups.run(users, k, blocks, self._group_threads, self.spread)

    def _full_topk(self, masked: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        s, it = self._kernel("topk").run(None, {"scores": masked, "k": _k_vector(k)})
        return s, it

    def _topk_state(self, b: int, k: int) -> Any:
        buf = np.empty((min(b, self.block), self.n_items), dtype=np.float32)
        return self._kernel("topk"), _k_vector(k), buf

    def _topk_block(
        self, u: np.ndarray, k: int, r: np.ndarray, e: np.ndarray, state: Any
    ) -> tuple[np.ndarray, np.ndarray]:
        sess, k1, buf = state
        dst = buf[: u.size]
        self.score_all_into(u, dst)
        mask_pairs(dst, r, e)
        s, it = sess.run(None, {"scores": dst, "k": k1})
        fill_empty(it, s)
        return s, it


def make_engine(
    bundle: Bundle,
    *,
    intra_op_threads: int | None = None,
    graph_optimization: str = "all",
    fast_paths: bool = True,
    python_threads: bool = True,
    block_users: int | None = None,
    call_users: int | None = None,
    providers: list[str] | None = None,
) -> Engine:
    """The engine for a bundle, chosen once: kernels when the bundle has usable ones
    (and ``fast_paths``), the entry-point graphs otherwise. See
    :meth:`recsys_export.runtime.Recommender.load` for the options.

    Raises
    ------
    BundleError
        The bundle has no ONNX entry-point graphs, or a malformed manifest.
    ConfigError
        Invalid options, or an execution provider onnxruntime does not have.
    """
    providers = check_providers(providers)
    threads = check_int(
        "intra_op_threads",
        intra_op_threads,
        low=1,
        high=max_threads(),
        none_ok=True,
        hint=f" (--threads: at most {THREADS_PER_CORE} per core, {os.cpu_count()} cores here)",
    )
    check_choice("graph_optimization", graph_optimization, OPT_LEVELS)
    block_users = check_int("block_users", block_users, low=1, none_ok=True)
    call_users = check_int("call_users", call_users, low=1, none_ok=True)
    threads = threads or os.cpu_count() or 1
    spec = bundle.spec
    spec.require_onnx()
    sessions = Sessions(bundle, threads, graph_optimization, providers)
    engine: Engine
    if fast_paths and spec.kernels is not None:
        engine = KernelEngine(spec, sessions, threads, bool(python_threads))
    else:
        engine = GraphEngine(spec, sessions, threads)
    engine.resize(block_users, call_users)
    return engine
