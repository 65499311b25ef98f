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
