"""The engine contract: what every engine that scores a bundle's users provides.

Three engines implement it: the onnxruntime :class:`~recsys_export.runtime.Recommender`
(``name == "onnx"``), the torch :class:`~recsys_export.torch_runtime.engine.TorchEngine`
(``"torch"``, CPU or CUDA) and, inside each Ray worker of :mod:`recsys_export.scale`,
whichever of the two the job asked for. :func:`recsys_export.engines.open_engine` is the
one factory: it owns which engine runs and which options each accepts. The batch writers
(:mod:`recsys_export.runtime.writers`) are functions over this contract, so every engine
writes identical files.

Users and items here are dense indices, already validated (``0 .. n - 1``); raw ids
live in ``user_map``/``item_map``. Torch-free.
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

import numpy as np

from recsys_export.bundle import Bundle
from recsys_export.core.ids import IdMap

__all__ = ["Engine"]


@runtime_checkable
class Engine(Protocol):
    """Scores a bundle's users on dense indices.

    Attributes
    ----------
    name : str
        ``"onnx"`` or ``"torch"``.
    bundle : Bundle
        The loaded bundle: ids, seen items, names, manifest all come from it.
    """

    name: str
    #: The loaded bundle (files held open, checksums checked at load).
    bundle: Bundle

    @property
    def n_users(self) -> int:
        """Number of users the model knows."""
        ...

    @property
    def n_items(self) -> int:
        """Number of items the model knows."""
        ...

    @property
    def kind(self) -> str:
        """Model kind (``"mf"`` or ``"densenet"``)."""
        ...

    @property
    def user_map(self) -> IdMap:
        """Raw user ids in index order."""
        ...

    @property
    def item_map(self) -> IdMap:
        """Raw item ids in index order."""
        ...

    def seen_csr(self) -> tuple[np.ndarray, np.ndarray]:
        """``(indptr int64[n_users + 1], items int64[nnz])``: the items each user rated."""
        ...

    def chunk_users(self, memory_budget_mb: float | None = None) -> int:
        """Users per ``score_all_into`` call within the budget (None: the engine's own)."""
        ...

    def check_k(self, k: Any) -> int:
        """``k`` as an int in ``1 .. n_items``, or :class:`ConfigError`."""
        ...

    def score_pairs(self, users: np.ndarray, items: np.ndarray) -> np.ndarray:
        """``float32[n]`` scores of the pairs ``(users[j], items[j])``."""
        ...

    def score_all_into(self, users: np.ndarray, out: np.ndarray) -> None:
        """Fill the C-contiguous ``float32[len(users), n_items]`` ``out``."""
        ...

    def topk(
        self, users: np.ndarray, k: int, *, exclude_seen: bool = True
    ) -> tuple[np.ndarray, np.ndarray]:
        """``(scores float32[B, k], items int64[B, k])``, best first; slots no admissible
        item can fill hold ``-inf`` and ``-1``."""
        ...

    def close(self) -> None:
        """Release what the engine holds (sessions, device memory, threads)."""
        ...
