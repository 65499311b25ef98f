"""Rating data: reading rating files, the seed's toy matrix, synthetic data and splits.

Everything here is numpy-first. pandas (and pyarrow, for Parquet) are imported lazily
inside the functions that read files, so importing this module stays cheap.

A :class:`Ratings` holds one rating per row as dense user/item indices plus the
:class:`~recsys_export.ids.IdMap` objects that translate them back to the raw ids of the
file. Every problem caused by bad input raises :class:`~recsys_export.errors.DataError`
with a message that names the file, the line (where there is one) and how to fix it.
"""

from __future__ import annotations

import csv
import gzip
import io
import math
import re
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from recsys_export.errors import DataError
from recsys_export.ids import IdMap

__all__ = [
    "DUPLICATE_POLICIES",
    "TOY_MATRIX",
    "Ratings",
    "align",
    "at_least",
    "default_dataset_path",
    "from_matrix",
    "random_split",
    "read_ratings",
    "split",
    "synthetic_interactions",
    "synthetic_ratings",
    "three_way_split",
    "time_split",
    "toy_ratings",
]

#: Largest matrix :meth:`Ratings.to_matrix` builds (cells).
MAX_DENSE_CELLS = 50_000_000

#: Accepted values of ``read_ratings(duplicates=...)``.
DUPLICATE_POLICIES = ("last", "first", "mean", "error")

# ---------------------------------------------------------------------------- Ratings


@dataclass
class Ratings:
    """Explicit ratings as parallel arrays of dense indices.

    Attributes
    ----------
    users, items : np.ndarray
        int64 dense indices, shape ``[n]``; ``user_map.raw_ids[users[j]]`` is the raw id.
    ratings : np.ndarray
        float32, shape ``[n]``.
    timestamps : np.ndarray or None
        int64 (seconds since the epoch for dates), or None when the source has none.
    user_map, item_map : IdMap
        Raw id <-> dense index maps; they may cover users/items without ratings.
    source : str
        File path or a description, used in messages.
    n_duplicates : int
        Duplicate (user, item) rows dropped by the reader.
    implicit : bool
        True when the source had no rating column (every rating is 1.0): the rows are
        interactions, and only the ranking objective can learn from them.
    """

    users: np.ndarray
    items: np.ndarray
    ratings: np.ndarray
    timestamps: np.ndarray | None
    user_map: IdMap
    item_map: IdMap
    source: str = "<memory>"
    n_duplicates: int = 0
    implicit: bool = False

    def __post_init__(self) -> None:
        self.users = np.ascontiguousarray(self.users, dtype=np.int64).reshape(-1)
        self.items = np.ascontiguousarray(self.items, dtype=np.int64).reshape(-1)
        self.ratings = np.ascontiguousarray(self.ratings, dtype=np.float32).reshape(-1)
        n = len(self.users)
        arrays: dict[str, np.ndarray] = {"items": self.items, "ratings": self.ratings}
        if self.timestamps is not None:
            self.timestamps = np.ascontiguousarray(self.timestamps, dtype=np.int64).reshape(-1)
            arrays["timestamps"] = self.timestamps
        for name, arr in arrays.items():
            if len(arr) != n:
                raise DataError(
                    f"{self.source}: {name} has {len(arr)} entries but users has {n}; "
                    "all rating arrays must have the same length"
                )
        for name, idx, m in (
            ("user", self.users, self.user_map),
            ("item", self.items, self.item_map),
        ):
            if n and (idx.min() < 0 or idx.max() >= len(m)):
                raise DataError(
                    f"{self.source}: {name} index out of range "
                    f"(min {idx.min()}, max {idx.max()}) for a map of {len(m)} {name}s"
                )

    @property
    def n_users(self) -> int:
        """Number of users in the id map (including users without ratings)."""
        return len(self.user_map)

    @property
    def n_items(self) -> int:
        """Number of items in the id map (including items without ratings)."""
        return len(self.item_map)

    def __len__(self) -> int:
        return len(self.ratings)

    def __repr__(self) -> str:
        ts = "yes" if self.timestamps is not None else "no"
        return (
            f"Ratings(n={len(self)}, n_users={self.n_users}, n_items={self.n_items}, "
            f"timestamps={ts}, source={self.source!r})"
        )

    def subset(self, index: np.ndarray) -> Ratings:
        """Rows selected by an integer index array or a boolean mask, with the same id maps.

        Parameters
        ----------
        index : np.ndarray
            Integer row numbers (any order, repeats allowed) or a boolean mask of length
            ``len(self)``.

        Returns
        -------
        Ratings
            A new object sharing ``user_map``/``item_map``, ``source``, ``n_duplicates``
            and ``implicit``.
        """
        idx = np.asarray(index)
        if idx.dtype == np.bool_:
            if idx.shape != (len(self),):
                raise DataError(
                    f"{self.source}: boolean mask has shape {idx.shape}, expected ({len(self)},)"
                )
        elif idx.size == 0:
            idx = idx.astype(np.int64)
        elif not np.issubdtype(idx.dtype, np.integer):
            raise DataError(f"{self.source}: subset index must be integers or a boolean mask")
        elif idx.min() < -len(self) or idx.max() >= len(self):
            raise DataError(f"{self.source}: subset index out of range for {len(self)} ratings")
        return Ratings(
            users=self.users[idx],
            items=self.items[idx],
            ratings=self.ratings[idx],
            timestamps=None if self.timestamps is None else self.timestamps[idx],
            user_map=self.user_map,
            item_map=self.item_map,
            source=self.source,
            n_duplicates=self.n_duplicates,
            implicit=self.implicit,
        )

    def to_matrix(self) -> np.ndarray:
        """Dense float32 matrix ``[n_users, n_items]``; 0 marks an unobserved cell.

        Meant for small data (tests, the toy matrix). If a pair occurs more than once,
        the last row wins.

        Raises
        ------
        DataError
            If the matrix would exceed 50 million cells.
        """
        cells = self.n_users * self.n_items
        if cells > MAX_DENSE_CELLS:
            raise DataError(
                f"{self.source}: a dense {self.n_users} x {self.n_items} matrix has {cells:,} "
                f"cells, above the limit of {MAX_DENSE_CELLS:,}; use the sparse arrays "
                "(users, items, ratings) instead"
            )
        out = np.zeros((self.n_users, self.n_items), dtype=np.float32)
        out[self.users, self.items] = self.ratings
        return out


# ---------------------------------------------------------------------------- toy data

#: The 5 x 4 rating matrix of the seed notebook (0 = unobserved).
TOY_MATRIX: np.ndarray = np.array(
    [[5, 3, 0, 1], [4, 0, 0, 1], [1, 1, 0, 5], [1, 0, 0, 4], [0, 1, 5, 4]], dtype=np.float64
)
TOY_MATRIX.flags.writeable = False


def from_matrix(matrix: Any, source: str = "<matrix>") -> Ratings:
    """Ratings from a dense matrix whose nonzero cells are the observed ratings.

    Rows are users and columns items; the raw ids are the row/column numbers
    ``0 .. n-1`` and the id maps cover every row and column, even empty ones. The
    ratings come in row-major order, exactly the order of ``zip(*matrix.nonzero())``
    (the seed notebook's training loop). There are no timestamps.

    Parameters
    ----------
    matrix : array-like
        Two-dimensional numeric array.
    source : str
        Description used in messages.

    Raises
    ------
    DataError
        If the matrix is not 2-D and numeric, is empty, or holds NaN/inf.
    """
    try:
        m = np.asarray(matrix, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise DataError(f"{source}: the rating matrix must be numeric ({exc})") from None
    if m.ndim != 2:
        raise DataError(f"{source}: the rating matrix must be 2-D, got shape {m.shape}")
    if m.size == 0:
        raise DataError(f"{source}: the rating matrix is empty (shape {m.shape})")
    if not np.isfinite(m).all():
        r, c = np.argwhere(~np.isfinite(m))[0]
        raise DataError(
            f"{source}: the rating matrix holds NaN or infinite values (first at row {r}, "
            f"column {c}); use 0 for unobserved cells"
        )
    users, items = m.nonzero()
    return Ratings(
        users=users.astype(np.int64),
        items=items.astype(np.int64),
        ratings=m[users, items].astype(np.float32),
        timestamps=None,
        user_map=IdMap(np.arange(m.shape[0], dtype=np.int64), "user"),
        item_map=IdMap(np.arange(m.shape[1], dtype=np.int64), "item"),
        source=source,
    )


def toy_ratings() -> Ratings:
    """The seed notebook's 5 x 4 toy matrix as :class:`Ratings` (``from_matrix(TOY_MATRIX)``)."""
    return from_matrix(TOY_MATRIX, source="<toy matrix>")


def default_dataset_path() -> Path:
    """Path of the MovieLens ``ml-latest-small`` ratings shipped with the package."""
    return Path(__file__).resolve().parent / "datasets" / "ml-latest-small" / "ratings.csv"


# ---------------------------------------------------------------------------- reading

_COLUMN_NAMES: dict[str, tuple[str, ...]] = {
    "user": ("user", "user_id", "userid", "uid", "user id", "customer_id", "customer"),
    "item": (
        "item", "item_id", "itemid", "movie", "movie_id", "movieid", "product_id",
        "productid", "product", "iid",
    ),
    "rating": ("rating", "ratings", "score", "stars", "value"),
    "timestamp": ("timestamp", "time", "ts", "date", "rating_timestamp", "datetime"),
}  # fmt: skip
_ROLES = ("user", "item", "rating", "timestamp")
_FLAGS = {r: f"--{r}-col" for r in _ROLES}
_SEP_ALIASES = {"tab": "\t", "\\t": "\t", "space": r"\s+", "whitespace": r"\s+"}
_POW10 = np.array([10**k for k in range(1, 20)], dtype=np.uint64)
_PARQUET_SUFFIXES = (".parquet", ".pq")
_MAX_SHOWN_CHARS = 40


def _norm_name(name: str) -> str:
    return re.sub(r"[\s_\-]+", "", str(name).strip().lower())


_KNOWN = {role: {_norm_name(n) for n in names} for role, names in _COLUMN_NAMES.items()}


def _show(value: Any) -> str:
    s = str(value)
    if len(s) > _MAX_SHOWN_CHARS:
        s = s[:_MAX_SHOWN_CHARS] + "..."
    return repr(s)


def _py(value: Any) -> Any:
    """A numpy scalar as the Python value (for messages: 7, not np.int64(7))."""
    return value.item() if isinstance(value, np.generic) else value


def _is_number(s: str) -> bool:
    try:
        float(s)
    except ValueError:
        return False
    return True


class _Source:
    """A parsed table plus the means to turn a data-row number into 'line N'."""

    def __init__(
        self,
        path: str,
        columns: list[Any],
        header: list[str] | None,
        locate: Callable[[int], str],
    ) -> None:
        self.path = path
        self.columns = columns  # one numpy/pandas column per field
        self.header = header
        self.locate = locate

    def fail(self, row: int | None, problem: str) -> DataError:
        where = f"{self.path}: {self.locate(row)}: " if row is not None else f"{self.path}: "
        return DataError(where + problem)


def read_ratings(
    path: str | Path,
    *,
    user_col: str | int | None = None,
    item_col: str | int | None = None,
    rating_col: str | int | None = None,
    timestamp_col: str | int | None = None,
    sep: str | None = None,
    duplicates: str = "last",
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
    p = Path(path)
    name = str(path)
    if not p.exists():
        raise DataError(f"{name}: file not found; check the path (cwd-relative paths allowed)")
    if p.is_dir():
        raise DataError(f"{name}: is a directory, not a ratings file; give the file inside it")
    try:
        raw = p.read_bytes()
    except OSError as exc:
        raise DataError(f"{name}: cannot read the file ({exc.strerror or exc})") from None
    if not raw:
        raise DataError(f"{name}: the file is empty (0 bytes); expected rating rows")
    if p.suffix.lower() in _PARQUET_SUFFIXES or raw[:4] == b"PAR1":
        src = _parquet_source(name, raw)
    else:
        src = _text_source(name, raw, sep, (user_col, item_col, rating_col, timestamp_col))
    return _build(src, (user_col, item_col, rating_col, timestamp_col), duplicates)


# .................................................................... text parsing


def _utf16_encoding(head: bytes) -> str | None:
    """``"utf-16"`` (byte order mark), ``"utf-16-le"``/``"-be"`` (ASCII-heavy text with
    a NUL in every other byte), or None when ``head`` does not look like UTF-16."""
    if head[:2] in (b"\xff\xfe", b"\xfe\xff"):
        return "utf-16"
    if len(head) < 8:
        return None
    pairs = len(head) // 2
    odd_nul = head[1 : 2 * pairs : 2].count(0) / pairs
    even_nul = head[0 : 2 * pairs : 2].count(0) / pairs
    if odd_nul > 0.9 and even_nul < 0.1:
        return "utf-16-le"
    if even_nul > 0.9 and odd_nul < 0.1:
        return "utf-16-be"
    return None


def _printable(text: str) -> bool:
    """Printable characters, tabs and line breaks only (a leading BOM allowed)."""
    return all(c.isprintable() or c in "\r\n\t" for c in text.removeprefix("\ufeff"))


def _looks_latin1(data: bytes) -> bool:
    """Whether bytes that are not UTF-8 read as Latin-1 / Windows-1252 text: mostly
    ASCII, with a line break or a field separator, and decoding as Windows-1252 into
    printable characters and line breaks only."""
    if sum(b < 0x80 for b in data) < 0.7 * len(data) or not any(c in data for c in b"\n,\t;"):
        return False
    try:
        text = data.decode("cp1252")
    except UnicodeDecodeError:
        return False
    return _printable(text)


def _latin1_message(name: str, raw: bytes, pos: int) -> str:
    line = raw.count(b"\n", 0, pos) + 1
    return (
        f"{name}: line {line}: not UTF-8 but Latin-1 (ISO-8859-1 / Windows-1252) text "
        f"(byte {raw[pos]:#04x} is {raw[pos : pos + 1].decode('cp1252')!r} in Latin-1); "
        "re-save the file as UTF-8"
    )


def _decode(name: str, raw: bytes, *, fallback: str | None = None) -> str:
    """Text of a (possibly gzip-compressed) UTF-8 file; DataError for binary or bad bytes.

    ``fallback`` (e.g. ``"latin-1"``) decodes a file that is not UTF-8 with that codec
    instead of failing (item-name files of older MovieLens releases are Latin-1).
    """
    if raw[:2] == b"\x1f\x8b":
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError) as exc:
            raise DataError(
                f"{name}: looks gzip-compressed but cannot be unpacked ({exc})"
            ) from None
        if not raw:
            raise DataError(f"{name}: the file is empty (0 bytes once unpacked)")
    head = raw[:1024]
    binary_hint = (
        "it looks binary, not a text ratings file; give a CSV/TSV/'::' text file or a .parquet file"
    )
    utf16 = _utf16_encoding(head)
    if utf16 is not None and _printable(head[: len(head) // 2 * 2].decode(utf16, "replace")):
        # UTF-16 text (some Windows tools save it): read it as such
        try:
            text = raw.decode(utf16)
        except UnicodeDecodeError as exc:
            raise DataError(
                f"{name}: looks like UTF-16 text but byte {exc.start} does not decode "
                f"({exc.reason}); re-save the file as UTF-8"
            ) from None
        if "\x00" in text:
            line = text.count("\n", 0, text.index("\x00")) + 1
            raise DataError(f"{name}: line {line}: NUL character in a UTF-16 text file")
        return text.lstrip("\ufeff")
    if b"\x00" in head:
        raise DataError(f"{name}: {binary_hint} (NUL bytes in the first KB)")
    if fallback is not None and b"\x00" not in raw:
        try:
            return raw.decode("utf-8-sig")
        except UnicodeDecodeError:
            return raw.decode(fallback)
    try:
        head.decode("utf-8")
    except UnicodeDecodeError as exc:
        # a multi-byte character cut at the 1 KB boundary is fine
        if not (len(raw) > len(head) and exc.start >= len(head) - 3):
            if _looks_latin1(head):
                raise DataError(_latin1_message(name, raw, exc.start)) from None
            raise DataError(f"{name}: {binary_hint} (not UTF-8 in the first KB)") from None
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        if _looks_latin1(raw[max(0, exc.start - 4096) : exc.start + 4096]):
            raise DataError(_latin1_message(name, raw, exc.start)) from None
        line = raw.count(b"\n", 0, exc.start) + 1
        raise DataError(
            f"{name}: line {line}: not valid UTF-8 (byte {raw[exc.start]:#04x}); "
            "re-save the file as UTF-8"
        ) from None
    if b"\x00" in raw:
        line = raw.count(b"\n", 0, raw.index(b"\x00")) + 1
        raise DataError(f"{name}: line {line}: NUL byte in a text file; is the file corrupted?")
    return text


def _sniff_sep(name: str, text: str) -> str:
    lines = []
    for line in text.split("\n"):
        if line.strip():
            lines.append(line.rstrip("\r"))
            if len(lines) >= 20:
                break
    if not lines:
        raise DataError(f"{name}: the file is empty (only blank lines); expected rating rows")
    if all(line.count("::") >= 1 for line in lines):
        return "::"
    best, best_min = None, 0
    for cand in ("\t", ",", ";", "|"):
        m = min(line.count(cand) for line in lines)
        if m > best_min:
            best, best_min = cand, m
    if best is not None:
        return best
    if all(len(line.split()) >= 3 for line in lines):
        return r"\s+"
    raise DataError(
        f"{name}: line 1: cannot find a field separator (no ',', ';', '|', tab or '::' "
        f"separating 2 or more columns in {_show(lines[0])}); a ratings file needs at least "
        "2 columns (user, item), usually 3 (user, item, rating): pass the separator with --sep"
    )


def _sep_name(sep: str) -> str:
    return {"\t": "tab", r"\s+": "whitespace"}.get(sep, repr(sep))


def _normalize_sep(sep: str) -> str:
    """A ``--sep`` value with its aliases resolved (``tab``, ``space``, ...)."""
    if not isinstance(sep, str) or sep == "":
        raise DataError(f"sep must be a non-empty string, got {sep!r}")
    return _SEP_ALIASES.get(sep.lower(), sep)


def _split_table(name: str, text: str, sep: str) -> tuple[list[np.ndarray], Callable[[int], int]]:
    """Split decoded text on ``sep`` into columns of str (no header handling).

    Returns
    -------
    columns : list of np.ndarray
        One object array of str per field; blank lines are skipped.
    line_of : callable
        Maps a 0-based table row to its 1-based line in the file (for messages).

    Raises
    ------
    DataError
        An unbalanced quote, rows with differing field counts, or an empty table.
    """
    import pandas as pd

    quoting = csv.QUOTE_MINIMAL
    if len(sep) > 1 and sep != r"\s+":
        # the C parser takes one-character separators only: swap in a control character
        repl = next((c for c in "\x1f\x1e\x1d\x1c\x01\x02" if c not in text), None)
        if repl is None:
            raise DataError(f"{name}: cannot split on {sep!r}; the file holds control characters")
        text = text.replace(sep, repl)
        used_sep, quoting = repl, csv.QUOTE_NONE
    else:
        used_sep = sep
    try:
        df = pd.read_csv(
            io.StringIO(text),
            sep=used_sep,
            header=None,
            dtype=object,
            na_filter=False,
            keep_default_na=False,
            skip_blank_lines=True,
            engine="c",
            quoting=quoting,
        )
    except pd.errors.EmptyDataError:
        raise DataError(f"{name}: the file is empty; expected rating rows") from None
    except pd.errors.ParserError as exc:
        msg = str(exc).replace("Error tokenizing data. C error: ", "").strip()
        quote = re.search(r"EOF inside string starting at row (\d+)", msg)
        if quote:
            raise DataError(
                f'{name}: line {int(quote.group(1)) + 1}: unbalanced double quote (") runs '
                "to the end of the file; close or remove the quote"
            ) from None
        raise DataError(
            f"{name}: {msg}; every row needs the same number of fields separated by "
            f"{_sep_name(sep)} (pass --sep if the separator is wrong)"
        ) from None

    # map data-row numbers to 1-based file lines, lazily (only for messages)
    cache: dict[str, np.ndarray] = {}

    def line_of(row: int) -> int:
        if "lines" not in cache:
            nonblank = [
                i + 1 for i, line in enumerate(text.split("\n")) if line.strip(" \r\x0b\x0c") != ""
            ]
            cache["lines"] = np.asarray(nonblank, dtype=np.int64)
        lines = cache["lines"]
        return int(lines[row]) if row < len(lines) else row + 1

    return [df[c].to_numpy(dtype=object) for c in df.columns], line_of


def _text_source(
    name: str, raw: bytes, sep: str | None, col_args: Sequence[str | int | None]
) -> _Source:
    text = _decode(name, raw)
    if not text.strip():
        raise DataError(f"{name}: the file is empty (only blank lines); expected rating rows")
    sep = _normalize_sep(sep) if sep is not None else _sniff_sep(name, text)
    columns, line_of = _split_table(name, text, sep)
    ncols = len(columns)
    first = [str(v).strip() for v in (c[0] for c in columns)]
    header = first if _looks_like_header(first, col_args) else None
    offset = 1 if header is not None else 0
    if header is not None:
        columns = [c[1:] for c in columns]
    if ncols < 2:
        raise DataError(
            f"{name}: line {line_of(0)}: found {ncols} column(s) when splitting on "
            f"{_sep_name(sep)}; a ratings file needs at least 2 (user, item), usually 3 "
            "(user, item, rating). Is the separator wrong? Pass it with --sep"
        )
    if len(columns[0]) == 0:
        raise DataError(
            f"{name}: has a header ({', '.join(header or [])}) but no data rows; "
            "add ratings below the header"
        )
    return _Source(name, columns, header, lambda row: f"line {line_of(row + offset)}")


def _looks_like_header(first: list[str], col_args: Sequence[str | int | None]) -> bool:
    if all(_is_number(f) for f in first):
        return False
    if any(_norm_name(f) in known for f in first for known in _KNOWN.values()):
        return True
    named = [a for a in col_args if isinstance(a, str) and not a.strip().isdigit()]
    if named:
        return True
    rating_pos = col_args[2] if col_args[2] is not None else 2
    if isinstance(rating_pos, str):
        rating_pos = int(rating_pos)
    if isinstance(rating_pos, int) and 0 <= rating_pos < len(first):
        return not _is_number(first[rating_pos])
    return True


# .................................................................... parquet


def _parquet_source(name: str, raw: bytes) -> _Source:
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
        raise DataError(f"{name}: the Parquet file is empty; expected rating rows")
    if table.num_columns < 2:
        raise DataError(
            f"{name}: has {table.num_columns} column(s) ({', '.join(table.column_names)}); "
            "a ratings file needs at least 2 (user, item), usually 3 (user, item, rating)"
        )
    df = table.to_pandas()
    columns = [df.iloc[:, j] for j in range(df.shape[1])]
    header = [str(c) for c in table.column_names]
    return _Source(name, columns, header, lambda row: f"row {row + 1}")


# .................................................................... columns


def _column_arg(path: str, flag: str, arg: Any, header: list[str] | None, ncols: int) -> int:
    """0-based position of the column a ``--*-col`` value names (header name or number).

    Raises
    ------
    DataError
        Not a name or number, out of range, a name without a header, or no such column.
    """
    found = ", ".join(header) if header is not None else f"{ncols} unnamed columns"
    if isinstance(arg, bool) or not isinstance(arg, (int, str, np.integer)):
        raise DataError(f"{flag} must be a column name or number, got {arg!r}")
    if isinstance(arg, (int, np.integer)) or arg.strip().isdigit():
        pos = int(arg)
        if not 0 <= pos < ncols:
            raise DataError(
                f"{path}: {flag} {pos} is out of range; the file has "
                f"{ncols} columns ({found}), numbered from 0"
            )
        return pos
    if header is None:
        raise DataError(
            f"{path}: {flag} {arg!r} names a column but the file has no "
            f"header; give the 0-based column number instead (0..{ncols - 1})"
        )
    exact = [j for j, h in enumerate(header) if h.strip().lower() == arg.strip().lower()]
    loose = [j for j, h in enumerate(header) if _norm_name(h) == _norm_name(arg)]
    hits = exact or loose
    if not hits:
        raise DataError(f"{path}: {flag} {arg!r} is not a column; columns found: {found}")
    return hits[0]


def _resolve_columns(src: _Source, col_args: Sequence[str | int | None]) -> dict[str, int | None]:
    ncols = len(src.columns)
    found = ", ".join(src.header) if src.header is not None else f"{ncols} unnamed columns"
    out: dict[str, int | None] = {}
    for role, arg in zip(_ROLES, col_args, strict=True):
        if arg is not None:
            out[role] = _column_arg(src.path, _FLAGS[role], arg, src.header, ncols)
    if src.header is None:
        for j, role in enumerate(_ROLES):
            if role not in out and j < ncols and j not in out.values():
                out[role] = j
    else:
        for role in _ROLES:
            if role in out:
                continue
            for j, h in enumerate(src.header):
                if _norm_name(h) in _KNOWN[role] and j not in out.values():
                    out[role] = j
                    break
    if "rating" not in out and col_args[2] is None and len(set(out.values())) == ncols:
        # every column is a user, item or timestamp: interactions without ratings
        out["rating"] = None
    for role in ("user", "item", "rating"):
        if role not in out:
            raise DataError(
                f"{src.path}: no {role} column; columns found: {found}. Name it with "
                f"{_FLAGS[role]} (header name or 0-based number), or rename the column to "
                f"one of: {', '.join(_COLUMN_NAMES[role][:5])}"
            )
    used = [out[r] for r in ("user", "item", "rating") if out[r] is not None]
    if len(set(used)) != len(used):
        raise DataError(
            f"{src.path}: the user, item and rating columns must differ (got columns "
            f"{used[0]}, {used[1]}, {used[2]}); check the --*-col options"
        )
    out.setdefault("timestamp", None)
    return out


def _as_text(col: Any) -> np.ndarray:
    """Object array of str; missing values (None, NaN) become ''.

    Columns from the text reader already are object arrays of str and pass unchanged.
    """
    if isinstance(col, np.ndarray) and col.dtype == object:
        return col
    return np.array(
        ["" if v is None or (isinstance(v, float) and v != v) else str(v) for v in col],
        dtype=object,
    )


def _canonical_ints(text: np.ndarray) -> np.ndarray | None:
    """int64 values if every string is a canonical integer (``str(int(s)) == s``)."""
    try:
        ints = text.astype(np.int64)
    except (ValueError, OverflowError):
        return None
    # int() also accepts whitespace, '+', leading zeros, '_' and non-ASCII digits, each of
    # which makes the text longer than str(value) or non-ASCII; '-0' would merge with '0'
    strings = text.tolist()
    if not "".join(strings).isascii():
        return None
    lengths = np.fromiter(map(len, strings), dtype=np.int64, count=len(strings))
    magnitude = np.abs(ints).view(np.uint64)  # |int64 min| wraps to 2**63, right as uint64
    digits = 1 + np.searchsorted(_POW10, magnitude, side="right")
    if not np.array_equal(lengths, digits + (ints < 0)):
        return None
    return ints


def _whole_floats(src: _Source, arr: np.ndarray, what: str, expected: str) -> np.ndarray:
    """A float column (e.g. Parquet) of whole numbers -> int64; the first other value fails."""
    bad = ~np.isfinite(arr) | (np.mod(arr, 1) != 0)
    if bad.any():
        j = int(np.flatnonzero(bad)[0])
        raise src.fail(j, f"{what} {arr[j]!r} is not {expected}")
    return arr.astype(np.int64)


def _parse_ids(src: _Source, col: Any, role: str) -> np.ndarray:
    """Raw id column -> int64 array (all canonical integers) or object array of str."""
    arr = np.asarray(col)
    if np.issubdtype(arr.dtype, np.integer):
        return arr.astype(np.int64)
    if np.issubdtype(arr.dtype, np.floating):
        return _whole_floats(src, arr, f"{role} id", "an integer or a string id")
    text = _as_text(col)
    ints = _canonical_ints(text)
    if ints is not None:
        return ints
    values = np.array([v.strip() for v in text.tolist()], dtype=object)
    empty = values == ""
    if empty.any():
        j = int(np.flatnonzero(empty)[0])
        raise src.fail(
            j,
            f"empty {role} id; every row needs a {role} id (check the separator and "
            "that no field is missing)",
        )
    ints = _canonical_ints(values)
    return values if ints is None else ints


def _parse_ratings(src: _Source, col: Any) -> np.ndarray:
    arr = np.asarray(col)
    if arr.dtype == np.bool_:
        raise src.fail(None, "the rating column holds booleans; ratings must be numbers")
    text = None
    if np.issubdtype(arr.dtype, np.number):
        vals = arr.astype(np.float64)
    else:
        text = _as_text(col)
        try:
            vals = text.astype(np.float64)
        except ValueError:
            import pandas as pd

            vals = pd.to_numeric(pd.Series(text, dtype=object), errors="coerce").to_numpy(
                dtype=np.float64, na_value=np.nan
            )
    bad = ~np.isfinite(vals)
    if bad.any():
        j = int(np.flatnonzero(bad)[0])
        value = arr[j] if text is None else text[j].strip()
        if text is not None and value == "":
            problem = "empty rating; every row needs a rating (is a field missing?)"
        elif text is None or _is_number(value):
            n_bad = int(bad.sum())
            problem = (
                f"rating {_show(value)} is NaN or infinite ({n_bad} such row(s)); "
                "ratings must be finite numbers: drop or fix those rows"
            )
        else:
            problem = (
                f"rating {_show(value)} is not a number; ratings must be numeric "
                "(e.g. 4 or 3.5). Fix the row, or point --rating-col at the rating column"
            )
        raise src.fail(j, problem)
    return vals


def _parse_timestamps(src: _Source, col: Any) -> np.ndarray:
    import pandas as pd

    arr = np.asarray(col)
    if arr.dtype == np.bool_:
        raise src.fail(None, "the timestamp column holds booleans; expected integers or dates")
    if np.issubdtype(arr.dtype, np.integer):
        return arr.astype(np.int64)
    if np.issubdtype(arr.dtype, np.floating):
        return _whole_floats(src, arr, "timestamp", "an integer or a date")
    if isinstance(col, pd.Series) and (
        isinstance(col.dtype, pd.DatetimeTZDtype) or np.issubdtype(arr.dtype, np.datetime64)
    ):
        dt = pd.to_datetime(col, utc=True)
        shown = col
    else:
        text = _as_text(col)
        try:
            return text.astype(np.int64)
        except (ValueError, OverflowError):
            pass
        stripped = pd.Series([v.strip() for v in text.tolist()], dtype=object)
        empty = (stripped == "").to_numpy()
        if empty.any():
            j = int(np.flatnonzero(empty)[0])
            raise src.fail(
                j, "empty timestamp; fill it in, or choose another column with --timestamp-col"
            )
        num = pd.to_numeric(stripped, errors="coerce").to_numpy(dtype=np.float64, na_value=np.nan)
        ok = np.isfinite(num)
        ok[ok] = (np.mod(num[ok], 1) == 0) & (np.abs(num[ok]) < 2**62)
        if ok.any():  # a numeric column: every value must be an integer
            if ok.all():
                return num.astype(np.int64)
            j = int(np.flatnonzero(~ok)[0])
            raise src.fail(
                j,
                f"timestamp {_show(stripped.iloc[j])} is not an integer like the others; "
                "fix it, or choose another column with --timestamp-col",
            )
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            dt = pd.to_datetime(stripped, utc=True, errors="coerce", format="mixed")
        shown = stripped
    nat = dt.isna().to_numpy()
    if nat.any():
        j = int(np.flatnonzero(nat)[0])
        raise src.fail(
            j,
            f"timestamp {_show(shown.iloc[j])} is neither an integer nor a date; "
            "fix it, or choose another column with --timestamp-col",
        )
    secs = (dt - pd.Timestamp(0, tz="UTC")) // pd.Timedelta(seconds=1)
    return secs.to_numpy(dtype=np.int64)


# .................................................................... assembling


def _build(src: _Source, col_args: Sequence[str | int | None], duplicates: str) -> Ratings:
    import pandas as pd

    cols = _resolve_columns(src, col_args)
    users_raw = _parse_ids(src, src.columns[cols["user"]], "user")  # type: ignore[index]
    items_raw = _parse_ids(src, src.columns[cols["item"]], "item")  # type: ignore[index]
    implicit = cols["rating"] is None
    if implicit:
        ratings = np.ones(len(users_raw), dtype=np.float64)
    else:
        ratings = _parse_ratings(src, src.columns[cols["rating"]])  # type: ignore[index]
    ts_col = cols["timestamp"]
    timestamps = None if ts_col is None else _parse_timestamps(src, src.columns[ts_col])

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
            u = _py(user_map.raw_ids[users[j]])
            it = _py(item_map.raw_ids[items[j]])
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
            only = _py(m.raw_ids[0])
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


# ---------------------------------------------------------------------------- synthetic


def synthetic_ratings(
    n_users: int,
    n_items: int,
    *,
    n_ratings: int | None = None,
    density: float = 0.05,
    n_factors: int = 8,
    popularity_skew: float = 1.0,
    noise: float = 0.1,
    seed: int = 0,
) -> Ratings:
    """Random ratings generated by a known low-rank model.

    True factors are drawn as ``N(0, 1) / sqrt(n_factors)`` for every user and item; a
    rating is ``3 + dot(p_u, q_i) + noise * N(0, 1)`` clipped to ``[1, 5]`` (float32).
    Users are drawn uniformly and items with probability proportional to
    ``1 / (rank + 1) ** popularity_skew``, the ranks being a random permutation of the
    items. No (user, item) pair occurs twice. Raw ids are the integers ``0 .. n-1`` and
    the maps cover all users and items (some may have no rating). Timestamps increase
    with the row number. The same arguments always give the same arrays.

    Parameters
    ----------
    n_users, n_items : int
        Sizes (>= 1).
    n_ratings : int, optional
        Number of ratings; defaults to ``round(density * n_users * n_items)`` (at least 1).
    density : float
        Fraction of observed cells, used when ``n_ratings`` is None; in (0, 1].
    n_factors : int
        Rank of the true model.
    popularity_skew : float
        Zipf exponent of item popularity (0 = uniform).
    noise : float
        Standard deviation of the Gaussian noise.
    seed : int
        Seed of the numpy Generator.

    Raises
    ------
    DataError
        On invalid sizes or parameters.
    """
    for nm, v in (("n_users", n_users), ("n_items", n_items), ("n_factors", n_factors)):
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
            raise DataError(f"{nm} must be a positive integer, got {v!r}")
    n_users, n_items, n_factors = int(n_users), int(n_items), int(n_factors)
    cells = n_users * n_items
    if n_ratings is None:
        if not (isinstance(density, (int, float)) and 0 < density <= 1):
            raise DataError(f"density must be in (0, 1], got {density!r}")
        n_ratings = max(1, round(density * cells))
    if isinstance(n_ratings, bool) or not isinstance(n_ratings, (int, np.integer)):
        raise DataError(f"n_ratings must be an integer, got {n_ratings!r}")
    n_ratings = int(n_ratings)
    if not 1 <= n_ratings <= cells:
        raise DataError(
            f"n_ratings must be between 1 and n_users * n_items = {cells}, got {n_ratings}"
        )
    if not (math.isfinite(popularity_skew) and popularity_skew >= 0):
        raise DataError(f"popularity_skew must be >= 0, got {popularity_skew!r}")
    if not (math.isfinite(noise) and noise >= 0):
        raise DataError(f"noise must be >= 0, got {noise!r}")

    rng = np.random.default_rng(seed)
    scale = 1.0 / math.sqrt(n_factors)
    user_f = rng.standard_normal((n_users, n_factors)) * scale
    item_f = rng.standard_normal((n_items, n_factors)) * scale
    rank = rng.permutation(n_items)
    weight = np.exp(-popularity_skew * np.log1p(rank.astype(np.float64)))  # 1/(rank+1)^skew
    prob = weight / weight.sum()

    keys = np.empty(0, dtype=np.int64)
    if cells <= 4_000_000 or (n_ratings > 0.3 * cells and cells <= 4 * MAX_DENSE_CELLS):
        rounds = 0  # small or dense grid: sample all cells directly below
    else:
        rounds = 50
    for _ in range(rounds):
        need = n_ratings - len(keys)
        if need <= 0:
            break
        draw = max(2 * need, 1024)
        u = rng.integers(0, n_users, size=draw, dtype=np.int64)
        i = rng.choice(n_items, size=draw, p=prob)
        before = len(keys)
        keys = _unique_in_order(np.concatenate([keys, u * n_items + i]))
        if len(keys) - before < 0.02 * draw and cells <= 4 * MAX_DENSE_CELLS:
            break  # popular items are saturated: rejection sampling stalls
    keys = keys[:n_ratings]
    if len(keys) < n_ratings:
        # draw the rest from the unobserved cells, still weighted by popularity
        if cells > 4 * MAX_DENSE_CELLS:
            raise DataError(
                f"cannot draw {n_ratings} distinct ratings with popularity_skew="
                f"{popularity_skew}; lower popularity_skew or n_ratings"
            )
        taken = np.zeros(cells, dtype=bool)
        taken[keys] = True
        free = np.flatnonzero(~taken)
        w = prob[free % n_items]
        # weighted sampling without replacement (Efraimidis-Spirakis: smallest Exp(1)/w)
        with np.errstate(over="ignore", divide="ignore"):
            key_ = rng.standard_exponential(len(free)) / w
        m = n_ratings - len(keys)
        extra = free[np.argpartition(key_, m - 1)[:m]] if m < len(free) else free
        keys = rng.permutation(np.concatenate([keys, extra.astype(np.int64)]))
    keys = keys[:n_ratings]
    users, items = keys // n_items, keys % n_items
    dots = np.einsum("ij,ij->i", user_f[users], item_f[items])
    ratings = np.clip(3.0 + dots + noise * rng.standard_normal(n_ratings), 1.0, 5.0)
    return Ratings(
        users=users,
        items=items,
        ratings=ratings.astype(np.float32),
        timestamps=1_500_000_000 + 60 * np.arange(n_ratings, dtype=np.int64),
        user_map=IdMap(np.arange(n_users, dtype=np.int64), "user"),
        item_map=IdMap(np.arange(n_items, dtype=np.int64), "item"),
        source=f"<synthetic {n_users}x{n_items} seed={seed}>",
    )


def synthetic_interactions(
    n_users: int,
    n_items: int,
    *,
    n_groups: int = 5,
    per_user: int = 20,
    noise: float = 0.1,
    seed: int = 0,
) -> Ratings:
    """Implicit feedback with planted taste groups: a ranking model must find them.

    Users and items are split into ``n_groups`` groups (user ``u`` in group
    ``u % n_groups``, item ``i`` in ``i % n_groups``). Each user interacts with
    ``per_user`` distinct items, a share ``1 - noise`` of them drawn from the user's
    group and the rest from the whole catalogue. Every item gets about the same number
    of interactions, so popularity carries no signal: only the groups do. Ratings are
    all 1.0 (``implicit=True``); raw ids are ``0 .. n-1``.

    Raises
    ------
    DataError
        On sizes that cannot hold ``per_user`` items of a group.
    """
    for nm, v in (("n_users", n_users), ("n_items", n_items), ("n_groups", n_groups)):
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
            raise DataError(f"{nm} must be a positive integer, got {v!r}")
    group_size = n_items // n_groups
    if not 1 <= per_user <= group_size:
        raise DataError(
            f"per_user must be between 1 and the items per group ({group_size}), got {per_user}"
        )
    if not 0.0 <= noise <= 1.0:
        raise DataError(f"noise must be in [0, 1], got {noise!r}")
    rng = np.random.default_rng(seed)
    users, items = [], []
    for u in range(n_users):
        in_group = np.arange(u % n_groups, n_items, n_groups)
        n_in = int(round(per_user * (1.0 - noise)))
        chosen = set(rng.choice(in_group, n_in, replace=False).tolist())
        while len(chosen) < per_user:
            chosen.add(int(rng.integers(n_items)))
        users.extend([u] * per_user)
        items.extend(sorted(chosen))
    n = len(users)
    return Ratings(
        users=np.asarray(users, dtype=np.int64),
        items=np.asarray(items, dtype=np.int64),
        ratings=np.ones(n, dtype=np.float32),
        timestamps=1_500_000_000 + 60 * np.arange(n, dtype=np.int64),
        user_map=IdMap(np.arange(n_users, dtype=np.int64), "user"),
        item_map=IdMap(np.arange(n_items, dtype=np.int64), "item"),
        source=f"<synthetic interactions {n_users}x{n_items} groups={n_groups} seed={seed}>",
        implicit=True,
    )


def _unique_in_order(values: np.ndarray) -> np.ndarray:
    _, first = np.unique(values, return_index=True)
    return values[np.sort(first)]


# ---------------------------------------------------------------------------- splits


def _check_fraction(test_fraction: float) -> float:
    try:
        f = float(test_fraction)
    except (TypeError, ValueError):
        raise DataError(
            f"test_fraction must be a number in (0, 1), got {test_fraction!r}"
        ) from None
    if not 0.0 < f < 1.0:
        raise DataError(f"test_fraction must be in (0, 1) (exclusive), got {test_fraction!r}")
    return f


def _random_mask(n: int, f: float, seed: int) -> np.ndarray:
    n_test = min(max(round(f * n), 1), n - 1)
    perm = np.random.default_rng(seed).permutation(n)
    test = np.zeros(n, dtype=bool)
    test[perm[:n_test]] = True
    return test


def random_split(r: Ratings, test_fraction: float = 0.2, seed: int = 0) -> tuple[Ratings, Ratings]:
    """Split ratings at random into (train, test).

    ``round(test_fraction * n)`` ratings (at least 1, at most ``n - 1``) chosen with
    ``np.random.default_rng(seed)`` go to test. Both parts keep the id maps and the
    original row order.

    Raises
    ------
    DataError
        If ``test_fraction`` is not in (0, 1) or there are fewer than 2 ratings.
    """
    return split(r, "random", test_fraction, seed)


def _time_mask(r: Ratings, f: float) -> np.ndarray:
    if r.timestamps is None:
        raise DataError(
            f"{r.source}: has no timestamps, so it cannot be split by time; use a random "
            "split or a file with a timestamp column (--timestamp-col)"
        )
    n = len(r)
    order = np.lexsort((np.arange(n), r.timestamps, r.users))
    su = r.users[order]
    counts = np.bincount(r.users, minlength=r.n_users)
    if not (counts >= 2).any():
        raise DataError(
            f"{r.source}: no user has 2 or more ratings, so a time split leaves nothing "
            "to test on; use a random split"
        )
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    pos = np.arange(n) - starts[su]
    n_hold = np.ceil(np.round(f * counts, 9)).astype(np.int64)
    n_hold = np.where(counts >= 2, np.minimum(n_hold, counts - 1), 0)
    held = pos >= counts[su] - n_hold[su]
    test = np.zeros(n, dtype=bool)
    test[order[held]] = True
    return test


def time_split(r: Ratings, test_fraction: float = 0.2) -> tuple[Ratings, Ratings]:
    """Hold out each user's latest ratings: returns (train, test).

    For every user with ``c >= 2`` ratings, the last ``ceil(test_fraction * c)`` by
    timestamp (ties broken by row order; at most ``c - 1``, so each user keeps a
    training rating) go to test. Users with one rating stay in train. Both parts keep
    the id maps and the original row order.

    Raises
    ------
    DataError
        If there are no timestamps, ``test_fraction`` is not in (0, 1), or no user has
        two ratings.
    """
    return split(r, "time", test_fraction)


def _holdout_mask(r: Ratings, method: str, test_fraction: float, seed: int) -> np.ndarray:
    """Boolean mask of the held-out rows of ``split(r, method, test_fraction, seed)``."""
    f = _check_fraction(test_fraction)
    if method == "random":
        if len(r) < 2:
            raise DataError(
                f"{r.source}: {len(r)} rating(s) cannot be split into train and test; need >= 2"
            )
        return _random_mask(len(r), f, seed)
    if method == "time":
        return _time_mask(r, f)
    raise DataError(f"unknown split method {method!r}; use 'random' or 'time'")


#: Values of the ``parts`` array of :func:`three_way_split`.
TRAIN, VALID, TEST = 0, 1, 2


def three_way_split(
    r: Ratings,
    method: str = "random",
    test_fraction: float = 0.2,
    valid_fraction: float = 0.1,
    seed: int = 0,
) -> np.ndarray:
    """Assign every row to train, validation or test: an ``int8[n]`` array of parts.

    The test rows are exactly those of ``split(r, method, test_fraction, seed)``; the
    validation rows are then carved from the remaining (training) rows by the same
    method with ``valid_fraction`` and ``seed + 1``. Model selection (early stopping)
    may look at validation rows only; test rows are for the reported metrics.

    Parameters
    ----------
    r : Ratings
    method : {"random", "time", "none"}
        ``"none"`` holds out no test rows (all rows train or validate).
    test_fraction : float
        Share of all rows held out for test, in (0, 1).
    valid_fraction : float
        Share of the training rows held out for validation, in [0, 1); 0 disables
        validation (and so early stopping).
    seed : int
        Seed of the random method.

    Returns
    -------
    np.ndarray
        ``int8[n]`` with :data:`TRAIN` (0), :data:`VALID` (1) or :data:`TEST` (2).

    Raises
    ------
    DataError
        Invalid fractions or method, or ratings that cannot be split.
    """
    parts = np.full(len(r), TRAIN, dtype=np.int8)
    if method != "none":
        parts[_holdout_mask(r, method, test_fraction, seed)] = TEST
    try:
        vf = float(valid_fraction)
    except (TypeError, ValueError):
        raise DataError(
            f"valid_fraction must be a number in [0, 1), got {valid_fraction!r}"
        ) from None
    if not 0.0 <= vf < 1.0:
        raise DataError(f"valid_fraction must be in [0, 1), got {valid_fraction!r}")
    if vf > 0:
        rest = np.flatnonzero(parts == TRAIN)
        if len(rest) >= 2:
            sub = r.subset(rest)
            mask = _holdout_mask(sub, "random" if method == "none" else method, vf, seed + 1)
            parts[rest[mask]] = VALID
    return parts


def at_least(r: Ratings, min_rating: float | None) -> np.ndarray:
    """Boolean mask of the rows rated ``>= min_rating`` (every row when None).

    Raises
    ------
    DataError
        If no row reaches ``min_rating``.
    """
    if min_rating is None:
        return np.ones(len(r), dtype=bool)
    keep = r.ratings >= min_rating
    if not keep.any():
        raise DataError(
            f"{r.source}: no rating reaches --min-rating {min_rating:g} (highest "
            f"{float(r.ratings.max()):g}); lower it"
        )
    return keep


def align(r: Ratings, user_map: IdMap, item_map: IdMap) -> tuple[Ratings, dict[str, int]]:
    """Map ``r`` onto other id maps (e.g. a test file onto a checkpoint's maps).

    Rows whose user or item the maps do not know are dropped and counted.

    Returns
    -------
    (Ratings, dict)
        The kept rows with ``user_map``/``item_map`` as their maps, and the counts
        ``rows``, ``kept``, ``dropped``, ``unknown_users`` and ``unknown_items``
        (distinct ids).
    """
    u = user_map.to_index(r.user_map.raw_ids, missing=-1)[r.users]
    i = item_map.to_index(r.item_map.raw_ids, missing=-1)[r.items]
    keep = (u >= 0) & (i >= 0)
    stats = {
        "rows": len(r),
        "kept": int(keep.sum()),
        "dropped": int((~keep).sum()),
        "unknown_users": int(len(np.unique(r.users[u < 0]))),
        "unknown_items": int(len(np.unique(r.items[i < 0]))),
    }
    out = Ratings(
        users=u[keep],
        items=i[keep],
        ratings=r.ratings[keep],
        timestamps=None if r.timestamps is None else r.timestamps[keep],
        user_map=user_map,
        item_map=item_map,
        source=r.source,
        n_duplicates=r.n_duplicates,
        implicit=r.implicit,
    )
    return out, stats


def split(
    r: Ratings, method: str = "random", test_fraction: float = 0.2, seed: int = 0
) -> tuple[Ratings, Ratings]:
    """Split into (train, test) with ``method`` ``"random"`` or ``"time"``.

    ``seed`` is used by the random split only. See :func:`random_split` and
    :func:`time_split`.

    Raises
    ------
    DataError
        On an unknown method, or ``"time"`` on ratings without timestamps.
    """
    test = _holdout_mask(r, method, test_fraction, seed)
    return r.subset(~test), r.subset(test)
