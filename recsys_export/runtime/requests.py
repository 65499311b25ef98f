"""A recommend request's pieces besides the scoring: the result type, the order rule
for ids, and the top-k of many users with exclusions, ``include`` and the popularity
fallback (:meth:`Recommender.recommend <recsys_export.runtime.Recommender.recommend>`)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from recsys_export.core.ids import IdMap
from recsys_export.core.topk import EMPTY_ITEM, EMPTY_SCORE
from recsys_export.errors import ConfigError
from recsys_export.runtime.engines import SessionEngine
from recsys_export.runtime.exclusions import (
    columns_topk,
    exclusion_pairs,
    is_empty,
    popular_topk,
    raw_items,
)
from recsys_export.runtime.extras import BundleExtras
from recsys_export.runtime.writers import as_1d

__all__ = ["RecommendResult", "many_topk", "ordered", "raw_results", "requested_users"]


@dataclass
class RecommendResult:
    """Top-k lists for a batch of users.

    Attributes
    ----------
    users : np.ndarray
        The users of the rows, in request order (raw ids, or indices with ``by_index``).
        With ``unknown="skip"`` unknown users are left out (see ``skipped``).
    items : np.ndarray
        ``[B, k]`` items sorted by descending score. With ``by_index``: int64 indices,
        ``-1`` in slots no admissible item can fill. Otherwise raw ids with the item
        map's dtype (int64 or object); if any slot is empty the array is ``object`` and
        holds ``None`` in empty slots.
    scores : np.ndarray
        ``float32[B, k]``; ``-inf`` in empty slots; ``NaN`` in rows served by the
        popularity fallback (``unknown="popular"``), which have no model score.
    skipped : list
        Unknown users dropped with ``unknown="skip"`` (as given).
    fallback : np.ndarray
        ``bool[B]``: rows filled with the most popular items (``unknown="popular"``).
    names : np.ndarray or None
        ``object[B, k]``: the items' names (titles) when the bundle has them
        (``train --items``), None in empty slots and for unnamed items; None when the
        bundle has no names.
    """

    users: np.ndarray
    items: np.ndarray
    scores: np.ndarray
    skipped: list[Any] = field(default_factory=list)
    fallback: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=bool))
    names: np.ndarray | None = None

    def __len__(self) -> int:
        return int(self.scores.shape[0])


def ordered(ids: Any, what: str) -> Any:
    """``ids`` unless it is a set or a mapping: results follow the order of the request."""
    if isinstance(ids, (set, frozenset, Mapping)):
        raise ConfigError(
            f"{what} must be one id or an ordered sequence of ids (list, tuple, array), "
            f"got a {type(ids).__name__}: the results follow the order of the request; "
            "pass a list (e.g. sorted(ids))"
        )
    return ids


def many_topk(
    engine: SessionEngine,
    extras: BundleExtras,
    user_map: IdMap,
    users: np.ndarray,
    known: np.ndarray,
    k: int,
    *,
    exclude_seen: bool,
    exclude: Any = None,
    include: Any = None,
    by_index: bool = True,
    item_index: Callable[[Any], np.ndarray] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """``(scores, items)`` ``[B, k]`` of a batch of user indices.

    Known users are scored by ``engine`` with their exclusions (seen items, ``exclude``),
    over ``include``'s items only when given; unknown users (``known`` False) get the
    most rated items under the same exclusions but their (absent) seen items.
    ``item_index`` turns the ids of ``exclude``/``include`` into indices (validated).
    """
    b = users.size
    scores = np.full((b, k), EMPTY_SCORE, dtype=np.float32)
    items = np.full((b, k), EMPTY_ITEM, dtype=np.int64)
    if b == 0:
        return scores, items
    to_items = item_index if item_index is not None else (lambda ids: np.asarray(ids))

    def user_index(keys: list[Any]) -> np.ndarray:
        if by_index:
            return user_map.check_indices(np.asarray(keys))
        return user_map.to_index(keys)

    def exclusions(rows_users: np.ndarray, rows_known: np.ndarray, seen: bool) -> Any:
        csr = extras.seen_csr() if seen and rows_users.size else None
        return exclusion_pairs(rows_users, rows_known, csr, exclude, user_index, to_items)

    cols = None
    if include is not None:
        cols = np.unique(to_items(include)) if not is_empty(include) else None
        if cols is None or cols.size == 0:
            return scores, items  # no candidate item: every slot stays empty
    known_pos = np.flatnonzero(known)
    if known_pos.size:
        ku = users[known_pos]
        rows, ex_items = exclusions(ku, known[known_pos], exclude_seen)
        if cols is None:
            s, it = engine.topk(ku, k, rows, ex_items)
        else:
            s, it = columns_topk(engine, ku, k, rows, ex_items, cols)
        scores[known_pos], items[known_pos] = s, it
    unknown_pos = np.flatnonzero(~known)
    if unknown_pos.size:
        # popularity fallback: same exclusions except seen (unknown users saw nothing)
        rows, ex_items = exclusions(users[unknown_pos], known[unknown_pos], False)
        scores[unknown_pos], items[unknown_pos] = popular_topk(
            extras.popularity(), unknown_pos.size, k, rows, ex_items, cols
        )
    return scores, items


def requested_users(
    user_map: IdMap, user_ids: Any, *, by_index: bool, unknown: str
) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[Any]]:
    """``(given, users, known, skipped)`` of a request's users.

    ``given`` are the ids as asked (strings kept as objects), ``users`` their indices
    (``-1`` for unknown users under ``unknown="popular"``), ``known`` which are known;
    with ``unknown="skip"`` unknown users are dropped from all three and listed in
    ``skipped``. Indices (``by_index``) and ``unknown="raise"`` validate strictly.
    """
    given = as_1d(ordered(user_ids, "user ids"))
    if not isinstance(user_ids, np.ndarray) and given.dtype.kind in "US":
        given = np.asarray(
            [user_ids] if isinstance(user_ids, (str, bytes)) else list(user_ids), dtype=object
        ).reshape(-1)
    if by_index:
        users = user_map.check_indices(given)
    elif unknown == "raise":
        users = user_map.to_index(given)
    else:
        users = user_map.to_index(given, missing=-1)
    known = users >= 0
    skipped: list[Any] = []
    if unknown == "skip" and not known.all():
        skipped = given[~known].tolist()
        given, users, known = given[known], users[known], known[known]
    return given, users, known, skipped


def raw_results(
    user_map: IdMap, item_map: IdMap, given: np.ndarray, users: np.ndarray, items: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Raw user ids (the given id where a user is unknown) and raw item ids of results."""
    known = users >= 0
    if known.all():
        out_users = user_map.raw_ids[users]
    else:
        out_users = np.asarray(given, dtype=object).copy()
        out_users[known] = user_map.raw_ids[users[known]]
    return out_users, raw_items(item_map, items)
