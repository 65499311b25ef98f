"""Reading ratings files (CSV, TSV, '::', u.data, gzip, Parquet) into :class:`Ratings`.

pandas (and pyarrow, for Parquet) are imported lazily inside the functions that read
files, so importing this module stays cheap. Every problem caused by bad input raises
:class:`~recsys_export.errors.DataError` with a message that names the file, the line
(where there is one) and how to fix it.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from recsys_export.core.defaults import DEFAULT_DUPLICATES, DUPLICATE_POLICIES
from recsys_export.core.ids import IdMap
from recsys_export.data.columns import (
    Source,
    looks_like_header,
    parse_ids,
    parse_ratings,
    parse_timestamps,
    py_value,
    resolve_columns,
)
from recsys_export.data.ratings import Ratings, default_dataset_path, toy_ratings
from recsys_export.data.text import decode_text, normalize_sep, sep_name, sniff_sep, split_table
from recsys_export.errors import DataError

_PARQUET_SUFFIXES = (".parquet", ".pq")


def read_ratings(
    path: str | Path,
    *,
    user_col: str | int | None = None,
    item_col: str | int | None = None,
    rating_col: str | int | None = None,
    timestamp_col: str | int | None = None,
    sep: str | None = None,
    duplicates: str = DEFAULT_DUPLICATES,
) -> Ratings:
    """Read a ratings file into :class:`Ratings`.

    Formats
        CSV (``,`` ``;`` or ``|``, sniffed), TSV, ``::``-separated files (MovieLens
        ``.dat``, MovieTweetings), MovieLens 100k ``u.data`` (tab-separated, no header),
        whitespace-separated text, gzip-compressed text, and Parquet (``.parquet`` /
        ``.pq``). ``sep`` overrides the detection (``"tab"`` and ``"\\t"`` mean a tab,
        ``"space"`` any run of whitespace; multi-character separators are allowed).

    Header
        The first row is a header when one of its fields is not a number and either a
        field is a known column name, the field in the rating position is not a number,
        or a ``*_col`` argument names a column. Columns are found case-insensitively by
        common names (user: ``user``, ``user_id``, ``userId``, ``uid``, ``customer_id``
        ...; item: ``item``, ``item_id``, ``movieId``, ``product_id``, ``iid`` ...;
        rating: ``rating``, ``score``, ``stars``, ``value``; timestamp: ``timestamp``,
        ``time``, ``ts``, ``date``, ``datetime``). Without a header the columns are
        user, item, rating and optionally timestamp, in that order. ``user_col``,
        ``item_col``, ``rating_col`` and ``timestamp_col`` name a column by header name
        or by 0-based position (int or digit string) and override the detection.

    Values
        Ids are read as text with surrounding whitespace stripped. A column whose ids
        are all canonical integers (no leading zeros or ``+``, fitting int64) gets int
        raw ids; otherwise the ids stay strings (``"0104257"`` stays a string). Ratings
        must be finite numbers; negative or out-of-scale ratings (e.g. MovieTweetings'
        0-10) are accepted as they are: the scale is a training concern. Timestamps are
        integers, used as they are, or dates, converted to int64 seconds since the
        epoch (UTC).

    Duplicates
        A (user, item) pair that occurs more than once is resolved by ``duplicates``:
        ``"last"`` (default) keeps the last row in file order, ``"first"`` the first,
        ``"mean"`` keeps the last row's position and timestamp with the mean of the
        pair's ratings, and ``"error"`` raises. The number of rows dropped is stored in
        ``Ratings.n_duplicates``. Kept rows stay in file order.

    Parameters
    ----------
    path : str or Path
        The ratings file.
    user_col, item_col, rating_col, timestamp_col : str or int, optional
        Column overrides, by header name or 0-based position.
    sep : str, optional
        Field separator; detected when omitted.
    duplicates : {"last", "first", "mean", "error"}
        Policy for repeated (user, item) pairs.

    Returns
    -------
    Ratings
        Ids encoded with :meth:`IdMap.build` (sorted unique raw ids).

    Raises
    ------
    DataError
        Missing, empty, binary or header-only file; fewer than 3 columns (wrong
        delimiter); a missing column; an empty id; a rating that is not a finite number;
        an unparseable timestamp; a duplicate pair under ``duplicates="error"``; a file
        with a single user or a single item. Messages name the file, the 1-based line
        where there is one, and how to fix the problem.
    """
    if duplicates not in DUPLICATE_POLICIES:
        raise DataError(
            f"duplicates={duplicates!r} is not a policy; use one of "
            + ", ".join(repr(p) for p in DUPLICATE_POLICIES)
        )
    name = str(path)
    raw = read_file(path, "a ratings file")
    if not raw:
        raise DataError(f"{name}: the file is empty (0 bytes); expected rating rows")
    if is_parquet(path, raw):
        src = parquet_source(
            name,
            raw,
            "a ratings file needs at least 2 (user, item), usually 3 (user, item, rating)",
        )
    else:
        src = _text_source(name, raw, sep, (user_col, item_col, rating_col, timestamp_col))
    return _build(src, (user_col, item_col, rating_col, timestamp_col), duplicates)


def _text_source(
    name: str, raw: bytes, sep: str | None, col_args: Sequence[str | int | None]
) -> Source:
    text = decode_text(name, raw)
    if not text.strip():
        raise DataError(f"{name}: the file is empty (only blank lines); expected rating rows")
    sep = normalize_sep(sep) if sep is not None else sniff_sep(name, text)
    columns, line_of = split_table(name, text, sep)
    ncols = len(columns)
    first = [str(v).strip() for v in (c[0] for c in columns)]
    header = first if looks_like_header(first, col_args) else None
    offset = 1 if header is not None else 0
    if header is not None:
        columns = [c[1:] for c in columns]
    if ncols < 2:
        raise DataError(
            f"{name}: line {line_of(0)}: found {ncols} column(s) when splitting on "
            f"{sep_name(sep)}; a ratings file needs at least 2 (user, item), usually 3 "
            "(user, item, rating). Is the separator wrong? Pass it with --sep"
        )
    if len(columns[0]) == 0:
        raise DataError(
            f"{name}: has a header ({', '.join(header or [])}) but no data rows; "
            "add ratings below the header"
        )
    return Source(name, columns, header, lambda row: f"line {line_of(row + offset)}")


def read_file(path: str | Path, what: str) -> bytes:
    """The bytes of a regular file; DataError naming ``path`` when it is missing, a
    directory, or not a regular file (a FIFO or a device would block or never end).

    Parameters
    ----------
    path : str or Path
    what : str
        What the file should be, for messages (``"a ratings file"``).
    """
    p = Path(path)
    if not p.exists():
        raise DataError(f"{path}: file not found; check the path (cwd-relative paths allowed)")
    if p.is_dir():
        raise DataError(f"{path}: is a directory, not {what}; give the file inside it")
    if not p.is_file():
        raise DataError(
            f"{path}: is not a regular file (a FIFO, socket or device), which could block "
            f"forever; save {what} to a file and give its path"
        )
    try:
        return p.read_bytes()
    except OSError as exc:
        raise DataError(f"{path}: cannot read the file ({exc.strerror or exc})") from None


def is_parquet(path: str | Path, raw: bytes) -> bool:
    """Whether a file is Parquet: by its suffix (``.parquet``, ``.pq``) or magic bytes."""
    return Path(path).suffix.lower() in _PARQUET_SUFFIXES or raw[:4] == b"PAR1"


def parquet_source(name: str, raw: bytes, need: str) -> Source:
    """A Parquet file's columns (header: its column names; ``row N`` in messages).

    ``need`` completes the message for fewer than 2 columns (``"a names file needs 2
    (id, name)"``).
    """
    try:
        import pyarrow.parquet as pq
    except ImportError:  # pragma: no cover - pyarrow is a declared extra
        raise DataError(
            f"{name}: reading Parquet needs pyarrow; pip install 'recsys-export[parquet]'"
        ) from None
    try:
        table = pq.read_table(io.BytesIO(raw))
    except Exception as exc:  # noqa: BLE001 - pyarrow raises many types
        raise DataError(f"{name}: not a readable Parquet file ({exc})") from None
    if table.num_rows == 0:
        if table.num_columns:
            cols = ", ".join(table.column_names)
            raise DataError(f"{name}: has columns ({cols}) but no data rows")
        raise DataError(f"{name}: the Parquet file is empty (no columns, no rows)")
    if table.num_columns < 2:
        raise DataError(
            f"{name}: has {table.num_columns} column(s) ({', '.join(table.column_names)}); {need}"
        )
    df = table.to_pandas()
    columns = [df.iloc[:, j] for j in range(df.shape[1])]
    header = [str(c) for c in table.column_names]
    return Source(name, columns, header, lambda row: f"row {row + 1}")


def _build(src: Source, col_args: Sequence[str | int | None], duplicates: str) -> Ratings:
    import pandas as pd

    cols = resolve_columns(src, col_args)
    users_raw = parse_ids(src, src.columns[cols["user"]], "user")  # type: ignore[index]
    items_raw = parse_ids(src, src.columns[cols["item"]], "item")  # type: ignore[index]
    implicit = cols["rating"] is None
    if implicit:
        ratings = np.ones(len(users_raw), dtype=np.float64)
    else:
        ratings = parse_ratings(src, src.columns[cols["rating"]])  # type: ignore[index]
    ts_col = cols["timestamp"]
    timestamps = None if ts_col is None else parse_timestamps(src, src.columns[ts_col])

    user_map, users = IdMap.build(users_raw, "user")
    item_map, items = IdMap.build(items_raw, "item")

    n = len(ratings)
    key = users * np.int64(len(item_map)) + items
    n_dup = 0
    dup_first = pd.Series(key).duplicated(keep="first").to_numpy()
    if dup_first.any():
        if duplicates == "error":
            j = int(np.flatnonzero(dup_first)[0])
            i = int(np.flatnonzero(key[:j] == key[j])[0])
            # .item(): numpy scalars would print as np.int64(7) in the message
            u = py_value(user_map.raw_ids[users[j]])
            it = py_value(item_map.raw_ids[items[j]])
            raise DataError(
                f"{src.path}: duplicate (user, item) pair ({u!r}, {it!r}) on "
                f"{src.locate(i)} and {src.locate(j)}; remove the repeats or choose a policy "
                "with --duplicates last|first|mean"
            )
        if duplicates == "first":
            keep = ~dup_first
        else:
            keep = ~pd.Series(key).duplicated(keep="last").to_numpy()
            if duplicates == "mean":
                _, inverse = np.unique(key, return_inverse=True)
                inverse = inverse.reshape(-1)
                sums = np.bincount(inverse, weights=ratings)
                counts = np.bincount(inverse)
                ratings = sums[inverse] / counts[inverse]
        n_dup = int(n - keep.sum())
        users, items, ratings = users[keep], items[keep], ratings[keep]
        if timestamps is not None:
            timestamps = timestamps[keep]

    for role, m in (("user", user_map), ("item", item_map)):
        if len(m) < 2:
            only = py_value(m.raw_ids[0])
            raise DataError(
                f"{src.path}: the whole file has a single {role} ({only!r}); a model "
                f"cannot be trained or evaluated on it. Check --{role}-col and --sep, or "
                f"use a file with ratings from several {role}s"
            )
    return Ratings(
        users=users,
        items=items,
        ratings=ratings.astype(np.float32),
        timestamps=timestamps,
        user_map=user_map,
        item_map=item_map,
        source=src.path,
        n_duplicates=n_dup,
        implicit=implicit,
    )


#: The named data sets of :func:`load_dataset` (and of ``recsys-export train DATA``).
DATASET_NAMES = ("movielens-small", "toy")


def load_dataset(source: str | Path | None = None, **read_options: Any) -> Ratings:
    """Ratings by name or path: a bundled data set, or a file read by :func:`read_ratings`.

    Parameters
    ----------
    source : str or Path, optional
        ``"movielens-small"`` (the default: the bundled MovieLens ``ml-latest-small``
        ratings), ``"toy"`` (the seed notebook's 5 x 4 matrix), or a ratings file.
    **read_options
        Keywords of :func:`read_ratings` (columns, ``sep``, ``duplicates``); not used
        for ``"toy"``.

    Returns
    -------
    Ratings

    Raises
    ------
    DataError
        As :func:`read_ratings`.
    """
    name = source or "movielens-small"
    if name == "toy":
        return toy_ratings()
    if name == "movielens-small":
        name = str(default_dataset_path())
    return read_ratings(name, **read_options)
