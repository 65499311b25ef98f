"""Offline metrics: rating error (RMSE, MAE) and top-k quality, models beside baselines.

Ranking metrics follow the usual protocol: for every test user with at least one
*relevant* held-out item (rating >= ``threshold``), rank every item the user did not
interact with in the *known* rows (training and validation), keep the top ``k`` and
compare with the relevant items. The same code scores our models and the baselines of
:mod:`recsys_export.training.baselines`, so their numbers are comparable.

Reported metrics
    ``rmse``, ``mae`` (explicit ratings only); ``precision@k``, ``recall@k``,
    ``ndcg@k``, ``map@k`` (binary relevance); ``coverage@k`` (distinct items across the
    ranked users' top-k lists / ``n_items``), ``distinct_items@k`` and
    ``median_train_count@k`` (median number of known interactions of the recommended
    items: a low value means the lists are made of barely-seen items).
"""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np
import torch

from recsys_export.core.ids import runs_to_coo
from recsys_export.core.topk import check_k
from recsys_export.core.validation import check_finite
from recsys_export.errors import ConfigError
from recsys_export.models import BaseModel
from recsys_export.torch_runtime.ops import topk_excluding
from recsys_export.training.baselines import BiasBaseline, PopularityBaseline

if TYPE_CHECKING:
    from recsys_export.data import Ratings


class Scorer(Protocol):
    """Anything with the models' entry points (a model or a baseline)."""

    def score_all(self, users: Any) -> Any: ...  # pragma: no cover - protocol


def default_threshold(ratings: Ratings) -> float:
    """Relevance threshold when none is given: 80% of the highest rating.

    4.0 on a 1-5 (or 0.5-5) scale, 8.0 on MovieTweetings' 0-10; for implicit data
    (every rating 1.0) every held-out row is relevant.
    """
    if ratings.implicit or len(ratings) == 0:
        return 1.0
    hi = float(ratings.ratings.max())
    lo = float(ratings.ratings.min())
    if hi <= 0 or hi == lo:
        return hi
    return round(0.8 * hi, 6)


def check_threshold(threshold: float, ratings: Ratings) -> float:
    """Validate a relevance threshold against the ratings' scale.

    Raises
    ------
    ConfigError
        If the threshold is not finite or is above the highest rating (nothing would be
        relevant and every ranking metric would be undefined).
    """
    t = float(check_finite("threshold", threshold))
    if len(ratings) and t > float(ratings.ratings.max()):
        raise ConfigError(
            f"relevance threshold {t:g} is above the highest rating in {ratings.source} "
            f"({float(ratings.ratings.max()):g}), so no held-out rating would count as "
            f"relevant; pass --threshold on the file's scale (e.g. "
            f"{default_threshold(ratings):g})"
        )
    return t


def ranking_metrics(
    topk: np.ndarray, relevant: list[np.ndarray], k: int
) -> dict[str, float | None]:
    """Mean precision@k, recall@k, NDCG@k and MAP@k (binary relevance).

    Parameters
    ----------
    topk : np.ndarray
        ``int64[U, >=k]`` recommended items per user, best first (``-1`` = no item).
    relevant : list of np.ndarray
        Relevant item indices per user (non-empty).
    k : int
        Cut-off.

    Returns
    -------
    dict
        ``precision@k``, ``recall@k``, ``ndcg@k`` and ``map@k`` (None without users:
        undefined, and JSON has no NaN).
        AP@k divides by ``min(len(relevant), k)``.
    """
    names = [f"precision@{k}", f"recall@{k}", f"ndcg@{k}", f"map@{k}"]
    if len(relevant) == 0:
        return {name: None for name in names}
    discounts = 1.0 / np.log2(np.arange(2, k + 2))
    ranks = np.arange(1, k + 1)
    sums = np.zeros(4)
    for row, rel in zip(topk[:, :k], relevant):
        hits = np.isin(row, rel)
        n_hits = int(hits.sum())
        denom = min(len(rel), k)
        sums += (
            n_hits / k,
            n_hits / len(rel),
            float((hits * discounts).sum() / discounts[:denom].sum()),
            float((np.cumsum(hits) / ranks * hits).sum() / denom),
        )
    return {name: float(v / len(relevant)) for name, v in zip(names, sums)}


@torch.no_grad()
def predict(model: BaseModel, ratings: Ratings, batch_size: int = 65536) -> np.ndarray:
    """Eager pairwise predictions for every rating of ``ratings`` (float32).

    Parameters
    ----------
    model : BaseModel
        Put in eval mode.
    ratings : Ratings
        The (user, item) pairs to predict.
    batch_size : int
        Pairs per forward call.

    Returns
    -------
    np.ndarray
        float32 ``[len(ratings)]``.
    """
    model.eval()
    users = torch.from_numpy(ratings.users)
    items = torch.from_numpy(ratings.items)
    out = [
        model(users[s : s + batch_size], items[s : s + batch_size])
        for s in range(0, len(users), batch_size)
    ]
    return torch.cat(out).numpy() if out else np.zeros(0, dtype=np.float32)


def rmse(model: BaseModel, ratings: Ratings) -> float:
    """Root mean squared error of ``model`` on ``ratings``.

    Parameters
    ----------
    model : BaseModel
    ratings : Ratings
        Pairs and their true ratings.

    Returns
    -------
    float
    """
    err = predict(model, ratings) - ratings.ratings
    return float(np.sqrt(np.mean(err.astype(np.float64) ** 2)))


def _score_rows(model: Scorer, users: np.ndarray) -> torch.Tensor:
    if isinstance(model, BaseModel):
        return model.score_all(torch.from_numpy(users))
    return torch.from_numpy(np.ascontiguousarray(model.score_all(users), dtype=np.float32))


def _predict_pairs(model: Scorer, ratings: Ratings) -> np.ndarray | None:
    if isinstance(model, BaseModel):
        return predict(model, ratings)
    return model.predict(ratings.users, ratings.items)  # type: ignore[attr-defined]


def _grouped(ratings: Ratings) -> tuple[np.ndarray, np.ndarray]:
    order = np.argsort(ratings.users, kind="stable")
    return ratings.users[order], ratings.items[order]


@torch.no_grad()
def topk_for_users(
    model: Scorer, known: Ratings, users: np.ndarray, k: int, *, user_batch: int | None = None
) -> np.ndarray:
    """Top-``k`` item indices for ``users``, leaving out each user's known items.

    ``user_batch`` users are scored per call; by default as many as keep the call's
    score rows near 16 MB (DenseNet bounds its hidden activations itself, in tiles).

    Returns
    -------
    np.ndarray
        ``int64[len(users), k]``, best first; ``-1`` where no admissible item is left.
    """
    if isinstance(model, BaseModel):
        model.eval()
    k_users, k_items = _grouped(known)
    if user_batch is None:
        user_batch = max(1, min(256, (16 << 20) // (4 * known.n_items)))
    out = []
    for start in range(0, len(users), user_batch):
        batch = users[start : start + user_batch]
        lo = np.searchsorted(k_users, batch, side="left")
        hi = np.searchsorted(k_users, batch, side="right")
        rows, items = runs_to_coo(lo, hi, k_items)
        _, top = topk_excluding(
            _score_rows(model, batch), k, torch.from_numpy(rows), torch.from_numpy(items)
        )
        out.append(top.numpy())
    return np.concatenate(out) if out else np.zeros((0, k), dtype=np.int64)


def relevant_items(test: Ratings, threshold: float) -> tuple[np.ndarray, list[np.ndarray]]:
    """Users with at least one held-out rating ``>= threshold`` and their relevant items."""
    mask = test.ratings >= threshold
    t_users, t_items = _grouped(test.subset(mask))
    users = np.unique(t_users)
    lo = np.searchsorted(t_users, users, side="left")
    hi = np.searchsorted(t_users, users, side="right")
    return users, [t_items[a:b] for a, b in zip(lo, hi)]


@torch.no_grad()
def evaluate(
    model: Scorer,
    known: Ratings,
    test: Ratings,
    *,
    k: int = 10,
    threshold: float | None = None,
    user_batch: int | None = None,
    max_users: int | None = None,
    seed: int = 0,
    rating_error: bool = True,
) -> dict[str, Any]:
    """Rating error and top-k metrics of ``model`` on held-out ``test`` rows.

    Parameters
    ----------
    model : BaseModel or baseline
        Anything with ``score_all`` (and ``predict`` for RMSE).
    known : Ratings
        Rows the model was given (training and validation): their items are left out
        of each user's ranking, and their counts give ``median_train_count@k``.
    test : Ratings
        Held-out rows (same id maps); items rated ``>= threshold`` are relevant.
    k : int
        Cut-off, ``1 <= k <= n_items``.
    threshold : float, optional
        Relevance threshold; default :func:`default_threshold` of ``known``.
    user_batch : int, optional
        Users scored per ``score_all`` call (bounds memory); default sized from the
        model (see :func:`topk_for_users`).
    max_users : int, optional
        Rank at most this many users (a seeded sample), e.g. for per-epoch validation.
    seed : int
        Seed of that sample.
    rating_error : bool
        Compute RMSE and MAE (skip them when only the ranking matters).

    Returns
    -------
    dict
        ``rmse``, ``mae`` (when the model predicts ratings and the data has them), the
        ranking metrics, ``coverage@k``, ``distinct_items@k``, ``median_train_count@k``,
        ``ranked_users``, ``n_test``, ``k`` and ``threshold``.
    """
    n_items = known.n_items
    check_k(k, n_items)
    # the scale: the known rows', or the test file's when the known rows carry no ratings
    scale = test if known.implicit and not test.implicit else known
    thr = check_threshold(
        default_threshold(scale) if threshold is None else threshold,
        scale if len(scale) else known,
    )
    out: dict[str, Any] = {"n_test": len(test), "k": k, "threshold": thr}
    if len(test) == 0:
        return out
    if rating_error and not (known.implicit or test.implicit):
        pred = _predict_pairs(model, test)
        if pred is not None:
            err = pred.astype(np.float64) - test.ratings
            out["rmse"] = float(np.sqrt(np.mean(err**2)))
            out["mae"] = float(np.mean(np.abs(err)))
    users, relevant = relevant_items(test, thr)
    if max_users is not None and len(users) > max_users:
        pick = np.sort(np.random.default_rng(seed).choice(len(users), max_users, replace=False))
        users, relevant = users[pick], [relevant[j] for j in pick]
    topk = topk_for_users(model, known, users, k, user_batch=user_batch)
    out.update(ranking_metrics(topk, relevant, k))
    listed = topk[topk >= 0]
    counts = np.bincount(known.items, minlength=n_items)
    distinct = int(len(np.unique(listed)))
    out[f"coverage@{k}"] = distinct / n_items
    out[f"distinct_items@{k}"] = distinct
    out[f"median_train_count@{k}"] = float(np.median(counts[listed])) if len(listed) else None
    out["ranked_users"] = int(len(users))
    return out


def compare_with_baselines(
    model: Scorer,
    train: Ratings,
    valid: Ratings | None,
    test: Ratings,
    *,
    k: int = 10,
    threshold: float | None = None,
    rating_error: bool = True,
) -> dict[str, dict[str, Any]]:
    """Metrics of ``model``, the popularity baseline and the damped bias baseline.

    All three are evaluated on the same ``test`` rows, with the same known rows
    (``train`` plus ``valid``) left out of the rankings. The baselines are fitted on
    ``train`` (the bias baseline picks its damping on ``valid``). ``rating_error=False``
    leaves out the model's RMSE/MAE (a ranking model's scores are not ratings).

    Returns
    -------
    dict
        ``{"model": ..., "popularity": ..., "bias": ...}``, each as :func:`evaluate`.
    """
    known = train if valid is None or len(valid) == 0 else concat(train, valid)
    out = {
        "model": evaluate(model, known, test, k=k, threshold=threshold, rating_error=rating_error)
    }
    out["popularity"] = evaluate(
        PopularityBaseline().fit(known), known, test, k=k, threshold=threshold
    )
    if not (train.implicit or test.implicit):
        bias = BiasBaseline().fit(train, valid)
        out["bias"] = evaluate(bias, known, test, k=k, threshold=threshold)
        out["bias"]["damping"] = bias.damping
    return out


def concat(a: Ratings, b: Ratings) -> Ratings:
    """Rows of ``a`` then ``b`` (same id maps) as one :class:`Ratings` (``a``'s id maps,
    source, duplicate count and implicit flag)."""
    ts = None
    if a.timestamps is not None and b.timestamps is not None:
        ts = np.concatenate([a.timestamps, b.timestamps])
    return replace(
        a,
        users=np.concatenate([a.users, b.users]),
        items=np.concatenate([a.items, b.items]),
        ratings=np.concatenate([a.ratings, b.ratings]),
        timestamps=ts,
    )


METRIC_COLUMNS = ("rmse", "mae", "precision@{k}", "recall@{k}", "ndcg@{k}", "map@{k}")


def format_comparison(results: dict[str, dict[str, Any]], k: int) -> str:
    """A small table: one row per method, the metric columns, coverage and popularity."""
    cols = [c.format(k=k) for c in METRIC_COLUMNS] + [f"coverage@{k}", f"median_train_count@{k}"]
    short = {f"median_train_count@{k}": f"med.pop@{k}"}
    head = f"{'':<11}" + "".join(f"{short.get(c, c):>13}" for c in cols)
    lines = [head]
    for name, m in results.items():
        cells = []
        for c in cols:
            v = m.get(c)
            digits = 0 if c.startswith("median") else 4
            cells.append(f"{'-':>13}" if v is None else f"{v:>13.{digits}f}")
        lines.append(f"{name:<11}" + "".join(cells))
    return "\n".join(lines)
