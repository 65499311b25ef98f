"""Validation metrics: rating error (RMSE, MAE) and ranking quality at k.

Ranking metrics follow the usual offline protocol: for every validation user with at
least one *relevant* held-out item (rating >= ``threshold``), rank all items the user
did not rate in training, keep the top ``k`` and compare with the relevant items.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from recsys_export.errors import ConfigError
from recsys_export.ids import runs_to_coo
from recsys_export.models import BaseModel
from recsys_export.train import predict

if TYPE_CHECKING:
    from recsys_export.data import Ratings


def ranking_metrics(topk: np.ndarray, relevant: list[np.ndarray], k: int) -> dict[str, float]:
    """Mean precision@k, recall@k and NDCG@k (binary relevance).

    Parameters
    ----------
    topk : np.ndarray
        ``int64[U, >=k]`` recommended items per user, best first (``-1`` = no item).
    relevant : list of np.ndarray
        Relevant item indices per user (non-empty).
    k : int
        Cut-off.
    """
    if len(relevant) == 0:
        return {
            f"precision@{k}": float("nan"),
            f"recall@{k}": float("nan"),
            f"ndcg@{k}": float("nan"),
        }
    discounts = 1.0 / np.log2(np.arange(2, k + 2))
    prec, rec, ndcg = [], [], []
    for row, rel in zip(topk[:, :k], relevant):
        hits = np.isin(row, rel)
        n_hits = int(hits.sum())
        prec.append(n_hits / k)
        rec.append(n_hits / len(rel))
        ideal = discounts[: min(len(rel), k)].sum()
        ndcg.append(float((hits * discounts).sum() / ideal))
    return {
        f"precision@{k}": float(np.mean(prec)),
        f"recall@{k}": float(np.mean(rec)),
        f"ndcg@{k}": float(np.mean(ndcg)),
    }


@torch.no_grad()
def evaluate(
    model: BaseModel,
    train: Ratings,
    valid: Ratings,
    *,
    k: int = 10,
    threshold: float = 4.0,
    user_batch: int = 256,
) -> dict[str, Any]:
    """RMSE, MAE and ranking metrics of ``model`` on ``valid``.

    Parameters
    ----------
    model : BaseModel
    train : Ratings
        Items rated in training are excluded from each user's ranking.
    valid : Ratings
        Held-out ratings; items rated ``>= threshold`` are the relevant ones.
    k : int
        Cut-off of the ranking metrics.
    threshold : float
        Minimum rating for a held-out item to count as relevant.
    user_batch : int
        Users scored per eager ``score_all`` call (bounds memory).

    Returns
    -------
    dict
        ``rmse``, ``mae``, ``precision@k``, ``recall@k``, ``ndcg@k``, ``ranked_users``,
        ``n_valid``.
    """
    if not 1 <= k <= model.n_items:
        raise ConfigError(f"k must be between 1 and the number of items ({model.n_items}), got {k}")
    model.eval()
    out: dict[str, Any] = {"n_valid": len(valid), "k": k, "threshold": threshold}
    if len(valid) == 0:
        return out
    err = predict(model, valid).astype(np.float64) - valid.ratings
    out["rmse"] = float(np.sqrt(np.mean(err**2)))
    out["mae"] = float(np.mean(np.abs(err)))

    rel_mask = valid.ratings >= threshold
    rel_users = np.unique(valid.users[rel_mask])
    order = np.argsort(valid.users[rel_mask], kind="stable")
    sorted_users = valid.users[rel_mask][order]
    sorted_items = valid.items[rel_mask][order]
    bounds = (
        np.searchsorted(sorted_users, rel_users, side="left"),
        np.searchsorted(sorted_users, rel_users, side="right"),
    )
    relevant = [sorted_items[a:b] for a, b in zip(*bounds)]

    train_order = np.argsort(train.users, kind="stable")
    t_users, t_items = train.users[train_order], train.items[train_order]
    topk_rows = []
    for start in range(0, len(rel_users), user_batch):
        users = rel_users[start : start + user_batch]
        lo = np.searchsorted(t_users, users, side="left")
        hi = np.searchsorted(t_users, users, side="right")
        rows, items = runs_to_coo(lo, hi, t_items)
        _, top = model.recommend(
            torch.from_numpy(users), k, torch.from_numpy(rows), torch.from_numpy(items)
        )
        topk_rows.append(top.numpy())
    topk = np.concatenate(topk_rows) if topk_rows else np.zeros((0, k), dtype=np.int64)
    out.update(ranking_metrics(topk, relevant, k))
    out["ranked_users"] = int(len(rel_users))
    return out
