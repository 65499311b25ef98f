"""The :class:`Ratings` container, dense matrices and the bundled data sets.

A :class:`Ratings` holds one rating per row as dense user/item indices plus the
:class:`~recsys_export.core.ids.IdMap` objects that translate them back to the raw ids of the
file. Everything here is numpy-first.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from recsys_export.core.ids import IdMap
from recsys_export.errors import DataError

#: Largest matrix :meth:`Ratings.to_matrix` builds (cells).
MAX_DENSE_CELLS = 50_000_000


@dataclass
class Ratings:
    """Explicit ratings as parallel arrays of dense indices.

    Attributes
    ----------
    users, items : np.ndarray
        int64 dense indices, shape ``[n]``; ``user_map.raw_ids[users[j]]`` is the raw id.
    ratings : np.ndarray
        float32, shape ``[n]``.
    timestamps : np.ndarray or None
        int64 (seconds since the epoch for dates), or None when the source has none.
    user_map, item_map : IdMap
        Raw id <-> dense index maps; they may cover users/items without ratings.
    source : str
        File path or a description, used in messages.
    n_duplicates : int
        Duplicate (user, item) rows dropped by the reader.
    implicit : bool
        True when the source had no rating column (every rating is 1.0): the rows are
        interactions, and only the ranking objective can learn from them.
    """

    users: np.ndarray
    items: np.ndarray
    ratings: np.ndarray
    timestamps: np.ndarray | None
    user_map: IdMap
    item_map: IdMap
    source: str = "<memory>"
    n_duplicates: int = 0
    implicit: bool = False

    def __post_init__(self) -> None:
        self.users = np.ascontiguousarray(self.users, dtype=np.int64).reshape(-1)
        self.items = np.ascontiguousarray(self.items, dtype=np.int64).reshape(-1)
        self.ratings = np.ascontiguousarray(self.ratings, dtype=np.float32).reshape(-1)
        n = len(self.users)
        arrays: dict[str, np.ndarray] = {"items": self.items, "ratings": self.ratings}
        if self.timestamps is not None:
            self.timestamps = np.ascontiguousarray(self.timestamps, dtype=np.int64).reshape(-1)
            arrays["timestamps"] = self.timestamps
        for name, arr in arrays.items():
            if len(arr) != n:
                raise DataError(
                    f"{self.source}: {name} has {len(arr)} entries but users has {n}; "
                    "all rating arrays must have the same length"
                )
        for name, idx, m in (
            ("user", self.users, self.user_map),
            ("item", self.items, self.item_map),
        ):
            if n and (idx.min() < 0 or idx.max() >= len(m)):
                raise DataError(
                    f"{self.source}: {name} index out of range "
                    f"(min {idx.min()}, max {idx.max()}) for a map of {len(m)} {name}s"
                )

    @property
    def n_users(self) -> int:
        """Number of users in the id map (including users without ratings)."""
        return len(self.user_map)

    @property
    def n_items(self) -> int:
        """Number of items in the id map (including items without ratings)."""
        return len(self.item_map)

    def __len__(self) -> int:
        return len(self.ratings)

    def __repr__(self) -> str:
        ts = "yes" if self.timestamps is not None else "no"
        return (
            f"Ratings(n={len(self)}, n_users={self.n_users}, n_items={self.n_items}, "
            f"timestamps={ts}, source={self.source!r})"
        )

    def subset(self, index: np.ndarray) -> Ratings:
        """Rows selected by an integer index array or a boolean mask, with the same id maps.

        Parameters
        ----------
        index : np.ndarray
            Integer row numbers (any order, repeats allowed) or a boolean mask of length
            ``len(self)``.

        Returns
        -------
        Ratings
            A new object sharing ``user_map``/``item_map``, ``source``, ``n_duplicates``
            and ``implicit``.
        """
        idx = np.asarray(index)
        if idx.dtype == np.bool_:
            if idx.shape != (len(self),):
                raise DataError(
                    f"{self.source}: boolean mask has shape {idx.shape}, expected ({len(self)},)"
                )
        elif idx.size == 0:
            idx = idx.astype(np.int64)
        elif not np.issubdtype(idx.dtype, np.integer):
            raise DataError(f"{self.source}: subset index must be integers or a boolean mask")
        elif idx.min() < -len(self) or idx.max() >= len(self):
            raise DataError(f"{self.source}: subset index out of range for {len(self)} ratings")
        return replace(
            self,
            users=self.users[idx],
            items=self.items[idx],
            ratings=self.ratings[idx],
            timestamps=None if self.timestamps is None else self.timestamps[idx],
        )

    def to_matrix(self) -> np.ndarray:
        """Dense float32 matrix ``[n_users, n_items]``; 0 marks an unobserved cell.

        Meant for small data (tests, the toy matrix). If a pair occurs more than once,
        the last row wins.

        Raises
        ------
        DataError
            If the matrix would exceed 50 million cells.
        """
        cells = self.n_users * self.n_items
        if cells > MAX_DENSE_CELLS:
            raise DataError(
                f"{self.source}: a dense {self.n_users} x {self.n_items} matrix has {cells:,} "
                f"cells, above the limit of {MAX_DENSE_CELLS:,}; use the sparse arrays "
                "(users, items, ratings) instead"
            )
        out = np.zeros((self.n_users, self.n_items), dtype=np.float32)
        out[self.users, self.items] = self.ratings
        return out


# ---------------------------------------------------------------------------- toy data

#: The 5 x 4 rating matrix of the seed notebook (0 = unobserved).
TOY_MATRIX: np.ndarray = np.array(
    [[5, 3, 0, 1], [4, 0, 0, 1], [1, 1, 0, 5], [1, 0, 0, 4], [0, 1, 5, 4]], dtype=np.float64
)
TOY_MATRIX.flags.writeable = False


def from_matrix(matrix: Any, source: str = "<matrix>") -> Ratings:
    """Ratings from a dense matrix whose nonzero cells are the observed ratings.

    Rows are users and columns items; the raw ids are the row/column numbers
    ``0 .. n-1`` and the id maps cover every row and column, even empty ones. The
    ratings come in row-major order, exactly the order of ``zip(*matrix.nonzero())``
    (the seed notebook's training loop). There are no timestamps.

    Parameters
    ----------
    matrix : array-like
        Two-dimensional numeric array.
    source : str
        Description used in messages.

    Raises
    ------
    DataError
        If the matrix is not 2-D and numeric, is empty, or holds NaN/inf.
    """
    try:
        m = np.asarray(matrix, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise DataError(f"{source}: the rating matrix must be numeric ({exc})") from None
    if m.ndim != 2:
        raise DataError(f"{source}: the rating matrix must be 2-D, got shape {m.shape}")
    if m.size == 0:
        raise DataError(f"{source}: the rating matrix is empty (shape {m.shape})")
    if not np.isfinite(m).all():
        r, c = np.argwhere(~np.isfinite(m))[0]
        raise DataError(
            f"{source}: the rating matrix holds NaN or infinite values (first at row {r}, "
            f"column {c}); use 0 for unobserved cells"
        )
    users, items = m.nonzero()
    return Ratings(
        users=users.astype(np.int64),
        items=items.astype(np.int64),
        ratings=m[users, items].astype(np.float32),
        timestamps=None,
        user_map=IdMap(np.arange(m.shape[0], dtype=np.int64), "user"),
        item_map=IdMap(np.arange(m.shape[1], dtype=np.int64), "item"),
        source=source,
    )


def toy_ratings() -> Ratings:
    """The seed notebook's 5 x 4 toy matrix as :class:`Ratings` (``from_matrix(TOY_MATRIX)``)."""
    return from_matrix(TOY_MATRIX, source="<toy matrix>")


def default_dataset_path() -> Path:
    """Path of the MovieLens ``ml-latest-small`` ratings shipped with the package."""
    return Path(__file__).resolve().parent.parent / "datasets" / "ml-latest-small" / "ratings.csv"
