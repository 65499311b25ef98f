"""The bundle's files: what the writer and the reader share below the manifest.

File hashing, the open descriptors of a loaded bundle (:class:`OpenFiles`), safe
bundle-relative names, JSON encoding, reading the manifest's JSON, and the checks of
the seen-items CSR and the item names. Torch-free: the standard library, numpy and
``recsys_export.errors`` only.
"""

from __future__ import annotations

import hashlib
import json
import os
import stat
import weakref
from collections.abc import Mapping
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Any

import numpy as np

from recsys_export.bundle.schema.contract import FORMAT_NAME, MANIFEST_NAME
from recsys_export.errors import BundleError

__all__ = [
    "OpenFiles",
    "enclosing_bundle",
    "nested_bundles",
    "check_item_names",
    "check_seen_csr",
    "sha256_file",
]

_BLOCK = 1 << 20  # 1 MiB


# ---------------------------------------------------------------------- helpers
def sha256_file(path: str | os.PathLike[str] | int) -> str:
    """Hex sha256 of a file, read in 1 MiB blocks (constant memory).

    Parameters
    ----------
    path : str, path-like or int
        The file to hash, or an open file descriptor (read from offset 0 with
        ``pread``: its position is not used, so threads may share it).

    Returns
    -------
    str
        64 lowercase hex digits.
    """
    digest = hashlib.sha256()
    if isinstance(path, int):
        offset = 0
        while block := os.pread(path, _BLOCK, offset):
            digest.update(block)
            offset += len(block)
        return digest.hexdigest()
    buf = bytearray(_BLOCK)
    view = memoryview(buf)
    with open(path, "rb", buffering=0) as fh:
        while True:
            n = fh.readinto(buf)
            if not n:
                break
            digest.update(view[:n])
    return digest.hexdigest()


class OpenFiles:
    """Open descriptors of a loaded bundle's files: what was checked is what is read.

    Files are opened relative to one descriptor of the bundle directory, so they all
    come from the directory that was loaded even if ``export --force`` swaps another
    one in meanwhile; reads use ``pread`` on the kept descriptors, so a bundle replaced
    (and deleted) after loading is still read whole, as it was: the old bundle's disk
    space is freed when the last reader closes it. Closed by :meth:`close`, or when
    the object is garbage-collected.

    Raises
    ------
    BundleError
        From every method, when a file cannot be opened or read (permissions, ...).
    """

    def __init__(self, root: Path) -> None:
        self.root = root
        self._fds: dict[str, int] = {}
        self._dir: int | None = None
        self._closer = weakref.finalize(self, _close_fds, self._fds)
        if os.open in os.supports_dir_fd and hasattr(os, "O_DIRECTORY"):
            try:
                self._dir = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
            except OSError as exc:
                raise self.unreadable("the bundle directory", exc) from None

    def unreadable(self, what: str, exc: OSError) -> BundleError:
        """The one-line error of a bundle file that cannot be opened or read."""
        return BundleError(
            f"bundle {self.root}: cannot read {what}: {exc.strerror or exc}; make it "
            "readable or export the bundle again"
        )

    def dir_stat(self) -> os.stat_result | None:
        """``fstat`` of the directory the files are opened from (None off POSIX)."""
        return None if self._dir is None else os.fstat(self._dir)

    def open(self, rel: str) -> int:
        """Open ``rel`` (relative to the bundle directory) and keep its descriptor."""
        if rel not in self._fds:
            # O_NONBLOCK: a FIFO put in a file's place must not block the open
            flags = os.O_RDONLY | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_NONBLOCK", 0)
            try:
                if self._dir is None:
                    fd = os.open(self.root / rel, flags)
                else:
                    fd = os.open(rel, flags, dir_fd=self._dir)
            except OSError as exc:
                raise self.unreadable(repr(rel), exc) from None
            self._fds[rel] = fd
        return self._fds[rel]

    def done_opening(self) -> None:
        """Close the directory descriptor: every file is open now."""
        if self._dir is not None:
            os.close(self._dir)
            self._dir = None

    def fd(self, rel: str) -> int:
        """The kept descriptor of ``rel``."""
        try:
            return self._fds[rel]
        except KeyError:
            raise BundleError(
                f"bundle {self.root}: {rel!r} is not open (the bundle was closed); load it again"
            ) from None

    def read(self, rel: str) -> bytes:
        """The whole content of ``rel``, from the file that was loaded."""
        fd = self.fd(rel)
        parts, offset = [], 0
        try:
            size = os.fstat(fd).st_size
            while offset < size:
                part = os.pread(fd, min(size - offset, 1 << 28), offset)
                if not part:
                    break
                parts.append(part)
                offset += len(part)
        except OSError as exc:
            raise self.unreadable(repr(rel), exc) from None
        return parts[0] if len(parts) == 1 else b"".join(parts)

    def close(self) -> None:
        """Close every descriptor (reads then raise :class:`BundleError`)."""
        self.done_opening()
        _close_fds(self._fds)


def _close_fds(fds: dict[str, int]) -> None:
    for fd in fds.values():
        try:
            os.close(fd)
        except OSError:
            pass
    fds.clear()


def _unsafe_reason(rel: object) -> str | None:
    """Why ``rel`` is not a safe bundle-relative file name, or None if it is."""
    if not isinstance(rel, str):
        return f"not a string but {type(rel).__name__}"
    if not rel:
        return "empty name"
    if "\x00" in rel:
        return "contains a NUL byte"
    if "\\" in rel:
        return "contains a backslash (use '/' as separator)"
    if PurePosixPath(rel).is_absolute() or PureWindowsPath(rel).drive:
        return "absolute path"
    parts = rel.split("/")
    if ".." in parts:
        return "contains '..'"
    if any(p in ("", ".") for p in parts):
        return "not a normalised relative path (empty or '.' component)"
    return None


def check_rel(rel: object, what: str) -> str:
    reason = _unsafe_reason(rel)
    if reason is not None:
        raise BundleError(
            f"{what}: unsafe file name {rel!r} ({reason}); bundle file names must be "
            "relative paths like 'onnx/score.onnx' that stay inside the bundle"
        )
    assert isinstance(rel, str)
    return rel


def _json_default(obj: Any) -> Any:
    """Let numpy scalars/arrays and paths through ``json.dumps``."""
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    raise TypeError(f"Object of type {type(obj).__name__} is not JSON serializable")


def dumps_json(obj: Any, what: str) -> str:
    try:
        return json.dumps(obj, indent=2, sort_keys=True, allow_nan=False, default=_json_default)
    except ValueError as exc:  # NaN / inf, circular reference
        raise BundleError(
            f"cannot write {what}: {exc}; JSON has no NaN/Infinity, replace non-finite "
            "values (e.g. by None) before exporting"
        ) from None
    except TypeError as exc:
        raise BundleError(
            f"cannot write {what}: {exc}; only JSON types, numpy scalars/arrays and paths "
            "can be stored"
        ) from None


def enclosing_bundle(path: Path) -> Path | None:
    """The bundle directory ``path`` lies in (itself or an ancestor), or None."""
    for parent in (path, *path.parents):
        manifest = parent / MANIFEST_NAME
        try:
            if manifest.is_file() and FORMAT_NAME in manifest.read_text(encoding="utf-8"):
                return parent
        except (OSError, UnicodeDecodeError):
            continue
    return None


def read_manifest(root: Path, opened: OpenFiles) -> Any:
    """The JSON of the bundle's manifest, read from the opened directory (its keys are
    :class:`~recsys_export.bundle.schema.Manifest`'s to check)."""
    where = f"bundle {root}"
    mpath = root / MANIFEST_NAME
    if not mpath.is_file():
        raise BundleError(
            f"{root} is not a recsys-export bundle: it has no {MANIFEST_NAME} (a partially "
            "written or interrupted export has none); export the model again"
        )
    if not mpath.resolve().is_relative_to(root.resolve()):
        raise BundleError(f"{where}: {MANIFEST_NAME} is a symlink leaving the bundle")
    opened.open(MANIFEST_NAME)
    try:
        return json.loads(opened.read(MANIFEST_NAME).decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BundleError(
            f"{where}: {MANIFEST_NAME} is not valid JSON ({exc}); the bundle is corrupted, "
            "export it again"
        ) from None


def open_files(root: Path, sizes: Mapping[str, int], opened: OpenFiles) -> None:
    """Check every listed file's name, place and size (rel -> bytes), and open it (the
    cheap pass)."""
    where = f"bundle {root}"
    real_root = root.resolve()
    for rel, size in sizes.items():
        check_rel(rel, where)
        if rel == MANIFEST_NAME:
            raise BundleError(f"{where}: {MANIFEST_NAME} cannot list itself")
        full = (root / rel).resolve()
        if not full.is_relative_to(real_root):
            raise BundleError(
                f"{where}: file {rel!r} resolves to {full}, outside the bundle (a symlink "
                "leaving the bundle); refusing to load it"
            )
        if not full.exists():
            raise BundleError(
                f"{where}: file {rel!r} is missing; the bundle is incomplete, export it again"
            )
        if not full.is_file():
            raise BundleError(f"{where}: {rel!r} is not a regular file")
        st = os.fstat(opened.open(rel))
        if not stat.S_ISREG(st.st_mode):
            raise BundleError(f"{where}: {rel!r} is not a regular file")
        if st.st_size != size:
            state = "truncated" if st.st_size < size else "altered (it grew)"
            raise BundleError(
                f"{where}: file {rel!r} is {state}: {st.st_size} bytes, the manifest records "
                f"{size}; export the bundle again"
            )


def nested_bundles(root: Path) -> list[Path]:
    """Bundles inside the directory ``root`` (at any depth, ``root`` itself excluded)."""
    found = []
    for dirpath, dirnames, filenames in os.walk(root):
        if dirpath != os.fspath(root) and MANIFEST_NAME in filenames:
            if enclosing_bundle(Path(dirpath)) == Path(dirpath):
                found.append(Path(dirpath))
                dirnames.clear()
    return found


def is_bundle_like(path: Path) -> bool:
    """A directory that may be replaced by ``overwrite``: empty, or holding a manifest."""
    try:
        return (path / MANIFEST_NAME).is_file() or not any(path.iterdir())
    except OSError:
        return False


def check_seen_csr(
    indptr: Any, items: Any, n_users: int, n_items: int, where: str
) -> tuple[np.ndarray, np.ndarray]:
    """Validate a seen-items CSR against the model's sizes; ``(indptr, items)`` as int64.

    Raises
    ------
    BundleError
        A CSR that does not fit the model (e.g. an item index out of range in a
        re-signed file), prefixed with ``where``.
    """
    indptr = np.asarray(indptr).reshape(-1)
    items = np.asarray(items).reshape(-1)
    if not (
        np.issubdtype(indptr.dtype, np.integer)
        and (items.size == 0 or np.issubdtype(items.dtype, np.integer))
    ):
        raise BundleError(f"{where}: the seen-items CSR is not integer; export it again")
    indptr, items = indptr.astype(np.int64), items.astype(np.int64)
    if (
        len(indptr) != n_users + 1
        or indptr[0] != 0
        or indptr[-1] != len(items)
        or np.any(np.diff(indptr) < 0)
        or (items.size and (items.min() < 0 or items.max() >= n_items))
    ):
        raise BundleError(
            f"{where}: the seen-items CSR is malformed (it must hold {n_users} users' item "
            f"indices in 0..{n_items - 1}); export it again"
        )
    return indptr, items


def check_item_names(obj: Any, n_items: int) -> list[str | None]:
    """Validate stored names: a list of ``n_items`` entries, each a string or None.

    Parameters
    ----------
    obj : Any
        What a checkpoint or bundle holds.
    n_items : int
        Number of items of the model.

    Returns
    -------
    list of str or None
        A new list of plain ``str`` (numpy strings converted) and None.

    Raises
    ------
    ValueError
        Saying what is wrong; callers wrap it in their own error with the file name.
    """
    if not isinstance(obj, list):
        raise ValueError(f"item names must be a list, got {type(obj).__name__}")
    if len(obj) != n_items:
        raise ValueError(f"{len(obj)} item names for a model of {n_items} items")
    bad = next((v for v in obj if v is not None and not isinstance(v, str)), None)
    if bad is not None:
        raise ValueError(f"item names must be strings or null, found {type(bad).__name__}")
    return [None if v is None else str(v) for v in obj]
