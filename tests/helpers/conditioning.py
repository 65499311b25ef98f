"""A DenseNet with the conditioning of the models behind the parity false failures.

Default DenseNet ranking models on MovieLens 100K had item terms ``sum_h |c_h w2_h|``
of ~50 while many scores sat near 0: most hidden units are held far below zero by the
item half ``c`` of the first layer. :func:`ill_conditioned_densenet` builds such a
model on purpose: a large negative first-layer bias on ``off`` units (``|c_h w2_h|``
summing to ``item_terms`` per item), a few units on, scores of order 1 and below.
"""

from __future__ import annotations

import numpy as np
import torch

from recsys_export.checkpoint import Checkpoint
from recsys_export.ids import IdMap
from recsys_export.models import DenseNet


def ill_conditioned_densenet(
    n_users: int = 40,
    n_items: int = 300,
    *,
    factors: int = 8,
    hidden: int = 64,
    on_units: int = 6,
    item_terms: float = 50.0,
    seed: int = 0,
) -> DenseNet:
    """A DenseNet whose off units carry item terms ``sum_h |c_h w2_h| ~ item_terms``."""
    gen = torch.Generator().manual_seed(seed)
    model = DenseNet(n_users, n_items, factors, hidden, global_mean=0.0)
    with torch.no_grad():
        for emb in (model.user_factors, model.item_factors):
            emb.weight.copy_(torch.randn(emb.weight.shape, generator=gen) * 0.5)
        w1 = torch.randn(model.linear1.weight.shape, generator=gen) * (0.3 / factors**0.5)
        model.linear1.weight.copy_(w1)
        w2 = torch.randn(hidden, generator=gen) * 0.5
        model.linear2.weight.copy_(w2.view(1, -1))
        model.linear2.bias.fill_(0.01)
        off = -item_terms / float(w2[on_units:].abs().sum())  # |c_h| of an off unit
        bias = torch.full((hidden,), off)
        bias[:on_units] = 0.1
        model.linear1.bias.copy_(bias)
    return model.eval()


def checkpoint_of(model: DenseNet, seen_per_user: int = 3) -> Checkpoint:
    """The model with identity id maps and a few seen items per user."""
    n_u, n_i = model.n_users, model.n_items
    rng = np.random.default_rng(0)
    users = np.repeat(np.arange(n_u, dtype=np.int64), seen_per_user)
    items = rng.integers(0, n_i, size=users.size, dtype=np.int64)
    return Checkpoint(
        model, IdMap(np.arange(n_u), "user"), IdMap(np.arange(n_i), "item"), users, items
    )
