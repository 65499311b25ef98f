"""Top-k on tensors: :func:`topk_excluding`, the one scriptable top-k with COO
exclusions and the empty-slot rule, used by the models' ``recommend``, the frozen
export modules, parity and the torch engine. Imports torch."""

from __future__ import annotations

import torch
from torch import Tensor

from recsys_export.core.topk import EMPTY_ITEM


def topk_excluding(
    scores: Tensor,
    k: int,
    exclude_rows: Tensor,
    exclude_items: Tensor,
    empty_item: int = EMPTY_ITEM,
) -> tuple[Tensor, Tensor]:
    """Top-``k`` items per row of ``scores`` after removing excluded (row, item) pairs.

    Parameters
    ----------
    scores : Tensor
        ``float32[B, n_items]``.
    k : int
        Number of items to return, ``1 <= k <= n_items``.
    exclude_rows, exclude_items : Tensor
        ``int64[M]`` each: row positions and item indices to exclude (COO pairs).
    empty_item : int
        Item of empty slots: :data:`recsys_export.core.topk.EMPTY_ITEM` (a default argument,
        since TorchScript cannot read module constants).

    Returns
    -------
    (Tensor, Tensor)
        Scores ``float32[B, k]`` sorted descending and item indices ``int64[B, k]``;
        slots that no admissible item can fill hold ``-inf`` and ``-1``.
    """
    neg_inf = torch.full_like(exclude_items, 0, dtype=scores.dtype) - float("inf")
    masked = scores.index_put((exclude_rows, exclude_items), neg_inf)
    values, items = torch.topk(masked, k, dim=1, largest=True, sorted=True)
    items = torch.where(torch.isneginf(values), torch.full_like(items, empty_item), items)
    return values, items
