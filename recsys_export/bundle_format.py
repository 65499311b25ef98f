"""The bundle format's constants and helpers shared by the writer and the reader.

Format name and version, the manifest's file name and reserved keys, file hashing,
safe bundle-relative names, JSON encoding, and the seen-items CSR reader. Torch-free:
the standard library, numpy and ``recsys_export.errors`` only.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Any

import numpy as np

from recsys_export.errors import BundleError

__all__ = [
    "FORMAT_NAME",
    "FORMAT_VERSION",
    "MANIFEST_NAME",
    "RESERVED_KEYS",
    "enclosing_bundle",
    "read_seen_csr",
    "sha256_file",
]

FORMAT_NAME = "recsys-export-bundle"
FORMAT_VERSION = 1
MANIFEST_NAME = "manifest.json"

#: Manifest keys filled by :meth:`BundleWriter.commit`; callers cannot set them.
RESERVED_KEYS = frozenset({"format", "format_version", "created", "id_maps", "files"})

_BLOCK = 1 << 20  # 1 MiB
_HEX64 = re.compile(r"[0-9a-f]{64}")
_ID_MAP_FILES = {"users": "ids/users.json", "items": "ids/items.json"}
_ID_MAP_NAMES = {"users": "user", "items": "item"}


# ---------------------------------------------------------------------- helpers
def sha256_file(path: str | os.PathLike[str]) -> str:
    """Hex sha256 of a file, read in 1 MiB blocks (constant memory).

    Parameters
    ----------
    path : str or path-like
        The file to hash.

    Returns
    -------
    str
        64 lowercase hex digits.
    """
    digest = hashlib.sha256()
    buf = bytearray(_BLOCK)
    view = memoryview(buf)
    with open(path, "rb", buffering=0) as fh:
        while True:
            n = fh.readinto(buf)
            if not n:
                break
            digest.update(view[:n])
    return digest.hexdigest()


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


def _check_rel(rel: object, what: str) -> str:
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


def _dumps(obj: Any, what: str) -> str:
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


def _is_bundle_like(path: Path) -> bool:
    """A directory that may be replaced by ``overwrite``: empty, or holding a manifest."""
    try:
        return (path / MANIFEST_NAME).is_file() or not any(path.iterdir())
    except OSError:
        return False


def read_seen_csr(
    root: Path, seen: Any, n_users: int, n_items: int
) -> tuple[np.ndarray, np.ndarray]:
    """Read and validate a bundle's seen-items CSR (``manifest["seen"]``).

    Parameters
    ----------
    root : Path
        The bundle directory.
    seen : dict
        ``{"indptr": rel, "items": rel}``.
    n_users, n_items : int
        The model's sizes: ``indptr`` has ``n_users + 1`` entries, items lie in
        ``0 .. n_items - 1``.

    Returns
    -------
    (indptr, items) : int64 arrays

    Raises
    ------
    BundleError
        Unreadable files, or a CSR that does not fit the model (e.g. an item index out
        of range in a re-signed file).
    """
    where = f"bundle {root}"
    try:
        indptr = np.load(root / _check_rel(seen["indptr"], where), allow_pickle=False)
        items = np.load(root / _check_rel(seen["items"], where), allow_pickle=False)
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise BundleError(f"{where}: cannot read the seen items ({exc})") from None
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
