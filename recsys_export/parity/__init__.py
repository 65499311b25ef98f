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

Modules: :mod:`.backends` (the reference and the formats behind one interface; the
runtime and the torch engine through :func:`recsys_export.engines.open_engine`),
:mod:`.report` (comparisons, the pass rule, the report), :mod:`.run` (the pass itself)
and :mod:`.verify` (verifying a bundle: staged by ``export``, or written, by
``verify``). The plan is :mod:`recsys_export.plan`. Torch I/O comes from
:mod:`recsys_export.torch_runtime.io`; export calls parity, never the other way.
"""

from __future__ import annotations

from recsys_export.bundle.schema import ENTRY_POINTS, describe_plan
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
from recsys_export.parity.verify import (  # noqa: F401
    bundle_seen,
    planned_parity,
    reference_model,
    verify_bundle,
    verify_staged_bundle,
)
from recsys_export.plan import DEFAULT_BUDGET, ParityPlan, plan_parity

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
    "verify_staged_bundle",
    "reference_model",
    "bundle_seen",
    "RuntimeBackend",
]
