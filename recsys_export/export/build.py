"""Export a checkpoint to a bundle: every format, written atomically, then verified.

:func:`export_bundle` feeds one frozen inference module (:mod:`.frozen`) to the format
writers (:mod:`.formats`) and the fast-path kernel builder (:mod:`.kernels`), writes the
bundle through :class:`~recsys_export.bundle.BundleWriter` and (by default) runs the
parity pass (:mod:`recsys_export.parity`) on the staged bundle before it is moved into
place.
"""

from __future__ import annotations

import contextlib
import io
import time
from collections.abc import Iterator, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from recsys_export import __version__
from recsys_export.bundle import Bundle, BundleWriter
from recsys_export.bundle.files import check_item_names
from recsys_export.bundle.schema import (
    ITEM_NAMES_FILE,
    KERNELS_FALLBACK,
    Formats,
    KernelsFallback,
    Manifest,
    ModelSection,
    OnnxSection,
    Pt2Section,
    SeenSection,
    Timings,
    TorchScriptSection,
    TrainingSection,
    VariantSection,
    Versions,
    parse_precisions,
)
from recsys_export.core.defaults import resolve_formats as parse_formats
from recsys_export.errors import BundleError, CheckpointError
from recsys_export.export.formats import (
    ONNX_OPSET,
    export_programs,
    onnx_sources,
    write_onnx,
    write_pt2,
    write_torchscript,
)
from recsys_export.export.frozen import inference_module
from recsys_export.export.kernels import write_kernels
from recsys_export.export.precision import write_variant
from recsys_export.models.checkpoint import Checkpoint
from recsys_export.torch_runtime.io import check_finite_weights

REFERENCE_FILE = "reference/state_dict.pt"
#: Where an export writes the seen-items CSR.
SEEN = SeenSection("ids/seen_indptr.npy", "ids/seen_items.npy")


def _seen_csr(ckpt: Checkpoint) -> tuple[np.ndarray, np.ndarray]:
    order = np.lexsort((ckpt.seen_items, ckpt.seen_users))
    users, items = ckpt.seen_users[order], ckpt.seen_items[order]
    indptr = np.zeros(ckpt.model.n_users + 1, dtype=np.int64)
    indptr[1:] = np.cumsum(np.bincount(users, minlength=ckpt.model.n_users))
    return indptr, items.astype(np.int64)


def _npy_bytes(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, arr, allow_pickle=False)
    return buf.getvalue()


def _check_finite(ckpt: Checkpoint) -> None:
    check_finite_weights(ckpt.model.state_dict(), "refusing to export", "; retrain")


def _item_names(ckpt: Checkpoint) -> list[str | None] | None:
    """The checkpoint's item names, validated against the model's item count."""
    if ckpt.item_names is None:
        return None
    try:
        return check_item_names(ckpt.item_names, ckpt.model.n_items)
    except ValueError as exc:
        raise CheckpointError(f"refusing to export: {exc}") from None


@contextlib.contextmanager
def _disk_errors(out: str | Path) -> Iterator[None]:
    """Turn an OSError while writing the bundle (a full disk) into a :class:`BundleError`.

    Enter it outside the :class:`BundleWriter` so that the temporary directory is
    removed first.
    """
    try:
        yield
    except OSError as exc:
        reason = exc.strerror or str(exc)
        raise BundleError(
            f"cannot write bundle {out}: {reason}"
            + (f" ({exc.filename})" if exc.filename else "")
            + "; nothing was written, free some space or choose another --out"
        ) from None


def export_bundle(
    ckpt: Checkpoint,
    out: str | Path,
    *,
    formats: str | Sequence[str] | None = None,
    overwrite: bool = False,
    external_data: bool | None = None,
    verify: bool = True,
    atol: float | None = None,
    rtol: float | None = None,
    budget: int | None = None,
    full: bool = False,
    progress: bool = False,
    precision: str | Sequence[str] = "fp32",
) -> Manifest:
    """Export a checkpoint to a bundle directory, atomically, and verify it.

    Parameters
    ----------
    ckpt : Checkpoint
        The trained model with its id maps and seen items.
    out : path
        Bundle directory to create (written to a temporary sibling, then renamed).
    formats : str or sequence, optional
        Subset of ``onnx``, ``torchscript``, ``pt2``, or ``all`` (:func:`parse_formats`);
        default ``onnx`` and ``torchscript`` (``pt2`` is opt-in).
    overwrite : bool
        Replace an existing bundle at ``out``.
    external_data : bool, optional
        Force (True) or forbid (False) ONNX external weight files; None decides by size.
    verify : bool
        Run the parity checks (:mod:`recsys_export.parity`, the torch-free runtime
        included) on the staged bundle and record ``parity.json``. On a failure
        :class:`ParityError` is raised before the bundle is moved into place: nothing
        that fails parity is left behind, and an existing bundle at ``out`` is kept.
    atol, rtol : float, optional
        Explicit parity tolerances instead of the float32 error bound (docs/parity.md).
    budget : int, optional
        Pair budget of the verification plan (:func:`recsys_export.parity.plan_parity`):
        the whole matrix while ``n_users * n_items`` fits it, a recorded sample beyond.
    full : bool
        Verify every user's whole row whatever the budget.
    precision : str or sequence of str
        ``fp16``, ``int8`` or both (``"fp16,int8"``) also write approximate variants
        beside the exact graphs (:mod:`recsys_export.export.precision`), judged on recall
        of the exact top-k lists when ``verify`` (:mod:`recsys_export.parity.approx`);
        ``fp32`` (default): none.

    Returns
    -------
    Manifest
        The manifest as written (:class:`~recsys_export.bundle.schema.Manifest`: files
        with checksums, ``timings.export_seconds`` per format and, when verified, the
        ``parity`` summary).
    """
    from recsys_export.parity import check_tolerances

    check_tolerances(atol, rtol)
    variants = parse_precisions(precision)
    fmts = parse_formats(formats)
    _check_finite(ckpt)
    if verify and budget is not None:
        from recsys_export.plan import check_budget

        check_budget(budget)  # a user error before anything is written
    model = ckpt.model.eval()
    module = inference_module(model)
    timings: dict[str, float] = {}
    with _disk_errors(out), BundleWriter(out, overwrite=overwrite) as writer:
        _write_data(writer, ckpt)
        formats_written = _write_formats(
            writer, module, model, fmts, variants, external_data, timings
        )
        manifest = build_manifest(ckpt, formats_written, timings)
        if verify:
            opts = {"atol": atol, "rtol": rtol, "budget": budget, "full": full}
            manifest = _verify(writer, manifest, ckpt, progress, opts, variants)
        dest = writer.commit(manifest.to_dict())
    return Bundle.load(dest, verify=False).manifest


def _write_data(writer: BundleWriter, ckpt: Checkpoint) -> None:
    """The id maps, item names, seen items and the eager reference weights (which make
    ``verify`` work from the bundle alone)."""
    writer.write_id_maps(ckpt.user_map, ckpt.item_map)
    names = _item_names(ckpt)
    if names is not None:
        writer.write_json(ITEM_NAMES_FILE, names, "item_names")
    indptr, seen = _seen_csr(ckpt)
    writer.write_bytes(SEEN.indptr, _npy_bytes(indptr), "seen:indptr")
    writer.write_bytes(SEEN.items, _npy_bytes(seen), "seen:items")
    state = {k: v.detach().clone() for k, v in ckpt.model.state_dict().items()}
    buf = io.BytesIO()  # torch.save to a file raises RuntimeError, not OSError, on a full disk
    torch.save(state, buf)
    writer.write_bytes(REFERENCE_FILE, buf.getvalue(), "reference:state_dict")


def _write_formats(
    writer: BundleWriter,
    module: torch.nn.Module,
    model: Any,
    fmts: list[str],
    variants: list[str],
    external_data: bool | None,
    timings: dict[str, float],
) -> Formats:
    """Write each format of ``fmts`` (and the approximate ``variants``) from the frozen
    ``module`` of ``model``; seconds per format into ``timings``."""
    kind, n_users, n_items = model.kind, model.n_users, model.n_items
    # programs a caller already exported from this very module (byom's probe)
    programs = getattr(module, "exported_programs", None)
    if "pt2" in fmts and programs is None:
        t0 = time.perf_counter()
        programs = export_programs(module, n_users, n_items)
        timings["torch.export"] = time.perf_counter() - t0
    torchscript = pt2 = onnx = None
    if "torchscript" in fmts:
        t0 = time.perf_counter()
        torchscript = TorchScriptSection("torchscript/model.pt")
        write_torchscript(module, writer.path(torchscript.module))
        writer.add(torchscript.module, "torchscript:module")
        timings["torchscript"] = time.perf_counter() - t0
    if "pt2" in fmts:
        assert programs is not None
        t0 = time.perf_counter()
        pt2 = Pt2Section({entry: f"pt2/{entry}.pt2" for entry in programs})
        for entry, program in programs.items():
            write_pt2(program, writer.path(pt2.programs[entry]))
            writer.add(pt2.programs[entry], f"pt2:{entry}")
        timings["pt2"] = time.perf_counter() - t0
    if "onnx" in fmts:
        t0 = time.perf_counter()
        onnx = _write_onnx(writer, module, model, programs, external_data)
        timings["onnx"] = time.perf_counter() - t0
    written: dict[str, VariantSection] = {}
    for name in variants:
        t0 = time.perf_counter()
        variant = write_variant(module, kind, name, writer, onnx, external_data=external_data)
        if variant is not None:
            written[name] = variant
        timings[name] = time.perf_counter() - t0
    if onnx is not None and written:  # approximate variants, loaded only when asked for
        onnx = replace(onnx, variants=written)
    return Formats(onnx=onnx, torchscript=torchscript, pt2=pt2)


def _write_onnx(
    writer: BundleWriter,
    module: torch.nn.Module,
    model: Any,
    programs: dict[str, Any] | None,
    external_data: bool | None,
) -> OnnxSection:
    """The entry-point graphs and the runtime's fast-path kernels."""
    kind, graphs = model.kind, {}
    sources = onnx_sources(module, kind, model.n_users, model.n_items, programs)
    for entry, source in sources.items():
        rel = f"onnx/{entry}.onnx"
        written = write_onnx(
            source, entry, writer.path(rel), model_kind=kind, external_data=external_data
        )
        writer.add(rel, f"onnx:{entry}")
        for extra in written[1:]:
            writer.add(f"onnx/{extra.name}", f"onnx-data:{entry}")
        graphs[entry] = rel
    kernels = write_kernels(module, kind, writer, external_data=external_data)
    return OnnxSection(graphs, opset=ONNX_OPSET, kernels=kernels)


def judge_staged_variants(
    writer: BundleWriter, manifest: Manifest, precisions: list[str]
) -> tuple[dict[str, Any], Manifest]:
    """Judge the staged bundle's variants against its exact graphs
    (:func:`recsys_export.parity.approx.judge_variant`): ``{precision: result}`` and the
    manifest with each result recorded as its variant's ``quality``."""
    from recsys_export.parity.approx import judge_variant

    root = writer.stage(manifest.to_dict())
    onnx = manifest.require_onnx("its variants need them")
    results = {p: judge_variant(root, p) for p in precisions}
    judged = {p: replace(v, quality=results.get(p, v.quality)) for p, v in onnx.variants.items()}
    formats = replace(manifest.formats, onnx=replace(onnx, variants=judged))
    return results, manifest.replace(formats=formats)


def _verify(
    writer: BundleWriter,
    manifest: Manifest,
    ckpt: Checkpoint,
    progress: bool,
    opts: dict[str, Any],
    variants: list[str],
) -> Manifest:
    """Parity of the staged bundle (the kernels' fallback included), recorded in the
    manifest (returned) and ``parity.json``; :class:`ParityError` when it fails (the
    caller's ``with`` block then deletes the staged bundle). A passing bundle's
    approximate ``variants`` are then judged (:func:`judge_staged_variants`) into the
    report."""
    from recsys_export.parity import verify_staged_bundle

    report = verify_staged_bundle(writer, manifest, ckpt, progress=progress, **opts)
    if _kernels_alone_failed(report, manifest):
        manifest, report = _without_kernels(writer, manifest, ckpt, report, progress, opts)
    manifest = manifest.replace(parity=report.summary())
    doc = report.to_dict()
    if not report.passed:
        writer.write_json("parity.json", doc, "parity:report")
        report.raise_failure()
    if variants:
        doc["variants"], manifest = judge_staged_variants(writer, manifest, variants)
    writer.write_json("parity.json", doc, "parity:report")
    return manifest


#: Runtime rows the fast-path kernels serve (``score`` always runs its ONNX graph).
_KERNEL_ROWS = {("runtime", "score_all"), ("runtime", "recommend")}


def _kernels_alone_failed(report: Any, manifest: Manifest) -> bool:
    """Whether parity failed only where the runtime ran its fast-path kernels."""
    failed = {(r["format"], r["entry_point"]) for r in report.rows() if not r["passed"]}
    onnx = manifest.formats.onnx
    has_kernels = onnx is not None and onnx.kernels is not None
    return has_kernels and bool(failed) and failed <= _KERNEL_ROWS


def _without_kernels(
    writer: BundleWriter,
    manifest: Manifest,
    ckpt: Checkpoint,
    report: Any,
    progress: bool,
    verify_opts: dict[str, Any],
) -> tuple[Manifest, Any]:
    """The runtime's fast paths failed parity where the portable graphs passed: drop
    them from the manifest (``formats.onnx.kernels_fallback`` records why; the files
    stay in the bundle), verify the runtime again on the entry-point graphs and return
    the manifest and the report with its runtime rows replaced and one line saying so
    (``notes``)."""
    onnx = manifest.require_onnx()
    assert onnx.kernels is not None
    failed = [
        f"{r['entry_point']} (err/bound {r['max_ratio']:.3g})"
        for r in report.rows()
        if not r["passed"]
    ]
    reason = "the runtime's fast-path kernels failed parity: " + ", ".join(failed)
    fallback = KernelsFallback(reason, onnx.kernels.to_dict())
    onnx = replace(onnx, kernels=None, kernels_fallback=fallback)
    formats = replace(manifest.formats, onnx=onnx)
    manifest = manifest.replace(formats=formats)
    from recsys_export.parity import verify_staged_bundle

    again = verify_staged_bundle(
        writer, manifest, ckpt, progress=progress, formats=["runtime"], **verify_opts
    )
    report.comparisons = [c for c in report.comparisons if c.format != "runtime"]
    report.comparisons += again.comparisons
    report.timings["runtime (portable graphs)"] = again.timings.get("runtime", {})
    report.notes.append(
        f"runtime: {reason}; it serves this bundle from the portable ONNX graphs "
        f"(manifest formats.onnx.{KERNELS_FALLBACK})"
    )
    return manifest, report


def build_manifest(ckpt: Checkpoint, formats: Formats, timings: dict[str, float]) -> Manifest:
    """The manifest of a checkpoint's export (the bundle writer adds files and checksums)."""
    import onnx
    import onnxruntime

    model = ckpt.model
    return Manifest.build(
        model=ModelSection(model.kind, model.n_users, model.n_items, model.hyperparameters()),
        formats=formats,
        seen=SEEN,
        item_names_file=ITEM_NAMES_FILE if ckpt.item_names is not None else None,
        reference_weights=REFERENCE_FILE,
        versions=Versions(
            recsys_export=__version__,
            torch=torch.__version__,
            onnx=onnx.__version__,
            onnxruntime=onnxruntime.__version__,
            numpy=np.__version__,
        ),
        training=TrainingSection(ckpt.config, ckpt.metrics, ckpt.data),
        timings=Timings(timings),
    )
