"""Non-personalised baselines every model is compared with, on the same split.

``PopularityBaseline`` ranks items by their number of training interactions: the list a
recommender must beat to be worth serving. ``BiasBaseline`` predicts
``mean + b_user + b_item`` with damped (shrunk) biases: the rating error a model must
beat. Both are plain numpy and follow the models' entry points (``predict`` for pairs,
``score_all`` for full rows), so :func:`recsys_export.training.evaluate.evaluate` scores them
with the same code as the models.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from recsys_export.data import Ratings

#: Damping strengths tried by :meth:`BiasBaseline.fit` when validation rows are given.
DAMPING_GRID = (1.0, 3.0, 10.0, 25.0, 50.0)


class PopularityBaseline:
    """Scores every item by its number of training interactions (same list for all).

    Parameters
    ----------
    None; call :meth:`fit`.
    """

    name = "popularity"

    def fit(self, train: Ratings) -> PopularityBaseline:
        """Count each item's training rows."""
        self.n_items = train.n_items
        self.counts = np.bincount(train.items, minlength=train.n_items).astype(np.float32)
        return self

    def predict(self, users: np.ndarray, items: np.ndarray) -> np.ndarray | None:
        """Popularity predicts no ratings: returns None."""
        return None

    def score_all(self, users: np.ndarray) -> np.ndarray:
        """``float32[B, n_items]``: the item counts, one identical row per user."""
        return np.broadcast_to(self.counts, (len(users), self.n_items)).copy()


class BiasBaseline:
    """``mean + b_u + b_i`` with biases shrunk towards 0 by a damping term.

    ``b_i = sum(r - mean) / (n_i + damping)`` over the item's training ratings, then
    ``b_u = sum(r - mean - b_i) / (n_u + damping)``. With validation rows, the damping
    is chosen from :data:`DAMPING_GRID` by validation RMSE (never on test rows).

    Parameters
    ----------
    damping : float
        Shrinkage used when :meth:`fit` gets no validation rows.
    """

    name = "bias"

    def __init__(self, damping: float = 10.0) -> None:
        self.damping = float(damping)

    def _fit(self, train: Ratings, damping: float) -> None:
        r = train.ratings.astype(np.float64)
        self.mean = float(r.mean())
        res = r - self.mean
        n_i = np.bincount(train.items, minlength=train.n_items)
        self.item_bias = np.bincount(train.items, res, train.n_items) / (n_i + damping)
        res = res - self.item_bias[train.items]
        n_u = np.bincount(train.users, minlength=train.n_users)
        self.user_bias = np.bincount(train.users, res, train.n_users) / (n_u + damping)
        self.damping = damping

    def fit(self, train: Ratings, valid: Ratings | None = None) -> BiasBaseline:
        """Fit the biases; pick the damping on ``valid`` when given.

        Returns
        -------
        BiasBaseline
            ``self``.
        """
        if valid is not None and len(valid):
            best = None
            for d in DAMPING_GRID:
                self._fit(train, d)
                err = self.predict(valid.users, valid.items) - valid.ratings
                score = float(np.mean(err.astype(np.float64) ** 2))
                if best is None or score < best[0]:
                    best = (score, d)
            assert best is not None
            self._fit(train, best[1])
        else:
            self._fit(train, self.damping)
        return self

    def predict(self, users: np.ndarray, items: np.ndarray) -> np.ndarray:
        """Predicted ratings ``float32[N]`` for pairs."""
        out = self.mean + self.user_bias[users] + self.item_bias[items]
        return out.astype(np.float32)

    def score_all(self, users: np.ndarray) -> np.ndarray:
        """``float32[B, n_items]`` predicted ratings of every item."""
        out = self.mean + self.user_bias[users][:, None] + self.item_bias[None, :]
        return out.astype(np.float32)
