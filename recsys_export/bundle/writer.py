"""Writing bundles: :class:`BundleWriter` (atomic, the manifest last).

Files are written into a hidden temporary sibling directory, the manifest last,
everything is fsynced, and the directory is then moved into place with one atomic
rename (or, when replacing a bundle, an atomic exchange via Linux
``renameat2(RENAME_EXCHANGE)``). Torch-free. Import it from :mod:`recsys_export.bundle`.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from datetime import datetime, timezone
from pathlib import Path
from types import TracebackType
from typing import Any

from recsys_export.bundle.files import (
    check_rel,
    dumps_json,
    enclosing_bundle,
    is_bundle_like,
    nested_bundles,
    sha256_file,
)
from recsys_export.bundle.schema import ID_MAP_FILES, MANIFEST_NAME
from recsys_export.bundle.schema.manifest import id_maps_to_write, with_generic_keys
from recsys_export.core.atomic import RENAME_EXCHANGE as _RENAME_EXCHANGE
from recsys_export.core.atomic import UNSUPPORTED_ERRNOS as _UNSUPPORTED
from recsys_export.core.atomic import (
    AppearedError,
    remove_path,
    remove_stale,
    rename_noreplace,
    temp_sibling,
)
from recsys_export.core.atomic import fsync_dir as _fsync_dir
from recsys_export.core.atomic import fsync_file as _fsync_file
from recsys_export.core.atomic import renameat2 as _renameat2
from recsys_export.core.ids import IdMap
from recsys_export.errors import BundleError

__all__ = ["BundleWriter"]


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
    pid is no longer alive) are removed when the next writer for the same ``dest`` is
    created, before it checks (and perhaps refuses) ``dest``.

    Parameters
    ----------
    dest : str or Path
        Directory the bundle will be at. Its parent must exist and be writable.
    overwrite : bool, default False
        Replace an existing bundle at ``dest`` (atomically). An existing ``dest`` is
        refused otherwise, and also with ``overwrite`` if it is a non-empty directory
        without a ``manifest.json`` or a bundle holding another bundle (to never delete
        unrelated data). A bundle is never written inside another one.

    Raises
    ------
    BundleError
        If ``dest`` exists (without ``overwrite``), is not replaceable, lies inside a
        bundle, or its parent is missing or not writable.
    """

    def __init__(self, dest: str | os.PathLike[str], *, overwrite: bool = False) -> None:
        self.dest = Path(os.path.abspath(os.fspath(dest)))
        self.overwrite = overwrite
        parent = self.dest.parent
        if not self.dest.name or self.dest.name in (".", ".."):
            raise BundleError(f"invalid bundle destination {os.fspath(dest)!r}: name a directory")
        remove_stale(self.dest, "partial|old")
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
        outer = enclosing_bundle(parent)
        if outer is not None:
            raise BundleError(
                f"cannot write bundle {self.dest}: it is inside the bundle {outer}, which "
                "would delete it when it is replaced; choose a destination outside it"
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
                f"cannot write bundle {dest}: it is a symbolic link (to "
                f"{os.readlink(dest)!r}); pass a real directory instead"
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
        if not is_bundle_like(dest):
            raise BundleError(
                f"refusing to replace {dest}: it is a non-empty directory without "
                f"{MANIFEST_NAME}, not a recsys-export bundle; remove it yourself or choose "
                "another destination"
            )
        inner = nested_bundles(dest)
        if inner:
            raise BundleError(
                f"refusing to replace {dest}: it holds another bundle ({inner[0]}) that "
                "replacing it would delete; move that bundle out first"
            )

    def __enter__(self) -> BundleWriter:
        if self._tmp is not None or self._closed:
            raise BundleError("a BundleWriter can be entered only once; create a new one")
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
            remove_path(self._tmp)
        self._tmp = None

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
        rel = check_rel(rel, f"bundle {self.dest}")
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
        text = dumps_json(obj, f"{rel!r} into bundle {self.dest}")
        return self.write_bytes(rel, (text + "\n").encode("utf-8"), role)

    def write_id_maps(self, user_map: IdMap, item_map: IdMap) -> None:
        """Write ``ids/users.json`` and ``ids/items.json`` and record them in the manifest."""
        for key, idmap in (("users", user_map), ("items", item_map)):
            if not isinstance(idmap, IdMap):
                raise BundleError(f"{key} id map must be an IdMap, got {type(idmap).__name__}")
            self.write_json(ID_MAP_FILES[key], idmap.to_json(), role=f"id_map:{key}")
        self._id_maps = dict(ID_MAP_FILES)

    # ------------------------------------------------------------------ commit
    def stage(self, manifest: Mapping[str, Any]) -> Path:
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

    def _write_manifest(self, manifest: Mapping[str, Any]) -> Path:
        """Checksum every registered file and write ``manifest.json`` into the temp dir."""
        tmp = self._require_open()
        if not isinstance(manifest, Mapping):
            raise BundleError(f"manifest must be a dict, got {type(manifest).__name__}")
        id_maps = id_maps_to_write(manifest, self._id_maps)
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

        out = with_generic_keys(
            manifest,
            created=datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
            id_maps=id_maps,
            files=files,
        )
        text = dumps_json(out, f"{MANIFEST_NAME} of bundle {self.dest}") + "\n"
        manifest_path = tmp / MANIFEST_NAME
        with open(manifest_path, "w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        for dirpath, _dirs, _files in os.walk(tmp, topdown=False):
            _fsync_dir(Path(dirpath))

        return tmp

    def commit(self, manifest: Mapping[str, Any]) -> Path:
        """Finish the bundle: write ``manifest.json`` last and move it into place atomically.

        Parameters
        ----------
        manifest : Mapping
            Top-level keys to store (``model``, ``entry_points``, ...:
            :meth:`Manifest.to_dict() <recsys_export.bundle.schema.Manifest.to_dict>`).
            The generic keys ``format``, ``format_version``, ``created``, ``id_maps`` and
            ``files`` are filled here (``id_maps`` is taken from ``manifest`` if
            :meth:`write_id_maps` was not called).

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
                    rename_noreplace(tmp, dest)
                except AppearedError:
                    raise BundleError(
                        f"{dest} appeared while the bundle was being written and was left as "
                        "it is; pass overwrite=True (--force) to replace it"
                    ) from None
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
            remove_path(tmp)
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
        remove_path(old)
