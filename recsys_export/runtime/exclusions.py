"""What ``recommend`` needs besides the engine: COO exclusion pairs, top-k over an
``include`` subset, the popularity fallback for unknown users, raw ids and names of item
indices, and the bundle's seen-items CSR."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from recsys_export.bundle import Bundle
from recsys_export.errors import BundleError
from recsys_export.ids import IdMap, runs_to_coo
from recsys_export.items import check_item_names
from recsys_export.runtime.engines import Engine, iter_blocks
from recsys_export.topk import EMPTY_SCORE, mask_pairs, take_columns, topk

__all__ = [
    "columns_topk",
    "exclusion_pairs",
    "is_empty",
    "load_name_table",
    "load_seen_csr",
    "popular_topk",
    "raw_items",
]

_EMPTY_I64 = np.zeros(0, dtype=np.int64)


def exclusion_pairs(
    users: np.ndarray,
    known: np.ndarray,
    seen: tuple[np.ndarray, np.ndarray] | None,
    exclude: Any,
    user_index: Callable[[list[Any]], np.ndarray],
    item_index: Callable[[Any], np.ndarray],
) -> tuple[np.ndarray, np.ndarray]:
    """COO exclusions (row positions, item indices) for a batch of user indices.

    Parameters
    ----------
    users : np.ndarray
        User indices (anything where ``known`` is False).
    known : np.ndarray
        ``bool``: which users are known (only they have seen items).
    seen : (indptr, items) or None
        The seen-items CSR, or None not to exclude seen items.
    exclude : iterable, dict or None
        Items to drop for every user, or a dict user -> items.
    user_index, item_index : callable
        Validate ids (or indices) and return indices.
    """
    rows_parts: list[np.ndarray] = []
    items_parts: list[np.ndarray] = []
    b = users.size
    if seen is not None and b:
        indptr, seen_items = seen
        u = np.where(known, users, 0)
        starts = indptr[u]
        rows, items = runs_to_coo(starts, np.where(known, indptr[u + 1], starts), seen_items)
        if rows.size:
            rows_parts.append(rows)
            items_parts.append(items)
    if isinstance(exclude, Mapping):
        if exclude:
            keys = list(exclude)
            for key, uidx in zip(keys, user_index(keys).tolist(), strict=True):
                ex = item_index(exclude[key])
                pos = np.flatnonzero(users == uidx)
                if pos.size and ex.size:
                    rows_parts.append(np.repeat(pos, ex.size))
                    items_parts.append(np.tile(ex, pos.size))
    elif exclude is not None:
        ex = item_index(exclude) if not is_empty(exclude) else _EMPTY_I64
        if ex.size and b:
            rows_parts.append(np.repeat(np.arange(b, dtype=np.int64), ex.size))
            items_parts.append(np.tile(ex, b))
    if not rows_parts:
        return _EMPTY_I64, _EMPTY_I64
    if len(rows_parts) == 1:
        return rows_parts[0], items_parts[0]
    return np.concatenate(rows_parts), np.concatenate(items_parts)


def popular_topk(
    counts: np.ndarray,
    b: int,
    k: int,
    rows: np.ndarray,
    ex_items: np.ndarray,
    cols: np.ndarray | None,
) -> tuple[np.ndarray, np.ndarray]:
    """The popularity fallback: the ``k`` most rated admissible items for ``b`` users.

    Returns
    -------
    (np.ndarray, np.ndarray)
        Scores (NaN: no model score; ``-inf`` in empty slots) and items ``[b, k]``.
    """
    n_items = counts.size
    sc = np.broadcast_to(counts, (b, n_items))
    sc = sc if cols is None else sc[:, cols]
    sc = np.array(sc, dtype=np.float64)
    mask_pairs(sc, rows, ex_items, cols, n_items)
    v, c = topk(sc, k)
    items = c if cols is None else take_columns(cols, c)
    return np.where(np.isneginf(v), EMPTY_SCORE, np.nan), items


def raw_items(item_map: IdMap, items: np.ndarray) -> np.ndarray:
    """Raw ids of item indices; ``None`` (in an object array) where ``items`` is ``-1``."""
    raw = item_map.raw_ids
    empty = items < 0
    if not empty.any():
        return raw[items]
    out = raw[np.where(empty, 0, items)].astype(object)
    out[empty] = None
    return out


def is_empty(values: Any) -> bool:
    if isinstance(values, (str, bytes)):
        return False
    return np.ndim(values) > 0 and len(values) == 0


def load_seen_csr(bundle: Bundle, n_users: int, n_items: int) -> tuple[np.ndarray, np.ndarray]:
    """``(indptr int64[n_users + 1], items int64[nnz])`` of a bundle's seen items
    (:meth:`Bundle.seen_csr <recsys_export.bundle.Bundle.seen_csr>`).

    Raises
    ------
    BundleError
        If the manifest has no ``seen`` entry, names seen files it does not list, or
        they are malformed.
    """
    return bundle.seen_csr(n_users, n_items)


def columns_topk(
    engine: Engine,
    users: np.ndarray,
    k: int,
    rows: np.ndarray,
    ex_items: np.ndarray,
    cols: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    """Top-``k`` of validated users among the items ``cols`` (``include``), in the
    engine's blocks: ``score_all``, the columns, the exclusions, numpy's top-k."""
    b, n_items = users.size, engine.n_items
    scores = np.empty((b, k), dtype=np.float32)
    items = np.empty((b, k), dtype=np.int64)
    for start, stop, r, e in iter_blocks(b, engine.block, rows, ex_items):
        u = users[start:stop]
        full = np.empty((u.size, n_items), dtype=np.float32)
        engine.score_all_into(u, full)
        sub = full[:, cols]
        mask_pairs(sub, r, e, cols, n_items)
        s, c = topk(sub, k)
        scores[start:stop], items[start:stop] = s, take_columns(cols, c)
    return scores, items


def load_name_table(bundle: Bundle, n_items: int) -> np.ndarray | None:
    """``object[n_items + 1]`` of item names, None last (index -1: an empty slot), or
    None when the bundle has no names.

    Raises
    ------
    BundleError
        A names file that does not match the items.
    """
    rel = bundle.spec.names_file()
    if rel is None:
        return None
    try:
        names = check_item_names(bundle.read_json(rel), n_items)
    except ValueError as exc:
        raise BundleError(f"bundle {bundle.root}: {rel!r}: {exc}; export it again") from None
    table = np.empty(n_items + 1, dtype=object)
    table[:n_items] = names
    return table
