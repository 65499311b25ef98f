"""Id maps: raw user/item ids (as in the ratings file) <-> dense indices.

Torch-free: the runtime uses this module to translate ids before a graph runs.
Raw ids are either all integers (``kind == "int"``) or all strings (``kind == "str"``);
a map is stored in index order, so ``raw_ids[i]`` is the raw id of index ``i``.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

import numpy as np

from recsys_export.errors import BundleError, DataError, UnknownIdError

_MAX_SHOWN = 5
#: Integers a float64 (and JavaScript's Number) holds exactly: |x| <= 2^53 - 1.
MAX_SAFE_INTEGER = 2**53 - 1
#: Id map files whose int ids exceed MAX_SAFE_INTEGER store them as decimal strings
#: (``"encoding": "decimal-strings"``), so that JSON readers using float64 numbers
#: (JavaScript's ``JSON.parse``) do not merge neighbouring ids.
DECIMAL_STRINGS = "decimal-strings"
_INT_TEXT = re.compile(r"[+-]?[0-9]+")


def _preview(values: Iterable[Any]) -> str:
    values = list(values)
    shown = ", ".join(repr(v) for v in values[:_MAX_SHOWN])
    more = f" and {len(values) - _MAX_SHOWN} more" if len(values) > _MAX_SHOWN else ""
    return f"{shown}{more}"


def _exact_int(value: float, name: str) -> int:
    """An integral float within 2^53 as int; DataError for any other float."""
    if value.is_integer() and abs(value) <= MAX_SAFE_INTEGER:
        return int(value)
    raise DataError(
        f"{name} id {value!r} is a float that is not an exact integer (fractional, NaN, "
        "infinite, or beyond 2^53 where floats skip integers); pass ids as int or str"
    )


def _raw_id(value: Any, name: str) -> int | str:
    """One raw id as int or str; DataError for anything else (None, NaN, bool, ...)."""
    if isinstance(value, str):
        return str(value)
    if isinstance(value, (bool, np.bool_)):
        raise DataError(f"{name} id {value!r} is a boolean, not an id")
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        return _exact_int(float(value), name)
    if isinstance(value, bytes):
        try:
            return value.decode("utf-8")
        except UnicodeDecodeError:
            pass
    raise DataError(
        f"{name} id {value!r} ({type(value).__name__}) is not an id; ids are integers or strings"
    )


def raw_id_array(values: Any, name: str) -> np.ndarray:
    """Raw ids as an int64 array (all integers) or an object array of str.

    Integral floats within 2^53 are integers (``5.0`` is id 5, never ``"5.0"``); other
    floats (fractional, NaN, beyond 2^53 where ``9007199254740993.0`` is already
    ``...992.0``), None, booleans and other objects are refused. A mix of integers and
    strings becomes strings (``7`` -> ``"7"``).

    Raises
    ------
    DataError
        Naming the first value that is not an id (a ``ValueError`` too).
    """
    if isinstance(values, np.ndarray):
        arr = values
    else:
        arr = np.empty(len(values := list(values)), dtype=object)
        arr[:] = values
    if arr.ndim != 1:
        raise DataError(f"{name} ids must be one-dimensional, got shape {arr.shape}")
    if arr.dtype.kind in "iu":
        if arr.dtype.kind == "u" and arr.size and int(arr.max()) > np.iinfo(np.int64).max:
            raise DataError(f"{name} id {int(arr.max())} exceeds int64")
        return arr.astype(np.int64)
    if arr.dtype.kind == "b":
        raise DataError(f"{name} ids cannot be booleans")
    if arr.dtype.kind == "f":
        bad = ~np.isfinite(arr) | (np.mod(arr, 1) != 0) | (np.abs(arr) > MAX_SAFE_INTEGER)
        if bad.any():
            _exact_int(float(arr[np.flatnonzero(bad)[0]]), name)
        return arr.astype(np.int64)
    if arr.dtype.kind in "US":
        return np.array([_raw_id(v, name) for v in arr.tolist()], dtype=object)
    if arr.dtype != object:
        raise DataError(f"{name} ids must be integers or strings, got dtype {arr.dtype}")
    if all(type(v) is str for v in arr):  # the common case (a parsed column): as it is
        return arr
    ids = [_raw_id(v, name) for v in arr.tolist()]
    out = np.empty(len(ids), dtype=object)
    if ids and all(type(v) is int for v in ids):
        try:
            return np.asarray(ids, dtype=np.int64)
        except OverflowError:
            raise DataError(f"{name} ids exceed int64") from None
    out[:] = [str(v) for v in ids]
    return out


class IdMap:
    """Bijection between raw ids and dense indices ``0 .. n-1``.

    Parameters
    ----------
    raw_ids : array-like
        Unique raw ids in index order: integers or strings (see :func:`raw_id_array`:
        integral floats within 2^53 are integers; None, NaN, booleans and inexact floats
        are refused).
    name : str
        ``"user"`` or ``"item"``; used in error messages.

    Raises
    ------
    DataError
        A value that is not an id (a ``ValueError``); ``ValueError`` for repeated ids.
    """

    def __init__(self, raw_ids: Iterable[Any], name: str) -> None:
        self.raw_ids = raw_id_array(raw_ids, name)
        self.kind = "str" if self.raw_ids.dtype == object else "int"
        self.name = name
        self._lookup: dict[Any, int] = {v: i for i, v in enumerate(self.raw_ids.tolist())}
        if len(self._lookup) != len(self.raw_ids):
            raise ValueError(f"{name} ids are not unique")

    # ------------------------------------------------------------------ building
    @classmethod
    def build(cls, values: np.ndarray, name: str) -> tuple[IdMap, np.ndarray]:
        """Build a map from a column of raw ids (sorted unique) and encode the column.

        Returns
        -------
        (IdMap, codes)
            ``codes`` is an int64 array of dense indices, one per value.
        """
        values = raw_id_array(values, name)
        if values.dtype == object:  # sorted as fixed-width str: faster than objects
            values = values.astype(str)
        uniques, codes = np.unique(values, return_inverse=True)
        return cls(uniques, name), codes.astype(np.int64).reshape(-1)

    def __len__(self) -> int:
        return len(self.raw_ids)

    def __eq__(self, other: object) -> bool:
        return (
            isinstance(other, IdMap)
            and self.kind == other.kind
            and len(self) == len(other)
            and bool(np.all(self.raw_ids == other.raw_ids))
        )

    def __repr__(self) -> str:
        return f"IdMap({self.name}, n={len(self)}, kind={self.kind})"

    # ------------------------------------------------------------------ lookups
    def coerce(self, raw: Any) -> Any:
        """Convert a raw id (an int, or text as on the command line) to this map's kind.

        In an int map, text that is not a plain ASCII decimal integer (``"1_96"``,
        ``"0x10"``, Arabic-Indic digits) stays as given and is reported unknown by
        :meth:`to_index`. In a str map, strings are looked up exactly and integers (and
        integral floats) as their decimal text.

        Raises
        ------
        UnknownIdError
            For a boolean (``True`` is not user 1), a float that is not an exact integer
            (fractional, NaN, or beyond 2^53 where floats skip integers:
            ``9007199254740995.0`` is stored as ``...996``), None or any other object
            (``None`` is not the user ``"None"``).
        """
        if isinstance(raw, (bool, np.bool_)):
            raise UnknownIdError(f"{self.name} id {raw!r} is a boolean, not an id")
        if isinstance(raw, (float, np.floating)):
            value = float(raw)
            if value.is_integer() and abs(value) <= MAX_SAFE_INTEGER:
                return int(value) if self.kind == "int" else str(int(value))
            if not np.isfinite(value):
                raise UnknownIdError(f"{self.name} id {raw!r} is not an id (NaN or infinite)")
            raise UnknownIdError(
                f"{self.name} id {raw!r} is not an exact integer (a float holds integers "
                f"exactly only up to 2^53); pass {self.name} ids as int or str"
            )
        if self.kind == "int":
            if isinstance(raw, (int, np.integer)):
                return int(raw)
            if isinstance(raw, (str, bytes)):
                text = raw.decode("utf-8", "replace") if isinstance(raw, bytes) else raw
                text = text.strip()
                return int(text) if _INT_TEXT.fullmatch(text) else raw
        elif isinstance(raw, str):
            return str(raw)
        elif isinstance(raw, (int, np.integer)):
            return str(int(raw))
        elif isinstance(raw, bytes):
            return raw.decode("utf-8", "replace")
        raise UnknownIdError(
            f"{self.name} id {raw!r} ({type(raw).__name__}) is not an id; this bundle's "
            f"{self.name} ids are {'integers' if self.kind == 'int' else 'strings'}: pass "
            f"them as {'int or str' if self.kind == 'int' else 'str'}"
        )

    def to_index(self, raw_ids: Any, *, missing: int | None = None) -> np.ndarray:
        """Translate raw ids to indices.

        Parameters
        ----------
        raw_ids : raw id or iterable of raw ids
        missing : int, optional
            Index to use for unknown ids. By default unknown ids raise.

        Raises
        ------
        UnknownIdError
            If any id is unknown and ``missing`` is None; the message lists them.
        """
        if isinstance(raw_ids, (str, bytes)) or np.ndim(raw_ids) == 0:
            raw_ids = [raw_ids]
        values = [self.coerce(v) for v in np.asarray(raw_ids, dtype=object).reshape(-1)]
        out = np.fromiter(
            (self._lookup.get(v, -1) for v in values), dtype=np.int64, count=len(values)
        )
        bad = out < 0
        if bad.any():
            if missing is None:
                unknown = [values[i] for i in np.flatnonzero(bad)]
                raise UnknownIdError(
                    f"unknown {self.name} id(s): {_preview(unknown)}; "
                    f"the model knows {len(self)} {self.name}s "
                    f"(e.g. {_preview(self.raw_ids[:3].tolist())})"
                )
            out[bad] = missing
        return out

    def to_raw(self, indices: np.ndarray) -> np.ndarray:
        """Translate indices (checked to be in range) back to raw ids."""
        idx = self.check_indices(indices)
        return self.raw_ids[idx]

    def check_indices(self, indices: Iterable[int] | np.ndarray) -> np.ndarray:
        """Validate dense indices and return them as int64.

        Raises
        ------
        UnknownIdError
            If any index is negative or >= ``len(self)`` (onnxruntime would silently wrap
            negative indices), or the values are not integers.
        """
        arr = np.asarray(indices)
        if arr.size == 0:
            return arr.astype(np.int64).reshape(arr.shape)
        if not np.issubdtype(arr.dtype, np.integer):
            if np.issubdtype(arr.dtype, np.floating) and np.all(np.mod(arr, 1) == 0):
                arr = arr.astype(np.int64)
            else:
                raise UnknownIdError(f"{self.name} indices must be integers, got dtype {arr.dtype}")
        arr = arr.astype(np.int64, copy=False)
        bad = (arr < 0) | (arr >= len(self))
        if bad.any():
            raise UnknownIdError(
                f"{self.name} index out of range: {_preview(arr[bad].tolist())}; "
                f"valid indices are 0..{len(self) - 1}"
            )
        return arr

    # ------------------------------------------------------------------ storage
    def to_json(self) -> dict[str, Any]:
        """A JSON-serialisable dict ``{"name", "kind", "ids"}``.

        Int ids beyond :data:`MAX_SAFE_INTEGER` are written as decimal strings, flagged by
        ``"encoding": "decimal-strings"``: JavaScript's ``JSON.parse`` reads JSON numbers
        as float64 and would merge them. :meth:`from_json` reads both forms exactly.
        """
        ids = self.raw_ids.tolist()
        out: dict[str, Any] = {"name": self.name, "kind": self.kind, "ids": ids}
        if self.kind == "int" and any(abs(v) > MAX_SAFE_INTEGER for v in ids):
            out["encoding"] = DECIMAL_STRINGS
            out["ids"] = [str(v) for v in ids]
        return out

    @classmethod
    def from_json(cls, obj: Any, name: str | None = None) -> IdMap:
        """Inverse of :meth:`to_json`; raises :class:`BundleError` on malformed input."""
        try:
            kind = obj["kind"]
            ids = obj["ids"]
            nm = name or obj.get("name", "id")
        except (TypeError, KeyError) as exc:
            raise BundleError(f"malformed id map: missing {exc}") from None
        if kind not in ("int", "str") or not isinstance(ids, list):
            raise BundleError(f"malformed {nm} id map: kind must be 'int' or 'str'")
        encoding = obj.get("encoding") if isinstance(obj, dict) else None
        if encoding is not None and (kind, encoding) != ("int", DECIMAL_STRINGS):
            raise BundleError(
                f"malformed {nm} id map: unknown encoding {encoding!r} for {kind!r} ids"
            )
        if encoding == DECIMAL_STRINGS:
            if not all(isinstance(v, str) and _INT_TEXT.fullmatch(v) for v in ids):
                raise BundleError(f"malformed {nm} id map: a decimal-string id is not an integer")
            try:
                arr = np.asarray([int(v) for v in ids], dtype=np.int64)
            except OverflowError:
                raise BundleError(f"malformed {nm} id map: an id exceeds int64") from None
        elif kind == "int":
            if not all(isinstance(v, int) and not isinstance(v, bool) for v in ids):
                raise BundleError(f"malformed {nm} id map: non-integer id in an int map")
            arr = np.asarray(ids, dtype=np.int64)
        else:
            if not all(isinstance(v, str) for v in ids):
                raise BundleError(f"malformed {nm} id map: non-string id in a str map")
            arr = np.asarray(ids, dtype=object)
        try:
            m = cls(arr, nm)
        except ValueError as exc:
            raise BundleError(f"malformed {nm} id map: {exc}") from None
        m.kind = kind
        return m


def runs_to_coo(
    starts: np.ndarray, ends: np.ndarray, values: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Gather the runs ``values[starts[r]:ends[r]]`` as COO pairs ``(rows, values)``.

    The form every ``recommend`` takes exclusions in: ``rows`` holds the position ``r``
    of each run once per element (a user's seen items from a CSR, for instance).

    Parameters
    ----------
    starts, ends : array of int
        Run bounds into ``values``, one pair per row (``ends >= starts``).
    values : np.ndarray
        The concatenated runs, e.g. the CSR's ``seen_items``.

    Returns
    -------
    rows, items : np.ndarray
        int64 arrays of equal length, ``sum(ends - starts)``.
    """
    starts = np.asarray(starts, dtype=np.int64)
    counts = np.asarray(ends, dtype=np.int64) - starts
    rows = np.repeat(np.arange(counts.size, dtype=np.int64), counts)
    if rows.size == 0:
        return rows, np.zeros(0, dtype=np.int64)
    # position inside values: start of each row's run + offset within it
    offsets = np.arange(rows.size, dtype=np.int64) - np.repeat(np.cumsum(counts) - counts, counts)
    return rows, np.asarray(values)[np.repeat(starts, counts) + offsets].astype(np.int64)
