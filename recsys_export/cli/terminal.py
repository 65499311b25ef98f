"""Text the CLI prints, made safe for a terminal.

Item names, raw ids and anything else read from a file or a bundle are user-controlled:
a title holding ``ESC ] 0;... BEL`` would retitle the terminal, ``ESC [ 2J`` clear it, a
right-to-left override reorder what follows. Human-readable output (tables, summary
lines, error messages) therefore shows every control character as an escape
(``\\x1b``, ``\\u202e``), on a terminal or not: the same text whether it goes to a
screen, a pipe or a file (a file is often ``cat``-ed later). ``--json`` output is
``json.dumps`` with its default ``ensure_ascii``, which escapes control characters
itself, so it stays valid JSON and holds the exact values; data files (``.csv``,
``.parquet``) hold the exact values too.
"""

from __future__ import annotations

import io
import unicodedata
from typing import Any, TextIO

#: Format characters that reorder or hide text (bidirectional controls), escaped like
#: the C0/C1 controls; other format characters (the zero-width joiner of emoji
#: sequences, soft hyphens) are harmless and printed as they are.
_BIDI = frozenset("\u061c\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")


_NAMED = {"\t": "\\t", "\n": "\\n", "\r": "\\r"}


def _escape(c: str) -> str:
    if c in _NAMED:
        return _NAMED[c]
    code = ord(c)
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def safe_text(value: Any, keep: str = "") -> str:
    """``str(value)`` with control characters escaped for printing.

    Escaped: C0 controls (tab and newline included, so that one value stays on one line,
    unless ``keep`` names them), DEL, C1 controls (``\x9b`` is a one-byte CSI on some
    terminals), the line and paragraph separators and the bidirectional controls.
    Printable text (accents, CJK, emoji) is unchanged.

    Parameters
    ----------
    value : Any
        A name, an id, a message.
    keep : str
        Control characters to leave as they are (``"\n\t"`` for whole lines of output).

    Returns
    -------
    str
    """
    text = str(value)
    if text.isprintable():  # the common case: nothing to escape
        return text
    return "".join(
        _escape(c)
        if c not in keep and (c in _BIDI or unicodedata.category(c) in ("Cc", "Zl", "Zp"))
        else c
        for c in text
    )


class SafeStdout(io.TextIOBase):
    """A text stream that writes through to ``stream`` with :func:`safe_text` applied
    (newlines and tabs kept): ``main`` prints every command's output through it, so no
    value reaches the terminal raw, whatever code path printed it."""

    def __init__(self, stream: TextIO) -> None:
        self._stream = stream

    def write(self, text: str) -> int:
        self._stream.write(safe_text(text, keep="\n\t"))
        return len(text)

    def flush(self) -> None:
        self._stream.flush()

    def isatty(self) -> bool:
        return self._stream.isatty()

    def fileno(self) -> int:
        return self._stream.fileno()

    @property
    def encoding(self) -> str:  # type: ignore[override]
        return getattr(self._stream, "encoding", "utf-8")
