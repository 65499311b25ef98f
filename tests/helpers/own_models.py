"""Recommenders "trained elsewhere" for tests/test_own_model.py (our own code).

``PostMF`` and ``PostDenseNet`` are equivalent to the classes of the "PyTorch for
recommenders 101" post (same parameter names and shapes, same forward); ``TwoTower`` is
a custom model with user and item MLP towers; ``DataDependent`` branches on its scores.
The CLI test imports this file with ``--model tests/helpers/own_models.py:CLASS``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class PostMF(nn.Module):
    """The post's matrix factorization, optionally with user and item biases."""

    def __init__(self, n_users: int, n_items: int, n_factors: int = 3, biases: bool = False):
        super().__init__()
        self.user_factors = nn.Embedding(n_users, n_factors, sparse=True)
        self.item_factors = nn.Embedding(n_items, n_factors, sparse=True)
        self.biases = biases
        if biases:
            self.user_bias = nn.Embedding(n_users, 1, sparse=True)
            self.item_bias = nn.Embedding(n_items, 1, sparse=True)

    def forward(self, user: Tensor, item: Tensor) -> Tensor:
        out = (self.user_factors(user) * self.item_factors(item)).sum(1)
        if self.biases:
            out = out + self.user_bias(user).squeeze(1) + self.item_bias(item).squeeze(1)
        return out


class PostDenseNet(nn.Module):
    """The post's dense net: returns ``[N, D_out]`` scores, as the post's does."""

    def __init__(self, n_users: int, n_items: int, n_factors: int, H1: int, D_out: int):
        super().__init__()
        self.user_factors = nn.Embedding(n_users, n_factors)
        self.item_factors = nn.Embedding(n_items, n_factors)
        self.linear1 = nn.Linear(n_factors * 2, H1)
        self.linear2 = nn.Linear(H1, D_out)

    def forward(self, users: Tensor, items: Tensor) -> Tensor:
        x = torch.cat([self.user_factors(users), self.item_factors(items)], 1)
        return self.linear2(F.relu(self.linear1(x)))


class TwoTower(nn.Module):
    """User and item MLP towers over embeddings; the score is their dot product."""

    def __init__(self, n_users: int, n_items: int, dim: int = 16, hidden: int = 32):
        super().__init__()
        self.user_embedding = nn.Embedding(n_users, dim)
        self.item_embedding = nn.Embedding(n_items, dim)
        self.user_tower = nn.Sequential(nn.Linear(dim, hidden), nn.ReLU(), nn.Linear(hidden, dim))
        self.item_tower = nn.Sequential(nn.Linear(dim, hidden), nn.ReLU(), nn.Linear(hidden, dim))

    def forward(self, users: Tensor, items: Tensor) -> Tensor:
        u = self.user_tower(self.user_embedding(users))
        i = self.item_tower(self.item_embedding(items))
        return (u * i).sum(-1)


class DataDependent(nn.Module):
    """Flips the sign of every score when the batch's mean score is negative."""

    def __init__(self, n_users: int, n_items: int, dim: int = 4):
        super().__init__()
        self.user_embedding = nn.Embedding(n_users, dim)
        self.item_embedding = nn.Embedding(n_items, dim)

    def forward(self, users: Tensor, items: Tensor) -> Tensor:
        scores = (self.user_embedding(users) * self.item_embedding(items)).sum(1)
        if scores.mean() > 0:
            return scores
        return -scores
