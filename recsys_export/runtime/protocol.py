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

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np

from recsys_export.bundle import Bundle
from recsys_export.core.ids import IdMap
from recsys_export.core.topk import check_k
from recsys_export.runtime import writers
from recsys_export.runtime.extras import checked_id_maps

__all__ = ["Engine", "EngineBase"]


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


class EngineBase:
    """What every engine derives from its bundle (sizes, kind, id maps, the ``k`` rule)
    and the batch writers as methods, written once in terms of the contract (as
    :mod:`collections.abc` writes its mixin methods): an engine calls :meth:`_bind` and
    implements the scoring members of :class:`Engine`."""

    name: str
    bundle: Bundle

    def _bind(self, bundle: Bundle) -> None:
        self.bundle = bundle
        model = bundle.manifest.model
        self._n_users, self._n_items, self._kind = model.n_users, model.n_items, model.kind
        self._user_map, self._item_map = checked_id_maps(bundle)

    @property
    def n_users(self) -> int:
        """Number of users the model knows."""
        return self._n_users

    @property
    def n_items(self) -> int:
        """Number of items the model knows."""
        return self._n_items

    @property
    def kind(self) -> str:
        """Model kind (``"mf"`` or ``"densenet"``)."""
        return self._kind

    @property
    def user_map(self) -> IdMap:
        """Raw user ids in index order."""
        return self._user_map

    @property
    def item_map(self) -> IdMap:
        """Raw item ids in index order."""
        return self._item_map

    def check_k(self, k: Any) -> int:
        """``k`` as an int in ``1 .. n_items``, or :class:`ConfigError`."""
        return check_k(k, self._n_items)

    def iter_score_all(self, user_indices: Any = None, **options: Any) -> Iterator[Any]:
        """:func:`recsys_export.runtime.writers.iter_score_all` of this engine."""
        return writers.iter_score_all(self, user_indices, **options)  # type: ignore[arg-type]

    def write_score_matrix(self, out_path: str | os.PathLike[str], **options: Any) -> Path:
        """:func:`recsys_export.runtime.writers.write_score_matrix` of this engine."""
        return writers.write_score_matrix(self, out_path, **options)  # type: ignore[arg-type]

    def write_topk(self, out_path: str | os.PathLike[str], k: int = 10, **options: Any) -> Path:
        """:func:`recsys_export.runtime.writers.write_topk` of this engine."""
        return writers.write_topk(self, out_path, k, **options)  # type: ignore[arg-type]

    def topk_rows(self, user_indices: Any, k: int, *, exclude_seen: bool = True) -> Any:
        """:func:`recsys_export.runtime.writers.topk_rows` of this engine."""
        return writers.topk_rows(self, user_indices, k, exclude_seen=exclude_seen)  # type: ignore[arg-type]

    def topk_table(self, user_indices: Any, k: int, *, exclude_seen: bool = True) -> Any:
        """:func:`recsys_export.runtime.writers.topk_table` of this engine."""
        return writers.topk_table(self, user_indices, k, exclude_seen=exclude_seen)  # type: ignore[arg-type]
