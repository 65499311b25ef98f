"""Export-friendly inference modules: one conversion path for every format.

:func:`inference_module` turns a trained :class:`~recsys_export.models.BaseModel`
into a frozen module whose weights are plain buffers and whose three methods
(``score``, ``score_all``, ``recommend``) are written so that ``torch.jit.script``,
``torch.export`` and ``torch.onnx.export`` all accept them. Every export format is
produced from these modules, and parity checks compare them with the eager model.

DenseNet's full-matrix path never builds the pairwise concatenation: with the first layer
split into a user half ``A = P Wu^T`` and an item half ``C = Q Wi^T + b1``, a score is
``w2 . relu(a + c) + b2``. The item half ``-C^T`` is computed once at export time, so a
user row costs one elementwise ``relu(a - (-c))`` and one matrix-vector product over
``[H, n_items]``. (Not the rewrite ``w2 . max(a, -c) + (w2 . c + b2)``: it sums two
large opposite terms per item and loses precision on scores near 0, docs/parity.md.)
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from recsys_export.models import BaseModel, DenseNet, MatrixFactorization, topk_excluding
from recsys_export.topk import EMPTY_ITEM, EMPTY_SCORE


class _FrozenRecommender(nn.Module):
    """Shared ``recommend`` of the frozen modules (subclasses define ``score_all`` and an
    ``item_factors`` buffer); top-k itself lives in :func:`topk_excluding`."""

    @torch.jit.export
    def recommend(
        self, users: Tensor, k: int, exclude_rows: Tensor, exclude_items: Tensor
    ) -> tuple[Tensor, Tensor]:
        if torch.jit.is_scripting():  # TorchScript callers get a clear message
            n_items = self.item_factors.shape[0]
            if k < 1 or k > n_items:
                raise ValueError(
                    "k must be between 1 and "
                    + str(n_items)
                    + " (the number of items), got "
                    + str(k)
                )
        return topk_excluding(self.score_all(users), k, exclude_rows, exclude_items)


class MFInference(_FrozenRecommender):
    """Frozen matrix factorization: ``P[u] . Q[i] + bu[u] + bi[i] + mu``."""

    def __init__(self, model: MatrixFactorization) -> None:
        super().__init__()
        with torch.no_grad():
            self.register_buffer("user_factors", model.user_factors.weight.detach().clone())
            self.register_buffer("item_factors", model.item_factors.weight.detach().clone())
            if model.biased:
                ub = model.user_bias.weight.detach().reshape(-1).clone()
                ib = model.item_bias.weight.detach().reshape(-1).clone()
            else:
                ub = torch.zeros(model.n_users)
                ib = torch.zeros(model.n_items)
            self.register_buffer("user_bias", ub)
            self.register_buffer("item_bias", ib + model.global_mean.detach())

    def forward(self, users: Tensor, items: Tensor) -> Tensor:
        """Pairwise scores ``float32[N]``."""
        return self.score(users, items)

    @torch.jit.export
    def score(self, users: Tensor, items: Tensor) -> Tensor:
        p = torch.index_select(self.user_factors, 0, users)
        q = torch.index_select(self.item_factors, 0, items)
        bu = torch.index_select(self.user_bias, 0, users)
        bi = torch.index_select(self.item_bias, 0, items)
        return (p * q).sum(1) + bu + bi

    @torch.jit.export
    def score_all(self, users: Tensor) -> Tensor:
        p = torch.index_select(self.user_factors, 0, users)
        bu = torch.index_select(self.user_bias, 0, users)
        return torch.matmul(p, self.item_factors.t()) + bu.unsqueeze(1) + self.item_bias


class DenseNetInference(_FrozenRecommender):
    """Frozen DenseNet with the split first layer (``score_all`` from its two halves)."""

    def __init__(self, model: DenseNet) -> None:
        super().__init__()
        k = model.n_factors
        with torch.no_grad():
            w1 = model.linear1.weight.detach()
            b1 = model.linear1.bias.detach()
            w2 = model.linear2.weight.detach().reshape(-1)
            b2 = model.linear2.bias.detach().reshape(()) + model.global_mean.detach()
            q = model.item_factors.weight.detach()
            c = q @ w1[:, k:].t() + b1  # [n_items, H]
            self.register_buffer("user_factors", model.user_factors.weight.detach().clone())
            self.register_buffer("item_factors", q.clone())
            self.register_buffer("w1", w1.clone())
            self.register_buffer("b1", b1.clone())
            self.register_buffer("w1_user_t", w1[:, :k].t().contiguous())  # [k, H]
            self.register_buffer("w2", w2.clone())
            self.register_buffer("w2_row", w2.reshape(1, -1).clone())  # [1, H]
            self.register_buffer("b2", b2.clone())
            self.register_buffer("neg_c_t", (-c).t().contiguous())  # [H, n_items]
            # what the runtime's kernels add to w2 . relu(a + c) per item: the output bias
            self.register_buffer("item_offset", b2.expand(c.shape[0]).clone())  # [n_items]

    def forward(self, users: Tensor, items: Tensor) -> Tensor:
        """Pairwise scores ``float32[N]``."""
        return self.score(users, items)

    @torch.jit.export
    def score(self, users: Tensor, items: Tensor) -> Tensor:
        p = torch.index_select(self.user_factors, 0, users)
        q = torch.index_select(self.item_factors, 0, items)
        h = torch.relu(torch.matmul(torch.cat([p, q], 1), self.w1.t()) + self.b1)
        return torch.matmul(h, self.w2) + self.b2

    @torch.jit.export
    def score_all(self, users: Tensor) -> Tensor:
        a = torch.matmul(torch.index_select(self.user_factors, 0, users), self.w1_user_t)  # [B, H]
        # relu(a + c), not the max rewrite max(a, -c) . w2 + c . w2: the rewrite's two sums
        # can be ~60 and cancel to a score near 0 (a trained 64-unit ml-latest-small
        # DenseNet), which put 5 of 5.9M scores 1.14x past the parity tolerance
        h = (a.unsqueeze(2) - self.neg_c_t.unsqueeze(0)).relu_()  # [B, H, n_items], one buffer
        return torch.matmul(self.w2_row, h).squeeze(1) + self.b2  # [B, n_items]


def inference_module(model: BaseModel) -> nn.Module:
    """The frozen, export-friendly counterpart of a trained model (eval mode, no grad)."""
    if isinstance(model, MatrixFactorization):
        module: nn.Module = MFInference(model)
    elif isinstance(model, DenseNet):
        module = DenseNetInference(model)
    elif hasattr(model, "inference_module"):  # e.g. byom.ModuleRecommender
        module = model.inference_module()
    else:  # pragma: no cover - guarded by build_model
        raise TypeError(f"unsupported model type {type(model).__name__}")
    return module.eval()


class ScoreEntry(nn.Module):
    """``score(users, items) -> scores`` as a module's forward, for torch.export / ONNX."""

    def __init__(self, module: nn.Module) -> None:
        super().__init__()
        self.module = module

    def forward(self, users: Tensor, items: Tensor) -> Tensor:
        return self.module.score(users, items)


class ScoreAllEntry(nn.Module):
    """``score_all(users) -> scores[B, n_items]`` as a forward."""

    def __init__(self, module: nn.Module) -> None:
        super().__init__()
        self.module = module

    def forward(self, users: Tensor) -> Tensor:
        return self.module.score_all(users)


class RecommendEntry(nn.Module):
    """``recommend(users, k, exclude_rows, exclude_items)`` with ``k`` a 0-d int64 tensor."""

    def __init__(self, module: nn.Module, n_items: int) -> None:
        super().__init__()
        self.module = module
        self.n_items = n_items

    def forward(
        self, users: Tensor, k: Tensor, exclude_rows: Tensor, exclude_items: Tensor
    ) -> tuple[Tensor, Tensor]:
        kk = k.item()
        torch._check(kk >= 1)
        torch._check(kk <= self.n_items)
        return self.module.recommend(users, kk, exclude_rows, exclude_items)


class OnnxRecommendEntry(nn.Module):
    """``recommend`` for the TorchScript-based ONNX exporter (traced, ``k`` a tensor).

    The same computation as :func:`~recsys_export.models.topk_excluding` on
    ``score_all``, written so that tracing keeps ``k`` a run-time input: the 0-d ``k``
    goes straight into ``topk`` (the tracer records it as a value, not a constant) and
    the empty-slot test is ``== -inf`` (that exporter has no ``isneginf``); exclusions
    are one scatter into the flattened scores. Only for the
    frozen modules of this package, whose ``score_all`` traces to a batch-generic graph.
    """

    def __init__(self, module: nn.Module, n_items: int) -> None:
        super().__init__()
        self.module = module
        self.n_items = n_items

    def forward(
        self, users: Tensor, k: Tensor, exclude_rows: Tensor, exclude_items: Tensor
    ) -> tuple[Tensor, Tensor]:
        scores = self.module.score_all(users)
        neg_inf = torch.full_like(exclude_items, 0, dtype=scores.dtype) + EMPTY_SCORE
        # one flat ScatterElements over constant shapes: nothing is concatenated
        flat = exclude_rows * self.n_items + exclude_items
        masked = scores.reshape(-1).scatter(0, flat, neg_inf).reshape(-1, self.n_items)
        values, items = torch.topk(masked, k, dim=1, largest=True, sorted=True)  # type: ignore[call-overload]
        items = torch.where(values == EMPTY_SCORE, torch.full_like(items, EMPTY_ITEM), items)
        return values, items
