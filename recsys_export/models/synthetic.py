"""Synthetic (untrained, seeded) MF and DenseNet checkpoints of any size.

Benchmarks and tests need a model of a given size, not a trained one: its outputs
only have to be reproducible. :func:`synthetic_checkpoint` builds one (random weights
from a seed, biases drawn too so that they matter, random seen items), ready for
:func:`recsys_export.export.export_bundle`::

    ckpt = synthetic_checkpoint("mf", 10_000, 5_000, factors=32, seen_per_user=20)
    export_bundle(ckpt, "bundle", formats="onnx", verify=False)

This module imports torch (the ``train`` extra). For synthetic *ratings*, see
:func:`recsys_export.data.synthetic_ratings`.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from recsys_export.core.defaults import MODEL_KINDS
from recsys_export.core.ids import IdMap
from recsys_export.core.validation import check_choice, check_int
from recsys_export.models import BaseModel, DenseNet, MatrixFactorization
from recsys_export.models.checkpoint import Checkpoint

__all__ = ["synthetic_checkpoint", "synthetic_model", "synthetic_seen"]


def synthetic_model(
    kind: str,
    n_users: int,
    n_items: int,
    *,
    factors: int = 8,
    hidden: int = 16,
    init_std: float = 0.1,
    seed: int = 0,
) -> BaseModel:
    """A seeded, untrained model in eval mode.

    Parameters
    ----------
    kind : {"mf", "densenet"}
        Biased matrix factorization (biases drawn from N(0, 0.1)) or the DenseNet.
    n_users, n_items : int
        Sizes.
    factors : int
        Embedding size.
    hidden : int
        DenseNet hidden width (ignored for MF).
    init_std : float
        Standard deviation of the embeddings.
    seed : int
        ``torch.manual_seed`` before the weights are drawn.

    Returns
    -------
    BaseModel
    """
    check_choice("kind", kind, MODEL_KINDS)
    torch.manual_seed(seed)
    model: BaseModel
    if kind == "mf":
        model = MatrixFactorization(
            n_users, n_items, factors, biased=True, sparse=False, init_std=init_std
        )
        with torch.no_grad():
            model.user_bias.weight.normal_(0, 0.1)
            model.item_bias.weight.normal_(0, 0.1)
    else:
        model = DenseNet(n_users, n_items, factors, hidden, init_std=init_std)
    return model.eval()


def synthetic_seen(
    n_users: int, n_items: int, per_user: int, *, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """``per_user`` random seen items per user (repeats possible): COO ``(users, items)``.

    Returns
    -------
    (np.ndarray, np.ndarray)
        int64 user and item indices, users in order.
    """
    per_user = check_int("per_user", per_user, low=0)
    rng = np.random.default_rng(seed)
    users = np.repeat(np.arange(n_users, dtype=np.int64), per_user)
    items = rng.integers(0, n_items, users.size, dtype=np.int64)
    return users, items


def synthetic_checkpoint(
    kind: str,
    n_users: int,
    n_items: int,
    *,
    factors: int = 8,
    hidden: int = 16,
    init_std: float = 0.1,
    seed: int = 0,
    seen_per_user: int = 0,
    seen: tuple[np.ndarray, np.ndarray] | None = None,
    user_ids: Any = None,
    item_ids: Any = None,
) -> Checkpoint:
    """A checkpoint of :func:`synthetic_model` with seen items and id maps.

    Parameters
    ----------
    kind, n_users, n_items, factors, hidden, init_std, seed
        See :func:`synthetic_model`.
    seen_per_user : int
        Random seen items per user (:func:`synthetic_seen` with ``seed``), unless
        ``seen`` gives them.
    seen : (np.ndarray, np.ndarray), optional
        Explicit seen ``(users, items)`` indices.
    user_ids, item_ids : array-like, optional
        Raw ids in index order (default: the indices themselves).

    Returns
    -------
    Checkpoint
    """
    model = synthetic_model(
        kind, n_users, n_items, factors=factors, hidden=hidden, init_std=init_std, seed=seed
    )
    if seen is None:
        seen = synthetic_seen(n_users, n_items, seen_per_user, seed=seed)
    users = np.arange(n_users) if user_ids is None else user_ids
    items = np.arange(n_items) if item_ids is None else item_ids
    return Checkpoint(
        model,
        IdMap(users, "user"),
        IdMap(items, "item"),
        seen_users=np.asarray(seen[0], dtype=np.int64),
        seen_items=np.asarray(seen[1], dtype=np.int64),
    )
