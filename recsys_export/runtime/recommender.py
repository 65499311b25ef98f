"""The recommender: raw ids, exclusions, the unknown-user policy and the outputs.

:class:`Recommender` turns ids into indices (validated before any graph runs:
onnxruntime silently wraps negative indices), builds the exclusions (seen items,
``exclude``, ``include``), serves unknown users by policy and writes batch outputs; the
scoring itself is its engine's (:mod:`recsys_export.runtime.engines`), chosen once at
load. Thread-safe: share one instance between threads.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from recsys_export.bundle import Bundle
from recsys_export.errors import BundleError, ConfigError
from recsys_export.ids import IdMap
from recsys_export.manifest import check_precision
from recsys_export.runtime.engines import Engine, make_engine
from recsys_export.runtime.exclusions import (  # noqa: F401  (load_seen_csr: re-exported)
    columns_topk,
    exclusion_pairs,
    is_empty,
    load_name_table,
    load_seen_csr,
    popular_topk,
    raw_items,
)
from recsys_export.runtime.variant import VariantEngine
from recsys_export.runtime.writers import BatchOutputs, as_1d
from recsys_export.topk import (
    EMPTY_ITEM,
    EMPTY_SCORE,
    check_k,
)
from recsys_export.validation import check_choice

__all__ = ["RecommendResult", "Recommender", "load_seen_csr"]

_UNKNOWN_POLICIES = ("raise", "skip", "popular")
_EMPTY_I64 = np.zeros(0, dtype=np.int64)


@dataclass
class RecommendResult:
    """Top-k lists for a batch of users.

    Attributes
    ----------
    users : np.ndarray
        The users of the rows, in request order (raw ids, or indices with ``by_index``).
        With ``unknown="skip"`` unknown users are left out (see ``skipped``).
    items : np.ndarray
        ``[B, k]`` items sorted by descending score. With ``by_index``: int64 indices,
        ``-1`` in slots no admissible item can fill. Otherwise raw ids with the item
        map's dtype (int64 or object); if any slot is empty the array is ``object`` and
        holds ``None`` in empty slots.
    scores : np.ndarray
        ``float32[B, k]``; ``-inf`` in empty slots; ``NaN`` in rows served by the
        popularity fallback (``unknown="popular"``), which have no model score.
    skipped : list
        Unknown users dropped with ``unknown="skip"`` (as given).
    fallback : np.ndarray
        ``bool[B]``: rows filled with the most popular items (``unknown="popular"``).
    names : np.ndarray or None
        ``object[B, k]``: the items' names (titles) when the bundle has them
        (``train --items``), None in empty slots and for unnamed items; None when the
        bundle has no names.
    """

    users: np.ndarray
    items: np.ndarray
    scores: np.ndarray
    skipped: list[Any] = field(default_factory=list)
    fallback: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=bool))
    names: np.ndarray | None = None

    def __len__(self) -> int:
        return int(self.scores.shape[0])


class Recommender(BatchOutputs):
    """A loaded bundle ready to score and recommend, without torch.

    Create it with :meth:`load`. All methods accept raw ids (as in the ratings file) by
    default, or dense indices with ``by_index=True``; both are validated before any
    graph runs (:class:`~recsys_export.errors.UnknownIdError` names the bad ids).
    Thread-safe: share one instance between threads.
    """

    def __init__(
        self,
        bundle: Bundle,
        *,
        intra_op_threads: int | None = None,
        graph_optimization: str = "all",
        fast_paths: bool = True,
        python_threads: bool = True,
        block_users: int | None = None,
        call_users: int | None = None,
        providers: list[str] | None = None,
        precision: str = "fp32",
    ) -> None:
        self.bundle = bundle
        self._precision = check_precision(precision)
        self._engine: Engine = make_engine(
            bundle,
            intra_op_threads=intra_op_threads,
            graph_optimization=graph_optimization,
            fast_paths=fast_paths,
            python_threads=python_threads,
            block_users=block_users,
            call_users=call_users,
            providers=providers,
        )
        if self._precision != "fp32":  # an approximate variant: only when asked for
            variant = bundle.spec.variant(self._precision)
            self._engine = VariantEngine(self._engine, variant, bundle)
            self._engine.resize(block_users, call_users)
        model = bundle.spec.model
        self._n_users, self._n_items, self._kind = model.n_users, model.n_items, model.kind
        self._user_map = bundle.user_map()
        self._item_map = bundle.item_map()
        if len(self._user_map) != self._n_users or len(self._item_map) != self._n_items:
            raise BundleError(
                f"bundle {bundle.root}: id maps have {len(self._user_map)} users / "
                f"{len(self._item_map)} items, the manifest says {self._n_users} / "
                f"{self._n_items}"
            )
        self._lock = threading.Lock()
        self._seen: tuple[np.ndarray, np.ndarray] | None = None
        self._names: tuple[np.ndarray | None] | None = None  # (None,): bundle has none
        self._popular_counts: np.ndarray | None = None

    # ------------------------------------------------------------------ loading
    @classmethod
    def load(
        cls,
        bundle_path: str | os.PathLike[str],
        *,
        intra_op_threads: int | None = None,
        graph_optimization: str = "all",
        verify: bool = True,
        fast_paths: bool = True,
        python_threads: bool = True,
        block_users: int | None = None,
        call_users: int | None = None,
        providers: list[str] | None = None,
        precision: str = "fp32",
    ) -> Recommender:
        """Load a bundle (checksums verified unless ``verify=False``).

        Parameters
        ----------
        bundle_path : path
            The bundle directory (exported with the ``onnx`` format).
        intra_op_threads : int, optional
            Threads onnxruntime uses inside one call (default: ``os.cpu_count()``; at
            most 4 per core, :func:`~recsys_export.runtime.sessions.max_threads`).
        graph_optimization : {"all", "extended", "basic", "disable"}
            onnxruntime graph optimisation level.
        verify : bool
            Check every file's sha256 (sizes and names are always checked).
        fast_paths : bool
            Use the bundle's optional fast-path graphs (``formats.onnx.kernels``) when it
            has them; False (or an older bundle) runs the entry-point graphs only.
        python_threads : bool
            DenseNet fast path: drive single-threaded ``score_all`` calls from one
            Python thread per ``intra_op_threads`` (each core keeps its own item tile in
            cache; the default); False: one caller thread and onnxruntime's intra-op
            threads. ``recsys-export bench`` measures both.
        block_users : int, optional
            Users per top-k block (default: a ~32 MB score block, or for the DenseNet
            kernel 4 calls per thread).
        call_users : int, optional
            Users per ``score_all`` session call (default: the top-k block, or what the
            DenseNet kernel's tiles are sized for).
        providers : list of str, optional
            onnxruntime execution providers, in priority order, of every session this
            recommender creates (default ``["CPUExecutionProvider"]``), e.g.
            ``["CUDAExecutionProvider", "CPUExecutionProvider"]`` with the
            ``onnxruntime-gpu`` package. Validated against
            ``onnxruntime.get_available_providers()``. Only the CPU provider is tested
            here: the GPU providers are passed through untested, and the runtime's
            numpy steps (masking, id mapping) stay on the CPU.
        precision : {"fp32", "fp16", "int8"}
            ``fp32`` (default): the exact graphs. ``fp16``/``int8``: the bundle's
            approximate variant (``export --precision``), never loaded unless asked for;
            its measured cost in ranking (recall of the exact lists, score error) is in
            the manifest (``formats.onnx.variants``) and ``parity.json``.

        Raises
        ------
        BundleError
            Missing/corrupted bundle, one without ONNX graphs, or without the variant of
            ``precision``.
        ConfigError
            Invalid options, or a provider this onnxruntime does not have.
        """
        # Bundle.load keeps the files it checked open: what the recommender reads now
        # and later (graphs, id maps, seen items, names) is that bundle, whole, even if
        # `export --force` replaces it meanwhile
        rec = cls(
            Bundle.load(bundle_path, verify=verify),
            intra_op_threads=intra_op_threads,
            graph_optimization=graph_optimization,
            fast_paths=fast_paths,
            python_threads=python_threads,
            block_users=block_users,
            call_users=call_users,
            providers=providers,
            precision=precision,
        )
        rec._engine.first_session()  # fail early on a graph onnxruntime refuses
        return rec

    # ------------------------------------------------------------------ properties
    # n_users, n_items, kind: from BatchOutputs
    @property
    def fast_paths(self) -> bool:
        """Whether the bundle's fast-path graphs are in use."""
        return self._engine.fast

    @property
    def precision(self) -> str:
        """``fp32`` (the exact graphs) or the approximate variant in use."""
        return self._precision

    @property
    def block_users(self) -> int:
        """Users per top-k block (the ``block_users`` option, or sized by memory)."""
        return self._engine.block

    @property
    def call_users(self) -> int:
        """Users per ``score_all`` session call (the ``call_users`` option, or the
        bundle's: the DenseNet kernel's ``block_users``)."""
        return self._engine.call_users

    @property
    def user_map(self) -> IdMap:
        """Raw user ids in index order."""
        return self._user_map

    @property
    def item_map(self) -> IdMap:
        """Raw item ids in index order."""
        return self._item_map

    @property
    def manifest(self) -> dict[str, Any]:
        """The bundle's manifest."""
        return self.bundle.manifest

    def __repr__(self) -> str:
        return (
            f"Recommender({str(self.bundle.root)!r}, kind={self._kind}, "
            f"n_users={self._n_users}, n_items={self._n_items})"
        )

    # ------------------------------------------------------------------ helpers
    def _users(self, ids: Any, by_index: bool) -> np.ndarray:
        ids = _ordered(ids, "user ids")
        if by_index:
            return self._user_map.check_indices(as_1d(ids))
        return self._user_map.to_index(ids)

    def _items(self, ids: Any, by_index: bool) -> np.ndarray:
        if isinstance(ids, (set, frozenset)):  # include / exclude: any order will do
            ids = list(ids)
        if by_index:
            return self._item_map.check_indices(as_1d(ids))
        return self._item_map.to_index(ids)

    def _check_k(self, k: Any) -> int:
        return check_k(k, self._n_items)

    def seen_csr(self) -> tuple[np.ndarray, np.ndarray]:
        """``(indptr int64[n_users + 1], items int64[nnz])``: every item each user rated."""
        if self._seen is None:
            with self._lock:
                if self._seen is None:
                    self._seen = self._load_seen()
        return self._seen

    def _load_seen(self) -> tuple[np.ndarray, np.ndarray]:
        return self.bundle.seen_csr(self._n_users, self._n_items)

    def _name_table(self) -> np.ndarray | None:
        """``object[n_items + 1]`` of names, None last (index -1: an empty slot)."""
        if self._names is None:
            with self._lock:
                if self._names is None:
                    self._names = (self._load_names(),)
        return self._names[0]

    def _load_names(self) -> np.ndarray | None:
        return load_name_table(self.bundle, self._n_items)

    @property
    def item_names(self) -> list[str | None] | None:
        """Item names (titles) in index order, None for unnamed items; None when the
        bundle has none (exported from a checkpoint trained without ``--items``)."""
        table = self._name_table()
        return None if table is None else table[: self._n_items].tolist()

    def names_of(self, item_ids: Any, *, by_index: bool = False) -> list[str | None]:
        """Names of items (raw ids, or indices with ``by_index``); None where unnamed.

        Raises
        ------
        UnknownIdError
            If an id is unknown or an index out of range.
        """
        items = self._items(item_ids, by_index)
        table = self._name_table()
        return [None] * len(items) if table is None else table[items].tolist()

    # ------------------------------------------------------------------ score
    def score(self, user_ids: Any, item_ids: Any, *, by_index: bool = False) -> np.ndarray:
        """Pairwise scores ``float32[n]`` of ``(user_ids[j], item_ids[j])``.

        Raises
        ------
        UnknownIdError
            Unknown ids / out-of-range indices.
        ConfigError
            ``user_ids`` and ``item_ids`` differ in length.
        """
        users = self._users(user_ids, by_index)
        items = self._items(_ordered(item_ids, "item ids"), by_index)
        if users.shape != items.shape:
            raise ConfigError(
                f"score needs as many users as items, got {users.size} users and {items.size} items"
            )
        if users.size == 0:
            return np.zeros(0, dtype=np.float32)
        return self._engine.score(users, items)

    # ------------------------------------------------------------------ score_all
    def score_all(self, user_ids: Any, *, by_index: bool = False) -> np.ndarray:
        """Scores of every item for each user: ``float32[B, n_items]``."""
        users = self._users(user_ids, by_index)
        out = np.empty((users.size, self._n_items), dtype=np.float32)
        self._score_all_into(users, out)
        return out

    def _score_all_into(self, users: np.ndarray, out: np.ndarray) -> None:
        """Fill ``out[len(users), n_items]`` (C-contiguous) with validated users' scores."""
        self._engine.score_all_into(users, out)

    @property
    def bytes_per_user(self) -> int:
        """Bytes of intermediates per user in one ``score_all`` call (chunk sizing)."""
        return self._engine.bytes_per_user

    # ------------------------------------------------------------------ recommend
    def recommend(
        self,
        user_ids: Any,
        k: int = 10,
        *,
        exclude_seen: bool = True,
        exclude: Iterable[Any] | Mapping[Any, Iterable[Any]] | None = None,
        include: Iterable[Any] | None = None,
        by_index: bool = False,
        unknown: str = "raise",
    ) -> RecommendResult:
        """Best ``k`` items per user, sorted by descending score.

        Parameters
        ----------
        user_ids : id or iterable of ids
            Raw user ids (indices with ``by_index``).
        k : int
            ``1 <= k <= n_items`` (:class:`ConfigError` otherwise).
        exclude_seen : bool
            Drop the items each user rated in the training data.
        exclude : iterable or dict, optional
            Items to drop for every user, or a dict user id -> items for some users.
        include : iterable, optional
            Only these items are candidates (everything else is excluded).
        by_index : bool
            Users, items (in ``exclude``/``include`` too) and results are indices.
        unknown : {"raise", "skip", "popular"}
            Unknown users: raise :class:`UnknownIdError`; drop them (listed in
            ``result.skipped``); or serve them the most rated items (``result.fallback``,
            scores NaN). Out-of-range indices (``by_index``) always raise.

        Returns
        -------
        RecommendResult
            ``items``/``scores`` ``[B, k]``; slots no admissible item can fill hold score
            ``-inf`` and item ``-1`` (indices) or ``None`` (raw ids).
        """
        k = self._check_k(k)
        check_choice("unknown", unknown, _UNKNOWN_POLICIES)
        if (
            by_index
            and exclude is None
            and include is None
            and isinstance(user_ids, (int, np.integer))
            and not isinstance(user_ids, bool)
            and 0 <= user_ids < self._n_users
        ):  # one index, the seen items excluded: the latency path, no array round trips
            return self._one_by_index(int(user_ids), k, exclude_seen)
        given = as_1d(_ordered(user_ids, "user ids"))
        if not isinstance(user_ids, np.ndarray) and given.dtype.kind in "US":
            given = np.asarray(
                [user_ids] if isinstance(user_ids, (str, bytes)) else list(user_ids), dtype=object
            ).reshape(-1)
        skipped: list[Any] = []
        if by_index or unknown == "raise":
            users = self._users(given, by_index)
        else:
            users = self._user_map.to_index(given, missing=-1)
        known = users >= 0
        all_known = bool(known.all())
        if not all_known and unknown == "skip":
            skipped = given[~known].tolist()
            given, users, known, all_known = given[known], users[known], known[known], True

        # Fast path: one known user, only the seen items excluded.
        if all_known and users.size == 1 and exclude is None and include is None:
            scores, items = self._recommend_one(int(users[0]), k, exclude_seen)
        else:
            scores, items = self._recommend_many(
                users, known, k, exclude_seen, exclude, include, by_index
            )
        fallback = ~known
        if by_index:
            out_users = users
            out_items = items
        else:
            if all_known:
                out_users = self._user_map.raw_ids[users]
            else:
                out_users = np.asarray(given, dtype=object).copy()
                out_users[known] = self._user_map.raw_ids[users[known]]
            out_items = raw_items(self._item_map, items)
        table = self._name_table()
        names = None if table is None else table[items]
        return RecommendResult(out_users, out_items, scores, skipped, fallback, names)

    def _one_by_index(self, user: int, k: int, exclude_seen: bool) -> RecommendResult:
        scores, items = self._recommend_one(user, k, exclude_seen)
        table = self._name_table()
        names = None if table is None else table[items]
        users = np.array([user], dtype=np.int64)
        return RecommendResult(users, items, scores, [], np.zeros(1, dtype=bool), names)

    def _recommend_one(self, user: int, k: int, exclude_seen: bool) -> tuple[np.ndarray, ...]:
        if exclude_seen:
            indptr, seen = self.seen_csr()
            ex_items = seen[indptr[user] : indptr[user + 1]]
        else:
            ex_items = _EMPTY_I64
        return self._engine.recommend_one(user, k, ex_items)

    def _exclusions(
        self, users: np.ndarray, known: np.ndarray, exclude_seen: bool, exclude: Any, by_index: bool
    ) -> tuple[np.ndarray, np.ndarray]:
        """COO exclusions (row positions, item indices) for a batch of users."""

        def user_index(keys: list[Any]) -> np.ndarray:
            if by_index:
                return self._user_map.check_indices(np.asarray(keys))
            return self._user_map.to_index(keys)

        seen = self.seen_csr() if exclude_seen and users.size else None
        return exclusion_pairs(
            users, known, seen, exclude, user_index, lambda ids: self._items(ids, by_index)
        )

    def _recommend_many(
        self,
        users: np.ndarray,
        known: np.ndarray,
        k: int,
        exclude_seen: bool,
        exclude: Any,
        include: Any,
        by_index: bool,
    ) -> tuple[np.ndarray, np.ndarray]:
        b = users.size
        scores = np.full((b, k), EMPTY_SCORE, dtype=np.float32)
        items = np.full((b, k), EMPTY_ITEM, dtype=np.int64)
        if b == 0:
            return scores, items
        cols = None
        if include is not None:
            cols = np.unique(self._items(include, by_index)) if not is_empty(include) else None
            if cols is None or cols.size == 0:
                return scores, items  # no candidate item: every slot stays empty
        known_pos = np.flatnonzero(known)
        if known_pos.size:
            ku = users[known_pos]
            rows, ex_items = self._exclusions(ku, known[known_pos], exclude_seen, exclude, by_index)
            s, it = self._topk_block(ku, k, rows, ex_items, cols)
            scores[known_pos], items[known_pos] = s, it
        unknown_pos = np.flatnonzero(~known)
        if unknown_pos.size:
            # popularity fallback: same exclusions except seen (unknown users saw nothing)
            rows, ex_items = self._exclusions(
                users[unknown_pos], known[unknown_pos], False, exclude, by_index
            )
            scores[unknown_pos], items[unknown_pos] = popular_topk(
                self._popularity(), unknown_pos.size, k, rows, ex_items, cols
            )
        return scores, items

    def _topk_block(
        self, users: np.ndarray, k: int, rows: np.ndarray, ex: np.ndarray, cols: Any
    ) -> tuple[np.ndarray, np.ndarray]:
        """Top-k of known users in blocks: the engine, or numpy over ``cols`` (include)."""
        if cols is None:
            return self._engine.topk(users, k, rows, ex)
        return columns_topk(self._engine, users, k, rows, ex, cols)

    def _popularity(self) -> np.ndarray:
        """Number of ratings per item (from the seen CSR)."""
        if self._popular_counts is None:
            _, seen = self.seen_csr()
            self._popular_counts = np.bincount(seen, minlength=self._n_items).astype(np.int64)
        return self._popular_counts


def _ordered(ids: Any, what: str) -> Any:
    """``ids`` unless it is a set or a mapping: results follow the order of the request."""
    if isinstance(ids, (set, frozenset, Mapping)):
        raise ConfigError(
            f"{what} must be one id or an ordered sequence of ids (list, tuple, array), "
            f"got a {type(ids).__name__}: the results follow the order of the request; "
            "pass a list (e.g. sorted(ids))"
        )
    return ids
