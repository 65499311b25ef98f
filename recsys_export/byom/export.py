"""Bring your own model: :func:`export_model`, a module or state dict to a verified bundle.

The converted path (the post's classes, :mod:`.convert`) or the generic one (any pairwise
module, :mod:`.generic`), chosen as :func:`export_model` documents; ids from
:mod:`.ids`; the bundle written by :meth:`~recsys_export.export.options.ExportOptions.export`.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from torch import nn

from recsys_export.bundle.schema import Manifest, ParitySummary, parse_precisions
from recsys_export.byom.convert import (
    against_user,
    conversion_mismatch,
    model_from_state_dict,
    recognise,
)
from recsys_export.byom.generic import (
    DEFAULT_BLOCK_PAIRS,
    GENERIC_KIND,
    ModuleRecommender,
    check_scores,
    eval_mode,
    first_line,
    probe_formats,
    sizes_from_embeddings,
    source_missing,
)
from recsys_export.byom.ids import IdsAndSeen, IdsOptions, resolve_ids
from recsys_export.errors import ConfigError, ExportError, RecsysExportError
from recsys_export.export.build import parse_formats
from recsys_export.export.options import ExportOptions
from recsys_export.models import BaseModel
from recsys_export.models.checkpoint import Checkpoint

#: The ``path=`` choices of :func:`export_model`.
PATHS = ("auto", "converted", "generic")


@dataclass
class ExportResult:
    """What :func:`export_model` did.

    Attributes
    ----------
    path : str
        ``"converted"`` (to our ``mf``/``densenet``) or ``"generic"``.
    kind : str
        ``model.kind`` in the manifest: ``mf``, ``densenet`` or ``generic``.
    bundle : Path
        The bundle directory.
    manifest : Manifest
        The manifest as written (:class:`~recsys_export.bundle.schema.Manifest`).
    failed : dict
        Formats that could not be exported -> the exporter's reason (with ``keep_partial``).
    reason : str
        Why this path was taken.
    notes : list of str
        What the export did differently, one line each (e.g. TorchScript written by
        ``torch.jit.trace`` because ``torch.jit.script`` could not read the source).
    """

    path: str
    kind: str
    bundle: Path
    manifest: Manifest
    failed: dict[str, str] = field(default_factory=dict)
    reason: str = ""
    notes: list[str] = field(default_factory=list)

    @property
    def parity(self) -> ParitySummary | None:
        """The recorded parity summary (None: exported without verification)."""
        return self.manifest.parity


def export_model(
    module: nn.Module | Mapping[str, Any],
    out: str | Path,
    *,
    kind: str | None = None,
    path: str = "auto",
    n_users: int | None = None,
    n_items: int | None = None,
    user_ids: Any = None,
    item_ids: Any = None,
    ratings: Any = None,
    seen: Any = None,
    user_col: str | None = None,
    item_col: str | None = None,
    item_names: Any = None,
    formats: str | Sequence[str] | None = None,
    verify: bool = True,
    keep_partial: bool = False,
    overwrite: bool = False,
    external_data: bool | None = None,
    atol: float | None = None,
    rtol: float | None = None,
    block_pairs: int = DEFAULT_BLOCK_PAIRS,
    progress: bool | None = None,
    precision: str | Sequence[str] = "fp32",
) -> ExportResult:
    """Export a recommender trained elsewhere to a verified bundle.

    Parameters
    ----------
    module : nn.Module or state dict
        A module whose ``forward(users, items)`` returns one score per pair, or a state
        dict with the post's names (then ``kind`` says which class; it is recognised from
        the shapes when omitted).
    out : path
        Bundle directory to create (atomically).
    kind : {"mf", "densenet"}, optional
        Force the post's class (a module that does not match raises).
    path : {"auto", "converted", "generic"}
        ``auto`` converts the post's classes and sends anything else through the generic
        path; a module that has the post's names but scores differently from its converted
        copy (a sigmoid on top, another forward) is exported generically too.
    n_users, n_items : int, optional
        Sizes for the generic path; default: the id lists, or embeddings whose names
        contain ``user`` / ``item``.
    user_ids, item_ids : sequence, optional
        Raw ids in index order (``user_ids[j]`` is the id of index ``j``); default
        ``0..n-1``.
    ratings : pandas.DataFrame, optional
        Rows with user and item id columns (found by name, or ``user_col``/``item_col``):
        raw ids are their sorted unique values (unless given) and the rows are the seen
        items.
    seen : mapping or (users, items), optional
        Seen items in raw ids, removed by ``recommend`` (default: ``ratings``' rows).
    item_names : list or mapping, optional
        Titles returned with recommendations: a list in item-index order (None for an
        item without one) or ``{raw item id: name}`` (ids the model lacks are ignored).
    formats : str or sequence, optional
        Subset of ``onnx``, ``torchscript``, ``pt2``, or ``all``; default ``onnx`` and
        ``torchscript`` (``pt2`` is opt-in).
    verify : bool
        Check parity of every format (and the runtime) against the user's module: its
        float64 scores, within what float32 rounding allows (docs/parity.md).
    keep_partial : bool
        When a format cannot be exported, write the others (listed in
        :attr:`ExportResult.failed`) instead of failing.
    atol, rtol : float, optional
        Explicit parity tolerances instead of the float32 error bound.
    block_pairs : int
        Generic path: pairs per ``score_all`` block (bounds its memory).
    progress : bool, optional
        A progress line on stderr while verifying; default: when stderr is a terminal.
    precision : str or sequence of str
        Also write approximate variants (:func:`~recsys_export.export.export_bundle`):
        ``fp16`` for any path, ``int8`` for MF (refused otherwise).

    Returns
    -------
    ExportResult
        Path taken, bundle, manifest (its ``parity`` summary), failed formats.

    Raises
    ------
    ExportError
        A format cannot be exported (one line: the format and the exporter's reason).
    ParityError
        An export does not reproduce the user's module within the bound.
    CheckpointError, ConfigError, DataError
        A state dict that is not the post's class, bad sizes, ids or options.
    """
    if path not in PATHS:
        raise ConfigError(f"path must be one of {', '.join(PATHS)}, got {path!r}")
    fmts = tuple(parse_formats(formats))
    from recsys_export.parity import check_tolerances

    check_tolerances(atol, rtol)
    options = ExportOptions(
        fmts,
        overwrite,
        external_data,
        verify,
        atol,
        rtol,
        progress=show_progress(progress),
        precision=tuple(parse_precisions(precision)),
    )
    ids = IdsOptions(user_ids, item_ids, ratings, seen, user_col, item_col, item_names)
    request = _Request(out, ids, options, keep_partial, block_pairs, n_users, n_items)
    if not isinstance(module, nn.Module):
        return _export_state_dict(module, kind, path, request)
    converted, reason = _converted(module, kind, path, atol, rtol)
    if converted is not None:
        return _export_converted(converted, module, reason, request)
    return _export_generic(module, reason, request)


@dataclass(frozen=True)
class _Request:
    """What the export steps below need: where, the ids, the bundle's options, and the
    generic path's own (``keep_partial``, ``block_pairs``, sizes)."""

    out: str | Path
    ids: IdsOptions
    options: ExportOptions
    keep_partial: bool
    block_pairs: int
    n_users: int | None
    n_items: int | None


def _export_state_dict(state: Any, kind: str | None, path: str, request: _Request) -> ExportResult:
    """A state dict of the post's names: converted (it has no ``forward`` of its own)."""
    if not isinstance(state, Mapping):
        raise ConfigError(f"expected an nn.Module or a state dict, got {type(state).__name__}")
    if path == "generic":
        raise ConfigError("a state dict has no forward: the generic path needs the module")
    kind = kind or recognise(state)
    if kind is None:
        model_from_state_dict(state, "mf")  # raises, listing what does not match
    converted = model_from_state_dict(state, kind or "mf")
    return _export_converted(converted, None, "state dict with the post's names", request)


def _converted(
    module: nn.Module, kind: str | None, path: str, atol: float | None, rtol: float | None
) -> tuple[BaseModel | None, str]:
    """Our copy of ``module`` when it takes the converted path (else None), and why."""
    name = type(module).__name__
    if path == "generic":
        return None, f"{name} is not one of the post's classes"
    found = kind or recognise(module)
    if found is None and (path == "converted" or kind is not None):
        model_from_state_dict(module.state_dict(), kind or "mf", source=name)  # raises
    if found is None:
        return None, f"{name} is not one of the post's classes"
    converted = model_from_state_dict(module.state_dict(), found, source=name)
    mismatch = conversion_mismatch(converted, module, atol, rtol)
    if mismatch is None:
        return converted, f"{name} has the post's {found} names and scores"
    if path == "converted" or kind is not None:
        raise ConfigError(
            f"{name} has the post's {found} parameter names but scores differently "
            f"({mismatch}); use path='generic'"
        )
    return None, f"{name} has the post's {found} names but scores differently ({mismatch})"


def _checkpoint(model: Any, ids: IdsAndSeen, origin: dict[str, Any]) -> Checkpoint:
    return Checkpoint(
        model=model,
        user_map=ids.user_map,
        item_map=ids.item_map,
        seen_users=ids.seen_users,
        seen_items=ids.seen_items,
        config={"origin": origin},
        data={"source": ids.source, "seen_pairs": int(ids.seen_users.size)},
        item_names=None if ids.item_names is None else ids.item_names.names,
    )


def _export_converted(
    converted: BaseModel, module: nn.Module | None, reason: str, request: _Request
) -> ExportResult:
    ids = resolve_ids(converted.n_users, converted.n_items, request.ids)
    model = converted if module is None else against_user(converted, module)
    origin = {
        "api": "export_model",
        "path": "converted",
        "module": None if module is None else _qualname(module),
        "reference": "state dict" if module is None else "the user's module",
        "reason": reason,
    }
    ctx = contextlib.nullcontext() if module is None else eval_mode(module)
    with ctx:
        manifest = request.options.export(_checkpoint(model, ids, origin), request.out)
    return ExportResult("converted", converted.kind, Path(request.out), manifest, reason=reason)


def _qualname(module: nn.Module) -> str:
    cls = type(module)
    return f"{cls.__module__}.{cls.__qualname__}"


def _export_generic(module: nn.Module, reason: str, request: _Request) -> ExportResult:
    guess_u, guess_i = sizes_from_embeddings(module)
    n_users = request.n_users or request.ids.count("user") or guess_u
    n_items = request.n_items or request.ids.count("item") or guess_i
    if n_users is None or n_items is None:
        raise ConfigError(
            f"cannot tell how many users and items {type(module).__name__} scores; pass "
            "n_users= and n_items= (or user_ids= and item_ids=)"
        )
    wrapper = ModuleRecommender(module, int(n_users), int(n_items), block_pairs=request.block_pairs)
    ids = resolve_ids(wrapper.n_users, wrapper.n_items, request.ids)
    fmts = list(request.options.formats or ())
    with eval_mode(module):
        check_scores(wrapper)
        failed = probe_formats(wrapper, fmts)
        ok = [f for f in fmts if f not in failed]
        if failed and (not request.keep_partial or not ok):
            raise ExportError(_failure_line(module, failed))
        origin = {
            "api": "export_model",
            "path": "generic",
            "module": _qualname(module),
            "reference": "the user's module",
            "reason": reason,
            "failed_formats": failed,
        }
        notes = []
        missing = source_missing(module) if "torchscript" in ok else None
        if missing is not None:
            origin["torchscript"] = f"torch.jit.trace on (users, items): {missing}"
            notes.append(
                "torchscript: written with torch.jit.trace on the (users, items) signature "
                f"(torch.jit.script cannot read the source: {missing}); parity checks it"
            )
        manifest = _write_generic(wrapper, ids, origin, ok, request)  # adds to failed
    out = Path(request.out)
    return ExportResult(GENERIC_KIND, GENERIC_KIND, out, manifest, failed, reason, notes)


def _write_generic(
    wrapper: ModuleRecommender,
    ids: IdsAndSeen,
    origin: dict[str, Any],
    ok: list[str],
    request: _Request,
) -> Manifest:
    """The bundle of the formats the probe passed; when the ONNX conversion (the step not
    probed) fails, again without it (with ``keep_partial``), noted in ``origin``."""
    failed = origin["failed_formats"]
    try:
        options = replace(request.options, formats=tuple(ok))
        return options.export(_checkpoint(wrapper, ids, origin), request.out)
    except RecsysExportError:
        raise
    except Exception as exc:
        failed["onnx" if "onnx" in ok else ok[-1]] = "torch.onnx: " + first_line(exc)
        ok = [f for f in ok if f not in failed]
        if not request.keep_partial or not ok:
            raise ExportError(_failure_line(wrapper.module, failed)) from None
        origin["failed_formats"] = failed
        options = replace(request.options, formats=tuple(ok))
        return options.export(_checkpoint(wrapper, ids, origin), request.out)


def _failure_line(module: nn.Module, failed: dict[str, str]) -> str:
    by_reason: dict[str, list[str]] = {}
    for fmt, why in failed.items():
        by_reason.setdefault(why, []).append(fmt)
    parts = [f"{', '.join(fmts)}: {why}" for why, fmts in by_reason.items()]
    return (
        f"cannot export {type(module).__name__} to {', '.join(failed)} ("
        + "; ".join(parts)
        + "); keep the other formats with keep_partial=True (CLI: --keep-partial)"
    )


def show_progress(progress: bool | None) -> bool:
    """``progress``, or (None) whether stderr is a terminal."""
    if progress is None:
        return bool(getattr(sys.stderr, "isatty", lambda: False)())
    return bool(progress)
