"""Atomic writes: a hidden temporary sibling, then one rename into place.

Every file or directory this project writes (bundles, checkpoints, score matrices,
top-k files, Ray part files, ``_SUCCESS``) is written under one temporary-name scheme,
``.{name}.partial-{pid}-{hex}`` (:func:`temp_sibling`), beside its final path, and renamed
into place only when complete: a killed run leaves no file at the final path, and
:func:`stale_temporaries` finds what killed runs left behind. Standard library only.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import re
import secrets
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

__all__ = [
    "TEMP_KIND",
    "fsync_dir",
    "fsync_file",
    "remove_path",
    "renameat2",
    "replacing",
    "stale_temporaries",
    "temp_sibling",
    "write_text_atomic",
]

#: The kind in the name of temporaries (``.{name}.partial-{pid}-{hex}``).
TEMP_KIND = "partial"

# renameat2(2) constants (Linux).
_AT_FDCWD = -100
RENAME_NOREPLACE = 1
RENAME_EXCHANGE = 2
#: errnos meaning "this kernel / filesystem / libc cannot do it": fall back to renames.
UNSUPPORTED_ERRNOS = {errno.EINVAL, errno.ENOSYS, getattr(errno, "EOPNOTSUPP", errno.EINVAL)}


def temp_sibling(path: str | os.PathLike[str], kind: str = TEMP_KIND) -> Path:
    """A fresh hidden sibling name of ``path``: ``.{name}.{kind}-{pid}-{hex}``.

    It does not end in the final extension: a killed run leaves nothing that looks
    complete. Nothing is created.

    Parameters
    ----------
    path : path-like
        The final path.
    kind : str
        ``"partial"`` (being written) or ``"old"`` (a replaced bundle being removed).

    Returns
    -------
    Path
    """
    path = Path(path)
    return path.with_name(f".{path.name}.{kind}-{os.getpid()}-{secrets.token_hex(4)}")


def remove_path(path: str | os.PathLike[str]) -> None:
    """Remove a file or a directory tree; missing paths and errors are ignored."""
    if os.path.isdir(path) and not os.path.islink(path):
        shutil.rmtree(path, ignore_errors=True)
        return
    try:
        os.unlink(path)
    except OSError:
        pass


@contextlib.contextmanager
def replacing(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a :func:`temp_sibling` of ``path``; rename it onto ``path`` on success.

    The body writes the temporary (a file, or a directory it creates) and closes it. On
    normal exit it replaces ``path`` (``os.replace``); on any exception (Ctrl-C too) the
    temporary is removed and the exception propagates.

    Examples
    --------
    >>> with replacing(out) as tmp:  # doctest: +SKIP
    ...     tmp.write_bytes(data)
    """
    final = Path(path)
    tmp = temp_sibling(final)
    try:
        yield tmp
        os.replace(tmp, final)
    except BaseException:
        remove_path(tmp)
        raise


def write_text_atomic(path: str | os.PathLike[str], text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` through a temporary sibling and a rename."""
    with replacing(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)


def fsync_file(path: str | os.PathLike[str]) -> None:
    """fsync a file's data."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_dir(path: str | os.PathLike[str]) -> None:
    """fsync a directory so that renames/creations in it are durable (no-op off POSIX)."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:  # some filesystems refuse fsync on directories
        pass
    finally:
        os.close(fd)


def _pid_alive(pid: int) -> bool:
    if pid <= 0:
        return True  # never treat nonsense as dead: leave such entries alone
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError, OverflowError):
        return True
    return True


def stale_temporaries(dest: Path, kinds: str = TEMP_KIND) -> list[tuple[os.DirEntry[str], str]]:
    """Hidden temporary siblings of ``dest`` left by processes that no longer run.

    They are named as :func:`temp_sibling` names them; entries of the calling process
    or of a live one are skipped.

    Parameters
    ----------
    dest : Path
        The final path the temporaries were for.
    kinds : str
        Regular-expression alternatives of the kind, e.g. ``"partial|old"``.

    Returns
    -------
    list of (os.DirEntry, str)
        The entries and their kind.
    """
    pattern = re.compile(rf"\.{re.escape(dest.name)}\.({kinds})-(\d+)-[0-9a-f]+")
    me = os.getpid()
    try:
        entries = list(os.scandir(dest.parent))
    except OSError:
        return []
    stale = []
    for entry in entries:
        m = pattern.fullmatch(entry.name)
        if m is None or int(m.group(2)) == me or _pid_alive(int(m.group(2))):
            continue
        stale.append((entry, m.group(1)))
    return stale


_LIBC_RENAMEAT2: Any = None
_LIBC_LOADED = False


def libc_renameat2() -> Any:
    """libc's ``renameat2`` (glibc >= 2.28), looked up once; None where unavailable."""
    global _LIBC_RENAMEAT2, _LIBC_LOADED
    if not _LIBC_LOADED:
        _LIBC_LOADED = True
        if sys.platform.startswith("linux"):
            try:
                func = ctypes.CDLL(None, use_errno=True).renameat2
            except (OSError, AttributeError):
                func = None
            if func is not None:
                func.argtypes = [
                    ctypes.c_int,
                    ctypes.c_char_p,
                    ctypes.c_int,
                    ctypes.c_char_p,
                    ctypes.c_uint,
                ]
                func.restype = ctypes.c_int
            _LIBC_RENAMEAT2 = func
    return _LIBC_RENAMEAT2


def renameat2(src: Path, dst: Path, flags: int) -> None:
    """Call Linux ``renameat2``; raise OSError (ENOSYS if there is no such call)."""
    func = libc_renameat2()
    if func is None:
        raise OSError(errno.ENOSYS, "renameat2 is not available on this platform")
    rc = func(_AT_FDCWD, os.fsencode(src), _AT_FDCWD, os.fsencode(dst), flags)
    if rc != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err), os.fspath(src), None, os.fspath(dst))
