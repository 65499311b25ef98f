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
from pathlib import Path
from typing import Any

import numpy as np
import torch

from recsys_export import __version__
from recsys_export.bundle import Bundle, BundleWriter
from recsys_export.checkpoint import Checkpoint, check_finite_weights
from recsys_export.errors import BundleError, CheckpointError, ConfigError
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
from recsys_export.items import ITEM_NAMES_FILE, check_item_names
from recsys_export.manifest import (
    DEFAULT_FORMATS,
    ENTRY_POINTS,
    FORMATS,
    KERNELS_FALLBACK,
    entry_point_spec,
    parse_precisions,
)

REFERENCE_FILE = "reference/state_dict.pt"


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


def parse_formats(formats: str | Sequence[str] | None) -> list[str]:
    """Validate a format list.

    Parameters
    ----------
    formats : str or sequence of str or None
        ``"onnx,torchscript,pt2"`` or a sequence of names; ``all`` stands for every
        format (:data:`~recsys_export.manifest.FORMATS`); None gives
        :data:`~recsys_export.manifest.DEFAULT_FORMATS` (``pt2`` is opt-in).

    Returns
    -------
    list of str
        The formats named, in :data:`~recsys_export.manifest.FORMATS` order.

    Raises
    ------
    ConfigError
        An unknown name, or an empty list.
    """
    if formats is None:
        return list(DEFAULT_FORMATS)
    items = [f.strip() for f in formats.split(",")] if isinstance(formats, str) else list(formats)
    items = [f for f in items if f]
    if "all" in items:
        items = [f for f in items if f != "all"] + list(FORMATS)
    unknown = [f for f in items if f not in FORMATS]
    if unknown or not items:
        raise ConfigError(
            f"unknown export format(s) {unknown or items}; choose from "
            f"{', '.join(FORMATS)} or all (every format)"
        )
    return [f for f in FORMATS if f in items]


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
) -> dict[str, Any]:
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
    dict
        The manifest as written (``files`` with checksums included), with
        ``export_seconds`` per format under ``timings`` and, when verified, the ``parity``
        summary.
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
    n_users, n_items = model.n_users, model.n_items
    timings: dict[str, float] = {}
    files: dict[str, dict[str, Any]] = {}
    with _disk_errors(out), BundleWriter(out, overwrite=overwrite) as writer:
        writer.write_id_maps(ckpt.user_map, ckpt.item_map)
        names = _item_names(ckpt)
        if names is not None:
            writer.write_json(ITEM_NAMES_FILE, names, "item_names")
        indptr, seen = _seen_csr(ckpt)
        writer.write_bytes("ids/seen_indptr.npy", _npy_bytes(indptr), "seen:indptr")
        writer.write_bytes("ids/seen_items.npy", _npy_bytes(seen), "seen:items")
        # The eager reference (weights only) makes `verify` work from the bundle alone.
        state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        buf = io.BytesIO()  # torch.save to a file raises RuntimeError, not OSError, on a full disk
        torch.save(state, buf)
        writer.write_bytes(REFERENCE_FILE, buf.getvalue(), "reference:state_dict")
        # programs a caller already exported from this very module (byom's probe)
        programs = getattr(module, "exported_programs", None)
        if "pt2" in fmts and programs is None:
            t0 = time.perf_counter()
            programs = export_programs(module, n_users, n_items)
            timings["torch.export"] = time.perf_counter() - t0
        if "torchscript" in fmts:
            t0 = time.perf_counter()
            rel = "torchscript/model.pt"
            write_torchscript(module, writer.path(rel))
            writer.add(rel, "torchscript:module")
            files["torchscript"] = {"module": rel, "methods": list(ENTRY_POINTS)}
            timings["torchscript"] = time.perf_counter() - t0
        if "pt2" in fmts:
            assert programs is not None
            t0 = time.perf_counter()
            files["pt2"] = {}
            for entry, program in programs.items():
                rel = f"pt2/{entry}.pt2"
                write_pt2(program, writer.path(rel))
                writer.add(rel, f"pt2:{entry}")
                files["pt2"][entry] = rel
            timings["pt2"] = time.perf_counter() - t0
        if "onnx" in fmts:
            t0 = time.perf_counter()
            files["onnx"] = {}
            sources = onnx_sources(module, model.kind, n_users, n_items, programs)
            for entry, source in sources.items():
                rel = f"onnx/{entry}.onnx"
                written = write_onnx(
                    source,
                    entry,
                    writer.path(rel),
                    model_kind=model.kind,
                    external_data=external_data,
                )
                writer.add(rel, f"onnx:{entry}")
                for extra in written[1:]:
                    writer.add(f"onnx/{extra.name}", f"onnx-data:{entry}")
                files["onnx"][entry] = rel
            files["onnx_kernels"] = write_kernels(
                module, model.kind, writer, external_data=external_data
            )
            timings["onnx"] = time.perf_counter() - t0
        files["onnx_variants"] = {}
        for name in variants:
            t0 = time.perf_counter()
            files["onnx_variants"][name] = write_variant(
                module, model.kind, name, writer, files, external_data=external_data
            )
            timings[name] = time.perf_counter() - t0
        manifest = build_manifest(ckpt, files, timings)
        if verify:
            opts = {"atol": atol, "rtol": rtol, "budget": budget, "full": full}
            _verify(writer, manifest, ckpt, progress, opts, variants)
        dest = writer.commit(manifest)
    return Bundle.load(dest, verify=False).manifest


def judge_staged_variants(
    writer: BundleWriter, manifest: dict[str, Any], precisions: list[str]
) -> dict[str, Any]:
    """Judge the staged bundle's variants against its exact graphs
    (:func:`recsys_export.parity.approx.judge_variant`), record each result as the
    variant's ``quality`` in ``manifest`` and return ``{precision: result}``."""
    from recsys_export.parity.approx import judge_variant

    root = writer.stage(manifest)
    out = {}
    for precision in precisions:
        out[precision] = judge_variant(root, precision)
        manifest["formats"]["onnx"]["variants"][precision]["quality"] = out[precision]
    return out


def _verify(
    writer: BundleWriter,
    manifest: dict[str, Any],
    ckpt: Checkpoint,
    progress: bool,
    opts: dict[str, Any],
    variants: list[str],
) -> None:
    """Parity of the staged bundle (the kernels' fallback included), recorded in the
    manifest and ``parity.json``; :class:`ParityError` when it fails (the caller's
    ``with`` block then deletes the staged bundle). A passing bundle's approximate
    ``variants`` are then judged (:func:`judge_staged_variants`) into the report."""
    from recsys_export.parity import verify_staged_bundle

    report = verify_staged_bundle(writer, manifest, ckpt, progress=progress, **opts)
    if _kernels_alone_failed(report, manifest):
        report = _without_kernels(writer, manifest, ckpt, report, progress, opts)
    manifest["parity"] = report.summary()
    doc = report.to_dict()
    if not report.passed:
        writer.write_json("parity.json", doc, "parity:report")
        report.raise_failure()
    if variants:
        doc["variants"] = judge_staged_variants(writer, manifest, variants)
    writer.write_json("parity.json", doc, "parity:report")


#: Runtime rows the fast-path kernels serve (``score`` always runs its ONNX graph).
_KERNEL_ROWS = {("runtime", "score_all"), ("runtime", "recommend")}


def _kernels_alone_failed(report: Any, manifest: dict[str, Any]) -> bool:
    """Whether parity failed only where the runtime ran its fast-path kernels."""
    failed = {(r["format"], r["entry_point"]) for r in report.rows() if not r["passed"]}
    has_kernels = bool(manifest["formats"].get("onnx", {}).get("kernels"))
    return has_kernels and bool(failed) and failed <= _KERNEL_ROWS


def _without_kernels(
    writer: BundleWriter,
    manifest: dict[str, Any],
    ckpt: Checkpoint,
    report: Any,
    progress: bool,
    verify_opts: dict[str, Any],
) -> Any:
    """The runtime's fast paths failed parity where the portable graphs passed: drop
    them from the manifest (``formats.onnx.kernels_fallback`` records why; the files
    stay in the bundle), verify the runtime again on the entry-point graphs and return
    the report with its runtime rows replaced and one line saying so (``notes``)."""
    onnx_fmt = manifest["formats"]["onnx"]
    failed = [
        f"{r['entry_point']} (err/bound {r['max_ratio']:.3g})"
        for r in report.rows()
        if not r["passed"]
    ]
    reason = "the runtime's fast-path kernels failed parity: " + ", ".join(failed)
    onnx_fmt[KERNELS_FALLBACK] = {"reason": reason, "kernels": onnx_fmt.pop("kernels")}
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
    return report


def build_manifest(
    ckpt: Checkpoint, files: dict[str, Any], timings: dict[str, float]
) -> dict[str, Any]:
    """Manifest keys owned by the exporter (the bundle writer adds files and checksums)."""
    import onnx
    import onnxruntime

    model = ckpt.model
    formats: dict[str, Any] = {}
    if "onnx" in files:
        formats["onnx"] = {"opset": ONNX_OPSET, "graphs": files["onnx"]}
        if files.get("onnx_kernels"):
            # optional fast paths for the runtime (older bundles lack them)
            formats["onnx"]["kernels"] = files["onnx_kernels"]
        if files.get("onnx_variants"):  # approximate variants, loaded only when asked for
            formats["onnx"]["variants"] = files["onnx_variants"]
    if "torchscript" in files:
        formats["torchscript"] = files["torchscript"]
    if "pt2" in files:
        formats["pt2"] = {"programs": files["pt2"]}
    return {
        "model": {
            "kind": model.kind,
            "hyperparameters": model.hyperparameters(),
            "n_users": model.n_users,
            "n_items": model.n_items,
        },
        "entry_points": entry_point_spec(model.n_items),
        "formats": formats,
        "seen": {"indptr": "ids/seen_indptr.npy", "items": "ids/seen_items.npy"},
        "item_names": ITEM_NAMES_FILE if ckpt.item_names is not None else None,
        "reference": {"state_dict": REFERENCE_FILE},
        "versions": {
            "recsys_export": __version__,
            "torch": torch.__version__,
            "onnx": onnx.__version__,
            "onnxruntime": onnxruntime.__version__,
            "numpy": np.__version__,
        },
        "training": {"config": ckpt.config, "metrics": ckpt.metrics, "data": ckpt.data},
        "timings": {"export_seconds": {k: round(v, 3) for k, v in timings.items()}},
        "parity": None,
    }
