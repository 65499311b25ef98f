"""The manifest, typed: :class:`Manifest` (what ``manifest.json`` holds, read and written
through its sections).

A manifest keeps the JSON it was parsed from (so that it is written back as it was,
unknown keys included) and exposes each section typed, parsed on first use. The generic
keys (``format``, ``format_version``, ``files``, ``id_maps``) are checked when it is
parsed, as :meth:`~recsys_export.bundle.Bundle.load` reads a bundle; a malformed
section raises :class:`~recsys_export.errors.BundleError` naming the bundle and the
section when a reader asks for it.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import cached_property
from typing import Any, TypeVar

from recsys_export.bundle.schema.contract import (
    ENTRY_POINTS,
    FORMAT_NAME,
    FORMAT_VERSION,
    MANIFEST_NAME,
    RESERVED_KEYS,
    entry_point_spec,
)
from recsys_export.bundle.schema.formats import Formats, OnnxSection, VariantSection
from recsys_export.bundle.schema.records import (
    EntryPoint,
    ModelSection,
    ParitySummary,
    SeenSection,
    Timings,
    TrainingSection,
    Versions,
)
from recsys_export.errors import BundleError

__all__ = ["FileEntry", "Manifest", "id_maps_to_write", "with_generic_keys"]

_HEX64 = re.compile(r"[0-9a-f]{64}")
#: The sections :class:`Manifest` parses on first use (cached under these names).
_SECTIONS = frozenset(
    {
        "model",
        "formats",
        "entry_points",
        "seen",
        "item_names_file",
        "reference_weights",
        "versions",
        "training",
        "timings",
        "parity",
    }
)
_T = TypeVar("_T")


@dataclass(frozen=True)
class FileEntry:
    """One listed file: its role (``onnx:score``, ...), sha256 and size in bytes."""

    role: str
    sha256: str
    bytes: int

    @classmethod
    def parse(cls, rel: str, entry: Any, where: str) -> FileEntry:
        if not (
            isinstance(entry, Mapping)
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
        return cls(entry["role"], entry["sha256"], entry["bytes"])


class Manifest:
    """A bundle's manifest: generic keys checked, sections typed on first use.

    Create it with :meth:`parse` (a written manifest) or :meth:`build` (the exporter);
    :meth:`to_dict` is the JSON to write. Read-only: :meth:`replace` returns a new one.

    Attributes
    ----------
    where : str
        ``"bundle <root>"``, the prefix of error messages.
    format_version : int or None
        None in a manifest being built (the writer fills the generic keys).
    created : str or None
        UTC time the bundle was committed.
    files : dict
        Bundle-relative name -> :class:`FileEntry`.
    id_maps : dict
        Id map name (``users``, ``items``) -> bundle-relative file.
    """

    def __init__(self, raw: Mapping[str, Any], where: str) -> None:
        self._raw = dict(raw)
        self.where = where
        version = self._raw.get("format_version")
        self.format_version: int | None = version if isinstance(version, int) else None
        created = self._raw.get("created")
        self.created: str | None = created if isinstance(created, str) else None
        self.files: dict[str, FileEntry] = {}
        self.id_maps: dict[str, str] = {}

    # ------------------------------------------------------------------ reading
    @classmethod
    def parse(cls, raw: Any, where: str) -> Manifest:
        """Check a written manifest's generic keys.

        Raises
        ------
        BundleError
            Not an object, another ``format``, a ``format_version`` this version does not
            read (newer: upgrade), no ``files`` table or a malformed entry, ``id_maps``
            naming unlisted files.
        """
        if not isinstance(raw, Mapping):
            raise BundleError(f"{where}: {MANIFEST_NAME} must hold a JSON object")
        fmt = raw.get("format")
        if fmt != FORMAT_NAME:
            raise BundleError(
                f"{where}: not a recsys-export bundle ({MANIFEST_NAME} format is {fmt!r}, "
                f"expected {FORMAT_NAME!r})"
            )
        version = raw.get("format_version")
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
        files = raw.get("files")
        if not isinstance(files, Mapping):
            raise BundleError(
                f"{where}: {MANIFEST_NAME} has no 'files' table (or it is not an object); "
                "the manifest is corrupted"
            )
        out = cls(raw, where)
        out.files = {rel: FileEntry.parse(rel, entry, where) for rel, entry in files.items()}
        id_maps = raw.get("id_maps", {})
        if not isinstance(id_maps, Mapping):
            raise BundleError(f"{where}: 'id_maps' in {MANIFEST_NAME} must be an object")
        for key, rel in id_maps.items():
            if not isinstance(rel, str) or rel not in files:
                raise BundleError(
                    f"{where}: id map {key!r} names {rel!r}, which is not listed in 'files'"
                )
        out.id_maps = dict(id_maps)
        return out

    def _section(self, name: str, parse: Callable[[Any], _T]) -> _T:
        try:
            return parse(self._raw.get(name))
        except (ValueError, TypeError, KeyError, AttributeError) as exc:
            detail = str(exc) if isinstance(exc, ValueError) else f"is malformed ({exc!r})"
            raise BundleError(f"{self.where}: {MANIFEST_NAME} '{name}' {detail}") from None

    @cached_property
    def model(self) -> ModelSection:
        """``model`` (:class:`BundleError` when missing or malformed)."""
        try:
            return ModelSection.parse(self._raw.get("model"))
        except ValueError as exc:
            raise BundleError(f"{self.where}: {MANIFEST_NAME} {exc}") from None

    @cached_property
    def formats(self) -> Formats:
        """``formats``: the sections of the formats present."""
        listed = self.files
        try:
            kind = self.model.kind
        except BundleError:  # the formats are still listed; no kernels for an unknown kind
            kind = ""
        return self._section("formats", lambda e: Formats.parse(e, kind, listed))

    @cached_property
    def entry_points(self) -> dict[str, EntryPoint]:
        """``entry_points``: name -> documented signature."""
        return self._section(
            "entry_points",
            lambda e: {str(k): EntryPoint.parse(v) for k, v in (e or {}).items()},
        )

    @cached_property
    def seen(self) -> SeenSection | None:
        """``seen``: the seen-items CSR's files, or None."""
        return SeenSection.parse(self._raw.get("seen"))

    @cached_property
    def item_names_file(self) -> str | None:
        """``item_names``: the names file, or None when the bundle has none."""
        rel = self._raw.get("item_names")
        if rel is not None and not isinstance(rel, str):
            raise BundleError(f"{self.where}: 'item_names' in the manifest must name a file")
        return rel

    @cached_property
    def reference_weights(self) -> str | None:
        """``reference.state_dict``: the eager reference weights' file, or None."""
        reference = self._raw.get("reference")
        rel = reference.get("state_dict") if isinstance(reference, Mapping) else None
        return rel if isinstance(rel, str) and rel else None

    @cached_property
    def versions(self) -> Versions:
        """``versions``: the libraries the bundle was written and verified with."""
        return self._section("versions", Versions.parse)

    @cached_property
    def training(self) -> TrainingSection:
        """``training``: config, metrics and data of the checkpoint (empty when absent)."""
        return self._section("training", TrainingSection.parse)

    @cached_property
    def timings(self) -> Timings:
        """``timings``: export seconds per format (empty when absent)."""
        return self._section("timings", Timings.parse)

    @cached_property
    def parity(self) -> ParitySummary | None:
        """``parity``: the recorded parity check, or None (not verified)."""
        return self._section(
            "parity", lambda e: ParitySummary.parse(e) if isinstance(e, Mapping) else None
        )

    def require_onnx(self, who: str = "the runtime needs them") -> OnnxSection:
        """The ONNX section with every entry-point graph.

        Raises
        ------
        BundleError
            The bundle was exported without the ``onnx`` format.
        """
        onnx = self.formats.onnx
        if onnx is None or not onnx.complete:
            raise BundleError(
                f"{self.where} has no ONNX graphs (formats.onnx.graphs with "
                f"{', '.join(ENTRY_POINTS)}); {who}: re-export with --formats onnx"
            )
        return onnx

    def variant(self, precision: str) -> VariantSection:
        """The approximate variant of ``precision``.

        Raises
        ------
        BundleError
            The bundle has none (exported without ``--precision``).
        """
        onnx = self.formats.onnx
        found = onnx.variants.get(precision) if onnx is not None else None
        if found is None:
            have = ", ".join(["fp32", *sorted(onnx.variants if onnx is not None else ())])
            raise BundleError(
                f"{self.where} has no {precision} variant (it has {have}); export it with "
                f"--precision {precision}, or load the exact one (precision='fp32')"
            )
        return found

    # ------------------------------------------------------------------ writing
    @classmethod
    def build(
        cls,
        *,
        model: ModelSection,
        formats: Formats,
        seen: SeenSection,
        reference_weights: str,
        versions: Versions,
        training: TrainingSection,
        timings: Timings,
        item_names_file: str | None = None,
        parity: ParitySummary | None = None,
    ) -> Manifest:
        """A manifest being written (the writer adds ``format``, ``files``, ...)."""
        raw = {
            "model": model.to_dict(),
            "entry_points": entry_point_spec(model.n_items),
            "formats": formats.to_dict(),
            "seen": seen.to_dict(),
            "item_names": item_names_file,
            "reference": {"state_dict": reference_weights},
            "versions": versions.to_dict(),
            "training": training.to_dict(),
            "timings": timings.to_dict(),
            "parity": None if parity is None else parity.to_dict(),
        }
        out = cls(raw, "the manifest being written")
        # the sections as given: their files are not listed until the writer commits
        out.__dict__.update(model=model, formats=formats, seen=seen, parity=parity)
        return out

    def replace(
        self, *, formats: Formats | None = None, parity: ParitySummary | None = None
    ) -> Manifest:
        """A copy with ``formats`` and/or ``parity`` replaced."""
        raw = copy.deepcopy(self._raw)
        given: dict[str, Any] = {}
        if formats is not None:
            raw["formats"], given["formats"] = formats.to_dict(), formats
        if parity is not None:
            raw["parity"], given["parity"] = parity.to_dict(), parity
        out = type(self)(raw, self.where)
        out.files, out.id_maps = dict(self.files), dict(self.id_maps)
        kept = {k: v for k, v in self.__dict__.items() if k in _SECTIONS}  # parsed or given
        out.__dict__.update({**kept, **given})
        return out

    def to_dict(self) -> dict[str, Any]:
        """The manifest as JSON data (a copy): what the writer writes."""
        return copy.deepcopy(self._raw)

    def without_generic_keys(self) -> dict[str, Any]:
        """:meth:`to_dict` less the keys the writer fills (:data:`RESERVED_KEYS`)."""
        return {k: v for k, v in self.to_dict().items() if k not in RESERVED_KEYS}


def id_maps_to_write(manifest: Mapping[str, Any], registered: dict[str, str] | None) -> dict:
    """The ``id_maps`` a bundle being committed records: the maps the writer wrote
    (``registered``), else the manifest's own (a bundle rewritten with its files).

    Raises
    ------
    BundleError
        Not a mapping of names to file names.
    """
    id_maps = registered if registered is not None else manifest.get("id_maps", {})
    if not isinstance(id_maps, Mapping) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in id_maps.items()
    ):
        raise BundleError(f"id_maps must map names to file names, got {id_maps!r}")
    return dict(id_maps)


def with_generic_keys(
    manifest: Mapping[str, Any],
    *,
    created: str,
    id_maps: Mapping[str, str],
    files: Mapping[str, Mapping[str, Any]],
) -> dict[str, Any]:
    """The manifest to write: ``manifest`` (its generic keys dropped) with this version's
    ``format`` and ``format_version``, ``created``, ``id_maps`` and ``files`` (rel ->
    role, sha256, bytes)."""
    out = {k: v for k, v in manifest.items() if k not in RESERVED_KEYS}
    out.update(
        format=FORMAT_NAME,
        format_version=FORMAT_VERSION,
        created=created,
        id_maps=dict(id_maps),
        files={rel: dict(entry) for rel, entry in files.items()},
    )
    return out
