"""Item names (titles), read from a file and aligned with a model's item index.

A names file holds an id column and a name column, for example MovieLens ``movies.csv``
(``movieId,title,genres``), MovieTweetings' ``movies.dat`` (``id::Title (year)::genres``,
no header) or a ``|``-separated Latin-1 file like MovieLens 100k's ``u.item``.
:func:`read_item_names` maps the file's raw ids through the model's item
:class:`~recsys_export.core.ids.IdMap`, so ``names[i]`` is the name of item index ``i``; items
the file does not name get None, and rows whose id the model does not know are ignored
and counted.

The names travel in the checkpoint (``Checkpoint.item_names``) and in the bundle
(:data:`~recsys_export.bundle.schema.ITEM_NAMES_FILE`, a JSON list in item-index order,
checksummed and listed in the manifest under ``item_names``; validated by
:func:`~recsys_export.bundle.files.check_item_names`); the runtime returns them with
recommendations. Torch-free.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from recsys_export.core.ids import IdMap
from recsys_export.data.columns import (
    COLUMN_NAMES,
    Source,
    as_text,
    column_arg,
    norm_name,
    parse_ids,
    py_value,
)
from recsys_export.data.ratings import default_dataset_path
from recsys_export.data.readers import is_parquet, parquet_source, read_file
from recsys_export.data.text import (
    decode_text,
    normalize_sep,
    sep_name,
    show_value,
    sniff_sep,
    split_table,
)
from recsys_export.errors import DataError

__all__ = [
    "ItemNames",
    "align_item_names",
    "read_item_table",
    "default_item_names_path",
    "read_item_names",
]


_ID_COLUMNS = frozenset(norm_name(n) for n in (*COLUMN_NAMES["item"], "id"))
_NAME_COLUMNS = frozenset(
    norm_name(n)
    for n in (
        "title", "name", "item_name", "item_title", "movie_title", "product_name",
        "product_title", "label",
    )
)  # fmt: skip
_FLAGS = {"id": "--item-id-col", "name": "--item-name-col"}
_MAX_EXAMPLES = 5


@dataclass
class ItemNames:
    """Names read by :func:`read_item_names`, aligned with an item id map.

    Attributes
    ----------
    names : list of str or None
        ``names[i]`` is the name of item index ``i``; None where the file has none.
    source : str
        The file read.
    n_rows : int
        Data rows in the file (header excluded).
    n_unknown : int
        Rows whose id is not in the item map (ignored).
    unknown_examples : list
        Up to five of those ids, as read.
    n_renamed : int
        Rows that name an item again with another name (the last name is kept).
    renamed_examples : list
        Up to five of those ids, as read.
    """

    names: list[str | None]
    source: str
    n_rows: int
    n_unknown: int = 0
    unknown_examples: list[Any] = field(default_factory=list)
    n_renamed: int = 0
    renamed_examples: list[Any] = field(default_factory=list)

    @property
    def n_named(self) -> int:
        """Items that got a name."""
        return sum(n is not None for n in self.names)

    def summary(self) -> str:
        """One line for the user: how many items are named, what was ignored."""
        text = f"{self.n_named:,} of {len(self.names):,} items named from {self.source}"
        if self.n_unknown:
            shown = ", ".join(repr(v) for v in self.unknown_examples)
            text += f"; ignored {self.n_unknown:,} ids not in the ratings (e.g. {shown})"
        if self.n_renamed:
            shown = ", ".join(repr(v) for v in self.renamed_examples)
            text += (
                f"; {self.n_renamed:,} rows name an item again with another name, the last "
                f"name kept (e.g. {shown})"
            )
        return text


def default_item_names_path() -> Path:
    """Path of the MovieLens ``ml-latest-small`` titles (``movies.csv``) in the package."""
    return default_dataset_path().with_name("movies.csv")


def _sniff(name: str, text: str) -> str:
    """``::`` when every one of the first lines has it, else ``sniff_sep``'s choice."""
    lines = [ln for ln in text.split("\n", 40)[:40] if ln.strip()][:20]
    if lines and all("::" in ln for ln in lines):
        return "::"
    try:
        sep = sniff_sep(name, text)
    except DataError:
        sep = r"\s+"
    if sep == r"\s+":  # titles hold spaces: whitespace cannot separate id and name
        raise DataError(
            f"{name}: line 1: cannot find the separator between the item id and its name "
            f"(no ',', ';', '|', tab or '::' in {show_value(lines[0] if lines else '')}); a names "
            "file needs an id column and a name column, e.g. 'movieId,title'"
        )
    return sep


def _looks_like_header(first: list[str], second: list[str] | None, args: list[Any]) -> bool:
    if any(isinstance(a, str) and not a.strip().isdigit() for a in args):
        return True
    if any(norm_name(f) in _ID_COLUMNS | _NAME_COLUMNS for f in first):
        return True
    # an id column of integers whose first field is not one: that field is a title
    pos = int(args[0]) if args[0] is not None else 0
    if second is None or pos >= len(first):
        return False
    return not first[pos].lstrip("-").isdigit() and second[pos].lstrip("-").isdigit()


def _detect(
    known: frozenset[str], taken: int | None, header: list[str] | None, ncols: int
) -> int | None:
    """Default position of a column: by header name, else the first free column."""
    if header is not None:
        hit = next((j for j, h in enumerate(header) if norm_name(h) in known and j != taken), None)
        if hit is not None or ncols > 2:
            return hit
    return next(j for j in range(ncols) if j != taken)


def read_item_names(
    path: str | Path,
    *,
    item_map: IdMap,
    id_col: str | int | None = None,
    name_col: str | int | None = None,
    sep: str | None = None,
) -> ItemNames:
    """Read item names from a file and align them with ``item_map``.

    Format
        Text (plain or gzip-compressed; UTF-8, or Latin-1 when it is not UTF-8) with
        fields separated by ``::`` (detected when every line has it), a tab, ``,``,
        ``;`` or ``|`` (sniffed as for ratings files; CSV quoting is honoured, so titles
        may hold commas and line breaks). ``sep`` overrides the detection. Or Parquet
        (``.parquet``/``.pq``, needs pyarrow), whose column names are the header.

    Columns
        The first row is a header when a field is a known column name (id: ``movieId``,
        ``item_id``, ``item``, ``id`` ...; name: ``title``, ``name``, ``item_name``,
        ``movie_title``, ``product_name`` ...), when ``id_col``/``name_col`` names a
        column, or when its id field is not an integer while the next row's is. With a
        header the columns are found by those names (a two-column file needs none);
        without one the id is the first column and the name the second.
        ``id_col``/``name_col`` name a column by header name or 0-based position.

    Ids
        Read as text, like the ratings' ids, and looked up in ``item_map``: an integer
        map also matches zero-padded ids (``"0114709"`` is item 114709), a string map
        matches the text exactly. Rows with ids the map lacks are ignored and counted; a
        later row for the same id replaces an earlier one, and rows that change a name
        so are counted (``n_renamed``; ``train`` prints them). Names are stripped; an
        empty name counts as none.

    Parameters
    ----------
    path : str or Path
        The names file.
    item_map : IdMap
        The model's item ids (``Ratings.item_map`` or ``Checkpoint.item_map``).
    id_col, name_col : str or int, optional
        The id and name columns (header name or 0-based position).
    sep : str, optional
        Field separator (``"tab"``/``"\\t"`` for a tab; multi-character allowed).

    Returns
    -------
    ItemNames
        ``names`` (one per item index, None where missing) and the counts.

    Raises
    ------
    DataError
        Missing, empty or binary file; no separator; fewer than two columns; a column
        that is not found or out of range; the same column for id and name; an empty id.
    """
    ids, names = read_item_table(path, id_col=id_col, name_col=name_col, sep=sep)
    return align_item_names(ids, names, item_map, str(path))


def read_item_table(
    path: str | Path,
    *,
    id_col: str | int | None = None,
    name_col: str | int | None = None,
    sep: str | None = None,
) -> tuple[np.ndarray, list[str | None]]:
    """The ids and names of a names file, in file order (see :func:`read_item_names`).

    Returns
    -------
    (np.ndarray, list)
        Raw ids (int64, or object array of str) and one name (None if empty) per row.
    """
    name = str(path)
    raw = read_file(path, "a names file (item ids and names, e.g. movies.csv)")
    if is_parquet(path, raw):
        src = parquet_source(name, raw, "a names file needs an id column and a name column")
        header: list[str] | None = src.header
    else:
        src = _text_names(name, raw, sep, [id_col, name_col])
        header = src.header
    columns = src.columns
    ncols = len(columns)
    id_pos, name_pos = (
        None if arg is None else column_arg(name, _FLAGS[role], arg, header, ncols)
        for role, arg in (("id", id_col), ("name", name_col))
    )
    if id_pos is None:
        id_pos = _detect(_ID_COLUMNS, name_pos, header, ncols)
    if name_pos is None:
        name_pos = _detect(_NAME_COLUMNS, id_pos, header, ncols)
    for role, pos in (("id", id_pos), ("name", name_pos)):
        if pos is None:
            raise DataError(
                f"{name}: no item {role} column; columns found: {', '.join(header or [])}. "
                f"Name it with {_FLAGS[role]} (header name or 0-based number)"
            )
    assert id_pos is not None and name_pos is not None  # for the type checker: raised above
    if id_pos == name_pos:
        raise DataError(
            f"{name}: the item id and name columns must differ (both are column {id_pos}); "
            "check --item-id-col and --item-name-col"
        )
    ids = parse_ids(src, columns[id_pos], "item")
    return ids, [t.strip() or None for t in as_text(columns[name_pos]).tolist()]


def align_item_names(ids: Any, names: Any, item_map: IdMap, source: str) -> ItemNames:
    """Names given by raw id, in ``item_map``'s index order (``names[i]`` of item ``i``).

    Parameters
    ----------
    ids : sequence
        Raw item ids, looked up with :meth:`IdMap.to_index` (an int map matches
        ``"0114709"`` and ``114709.0``; a str map the text exactly).
    names : sequence of str or None
        One name per id; ``""`` and None mean none.
    item_map : IdMap
        The model's items.
    source : str
        Where the names come from, for :meth:`ItemNames.summary`.

    Returns
    -------
    ItemNames
        Ids the map lacks are ignored and counted; a later name for the same item
        replaces an earlier one and is counted when it differs.

    Raises
    ------
    UnknownIdError
        An id that is not an id at all (None, NaN, a boolean).
    """
    texts = list(names)
    if len(texts) != len(ids):
        raise DataError(f"{source}: {len(ids)} item ids but {len(texts)} names")
    bad = next((t for t in texts if t is not None and not isinstance(t, str)), None)
    if bad is not None:
        raise DataError(f"{source}: item names must be strings or None, got {bad!r}")
    index = item_map.to_index(ids, missing=-1) if len(texts) else np.zeros(0, np.int64)
    out: list[str | None] = [None] * len(item_map)
    repeated: list[Any] = []
    for j, (i, title) in enumerate(zip(index.tolist(), texts)):
        if i >= 0:
            if out[i] is not None and out[i] != (title or None):
                repeated.append(py_value(ids[j]))
            out[i] = title or None
    unknown = np.flatnonzero(index < 0)
    return ItemNames(
        names=out,
        source=source,
        n_rows=len(texts),
        n_unknown=int(unknown.size),
        unknown_examples=[py_value(ids[j]) for j in unknown[:_MAX_EXAMPLES]],
        n_renamed=len(repeated),
        renamed_examples=repeated[:_MAX_EXAMPLES],
    )


def _text_names(name: str, raw: bytes, sep: str | None, col_args: list[Any]) -> Source:
    """The columns of a text names file, header detected (see :func:`read_item_names`)."""
    text = decode_text(name, raw, fallback="latin-1") if raw else ""
    if not text.strip():
        raise DataError(f"{name}: the file is empty; expected rows of item id and name")
    sep = normalize_sep(sep) if sep is not None else _sniff(name, text)
    columns, line_of = split_table(name, text, sep)
    if len(columns) < 2:
        raise DataError(
            f"{name}: line {line_of(0)}: found 1 column when splitting on {sep_name(sep)}; "
            "a names file needs an id column and a name column (e.g. 'movieId,title')"
        )
    first = [str(c[0]).strip() for c in columns]
    second = [str(c[1]).strip() for c in columns] if len(columns[0]) > 1 else None
    header = first if _looks_like_header(first, second, col_args) else None
    offset = 1 if header is not None else 0
    if header is not None:
        columns = [c[1:] for c in columns]
        if len(columns[0]) == 0:
            raise DataError(f"{name}: has a header ({', '.join(header)}) but no rows")
    return Source(name, columns, header, lambda row: f"line {line_of(row + offset)}")
