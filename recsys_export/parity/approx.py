"""Judging an approximate variant on what users feel: the exact lists it keeps.

An ``fp16``/``int8`` variant (:mod:`recsys_export.export.precision`) cannot pass the
exact parity rule and is not meant to. It is judged against the exact bundle (itself
within parity tolerance of the eager model) on a seeded sample of users:

* ``recall@k`` (k = 10 and 100, capped at the catalogue): the share of each user's
  exact top-k list (seen items excluded, empty slots left out) that the variant's
  top-k list holds, averaged over users;
* ``score_recall@k``: the same for lists ranked on the variant's ``score_all`` scores
  alone (what the int8 variant's exact re-rank of its candidates adds is the gap);
* the score error of ``score_all``: max and mean absolute difference, and the max
  relative to the largest exact score magnitude of the user's row.

The result is recorded under ``variants`` in ``parity.json`` and as ``quality`` in the
manifest's variant entry. Nothing fails on it: the numbers are for choosing.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np

from recsys_export.ids import runs_to_coo
from recsys_export.topk import mask_pairs, topk

__all__ = ["APPROX_KS", "APPROX_USERS", "judge_variant"]

#: List lengths whose recall is reported.
APPROX_KS = (10, 100)
#: Users judged (all of them up to this many, else a seeded sample).
APPROX_USERS = 2000
_BLOCK = 256


def _sample(n_users: int, max_users: int, seed: int) -> np.ndarray:
    if n_users <= max_users:
        return np.arange(n_users, dtype=np.int64)
    rng = np.random.default_rng(seed)
    return np.sort(rng.choice(n_users, max_users, replace=False)).astype(np.int64)


def _overlap(approx: np.ndarray, exact: np.ndarray) -> tuple[float, int]:
    """Summed per-user recall of ``exact``'s non-empty slots, and the users counted."""
    total, users = 0.0, 0
    for a, e in zip(approx, exact):
        want = e[e >= 0]
        if want.size:
            total += np.isin(want, a).sum() / want.size
            users += 1
    return total, users


def judge_variant(
    root: str | Path,
    precision: str,
    *,
    max_users: int = APPROX_USERS,
    seed: int = 0,
    threads: int | None = None,
) -> dict[str, Any]:
    """Recall of the exact top-k lists and score error of a bundle's variant.

    Parameters
    ----------
    root : path
        The bundle (a staged one during ``export``).
    precision : str
        The variant (``fp16`` or ``int8``).
    max_users : int
        Users judged: every user up to this many, else a seeded random sample.

    Returns
    -------
    dict
        ``precision``, ``users``, ``recall@10``, ``recall@100``, ``score_abs_max``,
        ``score_abs_mean``, ``score_rel_max``, ``reference`` and ``seconds``.
    """
    from recsys_export.runtime import Recommender

    t0 = time.perf_counter()
    exact = Recommender.load(root, verify=False, intra_op_threads=threads)
    approx = Recommender.load(root, verify=False, intra_op_threads=threads, precision=precision)
    users = _sample(exact.n_users, max_users, seed)
    ks = sorted({min(k, exact.n_items) for k in APPROX_KS})
    kmax = ks[-1]
    hits = dict.fromkeys(ks, 0.0)
    score_hits = dict.fromkeys(ks, 0.0)
    counted = dict.fromkeys(ks, 0)
    indptr, seen = exact.seen_csr()
    abs_max = rel_max = abs_sum = 0.0
    for start in range(0, users.size, _BLOCK):
        u = users[start : start + _BLOCK]
        e = exact.recommend(u, kmax, by_index=True).items
        a = approx.recommend(u, kmax, by_index=True).items
        for k in ks:
            total, n = _overlap(a[:, :k], e[:, :k])
            hits[k] += total
            counted[k] += n
        es, as_ = exact.score_all(u, by_index=True), approx.score_all(u, by_index=True)
        diff = np.abs(as_ - es)
        rows, items = runs_to_coo(indptr[u], indptr[u + 1], seen)
        ranked = as_.copy()
        mask_pairs(ranked, rows, items)
        _, by_score = topk(ranked, kmax)
        for k in ks:
            score_hits[k] += _overlap(by_score[:, :k], e[:, :k])[0]
        abs_max = max(abs_max, float(diff.max()))
        abs_sum += float(diff.sum(dtype=np.float64))
        scale = np.maximum(np.abs(es).max(axis=1, keepdims=True), np.float32(1e-12))
        rel_max = max(rel_max, float((diff / scale).max()))
    out: dict[str, Any] = {"precision": precision, "users": int(users.size)}
    for k in APPROX_KS:
        kk = min(k, exact.n_items)
        out[f"recall@{k}"] = round(hits[kk] / counted[kk], 6) if counted[kk] else None
        out[f"score_recall@{k}"] = round(score_hits[kk] / counted[kk], 6) if counted[kk] else None
    out.update(
        {
            "score_abs_max": abs_max,
            "score_abs_mean": abs_sum / max(1, users.size * exact.n_items),
            "score_rel_max": rel_max,
            "reference": "the exact bundle (fp32 graphs, within parity tolerance of eager)",
            "seconds": round(time.perf_counter() - t0, 3),
        }
    )
    return out
