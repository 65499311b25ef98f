"""The post's dense feed-forward net, scored in cache-sized tiles.

:class:`DenseNet` computes ``Linear(ReLU(Linear([p_u, q_i])))``. Scoring many items
splits the first layer into a per-user and a per-item half and forms the hidden
activations one tile at a time (:data:`SCORE_TILE` when training, with the custom
autograd function :class:`_HiddenScores`; :data:`INFERENCE_TILE` without gradients);
dropout masks come from one pre-drawn pool (:class:`DropoutMasks`).
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from recsys_export.core.validation import check_fraction, check_int
from recsys_export.models.base import BaseModel

#: Most elements of a ``[users, items, hidden]`` block DenseNet forms at once when
#: training (2 MiB of float32, which stays in cache); see :meth:`DenseNet._output`.
SCORE_TILE = 1 << 19
#: The same bound for inference (no gradient): ``[users, hidden, items]`` blocks of up to
#: 8 MiB, whose long rows of items vectorise best (see :meth:`DenseNet._output`).
INFERENCE_TILE = 1 << 21

#: aten's fused ``relu(x + y)`` (one pass instead of two; ~1.4x faster on a DenseNet
#: tile here); None where a torch build lacks it.
_FUSED_ADD_RELU = getattr(getattr(torch.ops.aten, "_add_relu", None), "out", None)


def add_relu_into(out: Tensor, x: Tensor, y: Tensor) -> Tensor:
    """``out = relu(x + y)`` (broadcast), written into ``out``, which is returned."""
    if _FUSED_ADD_RELU is not None:
        return _FUSED_ADD_RELU(x, y, out=out)
    return torch.add(x, y, out=out).relu_()


class DropoutMasks:
    """Training-time dropout masks cut at random offsets from one pre-drawn pool.

    ``F.dropout`` draws a fresh Bernoulli variable per element. On the ``[B, S, H]``
    hidden activations of a DenseNet ranking step (16 users x ~3,000 candidates x 64
    units on ml-latest-small) that took 5x the rest of the layer's forward and backward
    here (61 ms against 11 ms a step). A window of a pool at least twice the tensor's
    size, at a fresh random offset on every call, gives each element a keep bit drawn
    with probability ``1 - p`` (scaled by ``1 / (1 - p)``) and costs one multiply.
    Elements of one mask are independent; masks of different calls are shifted
    windows of the same pool. The pool and offsets come from torch's global generator,
    so seeded training stays reproducible. Eval mode never uses it.
    """

    #: Smallest pool drawn (elements); it grows to twice the largest tensor masked.
    MIN_POOL = 1 << 20

    def __init__(self) -> None:
        self._pool: Tensor | None = None
        self._p = 0.0

    def apply(self, h: Tensor, p: float) -> Tensor:
        """``h`` times a fresh keep mask for dropout probability ``p`` (``h`` if 0)."""
        if p == 0.0:
            return h
        return h * self.mask(h.shape, p, h)

    def mask(self, shape: tuple[int, ...], p: float, like: Tensor) -> Tensor:
        """A fresh keep mask of ``shape`` (a view of the pool): each element 0 or
        ``1 / (1 - p)``, with the dtype and device of ``like``."""
        n = math.prod(shape)
        pool = self._pool
        if (
            pool is None
            or self._p != p
            or pool.numel() < 2 * n
            or pool.device != like.device
            or pool.dtype != like.dtype
        ):
            keep = torch.rand(max(2 * n, self.MIN_POOL), device=like.device) >= p
            pool = self._pool = keep.to(like.dtype).mul_(1.0 / (1.0 - p))
            self._p = p
        start = int(torch.randint(0, pool.numel() - n + 1, ()))
        return pool[start : start + n].view(shape)


class DenseNet(BaseModel):
    """The post's dense feed-forward net: ``Linear(ReLU(Linear([p_u, q_i])))``.

    Parameters
    ----------
    n_users, n_items : int
        Sizes of the id maps.
    n_factors : int
        Embedding dimension of users and items (the post uses 3).
    hidden : int
        Width of the hidden layer (the post's ``H1 = 16``).
    dropout : float
        Dropout on the hidden layer during training (0 in the post), with masks from
        :class:`DropoutMasks`.
    global_mean : float
        Constant added to the output (0 in the post), so the net learns residuals.
    init_std : float, optional
        Standard deviation of the embedding initialisation; None keeps torch's N(0, 1).
    """

    kind = "densenet"

    def __init__(
        self,
        n_users: int,
        n_items: int,
        n_factors: int = 3,
        hidden: int = 16,
        *,
        dropout: float = 0.0,
        global_mean: float = 0.0,
        init_std: float | None = None,
    ) -> None:
        super().__init__(n_users, n_items, n_factors)
        self.hidden: int = check_int("hidden", hidden, low=1)
        self.dropout = check_fraction("dropout", dropout)
        self._masks = DropoutMasks()
        self.init_std = init_std
        self.user_factors = nn.Embedding(n_users, n_factors)
        self.item_factors = nn.Embedding(n_items, n_factors)
        self.linear1 = nn.Linear(n_factors * 2, hidden)
        self.linear2 = nn.Linear(hidden, 1)
        self.register_buffer("global_mean", torch.tensor(float(global_mean)))
        self._init_embeddings(init_std)

    def forward(self, users: Tensor, items: Tensor) -> Tensor:
        """Pairwise scores ``float32[N]``: the post's forward with the unit output squeezed."""
        x = torch.cat([self.user_factors(users), self.item_factors(items)], 1)
        h = F.relu(self.linear1(x))
        if self.training:
            h = self._masks.apply(h, self.dropout)
        return self.linear2(h).squeeze(1) + self.global_mean

    def predict(self, users: Tensor, items: Tensor) -> Tensor:
        """Alias of :meth:`forward`, as in the post."""
        return self.forward(users, items)

    def split_first_layer(self) -> tuple[Tensor, Tensor]:
        """Per-user and per-item halves of the first layer.

        Returns
        -------
        (Tensor, Tensor)
            ``A = P Wu^T`` ``[n_users, H]`` and ``C = Q Wi^T + b1`` ``[n_items, H]``, so
            that ``linear1([p_u, q_i]) = A[u] + C[i]``.
        """
        w = self.linear1.weight
        k = self.n_factors
        a = self.user_factors.weight @ w[:, :k].t()
        c = self.item_factors.weight @ w[:, k:].t() + self.linear1.bias
        return a, c

    def score_all(self, users: Tensor) -> Tensor:
        """Scores of every item for each user, via the split first layer.

        The item half of the first layer is computed once per call, never the pairwise
        concatenation; the hidden activations are formed one cache-sized tile of items at
        a time (:meth:`_output`), so memory stays ``O(B x n_items)``.
        """
        w = self.linear1.weight
        k = self.n_factors
        a = self.user_factors(users) @ w[:, :k].t()  # [B, H]
        c = self.item_factors.weight @ w[:, k:].t() + self.linear1.bias  # [n_items, H]
        return self._output(a, c)

    def score_items(self, users: Tensor, items: Tensor) -> Tensor:
        """Scores of ``items`` for each user via the split first layer: ``[B, S]``."""
        w = self.linear1.weight
        k = self.n_factors
        a = self.user_factors(users) @ w[:, :k].t()  # [B, H]
        c = self.item_factors(items) @ w[:, k:].t() + self.linear1.bias  # [S, H]
        return self._output(a, c)

    def _output(self, a: Tensor, c: Tensor) -> Tensor:
        """``linear2(relu(a[b] + c[s]))`` for every pair: ``[B, S]``.

        The ``[B, S, H]`` hidden activations are formed by :class:`_HiddenScores` in
        tiles of items of at most :data:`SCORE_TILE` elements, in one reused buffer that
        stays in cache. In training mode each tile gets dropout masks, per (user, item,
        unit) as in :meth:`forward`.
        """
        b, h = a.shape
        if not self.training and not (
            torch.is_grad_enabled() and (a.requires_grad or c.requires_grad)
        ):
            return self._inference_output(a, c)
        tile = max(1, SCORE_TILE // max(1, b * h))
        masks: list[Tensor] | None = None
        scale = 1.0
        if self.training and self.dropout > 0.0:
            masks = [
                self._masks.mask((b, min(tile, c.shape[0] - s), h), self.dropout, a)
                for s in range(0, c.shape[0], tile)
            ]
            scale = 1.0 / (1.0 - self.dropout)
        out = _HiddenScores.apply(a, c, self.linear2.weight[0], masks, scale, tile)
        return out + self.linear2.bias + self.global_mean

    def _inference_output(self, a: Tensor, c: Tensor) -> Tensor:
        """:meth:`_output` without gradients: ``[users, hidden, items]`` tiles of at most
        :data:`INFERENCE_TILE` elements in one reused buffer, each reduced by one
        ``w2 @ tile`` product. Scoring 256 users x 9,724 items at 64 hidden units took
        55-68 ms against 75-83 ms for the training layout (same run, interleaved)."""
        b, h = a.shape
        n = c.shape[0]
        c_t = c.t().contiguous()  # [H, S]
        users = max(1, min(b, INFERENCE_TILE // max(1, h * n)))
        items = max(1, min(n, INFERENCE_TILE // (h * users)))
        w2 = self.linear2.weight[0]
        out3 = a.new_empty(b, 1, n)
        w2_rows = w2.view(1, 1, h).expand(users, 1, h)
        buf = a.new_empty(min(b, users) * h * items)
        for u0 in range(0, b, users):
            u1 = min(u0 + users, b)
            for i0 in range(0, n, items):
                i1 = min(i0 + items, n)
                x = buf[: (u1 - u0) * h * (i1 - i0)].view(u1 - u0, h, i1 - i0)
                add_relu_into(x, a[u0:u1].unsqueeze(2), c_t[:, i0:i1].unsqueeze(0))
                torch.bmm(w2_rows[: u1 - u0], x, out=out3[u0:u1, :, i0:i1])
        return out3.view(b, n) + self.linear2.bias + self.global_mean

    def hyperparameters(self) -> dict[str, Any]:
        return {
            "n_users": self.n_users,
            "n_items": self.n_items,
            "n_factors": self.n_factors,
            "hidden": self.hidden,
            "dropout": self.dropout,
            "global_mean": float(self.global_mean),
            "init_std": self.init_std,
        }


class _HiddenScores(torch.autograd.Function):
    """``out[b, s] = sum_h relu(a[b, h] + c[s, h]) * mask[b, s, h] * w2[h]``, tiled.

    Autograd on the plain expression allocates four fresh ``[B, S, H]`` tensors per
    tile (sum, dropout product, and in the backward pass the outer product and the relu
    gradient); on ml-latest-small's ranking steps (16 users x ~2,300 items x 64 units)
    those allocations, not the arithmetic, were most of the time. Here forward and
    backward each form one tile at a time in a single buffer reused in place, and the
    backward pass recomputes the tile instead of keeping it: 2x faster per step,
    the same values. The masks are 0 or ``scale`` (:class:`DropoutMasks`), applied
    after the relu as in :meth:`DenseNet.forward`.
    """

    @staticmethod
    def _tile(
        buf: Tensor, a: Tensor, c: Tensor, mask: Tensor | None, start: int, stop: int
    ) -> Tensor:
        b, h = a.shape
        x = buf[: b * (stop - start) * h].view(b, stop - start, h)
        add_relu_into(x, a.unsqueeze(1), c[start:stop].unsqueeze(0))
        return x if mask is None else x.mul_(mask)

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any,
        a: Tensor,
        c: Tensor,
        w2: Tensor,
        masks: list[Tensor] | None,
        scale: float,
        tile: int,
    ) -> Tensor:
        b, h = a.shape
        n = c.shape[0]
        out = a.new_empty(b, n)
        buf = a.new_empty(b * min(tile, n) * h)
        for i, start in enumerate(range(0, n, tile)):
            stop = min(start + tile, n)
            x = _HiddenScores._tile(buf, a, c, None if masks is None else masks[i], start, stop)
            out[:, start:stop] = (x.view(-1, h) @ w2).view(b, stop - start)
        ctx.save_for_backward(a, c, w2)
        ctx.masks, ctx.scale, ctx.tile = masks, scale, tile
        return out

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, ...]:  # type: ignore[override]
        a, c, w2 = ctx.saved_tensors
        masks, tile = ctx.masks, ctx.tile
        b, h = a.shape
        n = c.shape[0]
        grad_a = torch.zeros_like(a)
        grad_c = torch.empty_like(c)
        grad_w2 = torch.zeros_like(w2)
        buf = a.new_empty(b * min(tile, n) * h)
        for i, start in enumerate(range(0, n, tile)):
            stop = min(start + tile, n)
            x = _HiddenScores._tile(buf, a, c, None if masks is None else masks[i], start, stop)
            g = grad[:, start:stop]
            grad_w2.addmv_(x.view(-1, h).t(), g.reshape(-1))
            # d out / d (a + c) = w2 * mask * 1[unit on]; the units on are sign(x)
            x.sign_().mul_(g.unsqueeze(2))
            grad_a.add_(x.sum(1))
            torch.sum(x, 0, out=grad_c[start:stop])
        w = w2 * ctx.scale
        return grad_a.mul_(w), grad_c.mul_(w), grad_w2, None, None, None
