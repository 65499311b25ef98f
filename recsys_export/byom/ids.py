"""Bring your own model: id maps and seen items from a ratings table."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from recsys_export.core.ids import IdMap
from recsys_export.data.items import ItemNames, align_item_names
from recsys_export.errors import (
    ConfigError,
    DataError,
)


def _id_column(df: Any, role: str, given: str | None) -> str:
    from recsys_export.data.columns import KNOWN_COLUMNS as _KNOWN
    from recsys_export.data.columns import norm_name as _norm_name

    if given is not None:
        if given not in df.columns:
            raise DataError(f"ratings have no column {given!r} (columns: {list(df.columns)})")
        return given
    hits = [c for c in df.columns if _norm_name(c) in _KNOWN[role]]
    if len(hits) != 1:
        raise DataError(
            f"cannot tell which column of the ratings holds {role} ids (columns: "
            f"{list(df.columns)}); pass {role}_col="
        )
    return str(hits[0])


def _names(item_names: Any, imap: IdMap) -> ItemNames | None:
    """``item_names=`` of :func:`resolve_ids` aligned with the item map."""
    if item_names is None:
        return None
    if isinstance(item_names, Mapping):
        return align_item_names(list(item_names), list(item_names.values()), imap, "item_names")
    if isinstance(item_names, (str, bytes)) or not hasattr(item_names, "__len__"):
        raise ConfigError(
            "item_names must be a list in item-index order or a {raw item id: name} mapping"
        )
    names = list(item_names)
    if len(names) != len(imap):
        raise DataError(
            f"item_names has {len(names)} entries, the model has {len(imap)} items; give "
            "one name (or None) per item in index order, or a {raw item id: name} mapping"
        )
    return align_item_names(imap.raw_ids, names, imap, "item_names")


@dataclass
class IdsAndSeen:
    """Raw ids in index order and seen (user index, item index) pairs for a bundle."""

    user_map: IdMap
    item_map: IdMap
    seen_users: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    seen_items: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    source: str = "indices"
    item_names: ItemNames | None = None


@dataclass(frozen=True)
class IdsOptions:
    """The id arguments of :func:`~recsys_export.byom.export_model`, as one value
    (:func:`resolve_ids` documents each and resolves them against the model's sizes)."""

    user_ids: Any = None
    item_ids: Any = None
    ratings: Any = None
    seen: Any = None
    user_col: str | None = None
    item_col: str | None = None
    item_names: Any = None

    def count(self, role: str) -> int | None:
        """How many ``role`` (``"user"``/``"item"``) ids were given, if any."""
        ids = self.user_ids if role == "user" else self.item_ids
        return None if ids is None else len(ids)


def _id_map(ids: Any, n: int, role: str, source: str = "") -> IdMap:
    if ids is None:
        return IdMap(np.arange(n, dtype=np.int64), role)
    try:
        m = IdMap(np.asarray(list(ids) if not isinstance(ids, np.ndarray) else ids), role)
    except ValueError as exc:
        raise DataError(f"{role}_ids: {exc}") from None
    if len(m) != n:
        what = (
            f"{source} has {len(m)} distinct {role}s" if source else f"{role}_ids has {len(m)} ids"
        )
        raise DataError(
            f"{what}, the model has {n} {role}s; the raw ids must number the model's "
            f"{role}s in index order"
        )
    return m


def resolve_ids(n_users: int, n_items: int, given: IdsOptions) -> IdsAndSeen:
    """Id maps and seen pairs from the :func:`~recsys_export.byom.export_model` arguments
    (``given``) for a model of ``n_users`` users and ``n_items`` items.

    ``ratings`` (a pandas DataFrame, or a :class:`~recsys_export.data.Ratings`) gives the
    raw ids (sorted unique values of its id columns, unless ``user_ids``/``item_ids`` are
    given) and the seen pairs (unless ``seen`` is given). ``seen`` is a mapping
    ``{raw user: [raw items]}`` or a pair ``(raw users, raw items)`` of equal length.
    ``item_names`` is a list in item-index order (``None`` for an item without a name)
    or a mapping ``{raw item: name}`` (items it lacks have none; ids the model lacks
    are ignored and counted in :attr:`IdsAndSeen.item_names`).
    """
    from recsys_export.data import Ratings

    user_ids, item_ids, ratings, seen = given.user_ids, given.item_ids, given.ratings, given.seen
    src = "indices"
    ru = ri = None
    if isinstance(ratings, Ratings):
        ru = ratings.user_map.raw_ids[ratings.users]
        ri = ratings.item_map.raw_ids[ratings.items]
        src = ratings.source
    elif ratings is not None:
        if not hasattr(ratings, "columns"):
            raise ConfigError("ratings must be a pandas DataFrame (or a Ratings object)")
        ucol = _id_column(ratings, "user", given.user_col)
        icol = _id_column(ratings, "item", given.item_col)
        ru, ri = ratings[ucol].to_numpy(), ratings[icol].to_numpy()
        src = "ratings DataFrame"
    from_ratings = {"user": "", "item": ""}
    if ru is not None:
        if user_ids is None:
            user_ids, from_ratings["user"] = IdMap.build(ru, "user")[0].raw_ids, src
        if item_ids is None:
            item_ids, from_ratings["item"] = IdMap.build(ri, "item")[0].raw_ids, src
    umap = _id_map(user_ids, n_users, "user", from_ratings["user"])
    imap = _id_map(item_ids, n_items, "item", from_ratings["item"])
    if seen is not None:
        if isinstance(seen, Mapping):
            pairs = [(u, i) for u, items in seen.items() for i in items]
            ru = np.asarray([p[0] for p in pairs])
            ri = np.asarray([p[1] for p in pairs])
        else:
            try:
                ru, ri = (np.asarray(a) for a in seen)
            except (TypeError, ValueError):
                raise ConfigError("seen must be {user: [items]} or (users, items)") from None
            if ru.shape != ri.shape:
                raise ConfigError("seen users and items differ in length")
    out = IdsAndSeen(umap, imap, source=src, item_names=_names(given.item_names, imap))
    if ru is not None and len(ru):
        out.seen_users = umap.to_index(ru)
        out.seen_items = imap.to_index(ri)
    return out
