"""Text ratings files: decoding (UTF-8, UTF-16, gzip), separators and splitting rows.

pandas is imported lazily inside :func:`split_table`, so importing this module stays
cheap. Every problem raises :class:`~recsys_export.errors.DataError` naming the file and,
where there is one, the line.
"""

from __future__ import annotations

import csv
import gzip
import io
import itertools
import re
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np

from recsys_export.errors import DataError

_SEP_ALIASES = {"tab": "\t", "\\t": "\t", "space": r"\s+", "whitespace": r"\s+"}
_MAX_SHOWN_CHARS = 40


def show_value(value: Any) -> str:
    """``repr`` of ``str(value)`` cut to 40 characters, for messages."""
    s = str(value)
    if len(s) > _MAX_SHOWN_CHARS:
        s = s[:_MAX_SHOWN_CHARS] + "..."
    return repr(s)


def is_number(s: str) -> bool:
    """Whether ``float(s)`` accepts ``s``."""
    try:
        float(s)
    except ValueError:
        return False
    return True


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


def decode_text(name: str, raw: bytes, *, fallback: str | None = None) -> str:
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


def _lines(text: str) -> Iterator[str]:
    """The lines of ``text`` with their line breaks, lazily (for ``csv.reader``)."""
    start = 0
    while start < len(text):
        end = text.find("\n", start)
        if end < 0:
            yield text[start:]
            return
        yield text[start : end + 1]
        start = end + 1


def _blank(record: list[str]) -> bool:
    return not record or (len(record) == 1 and record[0].strip(" \r\x0b\x0c") == "")


def records(text: str, sep: str, limit: int | None = None) -> Iterator[tuple[int, list[str]]]:
    """``(first line, fields)`` of the non-blank records of ``text`` split on the
    one-character ``sep``, honouring CSV quotes (a quoted field may hold ``sep`` and
    line breaks, so a record may span lines); at most ``limit`` records."""
    reader = csv.reader(_lines(text), delimiter=sep)
    n, line = 0, 1
    try:
        for record in reader:
            if not _blank(record):
                yield line, record
                n += 1
                if limit is not None and n >= limit:
                    return
            line = reader.line_num + 1
    except csv.Error:  # a NUL or the like: the table parser reports it
        return


def sniff_sep(name: str, text: str) -> str:
    r"""The field separator of the first 20 non-blank records of ``text``.

    Quoted fields (which may hold a separator or a line break) are honoured. When no
    separator splits every record but one splits most of them, the message names the
    first record it does not split (rows with mixed separators).

    Returns
    -------
    str
        ``"::"``, a tab, ``,``, ``;``, ``|`` or ``r"\s+"`` (runs of whitespace).

    Raises
    ------
    DataError
        Only blank lines, or no separator that gives 2 or more columns.
    """
    lines = []
    for line in itertools.islice(_lines(text), 100):
        if line.strip():
            lines.append(line.rstrip("\r\n"))
            if len(lines) >= 20:
                break
    if not lines:
        raise DataError(f"{name}: the file is empty (only blank lines); expected rating rows")
    if all(line.count("::") >= 1 for line in lines):
        return "::"
    best, best_min, most, most_split = None, 0, None, 0
    for cand in ("\t", ",", ";", "|"):
        heads = list(records(text, cand, limit=20))
        counts = [len(fields) - 1 for _, fields in heads]
        if counts and min(counts) > best_min:
            best, best_min = cand, min(counts)
        n_split = sum(c > 0 for c in counts)
        if n_split > most_split:
            most, most_split = (cand, heads), n_split
    if best is not None:
        return best
    if all(len(line.split()) >= 3 for line in lines):
        return r"\s+"
    if most is not None and most_split >= 2:  # rows with mixed separators
        cand, heads = most
        line_no, fields = next((ln, f) for ln, f in heads if len(f) < 2)
        other = next(ln for ln, f in heads if len(f) >= 2)
        raise DataError(
            f"{name}: line {line_no}: no {sep_name(cand)} in {show_value(fields[0])}, while "
            f"line {other} and others are separated by {sep_name(cand)}; every row must use "
            "the same separator (fix the row, or pass the separator with --sep)"
        )
    raise DataError(
        f"{name}: line 1: cannot find a field separator (no ',', ';', '|', tab or '::' "
        f"separating 2 or more columns in {show_value(lines[0])}); a ratings file needs at least "
        "2 columns (user, item), usually 3 (user, item, rating): pass the separator with --sep"
    )


def sep_name(sep: str) -> str:
    """How messages name a separator (``tab``, ``whitespace`` or its repr)."""
    return {"\t": "tab", r"\s+": "whitespace"}.get(sep, repr(sep))


def normalize_sep(sep: str) -> str:
    """A ``--sep`` value with its aliases resolved (``tab``, ``space``, ...)."""
    if not isinstance(sep, str) or sep == "":
        raise DataError(f"sep must be a non-empty string, got {sep!r}")
    return _SEP_ALIASES.get(sep.lower(), sep)


def split_table(name: str, text: str, sep: str) -> tuple[list[np.ndarray], Callable[[int], int]]:
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
            f"{sep_name(sep)} (pass --sep if the separator is wrong)"
        ) from None

    # map data-row numbers to 1-based file lines, lazily (only for messages)
    cache: dict[str, np.ndarray] = {}

    def line_of(row: int) -> int:
        if "lines" not in cache:
            if quoting == csv.QUOTE_MINIMAL and used_sep != r"\s+":  # records may span lines
                starts = [line for line, _ in records(text, used_sep)]
            else:
                starts = [
                    i + 1
                    for i, line in enumerate(text.split("\n"))
                    if line.strip(" \r\x0b\x0c") != ""
                ]
            cache["lines"] = np.asarray(starts, dtype=np.int64)
        lines = cache["lines"]
        return int(lines[row]) if row < len(lines) else row + 1

    return [df[c].to_numpy(dtype=object) for c in df.columns], line_of
