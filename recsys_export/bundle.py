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
stays inside the bundle, and every file's size and sha256 before anything runs. It
keeps every listed file open (:class:`~recsys_export.bundle_format.OpenFiles`): what a
loaded bundle reads later (:meth:`Bundle.read_bytes`) is what was checked, also after
``export --force`` replaced it on disk.

The format's helpers live in :mod:`recsys_export.bundle_format`, the writer in
:mod:`recsys_export.bundle_writer`; this module holds the reader and
:func:`update_bundle`, and re-exports the rest. It must stay torch-free: it imports only
the standard library, numpy and torch-free parts of ``recsys_export``.
"""

from __future__ import annotations

import io
import json
import os
import stat
from pathlib import Path
from typing import Any, Literal

import numpy as np

from recsys_export.atomic import stale_temporaries
from recsys_export.bundle_format import (
    _ID_MAP_NAMES,
    FORMAT_NAME,
    FORMAT_VERSION,
    MANIFEST_NAME,
    RESERVED_KEYS,
    OpenFiles,
    _check_rel,
    _open_files,
    _read_manifest,
    check_seen_csr,
    enclosing_bundle,
    read_seen_csr,
    sha256_file,
)
from recsys_export.bundle_writer import BundleWriter
from recsys_export.errors import BundleError
from recsys_export.ids import IdMap
from recsys_export.manifest import BundleSpec

__all__ = [
    "FORMAT_NAME",
    "FORMAT_VERSION",
    "MANIFEST_NAME",
    "RESERVED_KEYS",
    "Bundle",
    "BundleWriter",
    "dir_identity",
    "enclosing_bundle",
    "read_seen_csr",
    "sha256_file",
    "stale_temporaries",
    "update_bundle",
]


# ---------------------------------------------------------------------- reading
#: Attempts of :meth:`Bundle.load` when the bundle is swapped while it is read.
_SWAP_RETRIES = 5


def dir_identity(path: Path) -> tuple[int, int, int] | None:
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

    def __init__(
        self, root: Path, manifest: dict[str, Any], files: OpenFiles | None = None
    ) -> None:
        self.root = root
        self.manifest = manifest
        self._maps: dict[str, IdMap] = {}
        self._identity = dir_identity(root)
        self._spec: BundleSpec | None = None
        self._open = files

    def close(self) -> None:
        """Close the bundle's files (also done when it is garbage-collected)."""
        if self._open is not None:
            self._open.close()

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
        so the result is the old bundle or the new one, never a mix. The listed files
        stay open: :meth:`read_bytes` (and the runtime) read the files that were
        checked, whatever is at ``path`` later.

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
            before = dir_identity(root)
            try:
                bundle = cls._load_once(root, verify)
            except BundleError:
                if dir_identity(root) == before:
                    raise  # the bundle itself is wrong, not a swap
                continue
            if dir_identity(root) == before:
                bundle._identity = before
                return bundle
        raise BundleError(
            f"bundle {root} was replaced {_SWAP_RETRIES} times while it was being loaded; "
            "load it again once the export is over"
        )

    def swapped(self) -> bool:
        """Whether another directory was moved to :attr:`root` since this was loaded."""
        return dir_identity(self.root) != self._identity

    @classmethod
    def _load_once(cls, root: Path, verify: bool) -> Bundle:
        """One attempt of :meth:`load` (``root`` absolute)."""
        where = f"bundle {root}"
        if not root.exists():
            raise BundleError(f"no bundle at {root}: the directory does not exist")
        if not root.is_dir():
            raise BundleError(f"no bundle at {root}: it is a file, not a bundle directory")
        opened = OpenFiles(root)
        try:
            manifest = _read_manifest(root, opened)
            files = manifest["files"]
            _open_files(root, files, opened)
            if verify:  # the expensive pass: checksums of what was opened
                for rel in files:
                    try:
                        digest = sha256_file(opened.fd(rel))
                    except OSError as exc:
                        raise opened.unreadable(repr(rel), exc) from None
                    if digest != files[rel]["sha256"]:
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
            opened.done_opening()
        except OSError as exc:  # e.g. a directory that may be listed but not entered
            opened.close()
            raise opened.unreadable(repr(exc.filename or os.fspath(root)), exc) from None
        except BaseException:
            opened.close()
            raise
        return cls(root, manifest, opened)

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

    def read_bytes(self, rel: str) -> bytes:
        """The content of a listed file (or of ``manifest.json``) as it was loaded.

        Read from the descriptor :meth:`load` opened and checksummed, so a bundle
        replaced on disk since (``export --force``) still reads whole, as loaded.

        Raises
        ------
        BundleError
            ``rel`` is not listed, or the file cannot be read.
        """
        if rel != MANIFEST_NAME:
            self.file(rel)
        if self._open is not None:
            return self._open.read(rel)
        try:
            return (self.root / rel).read_bytes()
        except OSError as exc:
            raise BundleError(f"bundle {self.root}: cannot read {rel!r}: {exc.strerror}") from None

    def is_loaded_file(self, rel: str, path: Path | None = None) -> bool:
        """Whether ``path`` (default ``root / rel``) is the file of ``rel`` that was loaded
        (for readers that need a path, such as onnxruntime with external weights)."""
        if self._open is None:
            return not self.swapped()
        try:
            now = os.stat(path if path is not None else self.root / rel)
        except OSError:
            return False
        then = os.fstat(self._open.fd(rel))
        return (now.st_dev, now.st_ino) == (then.st_dev, then.st_ino)

    def read_json(self, rel: str) -> Any:
        """Parse a listed JSON file (BundleError if it is not valid JSON)."""
        try:
            return json.loads(self.read_bytes(rel).decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise BundleError(f"bundle {self.root}: {rel!r} is not valid JSON ({exc})") from None

    def read_array(self, rel: str, *, mmap: bool = False) -> np.ndarray:
        """A listed ``.npy`` file as it was loaded (never unpickled).

        ``mmap=True`` maps it read-only from the descriptor :meth:`load` opened, so a
        large array is paged in on use and still is the loaded file after the bundle is
        replaced on disk (``export --force``).

        Raises
        ------
        BundleError
            ``rel`` is not listed, or it is not a valid ``.npy`` array.
        """
        try:
            if not mmap or self._open is None:
                return np.load(io.BytesIO(self.read_bytes(rel)), allow_pickle=False)
            with os.fdopen(os.dup(self._open.fd(rel)), "rb") as f:
                f.seek(0)
                version = np.lib.format.read_magic(f)
                if version == (1, 0):
                    shape, fortran, dtype = np.lib.format.read_array_header_1_0(f)
                else:
                    shape, fortran, dtype = np.lib.format.read_array_header_2_0(f)
                if dtype.hasobject:
                    raise ValueError("object arrays are not read from bundles")
                order: Literal["C", "F"] = "F" if fortran else "C"
                handle: Any = f  # np.memmap reads file objects; its stubs say paths
                return np.memmap(
                    handle, dtype=dtype, mode="r", offset=f.tell(), shape=shape, order=order
                )
        except (ValueError, OSError) as exc:
            raise BundleError(
                f"bundle {self.root}: {rel!r} is not a valid .npy array ({exc}); export it again"
            ) from None

    def seen_csr(self, n_users: int, n_items: int) -> tuple[np.ndarray, np.ndarray]:
        """``(indptr int64[n_users + 1], items int64[nnz])``: the items each user rated,
        read as loaded and checked against the model's sizes.

        Raises
        ------
        BundleError
            The manifest has no ``seen`` entry (the items to leave out are unknown: it
            is refused rather than serving rated items again), or its files are not
            listed or malformed.
        """
        where = f"bundle {self.root}"
        seen = self.spec.seen
        if seen is None:
            raise BundleError(
                f"{where}: manifest.json has no 'seen' entry, so the items each user rated "
                "cannot be left out; export the bundle again, or pass --include-seen "
                "(exclude_seen=False) to serve rated items too"
            )
        try:
            indptr, items = (
                np.load(io.BytesIO(self.read_bytes(rel)), allow_pickle=False) for rel in seen
            )
        except (OSError, ValueError) as exc:
            raise BundleError(f"{where}: cannot read the seen items ({exc})") from None
        return check_seen_csr(indptr, items, n_users, n_items, where)

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
        If the source bundle does not verify, is read-only (its directory has no write
        permission, or its file system is mounted read-only: root could still write
        it, but it was made read-only on purpose), or the updates are invalid.
    """
    src = Bundle.load(path)
    read_only = _read_only(src.root)
    if read_only:
        raise BundleError(
            f"cannot update bundle {src.root}: it is read-only ({read_only}) and is left as "
            "it is; make it writable (chmod -R u+w) to update it"
        )
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
            try:
                os.link(src.file(rel), target)
            except OSError:  # other device, or links not supported
                pass
            if not src.is_loaded_file(rel, target):  # not linked, or swapped meanwhile
                target.unlink(missing_ok=True)
                target.write_bytes(src.read_bytes(rel))
        for rel, (data, role) in new_files.items():
            writer.write_bytes(rel, bytes(data), role)
        writer.commit(manifest)
    return Bundle.load(dest)


def _read_only(root: Path) -> str | None:
    """Why the bundle directory ``root`` is read-only, or None if it is not."""
    statvfs = getattr(os, "statvfs", None)  # not on Windows
    try:
        if statvfs is not None and statvfs(root).f_flag & getattr(os, "ST_RDONLY", 1):
            return "its file system is mounted read-only"
        mode = os.stat(root).st_mode
    except OSError as exc:
        return exc.strerror
    if not mode & 0o222:
        return f"its directory has mode {stat.filemode(mode)}"
    return None
