"""Finding the user, item, rating and timestamp columns of a table and parsing them.

A :class:`Source` is a parsed table (from text or Parquet) that can name the line of a
row in messages; the functions here pick its columns (by header name, position or the
``--*-col`` options) and turn them into id, rating and timestamp arrays.
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from recsys_export.data.text import is_number, show_value
from recsys_export.errors import DataError

COLUMN_NAMES: dict[str, tuple[str, ...]] = {
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
_POW10 = np.array([10**k for k in range(1, 20)], dtype=np.uint64)


def norm_name(name: str) -> str:
    """A column name lower-cased without spaces, ``_`` and ``-`` (``User ID`` -> ``userid``)."""
    return re.sub(r"[\s_\-]+", "", str(name).strip().lower())


KNOWN_COLUMNS = {role: {norm_name(n) for n in names} for role, names in COLUMN_NAMES.items()}


def py_value(value: Any) -> Any:
    """A numpy scalar as the Python value (for messages: 7, not np.int64(7))."""
    return value.item() if isinstance(value, np.generic) else value


class Source:
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
        """A DataError naming the file and, when ``row`` is given, its line."""
        where = f"{self.path}: {self.locate(row)}: " if row is not None else f"{self.path}: "
        return DataError(where + problem)


def looks_like_header(first: list[str], col_args: Sequence[str | int | None]) -> bool:
    """Whether the first row is a header (see :func:`~recsys_export.data.read_ratings`)."""
    if all(is_number(f) for f in first):
        return False
    if any(norm_name(f) in known for f in first for known in KNOWN_COLUMNS.values()):
        return True
    named = [a for a in col_args if isinstance(a, str) and not a.strip().isdigit()]
    if named:
        return True
    rating_pos = col_args[2] if col_args[2] is not None else 2
    if isinstance(rating_pos, str):
        rating_pos = int(rating_pos)
    if isinstance(rating_pos, int) and 0 <= rating_pos < len(first):
        return not is_number(first[rating_pos])
    return True


def column_arg(path: str, flag: str, arg: Any, header: list[str] | None, ncols: int) -> int:
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
    loose = [j for j, h in enumerate(header) if norm_name(h) == norm_name(arg)]
    hits = exact or loose
    if not hits:
        raise DataError(f"{path}: {flag} {arg!r} is not a column; columns found: {found}")
    return hits[0]


def resolve_columns(src: Source, col_args: Sequence[str | int | None]) -> dict[str, int | None]:
    """Positions of the user, item, rating and timestamp columns of ``src``.

    Parameters
    ----------
    src : Source
    col_args : sequence
        The user, item, rating and timestamp ``--*-col`` values (None: detect).

    Returns
    -------
    dict
        Role -> 0-based column; ``rating`` is None for interactions without ratings
        and ``timestamp`` None when there is none.

    Raises
    ------
    DataError
        A missing user, item or rating column, or two roles on one column.
    """
    ncols = len(src.columns)
    found = ", ".join(src.header) if src.header is not None else f"{ncols} unnamed columns"
    out: dict[str, int | None] = {}
    for role, arg in zip(_ROLES, col_args, strict=True):
        if arg is not None:
            out[role] = column_arg(src.path, _FLAGS[role], arg, src.header, ncols)
    if src.header is None:
        for j, role in enumerate(_ROLES):
            if role not in out and j < ncols and j not in out.values():
                out[role] = j
    else:
        for role in _ROLES:
            if role in out:
                continue
            for j, h in enumerate(src.header):
                if norm_name(h) in KNOWN_COLUMNS[role] and j not in out.values():
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
                f"one of: {', '.join(COLUMN_NAMES[role][:5])}"
            )
    used = [out[r] for r in ("user", "item", "rating") if out[r] is not None]
    if len(set(used)) != len(used):
        raise DataError(
            f"{src.path}: the user, item and rating columns must differ (got columns "
            f"{used[0]}, {used[1]}, {used[2]}); check the --*-col options"
        )
    out.setdefault("timestamp", None)
    return out


def as_text(col: Any) -> np.ndarray:
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


def _whole_floats(
    src: Source, arr: np.ndarray, what: str, expected: str, limit: float = 2.0**62
) -> np.ndarray:
    """A float column (e.g. Parquet) of whole numbers up to ``limit`` -> int64; the first
    other value fails (ids: ``limit`` 2^53 - 1, beyond which floats skip integers)."""
    bad = ~np.isfinite(arr) | (np.mod(arr, 1) != 0) | (np.abs(arr) > limit)
    if bad.any():
        j = int(np.flatnonzero(bad)[0])
        beyond = " (beyond 2^53 a float holds no exact integer)" if np.isfinite(arr[j]) else ""
        raise src.fail(j, f"{what} {py_value(arr[j])!r} is not {expected}{beyond}")
    return arr.astype(np.int64)


def _whitespace_clash(src: Source, text: np.ndarray, ids: np.ndarray, role: str) -> None:
    """Fail when two distinct raw ids become one once surrounding whitespace is stripped
    (``' x'`` and ``'x'``): the reader strips it, and must not merge two ids silently."""
    changed = np.flatnonzero(ids != text)
    if changed.size == 0:
        return
    first_form: dict[str, int] = {}
    clashes = set(ids[changed].tolist())
    for j, (raw, value) in enumerate(zip(text.tolist(), ids.tolist())):
        if value not in clashes:
            continue
        k = first_form.setdefault(value, j)
        if text[k] != raw:
            raise src.fail(
                j,
                f"{role} id {show_value(raw)} differs from {show_value(text[k])} "
                f"({src.locate(k)}) only in surrounding whitespace, which is not part of an "
                "id (it is stripped, so they would merge); write them the same way, or "
                "make them distinct ids",
            )


def parse_ids(src: Source, col: Any, role: str) -> np.ndarray:
    """Raw id column -> int64 array (all canonical integers) or object array of str."""
    arr = np.asarray(col)
    if np.issubdtype(arr.dtype, np.integer):
        return arr.astype(np.int64)
    if np.issubdtype(arr.dtype, np.floating):
        return _whole_floats(src, arr, f"{role} id", "an integer or a string id", limit=2.0**53 - 1)
    text = as_text(col)
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
    if ints is None:
        _whitespace_clash(src, text, values, role)
    return values if ints is None else ints


def _first_odd_numeral(text: np.ndarray) -> int | None:
    """Row of the first value that Python would read as a number but that is not a plain
    ASCII numeral: ``"1_96"`` (``float`` reads 196.0), Arabic-Indic or other non-ASCII
    digits, non-ASCII spaces. None when there is none (the common case costs one join)."""
    joined = "".join(text)
    if joined.isascii() and "_" not in joined:
        return None
    return next(
        (j for j, v in enumerate(text) if (not v.isascii() or "_" in v) and is_number(v)),
        None,
    )


def _numeral_text(src: Source, col: Any, what: str) -> np.ndarray:
    """The column as text (:func:`as_text`), failing at the first value that Python would
    read as a number but that is not a plain ASCII numeral (:func:`_first_odd_numeral`);
    ``what`` names the column's values in the message."""
    text = as_text(col)
    odd = _first_odd_numeral(text)
    if odd is not None:
        raise src.fail(
            odd,
            f"{what} {show_value(text[odd].strip())} is not a plain number: write numbers "
            "with ASCII digits, '.', 'e' and a sign only (no '_' digit grouping, no "
            "non-ASCII digits or spaces)",
        )
    return text


def parse_ratings(src: Source, col: Any) -> np.ndarray:
    """Rating column -> float64 array; the first empty, NaN or non-numeric value fails."""
    arr = np.asarray(col)
    if arr.dtype == np.bool_:
        raise src.fail(None, "the rating column holds booleans; ratings must be numbers")
    text = None
    if np.issubdtype(arr.dtype, np.number):
        vals = arr.astype(np.float64)
    else:
        text = _numeral_text(src, col, "rating")
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
        elif text is None or is_number(value):
            n_bad = int(bad.sum())
            problem = (
                f"rating {show_value(value)} is NaN or infinite ({n_bad} such row(s)); "
                "ratings must be finite numbers: drop or fix those rows"
            )
        else:
            problem = (
                f"rating {show_value(value)} is not a number; ratings must be numeric "
                "(e.g. 4 or 3.5). Fix the row, or point --rating-col at the rating column"
            )
        raise src.fail(j, problem)
    return vals


def parse_timestamps(src: Source, col: Any) -> np.ndarray:
    """Timestamp column (integers or dates) -> int64 seconds since the epoch (UTC)."""
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
        text = _numeral_text(src, col, "timestamp")
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
                f"timestamp {show_value(stripped.iloc[j])} is not an integer like the others; "
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
            f"timestamp {show_value(shown.iloc[j])} is neither an integer nor a date; "
            "fix it, or choose another column with --timestamp-col",
        )
    secs = (dt - pd.Timestamp(0, tz="UTC")) // pd.Timedelta(seconds=1)
    return secs.to_numpy(dtype=np.int64)
