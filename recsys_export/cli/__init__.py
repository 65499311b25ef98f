"""The ``recsys-export`` command line.

Every user error (a :class:`~recsys_export.errors.RecsysExportError`) becomes one line
on stderr and exit status 2; a failed parity check exits 1; Ctrl-C exits 130 without
writing anything partial. Heavy imports (torch) happen inside the commands that need
them, so ``recommend``/``score``/``inspect`` work with the runtime-only install.

Modules: :mod:`~recsys_export.cli.parser` (the options of every command),
:mod:`~recsys_export.cli.training` (train, evaluate), :mod:`~recsys_export.cli.bundles`
(export, verify, inspect), :mod:`~recsys_export.cli.serving` (recommend, score, bench),
:mod:`~recsys_export.cli.serve` (serve).
Each command parses, calls the library and prints.
"""

from __future__ import annotations

import signal
import sys
import threading
from typing import Any

from recsys_export.cli.bundles import cmd_export, cmd_inspect, cmd_verify
from recsys_export.cli.parser import build_parser
from recsys_export.cli.serve import cmd_serve
from recsys_export.cli.serving import cmd_bench, cmd_recommend, cmd_score
from recsys_export.cli.training import cmd_evaluate, cmd_train
from recsys_export.errors import ParityError, RecsysExportError

__all__ = ["COMMANDS", "TRAIN_EXTRA_MODULES", "build_parser", "main"]

COMMANDS = {
    "train": cmd_train,
    "evaluate": cmd_evaluate,
    "export": cmd_export,
    "verify": cmd_verify,
    "inspect": cmd_inspect,
    "recommend": cmd_recommend,
    "score": cmd_score,
    "bench": cmd_bench,
    "serve": cmd_serve,
}


#: Modules only the ``train`` extra installs: a runtime-only install lacks them.
TRAIN_EXTRA_MODULES = frozenset({"torch", "onnx", "onnxscript", "pandas"})


class _Terminated(BaseException):
    """Raised in the main thread by SIGTERM, so that partial outputs are removed."""


def _on_sigterm(signum: int, frame: Any) -> None:
    """SIGTERM handler: unwind like Ctrl-C, so that ``finally`` blocks remove temporaries."""
    raise _Terminated()


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``recsys-export`` console script."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    previous = None
    if threading.current_thread() is threading.main_thread():
        previous = signal.signal(signal.SIGTERM, _on_sigterm)
    try:
        return COMMANDS[args.command](args)
    except ParityError as exc:  # the export is wrong, not the user's input: exit 1
        print(f"recsys-export {args.command}: error: {exc}", file=sys.stderr)
        return 1
    except RecsysExportError as exc:
        message = " ".join(str(exc).split())
        print(f"recsys-export {args.command}: error: {message}", file=sys.stderr)
        return 2
    except ModuleNotFoundError as exc:
        if (exc.name or "").split(".")[0] not in TRAIN_EXTRA_MODULES:
            raise
        print(
            f"recsys-export {args.command}: error: {args.command} needs the 'train' extra "
            f"({exc.name} is not installed): pip install 'recsys-export[train]'; this "
            "runtime-only install can run recommend, score and inspect",
            file=sys.stderr,
        )
        return 2
    except KeyboardInterrupt:
        print(f"recsys-export {args.command}: interrupted; nothing was written", file=sys.stderr)
        return 130
    except _Terminated:
        print(f"recsys-export {args.command}: terminated; nothing was written", file=sys.stderr)
        return 128 + signal.SIGTERM
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
