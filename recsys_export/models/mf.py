"""The post's matrix factorization: ``score(u, i) = p_u . q_i`` (+ optional biases)."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from recsys_export.models.base import BaseModel


class MatrixFactorization(BaseModel):
    """The post's matrix factorization: ``score(u, i) = p_u . q_i``.

    Parameters
    ----------
    n_users, n_items : int
        Sizes of the id maps.
    n_factors : int
        Embedding dimension (the post uses 3).
    biased : bool
        Add a global mean and user/item biases (off in the post's recipe).
    global_mean : float
        Constant added to every score when ``biased`` (usually the mean training rating).
    sparse : bool
        Sparse embedding gradients (the post uses ``sparse=True``; needs SGD or
        SparseAdam).
    init_std : float, optional
        Standard deviation of the embedding initialisation; None keeps torch's N(0, 1).
    """

    kind = "mf"

    def __init__(
        self,
        n_users: int,
        n_items: int,
        n_factors: int = 3,
        *,
        biased: bool = False,
        global_mean: float = 0.0,
        sparse: bool = True,
        init_std: float | None = None,
    ) -> None:
        super().__init__(n_users, n_items, n_factors)
        self.biased = bool(biased)
        self.sparse = bool(sparse)
        self.init_std = init_std
        self.user_factors = nn.Embedding(n_users, n_factors, sparse=sparse)
        self.item_factors = nn.Embedding(n_items, n_factors, sparse=sparse)
        if self.biased:
            self.user_bias = nn.Embedding(n_users, 1, sparse=sparse)
            self.item_bias = nn.Embedding(n_items, 1, sparse=sparse)
        self.register_buffer("global_mean", torch.tensor(float(global_mean if biased else 0.0)))
        self._init_embeddings(init_std)
        if self.biased:
            nn.init.zeros_(self.user_bias.weight)
            nn.init.zeros_(self.item_bias.weight)

    def forward(self, users: Tensor, items: Tensor) -> Tensor:
        """Pairwise scores ``float32[N]`` for ``users[n], items[n]``."""
        out = (self.user_factors(users) * self.item_factors(items)).sum(1)
        if self.biased:
            out = (
                out
                + self.user_bias(users).squeeze(1)
                + self.item_bias(items).squeeze(1)
                + self.global_mean
            )
        return out

    def predict(self, users: Tensor, items: Tensor) -> Tensor:
        """Alias of :meth:`forward`, as in the post."""
        return self.forward(users, items)

    def score_all(self, users: Tensor) -> Tensor:
        """Scores of every item for each user: ``P[users] @ Q.T`` (+ biases)."""
        out = self.user_factors(users) @ self.item_factors.weight.t()
        if self.biased:
            out = out + self.user_bias(users) + self.item_bias.weight.t() + self.global_mean
        return out

    def score_items(self, users: Tensor, items: Tensor) -> Tensor:
        """Scores of ``items`` for each user: ``P[users] @ Q[items].T`` (+ biases)."""
        out = self.user_factors(users) @ self.item_factors(items).t()
        if self.biased:
            out = out + self.user_bias(users) + self.item_bias(items).t() + self.global_mean
        return out

    def hyperparameters(self) -> dict[str, Any]:
        return {
            "n_users": self.n_users,
            "n_items": self.n_items,
            "n_factors": self.n_factors,
            "biased": self.biased,
            "global_mean": float(self.global_mean),
            "sparse": self.sparse,
            "init_std": self.init_std,
        }
