"""The recommender: raw ids, exclusions, the unknown-user policy and the outputs.

:class:`Recommender` turns ids into indices (validated before any graph runs:
onnxruntime silently wraps negative indices), builds the exclusions (seen items,
``exclude``, ``include``), serves unknown users by policy and writes batch outputs; the
scoring itself is its engine's (:mod:`recsys_export.runtime.engines`), chosen once at
load. Thread-safe: share one instance between threads.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np

from recsys_export.bundle import Bundle, Manifest
from recsys_export.bundle.schema import check_precision
from recsys_export.core.validation import check_choice
from recsys_export.errors import ConfigError
from recsys_export.runtime import writers
from recsys_export.runtime.engines import make_engine
from recsys_export.runtime.extras import BundleExtras
from recsys_export.runtime.protocol import EngineBase
from recsys_export.runtime.requests import (
    RecommendResult,
    many_topk,
    ordered,
    raw_results,
    requested_users,
)
from recsys_export.runtime.variant import with_precision
from recsys_export.runtime.writers import as_1d

__all__ = ["RecommendResult", "Recommender"]

_UNKNOWN_POLICIES = ("raise", "skip", "popular")
_EMPTY_I64 = np.zeros(0, dtype=np.int64)


class Recommender(EngineBase):
    """A loaded bundle ready to score and recommend, without torch.

    Create it with :meth:`load`. All methods accept raw ids (as in the ratings file) by
    default, or dense indices with ``by_index=True``; both are validated before any
    graph runs (:class:`~recsys_export.errors.UnknownIdError` names the bad ids).
    Thread-safe: share one instance between threads. The onnxruntime engine of the
    contract (:class:`~recsys_export.runtime.protocol.Engine`, ``name == "onnx"``):
    the batch writers (:mod:`~recsys_export.runtime.writers`) take it as they take the
    torch engine.
    """

    name = "onnx"

    def __init__(
        self,
        bundle: Bundle,
        *,
        precision: str = "fp32",
        block_users: int | None = None,
        call_users: int | None = None,
        **options: Any,
    ) -> None:
        """The recommender of a loaded bundle; the options are :meth:`load`'s (the
        engine's: threads, graph optimisation, fast paths, blocks, providers)."""
        self._bind(bundle)
        self._precision = check_precision(precision)
        engine = make_engine(bundle, block_users=block_users, call_users=call_users, **options)
        self._engine = with_precision(engine, bundle, self._precision, block_users, call_users)
        self._extras = BundleExtras(bundle, self._n_items)

    # ------------------------------------------------------------------ loading
    @classmethod
    def load(
        cls,
        bundle_path: str | os.PathLike[str] | Bundle,
        *,
        verify: bool = True,
        precision: str = "fp32",
        **options: Any,
    ) -> Recommender:
        """Load a bundle (checksums verified unless ``verify=False``).

        Parameters
        ----------
        bundle_path : path or Bundle
            The bundle directory (exported with the ``onnx`` format), or a loaded bundle.
        verify : bool
            Check every file's sha256 (sizes and names are always checked).
        precision : {"fp32", "fp16", "int8"}
            ``fp32`` (default): the exact graphs. ``fp16``/``int8``: the bundle's
            approximate variant (``export --precision``), never loaded unless asked for;
            its measured cost in ranking is in the manifest and ``parity.json``.
        **options
            The onnxruntime engine's options (:func:`.engines.make_engine`), all optional:

        intra_op_threads : int, optional
            Threads onnxruntime uses inside one call (default: ``os.cpu_count()``; at
            most 4 per core, :func:`~recsys_export.runtime.sessions.max_threads`).
        graph_optimization : {"all", "extended", "basic", "disable"}
            onnxruntime graph optimisation level.
        fast_paths : bool
            Use the bundle's optional fast-path graphs (``formats.onnx.kernels``) when it
            has them; False (or an older bundle) runs the entry-point graphs only.
        python_threads : bool
            DenseNet fast path: one Python thread per ``intra_op_threads`` driving
            single-threaded calls (the default), or False: onnxruntime's own threads.
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
            ``onnxruntime-gpu`` package (checked against the available providers; only
            the CPU one is tested here; masking and id mapping stay on the CPU).

        Raises
        ------
        BundleError
            Missing/corrupted bundle, one without ONNX graphs, or without the variant of
            ``precision``.
        ConfigError
            Invalid options, or a provider this onnxruntime does not have.
        """
        # Bundle.load keeps the files it checked open: what is read now and later is that
        # bundle, whole, even if `export --force` replaces it meanwhile
        bundle = (
            bundle_path
            if isinstance(bundle_path, Bundle)
            else Bundle.load(bundle_path, verify=verify)
        )
        rec = cls(bundle, precision=precision, **options)
        rec._engine.first_session()  # fail early on a graph onnxruntime refuses
        return rec

    # ------------------------------------------------------------------ properties
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
        """Users per ``score_all`` session call (``call_users``, or the kernel's own)."""
        return self._engine.call_users

    @property
    def manifest(self) -> Manifest:
        """The bundle's manifest (typed: :class:`~recsys_export.bundle.schema.Manifest`)."""
        return self.bundle.manifest

    def __repr__(self) -> str:
        return (
            f"Recommender({str(self.bundle.root)!r}, kind={self._kind}, "
            f"n_users={self._n_users}, n_items={self._n_items})"
        )

    # ------------------------------------------------------------------ helpers
    def _users(self, ids: Any, by_index: bool) -> np.ndarray:
        ids = ordered(ids, "user ids")
        if by_index:
            return self._user_map.check_indices(as_1d(ids))
        return self._user_map.to_index(ids)

    def _items(self, ids: Any, by_index: bool) -> np.ndarray:
        if isinstance(ids, (set, frozenset)):  # include / exclude: any order will do
            ids = list(ids)
        if by_index:
            return self._item_map.check_indices(as_1d(ids))
        return self._item_map.to_index(ids)

    def seen_csr(self) -> tuple[np.ndarray, np.ndarray]:
        """``(indptr int64[n_users + 1], items int64[nnz])``: every item each user rated."""
        return self._extras.seen_csr()

    def _name_table(self) -> np.ndarray | None:
        return self._extras.name_table()

    @property
    def item_names(self) -> list[str | None] | None:
        """Item names in index order (None: unnamed); None when the bundle has none."""
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
        items = self._items(ordered(item_ids, "item ids"), by_index)
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
        self.score_all_into(users, out)
        return out

    # ------------------------------------------------------------------ the engine contract
    def score_pairs(self, users: np.ndarray, items: np.ndarray) -> np.ndarray:
        """Scores of validated index pairs (:meth:`score` validates)."""
        return self._engine.score(users, items)

    def score_all_into(self, users: np.ndarray, out: np.ndarray) -> None:
        """Fill ``out[len(users), n_items]`` (C-contiguous) with validated users' scores."""
        self._engine.score_all_into(users, out)

    @property
    def bytes_per_user(self) -> int:
        """Bytes of intermediates per user in one ``score_all`` call (chunk sizing)."""
        return self._engine.bytes_per_user

    def chunk_users(self, memory_budget_mb: float | None = None) -> int:
        """Users per chunk of the batch writers (None: 256 MB)."""
        return writers.chunk_users_for(self.bytes_per_user, memory_budget_mb)

    def topk(
        self, users: np.ndarray, k: int, *, exclude_seen: bool = True
    ) -> tuple[np.ndarray, np.ndarray]:
        """``(scores, items)`` ``[B, k]`` of validated user indices (``-1`` in empty slots)."""
        k = self.check_k(k)
        users = np.asarray(users, dtype=np.int64).reshape(-1)
        if users.size == 1:
            return self._recommend_one(int(users[0]), k, exclude_seen)
        known = np.ones(users.size, dtype=bool)
        return many_topk(
            self._engine, self._extras, self._user_map, users, known, k, exclude_seen=exclude_seen
        )

    def close(self) -> None:
        """Nothing to release: sessions and threads go with the object."""

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
        k = self.check_k(k)
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
        given, users, known, skipped = requested_users(
            self._user_map, user_ids, by_index=by_index, unknown=unknown
        )
        all_known = bool(known.all())

        # Fast path: one known user, only the seen items excluded.
        if all_known and users.size == 1 and exclude is None and include is None:
            scores, items = self._recommend_one(int(users[0]), k, exclude_seen)
        else:
            scores, items = many_topk(
                self._engine,
                self._extras,
                self._user_map,
                users,
                known,
                k,
                exclude_seen=exclude_seen,
                exclude=exclude,
                include=include,
                by_index=by_index,
                item_index=lambda ids: self._items(ids, by_index),
            )
        if by_index:
            out_users, out_items = users, items
        else:
            out_users, out_items = raw_results(self._user_map, self._item_map, given, users, items)
        table = self._name_table()
        names = None if table is None else table[items]
        return RecommendResult(out_users, out_items, scores, skipped, ~known, names)

    def _one_by_index(self, user: int, k: int, exclude_seen: bool) -> RecommendResult:
        scores, items = self._recommend_one(user, k, exclude_seen)
        table = self._name_table()
        names = None if table is None else table[items]
        users = np.array([user], dtype=np.int64)
        return RecommendResult(users, items, scores, [], np.zeros(1, dtype=bool), names)

    def _recommend_one(self, user: int, k: int, exclude_seen: bool) -> tuple[Any, Any]:
        if exclude_seen:
            indptr, seen = self.seen_csr()
            return self._engine.recommend_one(user, k, seen[indptr[user] : indptr[user + 1]])
        return self._engine.recommend_one(user, k, _EMPTY_I64)
