"""Parity: compare the eager model with every exported format, entry point by entry point.

Backends (:class:`EagerBackend`, :class:`TorchScriptBackend`, :class:`Pt2Backend`,
:class:`OnnxBackend`, :class:`RuntimeBackend`) expose the three entry points on index
inputs and return numpy arrays. :func:`run_parity` runs the same inputs through the
float64 reference (:mod:`.bounds`: the eager model in float64, each score with the bound
float32 rounding allows it) and through each backend, the eager model in float32
included, and aggregates, per (format, entry point, case), the worst error / bound
ratio, the largest abs difference, a histogram of abs differences by decade,
shape/dtype checks and, for top-k, the fraction of users whose lists agree. Used by
``export`` (verify by default), by the ``verify`` command and by the test suite.

Pass rule (per value): ``|actual - ref64| <= bound`` (docs/parity.md), or ``atol + rtol
* |ref64|`` with explicit tolerances. Top-k lists agree when, rank by rank, the
candidate's item has a reference score within the two items' bounds of the reference
item's score (items tied within their bounds are interchangeable), no excluded item
appears, and empty slots (-1) coincide.

Modules: :mod:`.backends` (the reference and the formats behind one interface),
:mod:`.report` (comparisons, the pass rule, the report), :mod:`.run` (the pass itself)
and this one (verifying a bundle: staged by ``export``, or written, by ``verify``). The
plan is :mod:`recsys_export.plan`. Parity imports the export package's writer helpers
(:mod:`recsys_export.export.formats`); the export package imports parity only lazily,
inside :func:`~recsys_export.export.build.export_bundle`.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from recsys_export.bundle import Bundle, BundleWriter, read_seen_csr, update_bundle
from recsys_export.checkpoint import Checkpoint, load_checkpoint, load_weights_only
from recsys_export.errors import BundleError, CheckpointError
from recsys_export.manifest import ENTRY_POINTS, FORMATS, BundleSpec
from recsys_export.models import BaseModel, build_model
from recsys_export.parity.backends import (  # noqa: F401
    CHECKED_BACKENDS,
    EAGER_TILE_BYTES,
    Backend,
    EagerBackend,
    NotApplicable,
    OnnxBackend,
    Pt2Backend,
    RuntimeBackend,
    TorchScriptBackend,
    load_backends,
)
from recsys_export.parity.bounds import Reference, reference_for  # noqa: F401
from recsys_export.parity.report import (  # noqa: F401
    HIST_EDGES,
    HIST_LABELS,
    Comparison,
    ParityReport,
    check_tolerances,
)
from recsys_export.parity.run import (  # noqa: F401
    BATCH_SIZES,
    call_users,
    release_memory,
    run_parity,
)
from recsys_export.plan import (
    BATCH_BYTES,
    DEFAULT_BUDGET,
    ParityPlan,
    describe_plan,
    plan_parity,
)

# --------------------------------------------------------------------------- bundles


def reference_model(root: Path, manifest: dict[str, Any]) -> BaseModel:
    """Rebuild the eager model from a bundle's reference state dict (weights only)."""
    ref = manifest.get("reference", {}).get("state_dict")
    if not ref:
        raise BundleError(
            f"bundle {root} has no eager reference weights; pass --checkpoint CKPT to verify"
        )
    if manifest["model"].get("kind") == "generic":  # recsys_export.byom's generic path
        raise BundleError(
            f"bundle {root} was exported from your own module: its eager reference is that "
            "module; verify it from Python with recsys_export.byom.verify_module(module, bundle)"
        )
    where = f"bundle {root}"
    try:
        state = load_weights_only(
            root / ref,
            refusal="the bundle's reference weights must be a plain state dict",
            unreadable="state dict",
        )
    except CheckpointError as exc:
        raise BundleError(f"{where}: {exc}; export the bundle again") from None
    kind, hp = manifest["model"]["kind"], manifest["model"]["hyperparameters"]
    try:
        model = build_model(kind, **hp)
        model.load_state_dict(state)
    except (RuntimeError, TypeError, ValueError, AttributeError) as exc:
        detail = " ".join(str(exc).split())[:240]
        raise BundleError(
            f"{where}: its reference weights do not fit the manifest's {kind} model "
            f"({detail}); the bundle is inconsistent, export it again"
        ) from None
    return model.eval()


def bundle_seen(root: Path, manifest: dict[str, Any]) -> tuple[np.ndarray, np.ndarray] | None:
    """The bundle's seen-items CSR, validated (:class:`BundleError`), or None."""
    spec = BundleSpec.parse(manifest, f"bundle {root}")
    if spec.seen is None:
        return None
    return read_seen_csr(root, manifest["seen"], spec.model.n_users, spec.model.n_items)


def verify_staged_bundle(
    writer: BundleWriter,
    manifest: dict[str, Any],
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
    root = writer.stage(manifest)
    formats = list(formats)
    backends = load_backends(root, manifest, formats)
    return planned_parity(
        ckpt.model,
        backends,
        bundle_seen(root, manifest),
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
    from recsys_export.torch_engine import resolve_device

    check_tolerances(atol, rtol)
    dev = None if device is None else resolve_device(device)  # before any loading
    # the ONNX backends' providers: Recommender.load's rule (None -> the default)
    ort_providers = check_providers(providers)
    device_name = str(dev or "cpu")
    bundle = Bundle.load(path)
    manifest = bundle.manifest
    _check_model_entry(bundle)
    if checkpoint is not None:
        ckpt = load_checkpoint(checkpoint)
        model = ckpt.model
        if (model.n_users, model.n_items) != (
            manifest["model"]["n_users"],
            manifest["model"]["n_items"],
        ):
            report = ParityReport(
                atol=atol,
                rtol=rtol,
                reference=str(checkpoint),
                device=device_name,
                providers=ort_providers,
            )
            c = Comparison("checkpoint", "all", "sizes")
            c.problems.append(
                f"checkpoint has {model.n_users} users x {model.n_items} items, the bundle "
                f"{manifest['model']['n_users']} x {manifest['model']['n_items']}"
            )
            report.comparisons.append(c)
            return report
        ref_name = f"{checkpoint} in float64"
    else:
        model = reference_model(bundle.root, manifest)
        ref_name = "eager in float64 (bundle reference weights)"
    wanted = list(formats) if formats is not None else list(CHECKED_BACKENDS)
    skipped: dict[str, str] = {}
    held = manifest.get("formats") or {}
    absent = [f for f in FORMATS if f in wanted and f not in held]
    if formats is not None:  # asked for by name: say why it is not checked
        for name in absent:
            skipped[name] = (
                f"{name} not checked: the bundle has no {name} files (re-export with "
                f"--formats all to write every format)"
            )
    backends = load_backends(
        bundle.root,
        manifest,
        wanted,
        skipped=skipped,
        device=dev,
        providers=ort_providers,
    )
    if not backends:
        raise BundleError(
            f"bundle {bundle.root} holds none of the formats {list(formats or FORMATS)} "
            f"(it holds {', '.join(held) or 'none'}; re-export with --formats all to write "
            "every format)"
        )
    seen = bundle_seen(bundle.root, manifest)
    report = planned_parity(
        model, backends, seen, atol, rtol, budget, full, full_matrix, progress, dev
    )
    report.reference = ref_name
    report.skipped = skipped
    report.device, report.providers = device_name, ort_providers
    if record:
        try:
            update_bundle(
                bundle.root,
                manifest_updates={"parity": report.summary()},
                new_files={
                    "parity.json": (
                        json.dumps(report.to_dict(), indent=2).encode(),
                        "parity:report",
                    )
                },
            )
        except BundleError as exc:  # e.g. a read-only bundle: the result is not lost
            exc.report = report  # type: ignore[attr-defined]
            raise
    return report


def _check_model_entry(bundle: Bundle) -> None:
    """The manifest's ``model`` (kind, sizes, hyperparameters), or :class:`BundleError`."""
    model = bundle.manifest.get("model")
    if not (
        isinstance(model, dict)
        and isinstance(model.get("kind"), str)
        and isinstance(model.get("hyperparameters"), dict)
        and all(
            isinstance(model.get(k), int) and not isinstance(model.get(k), bool)
            for k in ("n_users", "n_items")
        )
    ):
        raise BundleError(
            f"bundle {bundle.root}: manifest.json has no valid 'model' entry (kind, "
            "hyperparameters, n_users, n_items); the manifest is corrupted, export it again"
        )


__all__ = [
    "ENTRY_POINTS",
    "Backend",
    "Comparison",
    "EagerBackend",
    "OnnxBackend",
    "DEFAULT_BUDGET",
    "ParityPlan",
    "ParityReport",
    "Pt2Backend",
    "call_users",
    "describe_plan",
    "plan_parity",
    "planned_parity",
    "TorchScriptBackend",
    "check_tolerances",
    "load_backends",
    "run_parity",
    "verify_bundle",
]
