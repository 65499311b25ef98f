"""Bring your own model: :func:`verify_module`, parity of a written generic bundle."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from torch import nn

from recsys_export.byom.export import show_progress
from recsys_export.byom.generic import DEFAULT_BLOCK_PAIRS, ModuleRecommender, eval_mode


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
    (:func:`~recsys_export.byom.export_model`): a sample of rows sized by the module's cost per pair
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
    m = b.manifest.model
    wrapper = ModuleRecommender(
        module,
        m.n_users,
        m.n_items,
        block_pairs=int(m.hyperparameters.get("block_pairs", DEFAULT_BLOCK_PAIRS)),
    )
    backends = load_backends(b, CHECKED_BACKENDS)
    seen = bundle_seen(b)
    with eval_mode(module):
        return planned_parity(
            wrapper,  # type: ignore[arg-type]
            backends,
            seen,
            atol,
            rtol,
            budget,
            full,
            True,
            show_progress(progress),
        )
