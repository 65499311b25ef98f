"""The engine of an approximate variant (``Recommender.load(..., precision="int8")``).

A variant (:mod:`recsys_export.export.precision`) brings its own ``score_all`` and
``score`` graphs; this engine runs them with the sizing of the exact engine it wraps
(DenseNet's tiled kernel keeps its users per call and Python threads). Top-k scores
with the variant, masks in numpy and selects exactly on those scores (the bundle's
TopK kernel, or numpy for bundles without kernels). The int8 MF variant selects
``k + extra`` candidates per user on its int8 scores (threshold top-k over its
``score_groups`` graph) and re-ranks them with the float32 factors, read through a
memory map: the lists then match the exact ones except where the int8 scores push a
true top-k item out of the candidates.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import onnxruntime as ort

from recsys_export.bundle import Bundle
from recsys_export.bundle.schema import VariantSection
from recsys_export.core.topk import EMPTY_ITEM, EMPTY_SCORE, fill_empty, mask_pairs, topk
from recsys_export.runtime.engines import KernelEngine, SessionEngine, iter_blocks, k_vector
from recsys_export.runtime.group_topk import GroupTopK

__all__ = ["RERANK_EXTRA", "VariantEngine", "rerank_candidates", "with_precision"]

#: Candidates per user the int8 variant re-ranks exactly: ``k + max(k, RERANK_EXTRA)``.
RERANK_EXTRA = 10
#: Users per int8 ``score_all_partial`` call: 32 x 20k scores (2.5 MB) stay in cache for
#: the user-bias add (measured 0.47 ns/pair against 0.57 with the add in the graph).
PARTIAL_CALL_USERS = 32


def rerank_candidates(
    user_rows: np.ndarray, item_rows: np.ndarray, cand: np.ndarray, k: int
) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-``k`` among candidate items.

    Parameters
    ----------
    user_rows : np.ndarray
        ``float32[B, f]`` augmented user factors.
    item_rows : np.ndarray
        ``float32[n_items, f]`` augmented item factors (a memory map: only the
        candidates' rows are read).
    cand : np.ndarray
        ``int64[B, c]`` candidate items, ``-1`` in empty slots.
    k : int
        ``k <= c``.

    Returns
    -------
    (np.ndarray, np.ndarray)
        ``float32[B, k]`` exact scores and ``int64[B, k]`` items, descending, ties by
        item index, empty slots ``-inf`` / ``-1``.
    """
    valid = cand >= 0
    rows = np.asarray(item_rows[np.where(valid, cand, 0)])  # [B, c, f]
    scores = np.einsum("bf,bcf->bc", user_rows, rows).astype(np.float32)
    scores[~valid] = EMPTY_SCORE
    key = np.where(valid, cand, np.iinfo(np.int64).max)
    order = np.lexsort((key, -scores), axis=1)[:, :k]
    out_s = np.take_along_axis(scores, order, axis=1)
    out_i = np.take_along_axis(cand, order, axis=1)
    return out_s, fill_empty(out_i, out_s)


class VariantEngine(SessionEngine):
    """Scores with a variant's graphs, sized like the exact ``base`` engine.

    Parameters
    ----------
    base : SessionEngine
        The exact engine of the same bundle (sizes, Python threads, the TopK kernel).
    variant : VariantSection
        The variant to run.
    bundle : Bundle
        For the re-rank arrays' paths.
    """

    def __init__(self, base: SessionEngine, variant: VariantSection, bundle: Bundle) -> None:
        super().__init__(base.manifest, base.sessions, base.threads)
        self.variant = variant
        self.precision = variant.precision
        self._base = base
        self.block, self.call_users = base.block, base.call_users
        self.bytes_per_user = base.bytes_per_user
        tiled = variant.kernel_score_all and isinstance(base, KernelEngine)
        self.python_threads = base.python_threads if tiled else 1
        self._call_threads = getattr(base, "_kernel_threads", None) if tiled else None
        self._user_bias: np.ndarray | None = None
        self._score_graph = "score_all"
        if "score_all_partial" in variant.graphs:  # int8: the user bias added here
            self._score_graph = "score_all_partial"
            self._user_bias = bundle.read_array(variant.arrays["user_bias"])
            self.call_users = PARTIAL_CALL_USERS  # the block stays in cache for the add
            self.python_threads, self._call_threads = base.threads, 1
        self._groups: GroupTopK | None = None
        self._rerank: tuple[np.ndarray, np.ndarray] | None = None
        if "users" in variant.arrays and "items" in variant.arrays:
            users, items = (
                bundle.read_array(variant.arrays[a], mmap=True) for a in ("users", "items")
            )
            self._rerank = (users, items)
            self._groups = GroupTopK.of(self._graph, self.n_items, variant, self._full_topk)

    def _after_call(self, users: np.ndarray, scores: np.ndarray) -> None:
        """int8: add the users' bias to a call's partial scores, in place (in cache)."""
        if self._user_bias is not None:
            scores += self._user_bias[users][:, None]

    def _graph(self, name: str, threads: int | None = None) -> ort.InferenceSession:
        key = f"variant:{self.precision}:{name}" + ("" if threads is None else f":{threads}")
        return self.sessions.get(key, self.variant.graphs[name], threads)

    def first_session(self) -> None:
        """Open the variant's ``score_all`` graph (fail early on one onnxruntime refuses)."""
        self._score_session()

    def _score_session(self) -> ort.InferenceSession:
        return self._graph(self._score_graph, self._call_threads)

    def score(self, users: np.ndarray, items: np.ndarray) -> np.ndarray:
        """Pairwise scores of validated indices (the variant's ``score`` graph)."""
        return self._graph("score").run(None, {"users": users, "items": items})[0]

    def _full_topk(self, masked: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Exact top-``k`` of masked scores (the TopK kernel, or numpy)."""
        if isinstance(self._base, KernelEngine):
            kernel = self._base._kernel("topk")
            s, it = kernel.run(None, {"scores": masked, "k": k_vector(k)})
            return s, fill_empty(it, s)
        return topk(masked, k)

    def _topk_block(
        self, u: np.ndarray, k: int, r: np.ndarray, e: np.ndarray, state: Any
    ) -> tuple[np.ndarray, np.ndarray]:
        dst = np.empty((u.size, self.n_items), dtype=np.float32)
        self.score_all_into(u, dst)
        mask_pairs(dst, r, e)
        return self._full_topk(dst, min(k, self.n_items))

    def recommend_one(
        self, user: int, k: int, ex_items: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        rows = np.zeros(ex_items.size, dtype=np.int64)
        return self.topk(np.array([user], dtype=np.int64), k, rows, ex_items)

    def topk(
        self, users: np.ndarray, k: int, rows: np.ndarray, ex_items: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """Top-``k`` of validated users on the variant's scores (int8: candidates
        re-ranked exactly)."""
        if self._rerank is None or users.size == 0:
            return super().topk(users, k, rows, ex_items)
        c = min(self.n_items, k + max(k, RERANK_EXTRA))
        if self._groups is not None and self._groups.serves(c):
            blocks = list(iter_blocks(users.size, self.block, rows, ex_items))
            _, cand = self._groups.run(users, c, blocks, self.threads, self.spread)
        else:
            _, cand = super().topk(users, c, rows, ex_items)
        user_rows, item_rows = self._rerank
        out_s = np.empty((users.size, k), dtype=np.float32)
        out_i = np.full((users.size, k), EMPTY_ITEM, dtype=np.int64)
        for start in range(0, users.size, 4096):
            stop = min(start + 4096, users.size)
            u_rows = np.asarray(user_rows[users[start:stop]])
            out_s[start:stop], out_i[start:stop] = rerank_candidates(
                u_rows, item_rows, cand[start:stop], k
            )
        return out_s, out_i


def with_precision(
    engine: SessionEngine,
    bundle: Bundle,
    precision: str,
    block_users: int | None = None,
    call_users: int | None = None,
) -> SessionEngine:
    """``engine`` for ``fp32`` (the exact graphs), else the bundle's approximate variant
    of ``precision`` over it (loaded only when asked for)."""
    if precision == "fp32":
        return engine
    variant = VariantEngine(engine, bundle.manifest.variant(precision), bundle)
    variant.resize(block_users, call_users)
    return variant
