"""``recsys-export bench``: every way of serving the models, side by side, in one process.

:mod:`.suite` runs it (:func:`run` with a :class:`BenchConfig`: synthetic models, their
bundles, the rows, the report), :mod:`.rows` times each model's rows, :mod:`.timing`
the interleaved rounds and latencies, :mod:`.graphs` builds the bare ceiling graphs at
the bundles' IR version, :mod:`.gpu` the torch engine next to a bare ``matmul`` +
``topk`` on a device, :mod:`.report` the JSON schema, table and chart, :mod:`.config`
the typed options. Importing this package does not import torch.
"""

from __future__ import annotations

from recsys_export.bench.config import (
    PRESETS,
    ROW_GROUPS,
    BenchConfig,
    add_arguments,
    config_from_args,
)
from recsys_export.bench.report import SCHEMA, format_table, plot
from recsys_export.bench.suite import main, run

__all__ = [
    "PRESETS",
    "ROW_GROUPS",
    "SCHEMA",
    "BenchConfig",
    "add_arguments",
    "config_from_args",
    "format_table",
    "main",
    "plot",
    "run",
]
