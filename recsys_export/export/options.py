"""The options of an export, as one typed value (what :func:`export_bundle` takes by keyword)."""

from __future__ import annotations

from dataclasses import dataclass, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from recsys_export.bundle.schema import Manifest
    from recsys_export.models.checkpoint import Checkpoint


@dataclass(frozen=True)
class ExportOptions:
    """How a checkpoint is exported: the keyword options of
    :func:`~recsys_export.export.export_bundle`, each with its default there.

    Attributes
    ----------
    formats : tuple of str, optional
        Formats to write (None: the default ones).
    overwrite, external_data, verify, atol, rtol, budget, full, progress
        As for :func:`~recsys_export.export.export_bundle`.
    precision : tuple of str
        Approximate variants to write beside the exact graphs (``("fp32",)``: none).
    """

    formats: tuple[str, ...] | None = None
    overwrite: bool = False
    external_data: bool | None = None
    verify: bool = True
    atol: float | None = None
    rtol: float | None = None
    budget: int | None = None
    full: bool = False
    progress: bool = False
    precision: tuple[str, ...] = ("fp32",)

    def export(self, ckpt: Checkpoint, out: str | Path) -> Manifest:
        """:func:`~recsys_export.export.export_bundle` of ``ckpt`` to ``out`` with these
        options; the manifest as written."""
        from recsys_export.export.build import export_bundle

        kwargs: dict[str, Any] = {f.name: getattr(self, f.name) for f in fields(self)}
        return export_bundle(ckpt, out, **kwargs)
