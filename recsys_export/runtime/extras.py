"""A bundle's data the recommender reads on first use: the seen-items CSR, the item
names and the popularity counts (for unknown users). Loaded once, thread-safe."""

from __future__ import annotations

import threading

import numpy as np

from recsys_export.bundle import Bundle
from recsys_export.core.ids import IdMap
from recsys_export.errors import BundleError
from recsys_export.runtime.exclusions import name_table

__all__ = ["BundleExtras", "checked_id_maps"]


class BundleExtras:
    """Lazily loaded seen items, names and popularity of one loaded bundle."""

    def __init__(self, bundle: Bundle, n_items: int) -> None:
        self.bundle = bundle
        self.n_items = n_items
        self._lock = threading.Lock()
        self._seen: tuple[np.ndarray, np.ndarray] | None = None
        self._names: tuple[np.ndarray | None] | None = None  # (None,): the bundle has none
        self._popular: np.ndarray | None = None

    def seen_csr(self) -> tuple[np.ndarray, np.ndarray]:
        """``(indptr int64[n_users + 1], items int64[nnz])``: every item each user rated."""
        if self._seen is None:
            with self._lock:
                if self._seen is None:
                    self._seen = self.bundle.seen_csr()
        return self._seen

    def name_table(self) -> np.ndarray | None:
        """``object[n_items + 1]`` of names, None last (index -1: an empty slot); None
        when the bundle has no names."""
        if self._names is None:
            with self._lock:
                if self._names is None:
                    self._names = (name_table(self.bundle.item_names(), self.n_items),)
        return self._names[0]

    def popularity(self) -> np.ndarray:
        """Number of ratings per item (from the seen CSR)."""
        if self._popular is None:
            _, seen = self.seen_csr()
            self._popular = np.bincount(seen, minlength=self.n_items).astype(np.int64)
        return self._popular


def checked_id_maps(bundle: Bundle) -> tuple[IdMap, IdMap]:
    """The bundle's user and item id maps, checked against the manifest's sizes."""
    model = bundle.manifest.model
    users, items = bundle.user_map(), bundle.item_map()
    if len(users) != model.n_users or len(items) != model.n_items:
        raise BundleError(
            f"bundle {bundle.root}: id maps have {len(users)} users / {len(items)} items, "
            f"the manifest says {model.n_users} / {model.n_items}"
        )
    return users, items
