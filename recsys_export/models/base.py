"""The base class of the networks and its three entry points.

Every model shares :class:`BaseModel`, whose three entry points mean the same in every
export format (docs/bundle-format.md, "Entry points"):

``forward(users, items) -> float32[N]``
    The post's pairwise score.
``score_all(users) -> float32[B, n_items]``
    One row of the full user x item matrix per user.
``recommend(users, k, exclude_rows, exclude_items) -> (float32[B, k], int64[B, k])``
    The best ``k`` items per user, sorted by descending score, with excluded items
    removed. Excluded items are given in COO form: ``exclude_rows[j]`` is a position in
    ``users`` (0..B-1) and ``exclude_items[j]`` an item index to drop for that user.
    When fewer than ``k`` items remain for a user, the missing slots are filled with
    item ``-1`` and score ``-inf``.

Top-k lives in one place, :func:`recsys_export.torch_runtime.ops.topk_excluding`, used
by every model and export; its empty-slot constants and ``k`` check come from the
torch-free :mod:`recsys_export.core.topk`.
"""

from __future__ import annotations

from typing import Any

from torch import Tensor, nn

from recsys_export.core.topk import check_k
from recsys_export.core.validation import check_int
from recsys_export.torch_runtime.ops import topk_excluding


class BaseModel(nn.Module):
    """Base class: user/item embeddings plus the three entry points.

    Subclasses implement :meth:`forward` and :meth:`score_all`; :meth:`recommend` is
    shared. ``kind`` names the model in checkpoints and bundle manifests.
    """

    kind: str = ""

    def __init__(self, n_users: int, n_items: int, n_factors: int) -> None:
        super().__init__()
        self.n_users: int = check_int("n_users", n_users, low=1)
        self.n_items: int = check_int("n_items", n_items, low=1)
        self.n_factors: int = check_int("n_factors", n_factors, low=1)

    def score_all(self, users: Tensor) -> Tensor:  # pragma: no cover - abstract
        """Scores of every item for each user: ``float32[B, n_items]``."""
        raise NotImplementedError

    def score_items(self, users: Tensor, items: Tensor) -> Tensor:  # pragma: no cover
        """Scores of the given items for each user: ``float32[B, S]`` (training helper)."""
        raise NotImplementedError

    def recommend(
        self, users: Tensor, k: int, exclude_rows: Tensor, exclude_items: Tensor
    ) -> tuple[Tensor, Tensor]:
        """Best ``k`` items per user with excluded (row, item) pairs removed.

        See :func:`~recsys_export.torch_runtime.ops.topk_excluding` for the encoding and
        the fill rule.
        """
        check_k(k, self.n_items)
        return topk_excluding(self.score_all(users), k, exclude_rows, exclude_items)

    def hyperparameters(self) -> dict[str, Any]:  # pragma: no cover - abstract
        """Constructor arguments, JSON-serialisable, so ``type(self)(**hp)`` rebuilds it."""
        raise NotImplementedError

    def _init_embeddings(self, init_std: float | None) -> None:
        # None keeps torch's default N(0, 1), as in the post.
        if init_std is None:
            return
        for module in self.modules():
            if isinstance(module, nn.Embedding):
                nn.init.normal_(module.weight, std=init_std)
