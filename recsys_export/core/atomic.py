"""Atomic writes: a hidden temporary sibling, then one rename into place.

Every file or directory this project writes (bundles, checkpoints, score matrices,
top-k files, Ray part files, ``_SUCCESS``) is written under one temporary-name scheme,
``.{name}.partial-{pid}-{hex}`` (:func:`temp_sibling`), beside its final path, and renamed
into place only when complete: a killed run leaves no file at the final path, and
:func:`stale_temporaries` finds what killed runs left behind (:func:`remove_stale`
removes them: every writer calls it first, before it checks or refuses anything). A
path that appeared while the output was being written is never replaced unless the
caller allows it (:func:`rename_noreplace`: ``renameat2(RENAME_NOREPLACE)``, else a hard
link then an unlink). :func:`writing` is :func:`replacing` for the files a user asked
for, with its failures (a full disk, a file-size limit, a path that appeared) as one
project error. Standard library and :mod:`recsys_export.errors` only.
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

from recsys_export.errors import ConfigError, RecsysExportError

__all__ = [
    "TEMP_KIND",
    "AppearedError",
    "fsync_dir",
    "fsync_file",
    "remove_path",
    "remove_stale",
    "rename_noreplace",
    "renameat2",
    "replacing",
    "reserve_space",
    "stale_temporaries",
    "temp_sibling",
    "write_text_atomic",
    "writing",
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
    """Remove a file or a directory tree; missing paths and errors are ignored.

    A tree holding read-only directories (``chmod -R a-w``) is made writable first, so
    that nothing is left behind where the owner may delete it.
    """
    if os.path.isdir(path) and not os.path.islink(path):
        if sys.version_info >= (3, 12):
            shutil.rmtree(path, onexc=_writable_then_retry)
        else:
            shutil.rmtree(path, onerror=_writable_then_retry)
        return
    try:
        os.unlink(path)
    except OSError:
        pass


def _writable_then_retry(func: Any, path: str, _exc: Any) -> None:
    """``shutil.rmtree`` error handler: give the parent directory write permission, retry
    the removal (other failures are ignored, as ``ignore_errors`` would)."""
    if func not in (os.rmdir, os.unlink, os.remove):
        return
    try:
        parent = os.path.dirname(path)
        os.chmod(parent, os.stat(parent).st_mode | 0o700)
        func(path)
    except OSError:
        pass


class AppearedError(FileExistsError):
    """The final path of an output appeared while the output was being written."""


def rename_noreplace(src: str | os.PathLike[str], dst: str | os.PathLike[str]) -> None:
    """Rename ``src`` to ``dst`` unless ``dst`` exists: never replaces anything.

    Linux ``renameat2(RENAME_NOREPLACE)`` where the kernel and file system have it;
    otherwise a hard link then an unlink of ``src`` for files (``link`` fails if
    ``dst`` exists, atomically); otherwise (directories, file systems without hard
    links) an existence check then a rename, which a path created in between can still
    lose to: the best the platform offers.

    Raises
    ------
    AppearedError
        ``dst`` exists (``src`` is left in place for the caller to remove).
    OSError
        Any other failure.
    """
    src, dst = os.fspath(src), os.fspath(dst)
    try:
        renameat2(Path(src), Path(dst), RENAME_NOREPLACE)
        return
    except OSError as exc:
        if exc.errno == errno.EEXIST:
            raise AppearedError(errno.EEXIST, "exists", dst) from None
        if exc.errno not in UNSUPPORTED_ERRNOS:
            raise
    if not os.path.isdir(src) or os.path.islink(src):
        try:
            os.link(src, dst, follow_symlinks=False)
        except FileExistsError:
            raise AppearedError(errno.EEXIST, "exists", dst) from None
        except OSError as exc:
            if exc.errno not in UNSUPPORTED_ERRNOS | {errno.EPERM, errno.EXDEV, errno.EMLINK}:
                raise
        else:
            os.unlink(src)
            return
    if os.path.lexists(dst):
        raise AppearedError(errno.EEXIST, "exists", dst)
    os.rename(src, dst)


def remove_stale(path: str | os.PathLike[str], kinds: str = TEMP_KIND) -> None:
    """Remove the temporaries of ``path`` that killed runs left (:func:`stale_temporaries`).

    Every writer calls it as soon as it knows its final path, before it checks or
    refuses anything, so a rerun cleans up after ``kill -9`` even when it stops at a
    refusal. An ``old`` directory (a bundle swap interrupted between its two renames,
    where renameat2 is missing) is the only copy of the previous bundle while ``path``
    is absent: it is then left for the user to recover.
    """
    dest = Path(os.path.abspath(os.fspath(path)))
    for entry, kind in stale_temporaries(dest, kinds):
        if kind == "old" and not os.path.lexists(dest):
            continue
        remove_path(entry.path)


@contextlib.contextmanager
def replacing(path: str | os.PathLike[str], *, overwrite: bool = True) -> Iterator[Path]:
    """Yield a :func:`temp_sibling` of ``path``; rename it onto ``path`` on success.

    The body writes the temporary (a file, or a directory it creates) and closes it. On
    normal exit it is renamed onto ``path``: replacing what is there with
    ``overwrite`` (``os.replace``), else never (:func:`rename_noreplace`: a path that
    appeared while the body ran raises :class:`AppearedError`). On any exception (Ctrl-C
    too) the temporary is removed and the exception propagates.

    Examples
    --------
    >>> with replacing(out, overwrite=False) as tmp:  # doctest: +SKIP
    ...     tmp.write_bytes(data)
    """
    final = Path(path)
    tmp = temp_sibling(final)
    try:
        yield tmp
        if overwrite:
            os.replace(tmp, final)
        else:
            rename_noreplace(tmp, final)
    except BaseException:
        remove_path(tmp)
        raise


@contextlib.contextmanager
def writing(
    path: str | os.PathLike[str],
    *,
    overwrite: bool,
    error: type[RecsysExportError] = ConfigError,
) -> Iterator[Path]:
    """:func:`replacing` for an output the user asked for, its failures as one ``error``.

    A failed write (a full disk, a file-size limit, permissions) and, without
    ``overwrite``, a path that appeared meanwhile both raise ``error`` with a one-line
    message; the temporary is removed and ``path`` is left as it was.

    Raises
    ------
    RecsysExportError
        ``error`` (default :class:`~recsys_export.errors.ConfigError`), as above.
    """
    try:
        with replacing(path, overwrite=overwrite) as tmp:
            yield tmp
    except AppearedError:
        raise error(
            f"{path} appeared while it was being written (another process created it) and "
            "was left as it is; pass --force (overwrite=True) to replace it, or choose "
            "another path"
        ) from None
    except OSError as exc:
        reason = os.strerror(exc.errno) if exc.errno else str(exc)
        raise error(f"cannot write {path}: {reason}; nothing was written") from None


def reserve_space(path: Path, nbytes: int) -> None:
    """Allocate the blocks of the first ``nbytes`` of ``path`` (a sparse file) now.

    A memory-mapped write into a hole the disk has no room for kills the process with
    ``SIGBUS``; reserved blocks cannot fail that way. ``posix_fallocate`` where the
    platform and file system have it, else zeros written block by block.

    Raises
    ------
    OSError
        ``ENOSPC`` (no space), ``EFBIG`` (a file-size limit), ``EDQUOT`` (quota), ...
    """
    fd = os.open(path, os.O_RDWR)
    try:
        try:
            os.posix_fallocate(fd, 0, nbytes)
            return
        except AttributeError:  # no posix_fallocate on this platform
            pass
        except OSError as exc:
            if exc.errno not in (errno.EINVAL, errno.EOPNOTSUPP, errno.ENOSYS):
                raise
        block = bytes(1 << 20)
        for start in range(0, nbytes, len(block)):
            os.pwrite(fd, block[: min(len(block), nbytes - start)], start)
    finally:
        os.close(fd)


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
