"""The argument parser of ``recsys-export``: the table of sub-commands (one
:class:`~recsys_export.cli.options.Command` row each, defined beside the code that runs
it) and the function that turns it into a parser.

Only argparse and the standard library are imported here (torch never is), so that the
runtime-only install can parse every command line.
"""

from __future__ import annotations

import argparse

from recsys_export import __version__
from recsys_export.cli.bench import BENCH
from recsys_export.cli.export import EXPORT
from recsys_export.cli.options import ArgumentParser, Command
from recsys_export.cli.serve import SERVE
from recsys_export.cli.serving import RECOMMEND, SCORE
from recsys_export.cli.train import EVALUATE, TRAIN
from recsys_export.cli.verify import INSPECT, VERIFY

#: Every sub-command, in the order of ``recsys-export --help``.
COMMAND_TABLE: tuple[Command, ...] = (
    TRAIN,
    EVALUATE,
    EXPORT,
    VERIFY,
    INSPECT,
    RECOMMEND,
    SCORE,
    SERVE,
    BENCH,
)

DESCRIPTION = (
    "Train PyTorch recommenders (matrix factorization, DenseNet), export them to "
    "TorchScript / ONNX / torch.export bundles proven to match the eager model, and "
    "serve them with onnxruntime."
)
EPILOG = (
    "typical flow:\n"
    "  recsys-export train ratings.csv --out runs/mf.pt\n"
    "  recsys-export export runs/mf.pt --out artifacts/mf\n"
    "  recsys-export verify artifacts/mf\n"
    "  recsys-export recommend artifacts/mf --user 42 -k 10\n"
    "  recsys-export score artifacts/mf --all --top-k 10 --out top10.parquet\n\n"
    "Run 'recsys-export COMMAND --help' for the options of each command."
)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of every sub-command (:data:`COMMAND_TABLE`)."""
    parser = ArgumentParser(
        prog="recsys-export",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description=DESCRIPTION,
        epilog=EPILOG,
    )
    parser.add_argument("--version", action="version", version=f"recsys-export {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for command in COMMAND_TABLE:
        command.add_to(sub)
    return parser
