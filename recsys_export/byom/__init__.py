"""Bring your own model: export PyTorch recommenders trained elsewhere.

:func:`export_model` takes a module (or a state dict) trained outside recsys-export and
writes the same verified bundle as ``recsys-export export`` does for our checkpoints.
Two paths:

``converted``
    A module or state dict with the parameter names and shapes of the post's classes
    (``user_factors``/``item_factors`` embeddings, optionally ``user_bias``/``item_bias``;
    for the dense net also ``linear1`` and ``linear2`` with one output) is converted to our
    :class:`~recsys_export.models.MatrixFactorization` or
    :class:`~recsys_export.models.DenseNet`, so the bundle gets everything ours get:
    fast-path kernels, in-graph top-k, the split DenseNet layer.
``generic``
    Any other ``nn.Module`` whose ``forward(users, items)`` returns one score per pair
    (``[N]`` or ``[N, 1]``). ``score`` is the module, ``score_all`` broadcasts users x
    items through it in bounded blocks (:class:`ModuleRecommender`), ``recommend`` is
    :func:`~recsys_export.models.topk_excluding` on that. The bundle has no fast-path
    kernels; the runtime runs its ONNX entry points.

Either way, parity is checked against the user's own module (not only our copy of it):
the eager reference of :func:`~recsys_export.parity.run_parity` is the user's ``forward``.
The path taken is recorded in the manifest under ``training.config.origin``.

Modules: :mod:`.convert` (the post's classes to ours), :mod:`.generic` (any pairwise
module as the three entry points), :mod:`.ids` (id maps and seen items) and this one
(:func:`export_model`, :func:`verify_module` and the CLI's helpers).
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch import nn

from recsys_export.byom.convert import (  # noqa: F401
    _conversion_mismatch,
    _key_problems,
    load_state_dict_file,
    model_from_state_dict,
    recognise,
)
from recsys_export.byom.files import ids_from_file, load_class, module_from_files  # noqa: F401
from recsys_export.byom.generic import (  # noqa: F401
    DEFAULT_BLOCK_PAIRS,
    GENERIC_KIND,
    MAX_ITEM_TILES,
    MIN_ITEM_BLOCK,
    ModuleRecommender,
    _against_user,
    _check_scores,
    _eval_mode,
    _first_line,
    _frozen_copy,
    _probe_formats,
    _sizes_from_embeddings,
    source_missing,
)
from recsys_export.byom.ids import IdsAndSeen, resolve_ids  # noqa: F401
from recsys_export.checkpoint import Checkpoint
from recsys_export.errors import (
    ConfigError,
    ExportError,
    RecsysExportError,
)
from recsys_export.export.build import export_bundle, parse_formats
from recsys_export.manifest import parse_precisions
from recsys_export.models import BaseModel

PATHS = ("auto", "converted", "generic")


# --------------------------------------------------------------------------- export


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
    manifest : dict
        The manifest as written.
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
    manifest: dict[str, Any]
    failed: dict[str, str] = field(default_factory=dict)
    reason: str = ""
    notes: list[str] = field(default_factory=list)

    @property
    def parity(self) -> dict[str, Any] | None:
        return self.manifest.get("parity")


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
    fmts = parse_formats(formats)
    from recsys_export.parity import check_tolerances

    check_tolerances(atol, rtol)
    opts: dict[str, Any] = {  # what the export steps below need, by name
        "n_users": n_users,
        "n_items": n_items,
        "user_ids": user_ids,
        "item_ids": item_ids,
        "ratings": ratings,
        "seen": seen,
        "user_col": user_col,
        "item_col": item_col,
        "item_names": item_names,
        "verify": verify,
        "keep_partial": keep_partial,
        "overwrite": overwrite,
        "external_data": external_data,
        "atol": atol,
        "rtol": rtol,
        "block_pairs": block_pairs,
        "progress": _show_progress(progress),
        "precision": parse_precisions(precision),
    }
    if not isinstance(module, nn.Module):
        if not isinstance(module, Mapping):
            raise ConfigError(f"expected an nn.Module or a state dict, got {type(module).__name__}")
        if path == "generic":
            raise ConfigError("a state dict has no forward: the generic path needs the module")
        kind = kind or recognise(module)
        if kind is None:
            model_from_state_dict(module, "mf")  # raises, listing what does not match
        converted = model_from_state_dict(module, kind or "mf")
        return _export_converted(
            converted, None, out, "state dict with the post's names", fmts, opts
        )
    name = type(module).__name__
    reason = ""
    if path != "generic":
        found = kind or recognise(module)
        if found is None and (path == "converted" or kind is not None):
            model_from_state_dict(module.state_dict(), kind or "mf", source=name)  # raises
        if found is not None:
            converted = model_from_state_dict(module.state_dict(), found, source=name)
            mismatch = _conversion_mismatch(converted, module, atol, rtol)
            if mismatch is None:
                return _export_converted(
                    converted,
                    module,
                    out,
                    f"{name} has the post's {found} names and scores",
                    fmts,
                    opts,
                )
            if path == "converted" or kind is not None:
                raise ConfigError(
                    f"{name} has the post's {found} parameter names but scores differently "
                    f"({mismatch}); use path='generic'"
                )
            reason = f"{name} has the post's {found} names but scores differently ({mismatch})"
    return _export_generic(
        module, out, reason or f"{name} is not one of the post's classes", fmts, opts
    )


def _ids(opts: dict[str, Any], n_users: int, n_items: int) -> IdsAndSeen:
    return resolve_ids(
        n_users,
        n_items,
        user_ids=opts["user_ids"],
        item_ids=opts["item_ids"],
        ratings=opts["ratings"],
        seen=opts["seen"],
        user_col=opts["user_col"],
        item_col=opts["item_col"],
        item_names=opts["item_names"],
    )


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


def _export(ckpt: Checkpoint, out: str | Path, fmts: list[str], opts: dict[str, Any]) -> dict:
    return export_bundle(
        ckpt,
        out,
        formats=fmts,
        overwrite=opts["overwrite"],
        external_data=opts["external_data"],
        verify=opts["verify"],
        atol=opts["atol"],
        rtol=opts["rtol"],
        progress=opts["progress"],
        precision=opts["precision"],
    )


def _export_converted(
    converted: BaseModel,
    module: nn.Module | None,
    out: str | Path,
    reason: str,
    fmts: list[str],
    opts: dict[str, Any],
) -> ExportResult:
    ids = _ids(opts, converted.n_users, converted.n_items)
    model = converted if module is None else _against_user(converted, module)
    origin = {
        "api": "export_model",
        "path": "converted",
        "module": None if module is None else _qualname(module),
        "reference": "state dict" if module is None else "the user's module",
        "reason": reason,
    }
    ctx = contextlib.nullcontext() if module is None else _eval_mode(module)
    with ctx:
        manifest = _export(_checkpoint(model, ids, origin), out, fmts, opts)
    return ExportResult("converted", converted.kind, Path(out), manifest, reason=reason)


def _qualname(module: nn.Module) -> str:
    cls = type(module)
    return f"{cls.__module__}.{cls.__qualname__}"


def _export_generic(
    module: nn.Module, out: str | Path, reason: str, fmts: list[str], opts: dict[str, Any]
) -> ExportResult:
    guess_u, guess_i = _sizes_from_embeddings(module)
    n_users = opts["n_users"] or _count(opts["user_ids"]) or guess_u
    n_items = opts["n_items"] or _count(opts["item_ids"]) or guess_i
    if n_users is None or n_items is None:
        raise ConfigError(
            f"cannot tell how many users and items {type(module).__name__} scores; pass "
            "n_users= and n_items= (or user_ids= and item_ids=)"
        )
    wrapper = ModuleRecommender(module, int(n_users), int(n_items), block_pairs=opts["block_pairs"])
    ids = _ids(opts, wrapper.n_users, wrapper.n_items)
    with _eval_mode(module):
        _check_scores(wrapper)
        failed = _probe_formats(wrapper, fmts)
        ok = [f for f in fmts if f not in failed]
        if failed and (not opts["keep_partial"] or not ok):
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
        try:
            manifest = _export(_checkpoint(wrapper, ids, origin), out, ok, opts)
        except RecsysExportError:
            raise
        except Exception as exc:  # the ONNX conversion is the step not probed above
            failed["onnx" if "onnx" in ok else ok[-1]] = "torch.onnx: " + _first_line(exc)
            ok = [f for f in ok if f not in failed]
            if not opts["keep_partial"] or not ok:
                raise ExportError(_failure_line(module, failed)) from None
            origin["failed_formats"] = failed
            manifest = _export(_checkpoint(wrapper, ids, origin), out, ok, opts)
    return ExportResult(GENERIC_KIND, GENERIC_KIND, Path(out), manifest, failed, reason, notes)


def _count(ids: Any) -> int | None:
    return None if ids is None else len(ids)


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


def verify_module(
    module: nn.Module,
    bundle: str | Path,
    *,
    atol: float | None = None,
    rtol: float | None = None,
    budget: int | None = None,
    full: bool = False,
    progress: bool | None = None,
) -> Any:
    """Parity of a written generic bundle against the user's module (nothing recorded).

    The plan, the float64 reference and its bound are those of the export
    (:func:`export_model`): a sample of rows sized by the module's cost per pair
    (``budget``, ``full`` as for ``recsys-export verify``), calls sized by its memory
    per pair.

    Returns
    -------
    recsys_export.parity.ParityReport
    """
    from recsys_export.bundle import Bundle
    from recsys_export.parity import (
        CHECKED_BACKENDS,
        bundle_seen,
        check_tolerances,
        load_backends,
        planned_parity,
    )

    check_tolerances(atol, rtol)
    b = Bundle.load(bundle)
    m = b.manifest["model"]
    hp = m.get("hyperparameters") or {}
    wrapper = ModuleRecommender(
        module,
        int(m["n_users"]),
        int(m["n_items"]),
        block_pairs=int(hp.get("block_pairs", DEFAULT_BLOCK_PAIRS)),
    )
    backends = load_backends(b.root, b.manifest, CHECKED_BACKENDS)
    seen = bundle_seen(b.root, b.manifest)
    with _eval_mode(module):
        return planned_parity(
            wrapper,  # type: ignore[arg-type]
            backends,
            seen,
            atol,
            rtol,
            budget,
            full,
            True,
            _show_progress(progress),
        )


def _show_progress(progress: bool | None) -> bool:
    """``progress``, or (None) whether stderr is a terminal."""
    if progress is None:
        return bool(getattr(sys.stderr, "isatty", lambda: False)())
    return bool(progress)


__all__ = [
    "GENERIC_KIND",
    "ExportResult",
    "ModuleRecommender",
    "export_model",
    "load_state_dict_file",
    "model_from_state_dict",
    "recognise",
    "resolve_ids",
    "verify_module",
]
