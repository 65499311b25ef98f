"""The user bias of the int8 MF ``score_all``, folded into the integer product.

Added after the product, the user bias is one more pass over every score (measured on
this project's 2-core machine: about a quarter of the int8 ``score_all`` CPU time). Folded,
it rides in the product as one more factor: the user rows gain a column ``c * b_u`` and
the item rows a last int8 entry ``r_i`` with ``r_i * s_i = 1 / c`` exactly, where ``s_i``
is the item's scale. That fixes each item's scale to ``(1 / c) / r_i`` for an integer
``r_i`` in ``[1, 127]``: the smallest such scale that still holds the item's row (a few
per cent coarser than its own per-row scale, or more for items far smaller than ``1 /
(127 c)``). The user side is quantized per call over the whole block (onnxruntime's
``DynamicQuantizeLinear``), so ``c`` trades the two: a large ``c`` widens the block's
range, a small one coarsens small items. :func:`fold_plan` tries a few ``c`` on a sample
of users, emulating the integer product in numpy, and folds only when the best one's
score error stays within :data:`FOLD_TOLERANCE` of the unfolded product's.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["FOLD_TOLERANCE", "FoldPlan", "fold_plan", "snap_scales"]

#: Multipliers of ``max|P| / max|b_u|`` tried for ``c``.
FOLD_MULTIPLIERS = (0.125, 0.25, 0.5, 1.0, 2.0)
#: Fold only when its mean absolute score error is at most this times the unfolded one's.
FOLD_TOLERANCE = 1.1
#: Users of the calibration sample (spread over the users, one quantization block).
CALIBRATION_USERS = 256


@dataclass(frozen=True)
class FoldPlan:
    """The folded item side: ``item_q`` int8 ``[n_items, f + 1]`` (last column ``r_i``),
    ``item_scale`` float32 ``[n_items]`` and the user-bias column's multiplier ``c``."""

    c: float
    item_q: np.ndarray
    item_scale: np.ndarray


def snap_scales(x: np.ndarray, step: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-row int8 with scales ``step / r`` (``r`` integer in ``[1, 127]``), the smallest
    such scale at or above the row's own ``max|x| / 127``.

    Returns
    -------
    (np.ndarray, np.ndarray, np.ndarray)
        ``int8[n, f]`` values, ``float32[n]`` scales and ``int8[n]`` ``r``.
    """
    need = np.abs(x).max(axis=1) / 127.0
    step = max(float(step), float(need.max(initial=0.0)))
    if step <= 0:
        step = 1.0
    r = np.clip(np.floor(step / np.maximum(need, step / 127.0)), 1, 127)
    scale = (np.float32(step) / r.astype(np.float32)).astype(np.float32)
    q = np.clip(np.rint(x / scale[:, None]), -127, 127).astype(np.int8)
    return q, scale, r.astype(np.int8)


def _product(x: np.ndarray, item_q: np.ndarray, item_scale: np.ndarray) -> np.ndarray:
    """onnxruntime's dynamically quantized product, emulated: ``x`` as uint8 over its
    range (zero included, one scale for the block), times int8 items and their scales."""
    lo, hi = min(0.0, float(x.min())), max(0.0, float(x.max()))
    scale = (hi - lo) / 255.0 or 1.0
    zero = np.clip(np.rint(-lo / scale), 0, 255)
    xq = np.clip(np.rint(x / scale) + zero, 0, 255) - zero
    return (xq @ item_q.T.astype(np.float64)) * scale * item_scale.astype(np.float64)


def fold_plan(
    users: np.ndarray,
    user_bias: np.ndarray,
    items: np.ndarray,
    item_q: np.ndarray,
    item_scale: np.ndarray,
) -> FoldPlan | None:
    """The fold of the user bias that keeps the scores' error, or None.

    Parameters
    ----------
    users : np.ndarray
        ``float32[n_users, f]`` user rows as the graph sees them (dequantized int8).
    user_bias : np.ndarray
        ``float32[n_users]``.
    items : np.ndarray
        ``float32[n_items, f]`` item factors.
    item_q, item_scale : np.ndarray
        The unfolded per-row int8 items (the reference error).
    """
    top = float(np.abs(user_bias).max(initial=0.0))
    if top == 0 or not np.isfinite(top):
        return None
    pick = np.unique(np.linspace(0, len(users) - 1, CALIBRATION_USERS).astype(np.int64))
    x, bu = users[pick].astype(np.float64), user_bias[pick].astype(np.float64)
    exact = x @ items.T.astype(np.float64) + bu[:, None]
    ref = float(np.abs(_product(x, item_q, item_scale) + bu[:, None] - exact).mean())
    base = float(np.abs(users).max(initial=0.0)) / top or 1.0
    best: tuple[float, FoldPlan] | None = None
    need = float(np.abs(items).max(initial=0.0)) / 127.0
    for mult in FOLD_MULTIPLIERS:
        step = max(1.0 / (base * mult), need)  # no item row beyond 127 steps
        q, scale, r = snap_scales(items, step)
        c = 1.0 / float(np.float32(step))
        folded = np.concatenate([q, r[:, None]], axis=1)
        xa = np.concatenate([x, c * bu[:, None]], axis=1)
        err = float(np.abs(_product(xa, folded, scale) - exact).mean())
        if best is None or err < best[0]:
            best = (err, FoldPlan(c, folded, scale))
    assert best is not None
    return best[1] if best[0] <= FOLD_TOLERANCE * ref else None
