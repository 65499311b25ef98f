"""The package's layers, bottom to top: the one table the architecture tests read.

A module may import (at module level or inside a function) only modules of its own
layer or of a lower one; ``tests/test_architecture.py`` checks every import against
this table, and that every top-level module or package of ``recsys_export`` is in it.
``scripts/callclimb.py`` reads it to count the calls that climb back up. Data only: no
import, so that any install (the runtime-only one included) can read it.
"""

from __future__ import annotations

#: Top-level names (``""`` is ``recsys_export/__init__.py``), one tuple per layer,
#: bottom first. Old flat modules sit in the layer of the package they belong to.
LAYERS: tuple[tuple[str, ...], ...] = (
    # 0 the leaves every layer may use: errors, validation, defaults, ids, top-k, atomic
    #   files, progress
    ("", "_layers", "errors", "datasets", "core"),
    # 1 the bundle format: schema, files, writer, loader
    ("bundle",),
    # 2 serving a bundle without torch: the engine contract, the onnxruntime engine,
    #   the recommender, the batch writers
    ("runtime",),
    # 3 a bundle's torch programs at run time: the torch engine, torch I/O
    ("torch_runtime", "torch_engine"),
    # 4 the one engine factory, and the Ray job whose workers open engines with it
    ("engines", "scale"),
    # 5 the HTTP server over the engines
    ("serve",),
    # 6 ratings files, splits, item names
    ("data",),
    # 7 the networks, checkpoints, synthetic models
    ("models",),
    # 8 training and evaluation
    ("training",),
    # 9 parity: the plan, backends, bounds, reports
    ("parity", "plan"),
    # 10 export: formats, kernels, variants, the bundle build
    ("export",),
    # 11 models trained elsewhere
    ("byom",),
    # 12 the benchmark
    ("bench",),
    # 13 the command line
    ("cli", "demo"),
)


#: The torch-free layer: the packages and modules a runtime-only install
#: (``pip install recsys-export``: numpy and onnxruntime) imports. None of them, nor any of
#: their submodules, may import torch (``tests/test_torch_free.py``); ``make lint``
#: type-checks exactly these (``python -m recsys_export._layers`` prints mypy's
#: arguments). ``training.*``: the torch-free leaves of a torch package.
TORCH_FREE: tuple[str, ...] = (
    "_layers",
    "errors",
    "core",
    "bundle",
    "runtime",
    "engines",
    "scale",
    "serve",
    "data",
    "training.baselines",
    "training.recipes",
    "training.config",
    "plan",
    "bench.config",
    "bench.report",
    "cli",
    "demo",
)


def layer_of(module: str) -> int | None:
    """The layer of a dotted module name of the package (None: not in the table)."""
    parts = module.split(".")
    top = parts[1] if len(parts) > 1 and parts[0] == "recsys_export" else ""
    if parts[0] != "recsys_export":
        return None
    for rank, names in enumerate(LAYERS):
        if top in names:
            return rank
    return None


if __name__ == "__main__":  # mypy's arguments for the torch-free layer (make lint)
    print(" ".join(f"-p recsys_export.{name}" for name in TORCH_FREE))
