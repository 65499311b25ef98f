"""``bench``: every format and the runtime side by side (:mod:`recsys_export.bench`)."""

from __future__ import annotations

import argparse

from recsys_export.bench.config import add_arguments, config_from_args
from recsys_export.cli.options import Command


def cmd_bench(args: argparse.Namespace) -> int:
    """``recsys-export bench``: :func:`recsys_export.bench.run` of the options'
    :class:`~recsys_export.bench.config.BenchConfig`."""
    from recsys_export.bench import run

    run(config_from_args(args))
    return 0


BENCH = Command(
    name="bench",
    help="benchmark every format and the runtime side by side",
    description="Score-all, recommend-all and single-user latency for MF and DenseNet: a "
    "bare onnxruntime graph of the same math (the ceiling), numpy, eager torch, "
    "TorchScript, torch.export and our runtime, in one process. Prints a table, writes "
    "JSON (schema in docs/performance.md) and, with matplotlib installed, a PNG chart.",
    epilog="examples:\n  recsys-export bench                 # tiny size, seconds\n"
    "  recsys-export bench --preset full   # 100k users x 20k items x 64 factors, 128 hidden",
    add_options=add_arguments,
    run=cmd_bench,
)
