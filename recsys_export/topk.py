"""Top-k and the empty-slot rule, in one place and without torch.

Every top-k list this project produces (the models' ``recommend``, the exported graphs,
the runtime, the torch engine, the benchmarks) follows one rule: items sorted by
descending score, excluded items removed, and slots that no admissible item can fill
hold item :data:`EMPTY_ITEM` (``-1``) and score :data:`EMPTY_SCORE` (``-inf``). The
torch code keeps ``torch.topk`` but takes its constants and :func:`check_k` from here.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from recsys_export.errors import ConfigError

__all__ = [
    "EMPTY_ITEM",
    "EMPTY_SCORE",
    "check_k",
    "fill_empty",
    "group_topk",
    "mask_pairs",
    "take_columns",
    "topk",
]

#: Item index of a slot no admissible item can fill.
EMPTY_ITEM = -1
#: Score of a slot no admissible item can fill (an excluded item scores this too).
EMPTY_SCORE = float("-inf")


def check_k(k: Any, n_items: int) -> int:
    """Validate ``k`` (an integer, ``1 <= k <= n_items``) and return it as an ``int``.

    Parameters
    ----------
    k : int
        Number of items per list.
    n_items : int
        Number of items the model knows.

    Returns
    -------
    int
        ``k``.

    Raises
    ------
    ConfigError
        If ``k`` is not an integer or out of range (one wording for both).
    """
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or not 1 <= k <= n_items:
        shown = int(k) if isinstance(k, np.integer) else k
        raise ConfigError(
            f"k={shown!r} is out of range: k must be an integer between 1 and the number "
            f"of items ({n_items})"
        )
    return int(k)


def fill_empty(items: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """Set ``items`` to :data:`EMPTY_ITEM` where ``scores`` is ``-inf``, in place.

    Returns
    -------
    np.ndarray
        ``items``.
    """
    items[np.isneginf(scores)] = EMPTY_ITEM
    return items


def mask_pairs(
    scores: np.ndarray,
    rows: np.ndarray,
    items: np.ndarray,
    cols: np.ndarray | None = None,
    n_items: int = 0,
) -> None:
    """Set excluded ``(rows[j], items[j])`` pairs of ``scores`` to ``-inf``, in place.

    Parameters
    ----------
    scores : np.ndarray
        ``[B, n_items]``, or ``[B, len(cols)]`` when ``cols`` is given.
    rows, items : np.ndarray
        COO pairs: row positions and item indices to exclude.
    cols : np.ndarray, optional
        The item indices of ``scores``' columns (sorted, unique); excluded items that
        are not among them are ignored.
    n_items : int
        Number of items (needed with ``cols``).
    """
    if not rows.size:
        return
    if cols is None:
        if scores.flags.c_contiguous:  # flat indices: faster than 2-d fancy indexing
            scores.reshape(-1)[rows * scores.shape[1] + items] = EMPTY_SCORE
        else:
            scores[rows, items] = EMPTY_SCORE
        return
    pos = np.full(n_items, -1, dtype=np.int64)
    pos[cols] = np.arange(cols.size)
    p = pos[items]
    keep = p >= 0
    scores[rows[keep], p[keep]] = EMPTY_SCORE


def take_columns(cols: np.ndarray, idx: np.ndarray) -> np.ndarray:
    """Map column positions ``idx`` (``-1`` = empty) to item indices ``cols[idx]``."""
    return np.where(idx >= 0, cols[np.maximum(idx, 0)], EMPTY_ITEM)


def topk(scores: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Top-``k`` columns per row of ``scores`` (``-inf`` = excluded).

    Parameters
    ----------
    scores : np.ndarray
        ``[B, M]`` scores, excluded entries already ``-inf`` (see :func:`mask_pairs`).
    k : int
        Slots per row (``k > M`` is allowed: the extra slots are empty).

    Returns
    -------
    (np.ndarray, np.ndarray)
        ``[B, k]`` values (``scores``' dtype) sorted by descending value, ties in column
        order, and int64 columns; slots with no admissible column hold ``-inf`` and
        :data:`EMPTY_ITEM`.
    """
    b, m = scores.shape
    kk = min(k, m)
    if kk == 0:
        cols = np.zeros((b, 0), dtype=np.int64)
    elif kk < m:
        cols = np.argpartition(scores, m - kk, axis=1)[:, m - kk :]
    else:
        cols = np.broadcast_to(np.arange(m), (b, m))
    vals = np.take_along_axis(scores, cols, axis=1)
    order = np.argsort(-vals, axis=1, kind="stable")
    cols = np.take_along_axis(cols, order, axis=1).astype(np.int64)
    vals = np.take_along_axis(vals, order, axis=1)
    out_v = np.full((b, k), EMPTY_SCORE, dtype=scores.dtype)
    out_c = np.full((b, k), EMPTY_ITEM, dtype=np.int64)
    out_v[:, :kk] = vals
    out_c[:, :kk] = np.where(np.isneginf(vals), EMPTY_ITEM, cols)
    return out_v, out_c


def _descending_key(values: np.ndarray) -> np.ndarray:
    """uint32 keys that sort float32 ``values`` descending (``-0.0`` equal to ``0.0``)."""
    bits = (values + np.float32(0.0)).view(np.uint32)  # -0.0 + 0.0 is +0.0
    ascending = np.where(bits >> 31, ~bits, bits | np.uint32(0x80000000))
    return ~ascending


def group_topk(
    scores: np.ndarray,
    group_max: np.ndarray,
    k: int,
    out_scores: np.ndarray,
    out_items: np.ndarray,
    *,
    max_survivors: int | None = None,
) -> bool:
    """Exact top-``k`` per row from group maxima: the k-th best group maximum is a
    threshold that rejects all but a few groups with one compare.

    The items of a row are cut into ``G`` consecutive groups of ``w`` items
    (``scores.shape[1] == G * w``; padding columns hold ``-inf``) whose maxima are
    given. The ``k``-th largest group maximum ``T`` is at most the row's ``k``-th
    largest score (``k`` groups reach it), so every top-``k`` item lies in a group whose
    maximum is ``>= T``: only those groups are read again, and only their scores
    ``>= T`` are sorted. The lists are exactly :func:`topk`'s and the exported TopK's:
    descending score, ties by ascending item index, ``-inf`` slots empty.

    Parameters
    ----------
    scores : np.ndarray
        ``float32[B, G * w]``, C-contiguous, excluded pairs already ``-inf``
        (:func:`mask_pairs`).
    group_max : np.ndarray
        ``float32[B, G]``: the maxima of ``scores``' groups (after the exclusions).
    k : int
        ``1 <= k <= G``.
    out_scores, out_items : np.ndarray
        ``float32[B, k]`` and ``int64[B, k]`` results (the empty-slot rule).
    max_survivors : int, optional
        Give up (return False, outputs unspecified) when more scores than this reach
        the thresholds (rows of ties); the caller then runs a full top-k. Default
        ``B * max(64, 8 * k)``.

    Returns
    -------
    bool
        True when the outputs are filled.
    """
    b, n_groups = group_max.shape
    width = scores.shape[1] // n_groups
    groups = scores.reshape(b * n_groups, width)
    thresh = np.partition(group_max, n_groups - k, axis=1)[:, n_groups - k]
    cand = np.flatnonzero(group_max >= thresh[:, None])  # row * n_groups + group
    cand_rows = cand // n_groups
    vals = groups[cand]  # [candidates, w]
    hit = np.flatnonzero(vals >= thresh[cand_rows, None])
    limit = b * max(64, 8 * k) if max_survivors is None else max_survivors
    if hit.size > limit:
        return False
    j = hit // width
    r = cand_rows[j]
    item = (cand[j] - r * n_groups) * width + (hit - j * width)
    v = vals.reshape(-1)[hit]
    # hits are in (row, item) order: a stable sort by (row, descending score) keeps it
    key = (r.astype(np.uint64) << np.uint64(32)) | _descending_key(v).astype(np.uint64)
    order = np.argsort(key, kind="stable")
    r, item, v = r[order], item[order], v[order]
    rank = np.arange(r.size) - np.searchsorted(r, np.arange(b))[r]
    keep = rank < k
    out_scores.fill(EMPTY_SCORE)
    out_items.fill(EMPTY_ITEM)
    rk, ck = r[keep], rank[keep]
    out_scores[rk, ck] = v[keep]
    out_items[rk, ck] = item[keep]
    fill_empty(out_items, out_scores)
    return True
