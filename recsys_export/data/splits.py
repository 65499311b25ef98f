"""Held-out rows: random and per-user time splits, the train/validation/test parts,
relevance masks and mapping a test file onto other id maps."""

from __future__ import annotations

import numpy as np

from recsys_export.core.ids import IdMap
from recsys_export.data.ratings import Ratings
from recsys_export.errors import DataError


def _check_fraction(test_fraction: float) -> float:
    try:
        f = float(test_fraction)
    except (TypeError, ValueError):
        raise DataError(
            f"test_fraction must be a number in (0, 1), got {test_fraction!r}"
        ) from None
    if not 0.0 < f < 1.0:
        raise DataError(f"test_fraction must be in (0, 1) (exclusive), got {test_fraction!r}")
    return f


def _random_mask(n: int, f: float, seed: int) -> np.ndarray:
    n_test = min(max(round(f * n), 1), n - 1)
    perm = np.random.default_rng(seed).permutation(n)
    test = np.zeros(n, dtype=bool)
    test[perm[:n_test]] = True
    return test


def random_split(r: Ratings, test_fraction: float = 0.2, seed: int = 0) -> tuple[Ratings, Ratings]:
    """Split ratings at random into (train, test).

    ``round(test_fraction * n)`` ratings (at least 1, at most ``n - 1``) chosen with
    ``np.random.default_rng(seed)`` go to test. Both parts keep the id maps and the
    original row order.

    Raises
    ------
    DataError
        If ``test_fraction`` is not in (0, 1) or there are fewer than 2 ratings.
    """
    return split(r, "random", test_fraction, seed)


def _time_mask(r: Ratings, f: float) -> np.ndarray:
    if r.timestamps is None:
        raise DataError(
            f"{r.source}: has no timestamps, so it cannot be split by time; use a random "
            "split or a file with a timestamp column (--timestamp-col)"
        )
    n = len(r)
    order = np.lexsort((np.arange(n), r.timestamps, r.users))
    su = r.users[order]
    counts = np.bincount(r.users, minlength=r.n_users)
    if not (counts >= 2).any():
        raise DataError(
            f"{r.source}: no user has 2 or more ratings, so a time split leaves nothing "
            "to test on; use a random split"
        )
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    pos = np.arange(n) - starts[su]
    n_hold = np.ceil(np.round(f * counts, 9)).astype(np.int64)
    n_hold = np.where(counts >= 2, np.minimum(n_hold, counts - 1), 0)
    held = pos >= counts[su] - n_hold[su]
    test = np.zeros(n, dtype=bool)
    test[order[held]] = True
    return test


def time_split(r: Ratings, test_fraction: float = 0.2) -> tuple[Ratings, Ratings]:
    """Hold out each user's latest ratings: returns (train, test).

    For every user with ``c >= 2`` ratings, the last ``ceil(test_fraction * c)`` by
    timestamp (ties broken by row order; at most ``c - 1``, so each user keeps a
    training rating) go to test. Users with one rating stay in train. Both parts keep
    the id maps and the original row order.

    Raises
    ------
    DataError
        If there are no timestamps, ``test_fraction`` is not in (0, 1), or no user has
        two ratings.
    """
    return split(r, "time", test_fraction)


def _holdout_mask(r: Ratings, method: str, test_fraction: float, seed: int) -> np.ndarray:
    """Boolean mask of the held-out rows of ``split(r, method, test_fraction, seed)``."""
    f = _check_fraction(test_fraction)
    if method == "random":
        if len(r) < 2:
            raise DataError(
                f"{r.source}: {len(r)} rating(s) cannot be split into train and test; need >= 2"
            )
        return _random_mask(len(r), f, seed)
    if method == "time":
        return _time_mask(r, f)
    raise DataError(f"unknown split method {method!r}; use 'random' or 'time'")


#: Values of the ``parts`` array of :func:`three_way_split`.
TRAIN, VALID, TEST = 0, 1, 2


def three_way_split(
    r: Ratings,
    method: str = "random",
    test_fraction: float = 0.2,
    valid_fraction: float = 0.1,
    seed: int = 0,
) -> np.ndarray:
    """Assign every row to train, validation or test: an ``int8[n]`` array of parts.

    The test rows are exactly those of ``split(r, method, test_fraction, seed)``; the
    validation rows are then carved from the remaining (training) rows by the same
    method with ``valid_fraction`` and ``seed + 1``. Model selection (early stopping)
    may look at validation rows only; test rows are for the reported metrics.

    Parameters
    ----------
    r : Ratings
    method : {"random", "time", "none"}
        ``"none"`` holds out no test rows (all rows train or validate).
    test_fraction : float
        Share of all rows held out for test, in (0, 1).
    valid_fraction : float
        Share of the training rows held out for validation, in [0, 1); 0 disables
        validation (and so early stopping).
    seed : int
        Seed of the random method.

    Returns
    -------
    np.ndarray
        ``int8[n]`` with :data:`TRAIN` (0), :data:`VALID` (1) or :data:`TEST` (2).

    Raises
    ------
    DataError
        Invalid fractions or method, or ratings that cannot be split.
    """
    parts = np.full(len(r), TRAIN, dtype=np.int8)
    if method != "none":
        parts[_holdout_mask(r, method, test_fraction, seed)] = TEST
    try:
        vf = float(valid_fraction)
    except (TypeError, ValueError):
        raise DataError(
            f"valid_fraction must be a number in [0, 1), got {valid_fraction!r}"
        ) from None
    if not 0.0 <= vf < 1.0:
        raise DataError(f"valid_fraction must be in [0, 1), got {valid_fraction!r}")
    if vf > 0:
        rest = np.flatnonzero(parts == TRAIN)
        if len(rest) >= 2:
            sub = r.subset(rest)
            mask = _holdout_mask(sub, "random" if method == "none" else method, vf, seed + 1)
            parts[rest[mask]] = VALID
    return parts


def at_least(r: Ratings, min_rating: float | None) -> np.ndarray:
    """Boolean mask of the rows rated ``>= min_rating`` (every row when None).

    Raises
    ------
    DataError
        If no row reaches ``min_rating``.
    """
    if min_rating is None:
        return np.ones(len(r), dtype=bool)
    keep = r.ratings >= min_rating
    if not keep.any():
        raise DataError(
            f"{r.source}: no rating reaches --min-rating {min_rating:g} (highest "
            f"{float(r.ratings.max()):g}); lower it"
        )
    return keep


def align(r: Ratings, user_map: IdMap, item_map: IdMap) -> tuple[Ratings, dict[str, int]]:
    """Map ``r`` onto other id maps (e.g. a test file onto a checkpoint's maps).

    Rows whose user or item the maps do not know are dropped and counted.

    Returns
    -------
    (Ratings, dict)
        The kept rows with ``user_map``/``item_map`` as their maps, and the counts:
        ``rows``, ``kept``, ``dropped`` (rows); ``rows_unknown_user`` (rows dropped for
        their user) and ``rows_unknown_item`` (rows of a known user dropped for their
        item), which add up to ``dropped``; ``unknown_users`` and ``unknown_items``
        (distinct ids among those rows).
    """
    u = user_map.to_index(r.user_map.raw_ids, missing=-1)[r.users]
    i = item_map.to_index(r.item_map.raw_ids, missing=-1)[r.items]
    keep = (u >= 0) & (i >= 0)
    by_item = (u >= 0) & (i < 0)
    stats = {
        "rows": len(r),
        "kept": int(keep.sum()),
        "dropped": int((~keep).sum()),
        "rows_unknown_user": int((u < 0).sum()),
        "rows_unknown_item": int(by_item.sum()),
        "unknown_users": int(len(np.unique(r.users[u < 0]))),
        "unknown_items": int(len(np.unique(r.items[by_item]))),
    }
    out = Ratings(
        users=u[keep],
        items=i[keep],
        ratings=r.ratings[keep],
        timestamps=None if r.timestamps is None else r.timestamps[keep],
        user_map=user_map,
        item_map=item_map,
        source=r.source,
        n_duplicates=r.n_duplicates,
        implicit=r.implicit,
    )
    return out, stats


def count_pairs_in(r: Ratings, users: np.ndarray, items: np.ndarray) -> int:
    """Rows of ``r`` whose (user, item) pair is among ``(users, items)`` (indices in
    ``r``'s maps): a test file's rows that are also training rows, for instance."""
    n = np.int64(max(r.n_items, 1))
    known = np.unique(np.asarray(users, np.int64) * n + np.asarray(items, np.int64))
    return int(np.isin(r.users * n + r.items, known).sum())


def split(
    r: Ratings, method: str = "random", test_fraction: float = 0.2, seed: int = 0
) -> tuple[Ratings, Ratings]:
    """Split into (train, test) with ``method`` ``"random"`` or ``"time"``.

    ``seed`` is used by the random split only. See :func:`random_split` and
    :func:`time_split`.

    Raises
    ------
    DataError
        On an unknown method, or ``"time"`` on ratings without timestamps.
    """
    test = _holdout_mask(r, method, test_fraction, seed)
    return r.subset(~test), r.subset(test)
