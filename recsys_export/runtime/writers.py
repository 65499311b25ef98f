"""Writers of the batch outputs: score matrices (``.npy``) and top-k lists (Parquet, CSV).

Functions over any engine of the contract (:class:`~recsys_export.runtime.protocol.Engine`):
the onnxruntime :class:`~recsys_export.runtime.Recommender`, the torch engine and the Ray
workers (:mod:`recsys_export.scale`) write through them, so their files are identical. Every
file is written to a temporary sibling and renamed into place
(:func:`recsys_export.core.atomic.replacing`): without ``overwrite`` a file that appeared at
the final path meanwhile is never replaced. A failed write (a full disk, a file-size
limit) is one :class:`~recsys_export.errors.ConfigError` and leaves no temporary. pyarrow
is imported lazily, only for Parquet.
"""

from __future__ import annotations

import contextlib
import csv
import mmap
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from recsys_export.bundle import enclosing_bundle
from recsys_export.core.atomic import remove_stale, reserve_space, writing
from recsys_export.core.defaults import DEFAULT_MEMORY_MB
from recsys_export.core.ids import IdMap
from recsys_export.core.progress import Progress
from recsys_export.core.validation import check_int, check_positive
from recsys_export.errors import ConfigError

if TYPE_CHECKING:
    from recsys_export.runtime.protocol import Engine

__all__ = [
    "TopkRows",
    "as_1d",
    "check_out_path",
    "chunk_users_for",
    "engine_schema",
    "flat_topk_rows",
    "iter_score_all",
    "rows_table",
    "topk_rows",
    "topk_schema",
    "topk_table",
    "users_of",
    "write_npy_chunks",
    "write_score_matrix",
    "write_topk",
    "write_topk_chunks",
]


def check_out_path(
    out_path: str | os.PathLike[str], suffixes: tuple[str, ...], overwrite: bool = False
) -> Path:
    """Validate an output file path: extension, directory, no bundle, ``overwrite``.

    Temporaries of earlier runs killed while writing this path are removed first, also
    when the path is then refused.

    Parameters
    ----------
    out_path : path-like
        The file to write.
    suffixes : tuple of str
        Allowed extensions (lower case, with the dot).
    overwrite : bool
        Whether an existing file may be replaced.

    Returns
    -------
    Path
        The absolute path.

    Raises
    ------
    ConfigError
        Not a path, bad extension, missing/unwritable directory, a path inside a
        bundle, or an existing file without ``overwrite``.
    """
    if not isinstance(out_path, (str, os.PathLike)):
        raise ConfigError(
            f"the output path must be a str or os.PathLike, got {type(out_path).__name__} "
            f"{out_path!r}"
        )
    path = Path(os.path.abspath(os.fspath(out_path)))
    remove_stale(path)
    if path.suffix.lower() not in suffixes:
        raise ConfigError(
            f"cannot write {path}: unsupported file extension {path.suffix or '(none)'!r}; "
            f"use one of {', '.join(suffixes)}"
        )
    parent = path.parent
    blocker = next((p for p in (parent, *parent.parents) if p.exists()), None)
    if blocker is not None and not blocker.is_dir():
        raise ConfigError(
            f"cannot write {path}: {blocker} is a file, not a directory; choose another path"
        )
    if not parent.is_dir():
        raise ConfigError(
            f"cannot write {path}: directory {parent} does not exist; create it first"
        )
    if not os.access(parent, os.W_OK | os.X_OK):
        raise ConfigError(f"cannot write {path}: directory {parent} is not writable")
    if path.is_dir():
        raise ConfigError(f"cannot write {path}: it is a directory")
    bundle = enclosing_bundle(parent)
    if bundle is not None:
        raise ConfigError(
            f"cannot write {path}: it is inside the bundle {bundle}, whose files are "
            "checksummed; write outside it"
        )
    if os.path.lexists(path) and not overwrite:
        raise ConfigError(
            f"{path} already exists; pass --force (overwrite=True) to replace it, or choose "
            "another output path"
        )
    return path


def as_1d(values: Any) -> np.ndarray:
    """``values`` (a scalar id, a list, an array, any iterable) as a 1-d array."""
    if isinstance(values, (str, bytes)) or np.ndim(values) == 0:
        return np.asarray([values])
    if isinstance(values, np.ndarray):
        return values.reshape(-1)
    return np.asarray(list(values) if not isinstance(values, (list, tuple)) else values)


#: ``(user raw ids, ranks int32, item raw ids, scores float32)``: flat top-k rows.
TopkRows = tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]


def chunk_users_for(bytes_per_user: int, memory_budget_mb: float | None = None) -> int:
    """Users per chunk that keep ``bytes_per_user`` intermediates under the budget.

    The rule of the onnxruntime engine (the torch engine sizes by device memory): at
    least one user; a budget of None means
    :data:`~recsys_export.core.defaults.DEFAULT_MEMORY_MB`.
    """
    if memory_budget_mb is None:
        memory_budget_mb = DEFAULT_MEMORY_MB
    memory_budget_mb = check_positive("memory_budget_mb", memory_budget_mb)
    return max(1, int(memory_budget_mb * (1 << 20)) // max(1, bytes_per_user))


def users_of(engine: Engine, user_indices: Any) -> np.ndarray:
    """Validated user indices (every user, in index order, for None)."""
    if user_indices is None:
        return np.arange(engine.n_users, dtype=np.int64)
    return engine.user_map.check_indices(as_1d(user_indices))


def iter_score_all(
    engine: Engine,
    user_indices: Any = None,
    *,
    chunk_size: int | None = None,
    memory_budget_mb: float | None = 32,
    progress: bool = True,
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Yield ``(user_index_chunk, float32[len(chunk), n_items])`` over many users.

    The chunk size (users) comes from ``memory_budget_mb`` (``engine.chunk_users``)
    unless given. Indices are validated before anything runs. The default keeps each
    chunk under about 16 MB: the allocator then reuses a dropped chunk's memory for the
    next one, where larger chunks are fresh pages each time (measured 25% slower for MF
    at 20k items).
    """
    users = users_of(engine, user_indices)
    if chunk_size is not None:
        size = check_int("chunk_size", chunk_size, low=1)
    else:
        size = engine.chunk_users(memory_budget_mb)
    return _iter_chunks(engine, users, size, progress)


def _iter_chunks(
    engine: Engine, users: np.ndarray, size: int, progress: bool
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    with Progress(users.size, unit="users", desc="score_all ", enabled=progress) as bar:
        for start in range(0, users.size, size):
            chunk = users[start : start + size]
            out = np.empty((chunk.size, engine.n_items), dtype=np.float32)
            engine.score_all_into(chunk, out)
            yield chunk, out
            bar.update(chunk.size)


def write_score_matrix(
    engine: Engine,
    out_path: str | os.PathLike[str],
    *,
    user_indices: Any = None,
    memory_budget_mb: float | None = None,
    progress: bool = True,
    overwrite: bool = False,
) -> Path:
    """Write the full ``float32[n_users, n_items]`` score matrix to a ``.npy`` file.

    Rows follow ``user_indices`` (default: every user in index order). Written in
    chunks through a memory map into a temporary file beside ``out_path`` that is
    renamed into place at the end: a killed run leaves no ``.npy`` at ``out_path``.
    Written pages are released as it goes, so peak memory does not grow with the
    number of users. Load the result with ``np.load(path, mmap_mode="r")``.
    ``memory_budget_mb`` sizes the chunks (None: the engine's default, 256 MB for
    the onnxruntime engine).

    Raises
    ------
    ConfigError
        ``out_path`` is not a ``.npy`` in an existing, writable directory, is inside a
        bundle, or exists and ``overwrite`` is False.
    """
    path = check_out_path(out_path, (".npy",), overwrite)
    users = users_of(engine, user_indices)
    size = engine.chunk_users(memory_budget_mb)
    return write_npy_chunks(
        path,
        users,
        engine.n_items,
        size,
        lambda chunk, out: engine.score_all_into(chunk, out),
        progress=progress,
        overwrite=overwrite,
    )


def topk_rows(
    engine: Engine, user_indices: np.ndarray, k: int, *, exclude_seen: bool = True
) -> TopkRows:
    """Top-``k`` lists of ``user_indices`` as flat rows ``(user, rank, item, score)``.

    Users and items are raw ids, ranks start at 1, and slots no admissible item can
    fill are left out. This is the one row builder behind :func:`write_topk` and the
    Ray workers' Parquet parts.
    """
    users = np.asarray(user_indices, dtype=np.int64)
    scores, items = engine.topk(users, k, exclude_seen=exclude_seen)
    return flat_topk_rows(users, items, scores, engine.user_map, engine.item_map)


def engine_schema(engine: Engine) -> Any:
    """The Arrow schema of an engine's top-k tables (:func:`topk_schema` of its ids)."""
    return topk_schema(engine.user_map, engine.item_map)


def topk_table(
    engine: Engine, user_indices: np.ndarray, k: int, *, exclude_seen: bool = True
) -> Any:
    """:func:`topk_rows` as a ``pyarrow.Table`` with :func:`engine_schema`."""
    return rows_table(
        engine_schema(engine), topk_rows(engine, user_indices, k, exclude_seen=exclude_seen)
    )


def write_topk(
    engine: Engine,
    out_path: str | os.PathLike[str],
    k: int = 10,
    *,
    exclude_seen: bool = True,
    memory_budget_mb: float | None = None,
    progress: bool = True,
    overwrite: bool = False,
) -> Path:
    """Write the top-``k`` items of every user to ``.parquet`` or ``.csv``.

    Columns ``user, rank, item, score`` (raw ids, rank from 1). Slots no admissible
    item can fill are left out. Written in chunks to a temporary file beside
    ``out_path``, then renamed into place.

    Raises
    ------
    ConfigError
        Unsupported extension, missing/unwritable directory, a path inside a bundle,
        an existing file without ``overwrite``, bad ``k``, or Parquet without pyarrow
        installed.
    """
    path = check_out_path(out_path, (".parquet", ".csv"), overwrite)
    k = engine.check_k(k)
    size = engine.chunk_users(memory_budget_mb)
    return write_topk_chunks(
        path,
        engine.n_users,
        size,
        lambda chunk: topk_rows(engine, chunk, k, exclude_seen=exclude_seen),
        lambda: engine_schema(engine),
        progress=progress,
        overwrite=overwrite,
    )


def _mmap_address(raw: mmap.mmap) -> int:
    """Start address of an mmap object (for page-aligned flush/madvise offsets)."""
    import ctypes

    buf = (ctypes.c_char * 1).from_buffer(raw)
    try:
        return ctypes.addressof(buf)
    finally:
        del buf


def flat_topk_rows(
    users: np.ndarray,
    items: np.ndarray,
    scores: np.ndarray,
    user_map: IdMap,
    item_map: IdMap,
) -> TopkRows:
    """Flat ``(user, rank, item, score)`` rows of ``[B, k]`` top-k lists of ``users``.

    ``items`` are indices (``-1`` in empty slots, which are left out); users and items
    come back as raw ids, ranks from 1.
    """
    k = items.shape[1]
    valid = items >= 0
    urow = np.repeat(users, k).reshape(-1, k)[valid]
    ranks = np.broadcast_to(np.arange(1, k + 1, dtype=np.int32), (users.size, k))[valid]
    return (
        user_map.raw_ids[urow],
        ranks,
        item_map.raw_ids[items[valid]],
        scores[valid],
    )


def topk_schema(user_map: IdMap, item_map: IdMap) -> Any:
    """The Arrow schema of top-k tables: ``user, rank, item, score`` (needs pyarrow)."""
    import pyarrow as pa

    return pa.schema(
        [
            ("user", pa.int64() if user_map.kind == "int" else pa.string()),
            ("rank", pa.int32()),
            ("item", pa.int64() if item_map.kind == "int" else pa.string()),
            ("score", pa.float32()),
        ]
    )


def rows_table(schema: Any, rows: TopkRows) -> Any:
    """Flat top-k ``rows`` as a ``pyarrow.Table`` with ``schema`` (see :func:`topk_schema`)."""
    import pyarrow as pa

    u_raw, ranks, i_raw, scores = rows
    return pa.table(
        {
            "user": pa.array(u_raw.tolist(), type=schema.field("user").type),
            "rank": pa.array(ranks, type=pa.int32()),
            "item": pa.array(i_raw.tolist(), type=schema.field("item").type),
            "score": pa.array(scores, type=pa.float32()),
        },
        schema=schema,
    )


def write_npy_chunks(
    path: Path,
    users: np.ndarray,
    n_items: int,
    size: int,
    fill: Callable[[np.ndarray, np.ndarray], None],
    *,
    progress: bool = True,
    overwrite: bool = False,
) -> Path:
    """Write a ``float32[len(users), n_items]`` ``.npy`` at ``path``, ``size`` users at a time.

    ``fill(chunk, out)`` writes the scores of the user indices ``chunk`` into ``out``
    (a slice of a memory map of a temporary file beside ``path``, renamed into place at
    the end: a killed run leaves no ``.npy`` at ``path``). The file's blocks are reserved
    before the map is written (``posix_fallocate``), so a full disk is an error here,
    never a ``SIGBUS`` in the middle of the map. Written pages are released as it goes.
    ``path`` must have passed :func:`check_out_path`; without ``overwrite`` a file that
    appeared there meanwhile is left as it is.

    Raises
    ------
    ConfigError
        If the file cannot be written (no space, a file-size limit, ...) or appeared
        meanwhile without ``overwrite``; the temporary is removed.
    """
    with writing(path, overwrite=overwrite) as tmp:
        mm = np.lib.format.open_memmap(
            tmp, mode="w+", dtype=np.float32, shape=(users.size, n_items)
        )
        raw = getattr(mm, "_mmap", None)
        reserve_space(tmp, os.path.getsize(tmp))
        base = mm.ctypes.data - _mmap_address(raw) if raw is not None else 0
        row_bytes = n_items * 4
        page = mmap.PAGESIZE
        with Progress(users.size, unit="users", desc="score matrix ", enabled=progress) as bar:
            for start in range(0, users.size, size):
                chunk = users[start : start + size]
                fill(chunk, mm[start : start + chunk.size])
                if raw is not None and hasattr(raw, "madvise"):
                    # write back and drop the pages: RSS stays bounded by the chunk
                    lo = base + start * row_bytes
                    hi = base + (start + chunk.size) * row_bytes
                    lo_page = (lo // page) * page
                    hi_page = (hi // page) * page
                    if hi_page > lo_page:
                        raw.flush(lo_page, hi_page - lo_page)
                        raw.madvise(mmap.MADV_DONTNEED, lo_page, hi_page - lo_page)
                bar.update(chunk.size)
        mm.flush()
        del mm, raw
    return path


def write_topk_chunks(
    path: Path,
    n_users: int,
    size: int,
    rows: Callable[[np.ndarray], TopkRows],
    schema: Callable[[], Any],
    *,
    progress: bool = True,
    overwrite: bool = False,
) -> Path:
    """Write top-k rows of every user to ``path`` (``.parquet`` or ``.csv``).

    ``rows(chunk)`` gives the flat rows of the user indices ``chunk`` (``size`` users at
    a time); ``schema()`` the Arrow schema (Parquet only). Written to a temporary file
    beside ``path``, then renamed into place. ``path`` must have passed
    :func:`check_out_path`; without ``overwrite`` a file that appeared there meanwhile is
    left as it is.

    Raises
    ------
    ConfigError
        Parquet output without pyarrow installed, a failed write (no space, a file-size
        limit, ...), or a file that appeared at ``path`` without ``overwrite``; the
        temporary is removed.
    """
    parquet = path.suffix.lower() == ".parquet"
    if parquet:
        try:
            import pyarrow.parquet as pq
        except ImportError:
            raise ConfigError(
                f"cannot write {path}: Parquet output needs pyarrow; "
                "`pip install pyarrow` (or recsys-export[parquet]) or write a .csv instead"
            ) from None
    users_all = np.arange(n_users, dtype=np.int64)
    with writing(path, overwrite=overwrite) as tmp, contextlib.ExitStack() as stack:
        if parquet:
            arrow_schema = schema()
            writer = pq.ParquetWriter(str(tmp), arrow_schema)
            stack.callback(writer.close)
        else:
            fh = stack.enter_context(open(tmp, "w", newline="", encoding="utf-8"))
            out = csv.writer(fh)
            out.writerow(["user", "rank", "item", "score"])
        with Progress(users_all.size, unit="users", desc="top-k ", enabled=progress) as bar:
            for start in range(0, users_all.size, size):
                chunk = users_all[start : start + size]
                if parquet:
                    writer.write_table(rows_table(arrow_schema, rows(chunk)))
                else:
                    u_raw, r, i_raw, s = rows(chunk)
                    out.writerows(
                        zip(u_raw.tolist(), r.tolist(), i_raw.tolist(), s.tolist(), strict=True)
                    )
                bar.update(chunk.size)
    return path
