"""What every training loop shares: optimizers over parameter groups, the divergence check."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import torch

from recsys_export.errors import TrainingDiverged

if TYPE_CHECKING:
    from recsys_export.models import BaseModel
    from recsys_export.training.config import TrainConfig


def adam(groups: list[dict[str, Any]], lr: float) -> torch.optim.Optimizer:
    """Adam with the fused CPU kernel (one pass over each parameter; several times faster
    here than the per-op implementation), or the plain one where unsupported."""
    try:
        return torch.optim.Adam(groups, lr=lr, fused=True)
    except (RuntimeError, TypeError):  # pragma: no cover - older torch
        return torch.optim.Adam(groups, lr=lr)


def split_parameters(model: BaseModel) -> tuple[list[Any], list[Any]]:
    """(embedding tables and biases, dense layers) of a model."""
    emb, dense = [], []
    for name, p in model.named_parameters():
        (emb if name.split(".")[0].endswith(("factors", "bias")) else dense).append(p)
    return emb, dense


def check_finite_loss(loss: float, epoch: int, cfg: TrainConfig) -> None:
    """Raise :class:`TrainingDiverged` when an epoch's mean loss is NaN or infinite."""
    if not math.isfinite(loss):
        raise TrainingDiverged(
            f"training diverged at epoch {epoch + 1}: the loss is {loss}; "
            f"lower the learning rate (now {cfg.lr:g}, try {cfg.lr / 10:g})"
        )
