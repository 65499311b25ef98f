"""Verifying a bundle: one being written (``export``, before it replaces anything) or one
on disk (``verify``), against its eager reference, with the plan of
:mod:`recsys_export.plan`."""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from recsys_export.bundle import Bundle, BundleWriter, update_bundle
from recsys_export.bundle.schema import FORMATS, Manifest
from recsys_export.errors import BundleError, CheckpointError
from recsys_export.models import BaseModel, build_model
from recsys_export.models.checkpoint import Checkpoint, load_checkpoint
from recsys_export.parity.backends import CHECKED_BACKENDS, Backend, load_backends
from recsys_export.parity.report import Comparison, ParityReport, check_tolerances
from recsys_export.parity.run import call_users, run_parity
from recsys_export.plan import BATCH_BYTES, plan_parity
from recsys_export.torch_runtime.io import load_weights_only

__all__ = [
    "bundle_seen",
    "planned_parity",
    "reference_model",
    "verify_bundle",
    "verify_staged_bundle",
]


def reference_model(bundle: Bundle) -> BaseModel:
    """Rebuild the eager model from a bundle's reference state dict (weights only).

    Raises
    ------
    BundleError
        The bundle has no reference weights (its own module: ``byom``), or they do not
        load into the manifest's model.
    """
    manifest, where = bundle.manifest, f"bundle {bundle.root}"
    model_entry = manifest.model
    if model_entry.is_generic:  # recsys_export.byom's generic path
        raise BundleError(
            f"{where} was exported from your own module: its eager reference is that "
            "module; verify it from Python with recsys_export.byom.verify_module(module, bundle)"
        )
    ref = manifest.reference_weights
    if ref is None:
        raise BundleError(
            f"{where} has no eager reference weights; pass --checkpoint CKPT to verify"
        )
    try:
        state = load_weights_only(
            bundle.file(ref),
            refusal="the bundle's reference weights must be a plain state dict",
            unreadable="state dict",
        )
    except CheckpointError as exc:
        raise BundleError(f"{where}: {exc}; export the bundle again") from None
    kind = model_entry.kind
    try:
        model = build_model(kind, **model_entry.hyperparameters)
        model.load_state_dict(state)
    except (RuntimeError, TypeError, ValueError, AttributeError) as exc:
        detail = " ".join(str(exc).split())[:240]
        raise BundleError(
            f"{where}: its reference weights do not fit the manifest's {kind} model "
            f"({detail}); the bundle is inconsistent, export it again"
        ) from None
    return model.eval()


def bundle_seen(bundle: Bundle) -> tuple[np.ndarray, np.ndarray] | None:
    """The bundle's seen-items CSR (validated: :class:`BundleError`), or None."""
    return bundle.seen_csr() if bundle.manifest.seen is not None else None


def verify_staged_bundle(
    writer: BundleWriter,
    manifest: Manifest,
    ckpt: Checkpoint,
    *,
    atol: float | None = None,
    rtol: float | None = None,
    budget: int | None = None,
    full: bool = False,
    progress: bool = False,
    formats: Iterable[str] = CHECKED_BACKENDS,
) -> ParityReport:
    """Parity of a bundle still being written, before it replaces anything.

    The plan is :func:`plan_parity` with ``budget`` and ``full``.

    The manifest is staged into the writer's temporary directory
    (:meth:`~recsys_export.bundle.BundleWriter.stage`), so the torch-free runtime, fast
    paths included, is checked on the complete bundle too. A failure therefore never
    touches ``dest``: a previous bundle there stays as it was. ``formats`` narrows the
    backends (the eager float32 row is checked only with every default one).
    """
    staged = Bundle.load(writer.stage(manifest.to_dict()), verify=False)  # just checksummed
    formats = list(formats)
    backends = load_backends(staged, formats)
    return planned_parity(
        ckpt.model,
        backends,
        bundle_seen(staged),
        atol,
        rtol,
        budget,
        full,
        True,
        progress,
        eager=set(CHECKED_BACKENDS) <= set(formats),
    )


def planned_parity(
    model: BaseModel,
    backends: dict[str, Backend],
    seen: tuple[np.ndarray, np.ndarray] | None,
    atol: float | None,
    rtol: float | None,
    budget: int | None,
    full: bool,
    full_matrix: bool,
    progress: bool,
    device: torch.device | None = None,
    eager: bool = True,
) -> ParityReport:
    """:func:`run_parity` over :func:`plan_parity`'s plan for ``model`` (its
    ``pair_cost`` for generic modules) with calls sized by :func:`call_users`."""
    cost = getattr(model, "pair_cost", None)
    plan = plan_parity(
        model.n_users,
        model.n_items,
        seen=seen,
        budget=budget,
        full=full,
        pair_cost=int(cost()) if callable(cost) else 1,
    )
    return run_parity(
        model,
        backends,
        model.n_users,
        model.n_items,
        seen=seen,
        atol=atol,
        rtol=rtol,
        full_matrix=full_matrix,
        plan=plan,
        max_call_users=call_users(model),
        max_batch_users=call_users(model, BATCH_BYTES),
        progress=progress,
        device=device,
        eager=eager,
    )


def verify_bundle(
    path: str | Path,
    *,
    checkpoint: str | Path | None = None,
    formats: Iterable[str] | None = None,
    atol: float | None = None,
    rtol: float | None = None,
    full_matrix: bool = True,
    budget: int | None = None,
    full: bool = False,
    record: bool = False,
    progress: bool = False,
    device: str | torch.device | None = None,
    providers: list[str] | None = None,
) -> ParityReport:
    """Verify a written bundle against its eager reference (and, on request, record the
    report in it).

    Parameters
    ----------
    path : path
        The bundle (checksums are verified first).
    atol, rtol : float, optional
        Explicit tolerances instead of the float32 error bound (:mod:`.bounds`).
    checkpoint : path, optional
        Compare against this checkpoint's model instead of the bundle's reference
        weights (a bundle checked against the wrong checkpoint fails).
    formats : iterable of str, optional
        What to check: export formats, ``runtime``, ``torch_engine``. Default: every
        format the bundle holds and the runtime. A format named here that the bundle
        lacks (``pt2`` in a default export) is left out, with the reason in the
        report's ``skipped``.
    full_matrix : bool
        Run the plan; False compares the random batches only (``verify --quick``).
    budget : int, optional
        Pair budget of the plan (:func:`plan_parity`; default :data:`DEFAULT_BUDGET`).
    full : bool
        Every user's whole row whatever the budget (``verify --full``).
    record : bool, default False
        Write ``parity.json`` into the bundle and the summary into the manifest,
        atomically (checksums rewritten; ``verify --record``). Off by default: verifying
        only reads the bundle. A read-only bundle is refused (:func:`update_bundle`).
    device : str or torch.device, optional
        ``"cpu"`` or ``"cuda[:N]"``: where the torch backends run, the eager reference
        included (TorchScript, ``.pt2``, the torch engine; ``verify --device``). Default:
        the CPU, as always. The report records it.
    providers : list of str, optional
        onnxruntime execution providers of the ONNX and runtime backends (``verify
        --providers``; default ``["CPUExecutionProvider"]``), validated like
        ``Recommender.load``'s. The report records them.

    Returns
    -------
    ParityReport
        Its ``device`` and ``providers`` say where each side ran.

    Raises
    ------
    ConfigError
        Bad tolerances, an unusable device (CUDA asked for where torch sees none: the
        torch engine's own message), or an execution provider onnxruntime lacks.
    BundleError
        A missing/corrupted bundle, no reference weights, none of ``formats``, or (with
        ``record``) a bundle that cannot be rewritten; the report is then attached as
        ``exc.report``.
    """
    from recsys_export.runtime.engines import check_providers
    from recsys_export.torch_runtime.device import resolve_device

    check_tolerances(atol, rtol)
    dev = None if device is None else resolve_device(device)  # before any loading
    # the ONNX backends' providers: Recommender.load's rule (None -> the default)
    ort_providers = check_providers(providers)
    device_name = str(dev or "cpu")
    bundle = Bundle.load(path)
    if checkpoint is not None:
        model, ref_name, mismatch = _checkpoint_reference(bundle, checkpoint)
        if mismatch is not None:
            report = ParityReport(
                atol=atol,
                rtol=rtol,
                reference=str(checkpoint),
                device=device_name,
                providers=ort_providers,
            )
            report.comparisons.append(mismatch)
            return report
    else:
        model = reference_model(bundle)
        ref_name = "eager in float64 (bundle reference weights)"
    skipped: dict[str, str] = {}
    backends = _backends(bundle, formats, skipped, dev, ort_providers)
    seen = bundle_seen(bundle)
    report = planned_parity(
        model, backends, seen, atol, rtol, budget, full, full_matrix, progress, dev
    )
    report.reference = ref_name
    report.skipped = skipped
    report.device, report.providers = device_name, ort_providers
    if record:
        _record(bundle, report)
    return report


def _checkpoint_reference(
    bundle: Bundle, checkpoint: str | Path
) -> tuple[BaseModel, str, Comparison | None]:
    """The checkpoint's model as the reference, and a failed comparison when its sizes
    are not the bundle's (a bundle checked against the wrong checkpoint fails)."""
    sizes = bundle.manifest.model  # checked: kind, sizes, hyperparameters
    model = load_checkpoint(checkpoint).model
    if (model.n_users, model.n_items) == (sizes.n_users, sizes.n_items):
        return model, f"{checkpoint} in float64", None
    c = Comparison("checkpoint", "all", "sizes")
    c.problems.append(
        f"checkpoint has {model.n_users} users x {model.n_items} items, the bundle "
        f"{sizes.n_users} x {sizes.n_items}"
    )
    return model, str(checkpoint), c


def _backends(
    bundle: Bundle,
    formats: Iterable[str] | None,
    skipped: dict[str, str],
    device: torch.device | None,
    providers: list[str],
) -> dict[str, Backend]:
    """The backends of ``formats`` (default: every format held and the runtime); a
    format asked for by name that the bundle lacks goes to ``skipped`` with the reason."""
    wanted = list(formats) if formats is not None else list(CHECKED_BACKENDS)
    held = bundle.manifest.formats.names
    if formats is not None:  # asked for by name: say why it is not checked
        for name in (f for f in FORMATS if f in wanted and f not in held):
            skipped[name] = (
                f"{name} not checked: the bundle has no {name} files (re-export with "
                f"--formats all to write every format)"
            )
    backends = load_backends(bundle, wanted, skipped=skipped, device=device, providers=providers)
    if not backends:
        raise BundleError(
            f"bundle {bundle.root} holds none of the formats {list(formats or FORMATS)} "
            f"(it holds {', '.join(held) or 'none'}; re-export with --formats all to write "
            "every format)"
        )
    return backends


def _record(bundle: Bundle, report: ParityReport) -> None:
    """Write the report into the bundle (``parity.json``, the manifest's summary),
    keeping what export measured besides parity (the approximate variants' quality);
    a bundle that cannot be rewritten raises with the report attached."""
    doc: dict[str, Any] = report.to_dict()
    if "parity.json" in bundle.files:
        try:
            previous = json.loads(bundle.read_bytes("parity.json"))
        except ValueError:
            previous = {}
        if isinstance(previous, dict) and "variants" in previous:
            doc["variants"] = previous["variants"]
    try:
        update_bundle(
            bundle.root,
            manifest_updates={"parity": report.summary().to_dict()},
            new_files={"parity.json": (json.dumps(doc, indent=2).encode(), "parity:report")},
        )
    except BundleError as exc:  # e.g. a read-only bundle: the result is not lost
        exc.report = report  # type: ignore[attr-defined]
        raise
