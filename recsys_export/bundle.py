"""Bundles: directories of exported artifacts, written atomically and verified on load.

A bundle looks like::

    BUNDLE/
      manifest.json        # written last; lists every other file with role, sha256, size
      ids/users.json       # IdMap.to_json()
      ids/items.json
      onnx/score.onnx ...  # whatever else the exporter registered

This module owns the generic manifest keys (``format``, ``format_version``, ``created``,
``id_maps`` and ``files``); every other top-level key (``model``, ``entry_points``,
``parity``, ...) is passed through untouched.

Writing goes through :class:`BundleWriter` only: files are written into a hidden temporary
sibling directory, the manifest last, everything is fsynced, and the directory is then
moved into place with one atomic rename (or, when replacing a bundle, an atomic exchange
via Linux ``renameat2(RENAME_EXCHANGE)``). A reader therefore sees either the previous
bundle or the complete new one, also when the writing process is killed.

Loading (:meth:`Bundle.load`) checks the format version, that every listed file name
stays inside the bundle, and every file's size and sha256 before anything runs.

This module must stay torch-free: it imports only the standard library, numpy and
``recsys_export.errors`` / ``recsys_export.ids``.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import re
import shutil
from datetime import datetime, timezone
from pathlib import Path, PurePosixPath, PureWindowsPath
from types import TracebackType
from typing import Any

import numpy as np

from recsys_export.atomic import RENAME_EXCHANGE as _RENAME_EXCHANGE
from recsys_export.atomic import RENAME_NOREPLACE as _RENAME_NOREPLACE
from recsys_export.atomic import UNSUPPORTED_ERRNOS as _UNSUPPORTED
from recsys_export.atomic import fsync_dir as _fsync_dir
from recsys_export.atomic import fsync_file as _fsync_file
from recsys_export.atomic import renameat2 as _renameat2
from recsys_export.atomic import stale_temporaries, temp_sibling
from recsys_export.errors import BundleError
from recsys_export.ids import IdMap
from recsys_export.manifest import BundleSpec

__all__ = [
    "FORMAT_NAME",
    "FORMAT_VERSION",
    "MANIFEST_NAME",
    "Bundle",
    "BundleWriter",
    "enclosing_bundle",
    "read_seen_csr",
    "sha256_file",
    "stale_temporaries",
    "update_bundle",
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


# ---------------------------------------------------------------------- writing
class BundleWriter:
    """Write a bundle atomically; the only way bundles are written.

    Use as a context manager::

        with BundleWriter("out/bundle", overwrite=True) as w:
            w.write_id_maps(user_map, item_map)
            w.write_bytes("onnx/score.onnx", data, role="onnx:score")
            w.commit({"model": {...}})

    Everything is written into a hidden sibling directory
    ``.{name}.partial-{pid}-{random}``; :meth:`commit` writes ``manifest.json`` last,
    fsyncs, and moves the directory into place atomically. Leaving the ``with`` block
    by an exception (or without calling :meth:`commit`) deletes the temporary directory
    and never touches ``dest``. Temporary directories left by killed processes (their
    pid is no longer alive) are removed when the next writer for the same ``dest``
    starts.

    Parameters
    ----------
    dest : str or Path
        Directory the bundle will be at. Its parent must exist and be writable.
    overwrite : bool, default False
        Replace an existing bundle at ``dest`` (atomically). An existing ``dest`` is
        refused otherwise, and also with ``overwrite`` if it is a non-empty directory
        without a ``manifest.json`` (to never delete unrelated data).

    Raises
    ------
    BundleError
        If ``dest`` exists (without ``overwrite``), is not replaceable, or its parent is
        missing or not writable.
    """

    def __init__(self, dest: str | os.PathLike[str], *, overwrite: bool = False) -> None:
        self.dest = Path(os.path.abspath(os.fspath(dest)))
        self.overwrite = overwrite
        parent = self.dest.parent
        if not self.dest.name or self.dest.name in (".", ".."):
            raise BundleError(f"invalid bundle destination {os.fspath(dest)!r}: name a directory")
        if not parent.is_dir():
            raise BundleError(
                f"cannot write bundle {self.dest}: parent directory {parent} does not exist; "
                "create it first"
            )
        if not os.access(parent, os.W_OK | os.X_OK):
            raise BundleError(
                f"cannot write bundle {self.dest}: parent directory {parent} is not writable; "
                "choose another destination or fix its permissions"
            )
        self._check_dest()
        self._tmp: Path | None = None
        self._files: dict[str, str] = {}
        self._id_maps: dict[str, str] | None = None
        self._committed = False
        self._closed = False

    # ------------------------------------------------------------------ context
    def _check_dest(self) -> None:
        dest = self.dest
        if dest.is_symlink():
            raise BundleError(
                f"cannot write bundle {dest}: it is a symbolic link; pass the real directory "
                f"({dest.resolve()}) instead"
            )
        if not dest.exists():
            return
        if not self.overwrite:
            raise BundleError(
                f"{dest} already exists; pass overwrite=True (--force on the command line) "
                "to replace it, or choose another destination"
            )
        if not dest.is_dir():
            raise BundleError(
                f"cannot replace {dest}: it is a file, not a bundle directory; remove it or "
                "choose another destination"
            )
        if not _is_bundle_like(dest):
            raise BundleError(
                f"refusing to replace {dest}: it is a non-empty directory without "
                f"{MANIFEST_NAME}, not a recsys-export bundle; remove it yourself or choose "
                "another destination"
            )

    def __enter__(self) -> BundleWriter:
        if self._tmp is not None or self._closed:
            raise BundleError("a BundleWriter can be entered only once; create a new one")
        self._cleanup_stale()
        tmp = temp_sibling(self.dest)
        try:
            os.mkdir(tmp)
        except OSError as exc:
            raise BundleError(f"cannot create temporary bundle directory {tmp}: {exc}") from None
        self._tmp = tmp
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._closed = True
        if self._tmp is not None and not self._committed:
            shutil.rmtree(self._tmp, ignore_errors=True)
        self._tmp = None

    def _cleanup_stale(self) -> None:
        """Remove temporary siblings of ``dest`` left by processes that no longer run."""
        for entry, kind in stale_temporaries(self.dest, "partial|old"):
            if not entry.is_dir(follow_symlinks=False):
                continue
            if kind == "old" and not self.dest.exists():
                # A fallback swap was interrupted between its two renames: this is the only
                # copy of the previous bundle. Leave it for the user to recover.
                continue
            shutil.rmtree(entry.path, ignore_errors=True)

    def _require_open(self) -> Path:
        if self._tmp is None or self._committed:
            state = "after commit()" if self._committed else "outside its 'with' block"
            raise BundleError(f"BundleWriter for {self.dest} used {state}")
        return self._tmp

    # ------------------------------------------------------------------ files
    @property
    def tmp_dir(self) -> Path:
        """The temporary directory being filled (only inside the ``with`` block)."""
        return self._require_open()

    def path(self, rel: str) -> Path:
        """Absolute path inside the temporary directory for a bundle-relative name.

        Parent directories are created. The file is not registered: use :meth:`add`.

        Raises
        ------
        BundleError
            If ``rel`` is unsafe (absolute, ``..``, backslash, ...) or is ``manifest.json``.
        """
        tmp = self._require_open()
        rel = _check_rel(rel, f"bundle {self.dest}")
        if rel == MANIFEST_NAME:
            raise BundleError(
                f"{MANIFEST_NAME} is written by commit(); pass its contents to commit() instead"
            )
        target = tmp / rel
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise BundleError(f"cannot create directory for {rel!r} in the bundle: {exc}") from None
        if not target.parent.resolve().is_relative_to(tmp.resolve()):
            raise BundleError(f"bundle file {rel!r} would leave the bundle through a symlink")
        return target

    def add(self, rel: str, role: str) -> Path:
        """Register a file (already written or to be written at :meth:`path`) with a role.

        Parameters
        ----------
        rel : str
            Bundle-relative name, e.g. ``"onnx/score.onnx"``.
        role : str
            What the file is, e.g. ``"onnx:score"``; :meth:`Bundle.files_with_role`
            selects by role prefix.

        Returns
        -------
        Path
            ``path(rel)``; the file must exist when :meth:`commit` runs.
        """
        if not isinstance(role, str) or not role:
            raise BundleError(f"bundle file {rel!r}: role must be a non-empty string, got {role!r}")
        target = self.path(rel)
        self._files[rel] = role
        return target

    def write_bytes(self, rel: str, data: bytes, role: str) -> Path:
        """Write ``data`` to ``rel`` and register it with ``role``; returns its path."""
        target = self.add(rel, role)
        try:
            with open(target, "wb") as fh:
                fh.write(data)
        except OSError as exc:
            raise BundleError(f"cannot write {rel!r} into bundle {self.dest}: {exc}") from None
        return target

    def write_json(self, rel: str, obj: Any, role: str) -> Path:
        """Write ``obj`` as JSON (indent 2, sorted keys, no NaN) to ``rel``; returns its path."""
        text = _dumps(obj, f"{rel!r} into bundle {self.dest}")
        return self.write_bytes(rel, (text + "\n").encode("utf-8"), role)

    def write_id_maps(self, user_map: IdMap, item_map: IdMap) -> None:
        """Write ``ids/users.json`` and ``ids/items.json`` and record them in the manifest."""
        for key, idmap in (("users", user_map), ("items", item_map)):
            if not isinstance(idmap, IdMap):
                raise BundleError(f"{key} id map must be an IdMap, got {type(idmap).__name__}")
            self.write_json(_ID_MAP_FILES[key], idmap.to_json(), role=f"id_map:{key}")
        self._id_maps = dict(_ID_MAP_FILES)

    # ------------------------------------------------------------------ commit
    def stage(self, manifest: dict[str, Any]) -> Path:
        """Write ``manifest.json`` into the temporary directory without moving it.

        The staged directory is then a complete bundle that :meth:`Bundle.load` and the
        runtime can open, so checks that need a whole bundle run *before* :meth:`commit`:
        when they fail, leaving the ``with`` block deletes it and ``dest`` (a previous
        bundle included) is untouched. :meth:`commit` rewrites the manifest, so files
        written after staging are checksummed too.

        Returns
        -------
        Path
            The temporary directory holding the staged bundle.
        """
        return self._write_manifest(manifest)

    def _write_manifest(self, manifest: dict[str, Any]) -> Path:
        """Checksum every registered file and write ``manifest.json`` into the temp dir."""
        tmp = self._require_open()
        if not isinstance(manifest, dict):
            raise BundleError(f"manifest must be a dict, got {type(manifest).__name__}")
        out = {k: v for k, v in manifest.items() if k not in RESERVED_KEYS}
        id_maps = self._id_maps if self._id_maps is not None else manifest.get("id_maps", {})
        if not isinstance(id_maps, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in id_maps.items()
        ):
            raise BundleError(f"id_maps must map names to file names, got {id_maps!r}")
        missing_maps = sorted(v for v in id_maps.values() if v not in self._files)
        if missing_maps:
            raise BundleError(
                f"id map file(s) {missing_maps} are not registered in bundle {self.dest}; "
                "use write_id_maps()"
            )

        files: dict[str, dict[str, Any]] = {}
        for rel in sorted(self._files):
            target = tmp / rel
            if not target.is_file() or target.is_symlink():
                raise BundleError(
                    f"bundle file {rel!r} (role {self._files[rel]!r}) was registered but "
                    f"{'is not a regular file' if target.exists() else 'never written'}; "
                    f"write it to writer.path({rel!r}) before commit()"
                )
            _fsync_file(target)
            files[rel] = {
                "role": self._files[rel],
                "sha256": sha256_file(target),
                "bytes": target.stat().st_size,
            }
        unregistered = sorted(
            p.relative_to(tmp).as_posix()
            for p in tmp.rglob("*")
            if not p.is_dir()
            and p.relative_to(tmp).as_posix() not in self._files
            and p.relative_to(tmp).as_posix() != MANIFEST_NAME
        )
        if unregistered:
            raise BundleError(
                f"file(s) {unregistered} were written into bundle {self.dest} but never "
                "registered; register each with writer.add(rel, role) so that it is checksummed"
            )

        out.update(
            format=FORMAT_NAME,
            format_version=FORMAT_VERSION,
            created=datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
            id_maps=dict(id_maps),
            files=files,
        )
        text = _dumps(out, f"{MANIFEST_NAME} of bundle {self.dest}") + "\n"
        manifest_path = tmp / MANIFEST_NAME
        with open(manifest_path, "w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        for dirpath, _dirs, _files in os.walk(tmp, topdown=False):
            _fsync_dir(Path(dirpath))

        return tmp

    def commit(self, manifest: dict[str, Any]) -> Path:
        """Finish the bundle: write ``manifest.json`` last and move it into place atomically.

        Parameters
        ----------
        manifest : dict
            Top-level keys to store (``model``, ``entry_points``, ...). The generic keys
            ``format``, ``format_version``, ``created``, ``id_maps`` and ``files`` are
            filled here (``id_maps`` is taken from ``manifest`` if :meth:`write_id_maps`
            was not called).

        Returns
        -------
        Path
            ``dest``.

        Raises
        ------
        BundleError
            If a registered file does not exist, an unregistered file was written, the
            manifest is not JSON-serialisable, or ``dest`` cannot be replaced.
        """
        tmp = self._write_manifest(manifest)
        self._move_into_place(tmp)
        self._committed = True
        self._tmp = None
        return self.dest

    def _move_into_place(self, tmp: Path) -> None:
        dest, parent = self.dest, self.dest.parent
        self._check_dest()  # it may have changed since __init__
        try:
            if not dest.exists():
                try:
                    _renameat2(tmp, dest, _RENAME_NOREPLACE)
                except OSError as exc:
                    if exc.errno == errno.EEXIST:
                        raise BundleError(
                            f"{dest} appeared while the bundle was being written; pass "
                            "overwrite=True (--force) to replace it"
                        ) from None
                    if exc.errno not in _UNSUPPORTED:
                        raise
                    os.rename(tmp, dest)
                _fsync_dir(parent)
                return
            try:
                _renameat2(tmp, dest, _RENAME_EXCHANGE)
            except OSError as exc:
                if exc.errno not in _UNSUPPORTED:
                    raise
                self._swap_by_renames(tmp)
                return
            _fsync_dir(parent)
            # The previous bundle now sits at the temporary path.
            shutil.rmtree(tmp, ignore_errors=True)
        except OSError as exc:
            raise BundleError(f"cannot move the new bundle into place at {dest}: {exc}") from None

    def _swap_by_renames(self, tmp: Path) -> None:
        """Fallback without renameat2: dest -> .old, tmp -> dest, delete .old."""
        dest = self.dest
        old = temp_sibling(dest, "old")
        os.rename(dest, old)
        try:
            os.rename(tmp, dest)
        except OSError:
            os.rename(old, dest)  # put the previous bundle back
            raise
        _fsync_dir(dest.parent)
        shutil.rmtree(old, ignore_errors=True)


# ---------------------------------------------------------------------- reading
#: Attempts of :meth:`Bundle.load` when the bundle is swapped while it is read.
_SWAP_RETRIES = 5


def _dir_identity(path: Path) -> tuple[int, int, int] | None:
    """(device, inode, ctime) of the directory at ``path``, or None if there is none.

    A rename changes the moved directory's ctime, so two swaps that bring the same
    directory back (A -> B -> A) still change its identity.
    """
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_dev, st.st_ino, st.st_ctime_ns


class Bundle:
    """A loaded, verified bundle (read-only).

    Attributes
    ----------
    root : Path
        Absolute path of the bundle directory.
    manifest : dict
        The parsed ``manifest.json``.
    """

    def __init__(self, root: Path, manifest: dict[str, Any]) -> None:
        self.root = root
        self.manifest = manifest
        self._maps: dict[str, IdMap] = {}
        self._identity = _dir_identity(root)
        self._spec: BundleSpec | None = None

    def __repr__(self) -> str:
        return f"Bundle({str(self.root)!r}, format_version={self.format_version})"

    @classmethod
    def load(cls, path: str | os.PathLike[str], *, verify: bool = True) -> Bundle:
        """Load a bundle and check it before anything uses it.

        Checks, in order: ``path`` is a directory; it has a ``manifest.json`` holding a
        JSON object of format ``recsys-export-bundle`` and a ``format_version`` this
        version can read; every listed file name is safe (relative, no ``..``, no
        backslash, resolves inside the bundle even through symlinks), exists, has the
        recorded size and (with ``verify``) the recorded sha256; the id map files are
        listed. A bundle swapped in (``export --force``) while it is read is read again,
        so the result is the old bundle or the new one, never a mix.

        Parameters
        ----------
        path : str or Path
            The bundle directory.
        verify : bool, default True
            Compute sha256 checksums. ``False`` skips only that (sizes and names are
            still checked).

        Raises
        ------
        BundleError
            Naming the bundle and the problem.
        """
        if not isinstance(path, (str, os.PathLike)):
            raise BundleError(
                f"a bundle is loaded from a directory path (str or os.PathLike), got "
                f"{type(path).__name__} {path!r}"
            )
        root = Path(os.path.abspath(os.fspath(path)))
        # `export --force` swaps a new bundle in while we read: a read that saw parts of
        # both (the directory at `root` changed under it) is repeated on the new one.
        for _attempt in range(_SWAP_RETRIES):
            before = _dir_identity(root)
            try:
                bundle = cls._load_once(root, verify)
            except BundleError:
                if _dir_identity(root) == before:
                    raise  # the bundle itself is wrong, not a swap
                continue
            if _dir_identity(root) == before:
                bundle._identity = before
                return bundle
        raise BundleError(
            f"bundle {root} was replaced {_SWAP_RETRIES} times while it was being loaded; "
            "load it again once the export is over"
        )

    def swapped(self) -> bool:
        """Whether another directory was moved to :attr:`root` since this was loaded."""
        return _dir_identity(self.root) != self._identity

    @classmethod
    def _load_once(cls, root: Path, verify: bool) -> Bundle:
        """One attempt of :meth:`load` (``root`` absolute)."""
        where = f"bundle {root}"
        if not root.exists():
            raise BundleError(f"no bundle at {root}: the directory does not exist")
        if not root.is_dir():
            raise BundleError(f"no bundle at {root}: it is a file, not a bundle directory")
        real_root = root.resolve()

        mpath = root / MANIFEST_NAME
        if not mpath.is_file():
            raise BundleError(
                f"{root} is not a recsys-export bundle: it has no {MANIFEST_NAME} (a partially "
                "written or interrupted export has none); export the model again"
            )
        if not mpath.resolve().is_relative_to(real_root):
            raise BundleError(f"{where}: {MANIFEST_NAME} is a symlink leaving the bundle")
        try:
            manifest = json.loads(mpath.read_text(encoding="utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise BundleError(
                f"{where}: {MANIFEST_NAME} is not valid JSON ({exc}); the bundle is corrupted, "
                "export it again"
            ) from None
        except OSError as exc:
            raise BundleError(f"{where}: cannot read {MANIFEST_NAME}: {exc}") from None
        if not isinstance(manifest, dict):
            raise BundleError(f"{where}: {MANIFEST_NAME} must hold a JSON object")

        fmt = manifest.get("format")
        if fmt != FORMAT_NAME:
            raise BundleError(
                f"{where}: not a recsys-export bundle ({MANIFEST_NAME} format is {fmt!r}, "
                f"expected {FORMAT_NAME!r})"
            )
        version = manifest.get("format_version")
        if not isinstance(version, int) or isinstance(version, bool) or version < 1:
            raise BundleError(
                f"{where}: format_version must be a positive integer, got {version!r}; "
                "the manifest is corrupted"
            )
        if version > FORMAT_VERSION:
            raise BundleError(
                f"{where} was written by a newer recsys-export (format {version} > "
                f"{FORMAT_VERSION}): upgrade recsys-export to load it"
            )

        files = manifest.get("files")
        if not isinstance(files, dict):
            raise BundleError(
                f"{where}: {MANIFEST_NAME} has no 'files' table (or it is not an object); "
                "the manifest is corrupted"
            )
        # Pass 1 (cheap): names, entries, existence, sizes.
        resolved: dict[str, Path] = {}
        for rel, entry in files.items():
            _check_rel(rel, where)
            if rel == MANIFEST_NAME:
                raise BundleError(f"{where}: {MANIFEST_NAME} cannot list itself")
            if not (
                isinstance(entry, dict)
                and isinstance(entry.get("role"), str)
                and isinstance(entry.get("sha256"), str)
                and _HEX64.fullmatch(entry["sha256"])
                and isinstance(entry.get("bytes"), int)
                and not isinstance(entry.get("bytes"), bool)
                and entry["bytes"] >= 0
            ):
                raise BundleError(
                    f"{where}: malformed {MANIFEST_NAME} entry for {rel!r} (needs role, "
                    f"64-hex sha256, bytes): {entry!r}"
                )
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
            size = full.stat().st_size
            if size != entry["bytes"]:
                state = "truncated" if size < entry["bytes"] else "altered (it grew)"
                raise BundleError(
                    f"{where}: file {rel!r} is {state}: {size} bytes, the manifest records "
                    f"{entry['bytes']}; export the bundle again"
                )
            resolved[rel] = full
        # Pass 2 (expensive): checksums.
        if verify:
            for rel, full in resolved.items():
                if sha256_file(full) != files[rel]["sha256"]:
                    raise BundleError(
                        f"{where}: file {rel!r} was altered/corrupted: checksum mismatch "
                        "(sha256 differs from the manifest); export the bundle again"
                    )

        id_maps = manifest.get("id_maps", {})
        if not isinstance(id_maps, dict):
            raise BundleError(f"{where}: 'id_maps' in {MANIFEST_NAME} must be an object")
        for key, rel in id_maps.items():
            if not isinstance(rel, str) or rel not in files:
                raise BundleError(
                    f"{where}: id map {key!r} names {rel!r}, which is not listed in 'files'"
                )
        return cls(root, manifest)

    # ------------------------------------------------------------------ accessors
    @property
    def format_version(self) -> int:
        """The bundle's format version."""
        return int(self.manifest["format_version"])

    @property
    def created(self) -> str | None:
        """UTC ISO-8601 time the bundle was committed."""
        return self.manifest.get("created")

    @property
    def spec(self) -> BundleSpec:
        """The manifest parsed and checked once (:class:`~recsys_export.manifest.BundleSpec`).

        Raises
        ------
        BundleError
            The manifest's ``model`` lacks ``n_users``/``n_items``.
        """
        if self._spec is None:
            self._spec = BundleSpec.parse(self.manifest, f"bundle {self.root}", self.files)
        return self._spec

    @property
    def files(self) -> dict[str, dict[str, Any]]:
        """The manifest's ``files`` table: rel -> {role, sha256, bytes}."""
        return self.manifest["files"]

    @property
    def id_maps(self) -> dict[str, str]:
        """Id map name (``users``/``items``) -> bundle-relative file name."""
        return self.manifest.get("id_maps", {})

    def file(self, rel: str) -> Path:
        """Absolute path of a file listed in the manifest.

        Raises
        ------
        BundleError
            If ``rel`` is not listed.
        """
        if rel not in self.files:
            listed = ", ".join(sorted(self.files)) or "none"
            raise BundleError(f"bundle {self.root} has no file {rel!r} (files: {listed})")
        return self.root / rel

    def role(self, rel: str) -> str:
        """Role of a listed file."""
        self.file(rel)
        return self.files[rel]["role"]

    def files_with_role(self, prefix: str) -> dict[str, Path]:
        """Listed files whose role starts with ``prefix``: rel -> absolute path (sorted)."""
        return {
            rel: self.root / rel
            for rel, entry in sorted(self.files.items())
            if entry["role"].startswith(prefix)
        }

    def read_json(self, rel: str) -> Any:
        """Parse a listed JSON file (BundleError if it is not valid JSON)."""
        path = self.file(rel)
        try:
            return json.loads(path.read_text(encoding="utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise BundleError(f"bundle {self.root}: {rel!r} is not valid JSON ({exc})") from None

    def _id_map(self, key: str) -> IdMap:
        if key not in self._maps:
            rel = self.id_maps.get(key)
            if rel is None:
                raise BundleError(
                    f"bundle {self.root} has no {key} id map; it was not exported with "
                    "write_id_maps()"
                )
            try:
                self._maps[key] = IdMap.from_json(self.read_json(rel), name=_ID_MAP_NAMES[key])
            except BundleError as exc:
                raise BundleError(f"bundle {self.root}: {rel!r}: {exc}") from None
        return self._maps[key]

    def user_map(self) -> IdMap:
        """The users' id map (loaded once, then cached)."""
        return self._id_map("users")

    def item_map(self) -> IdMap:
        """The items' id map (loaded once, then cached)."""
        return self._id_map("items")


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


# ---------------------------------------------------------------------- updating
def update_bundle(
    path: str | os.PathLike[str],
    *,
    manifest_updates: dict[str, Any],
    new_files: dict[str, tuple[bytes, str]] | None = None,
) -> Bundle:
    """Rewrite a bundle atomically with extra/replaced files and manifest keys.

    The source bundle is loaded (and verified) first. A new temporary sibling is built
    in which unchanged files are hard-linked (copied across devices), ``new_files`` are
    written, checksums are recomputed, and it replaces the bundle by the same atomic
    swap as :meth:`BundleWriter.commit`.

    Parameters
    ----------
    path : str or Path
        The bundle to update.
    manifest_updates : dict
        Top-level manifest keys to set or replace (e.g. ``{"parity": report}``). The
        generic keys (``format``, ``files``, ...) cannot be set.
    new_files : dict, optional
        rel -> ``(content, role)``: files to add or replace.

    Returns
    -------
    Bundle
        The updated bundle, loaded.

    Raises
    ------
    BundleError
        If the source bundle does not verify, or the updates are invalid.
    """
    src = Bundle.load(path)
    if not isinstance(manifest_updates, dict):
        raise BundleError("manifest_updates must be a dict of top-level manifest keys")
    reserved = sorted(RESERVED_KEYS.intersection(manifest_updates))
    if reserved:
        raise BundleError(
            f"manifest_updates cannot set {reserved}: these keys are maintained by the bundle "
            "module (add files through new_files)"
        )
    new_files = dict(new_files or {})
    for rel, value in new_files.items():
        _check_rel(rel, f"update of bundle {src.root}")
        if not (
            isinstance(value, tuple)
            and len(value) == 2
            and isinstance(value[0], (bytes, bytearray, memoryview))
            and isinstance(value[1], str)
        ):
            raise BundleError(f"new_files[{rel!r}] must be a (bytes, role) tuple")

    manifest = {k: v for k, v in src.manifest.items() if k not in RESERVED_KEYS}
    manifest.update(manifest_updates)
    manifest["id_maps"] = dict(src.id_maps)
    dest = src.root.resolve()
    with BundleWriter(dest, overwrite=True) as writer:
        for rel, entry in src.files.items():
            if rel in new_files:
                continue
            target = writer.add(rel, entry["role"])
            source = src.file(rel)
            try:
                os.link(source, target)
            except OSError:  # other device, or links not supported
                shutil.copy2(source, target)
        for rel, (data, role) in new_files.items():
            writer.write_bytes(rel, bytes(data), role)
        writer.commit(manifest)
    return Bundle.load(dest)
