"""The ``recsys-export`` command line.

Every user error (a :class:`~recsys_export.errors.RecsysExportError`, a usage error,
an option the command would ignore) becomes one line on stderr and exit status 2; a
failed parity check exits 1; Ctrl-C exits 130 and SIGTERM 143 without writing anything
partial (docs/cli.md, *The contract*). The parent directories of ``--out`` are created
(``mkdir -p``) and removed again when the command fails while they are still empty.
Output goes through :class:`~recsys_export.cli.terminal.SafeStdout`: no raw control
character reaches the terminal. Heavy imports (torch) happen inside the commands that
need them, so ``recommend``/``score``/``inspect`` work with the runtime-only install.

Modules: :mod:`~recsys_export.cli.parser` (the table of commands),
:mod:`~recsys_export.cli.options` (the option groups several commands share),
:mod:`~recsys_export.cli.ignored` (options a command would ignore, refused),
:mod:`~recsys_export.cli.terminal` (escaping output), and one module per command group,
holding its options and its code: :mod:`~recsys_export.cli.train` (train, evaluate),
:mod:`~recsys_export.cli.export` (export), :mod:`~recsys_export.cli.verify` (verify,
inspect), :mod:`~recsys_export.cli.serving` (recommend, score),
:mod:`~recsys_export.cli.serve` (serve), :mod:`~recsys_export.cli.bench` (bench). Each
command parses, calls the library and prints.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
from pathlib import Path
from typing import Any

from recsys_export.cli.ignored import refuse_ignored
from recsys_export.cli.parser import COMMAND_TABLE, build_parser
from recsys_export.cli.terminal import SafeStdout, safe_text
from recsys_export.errors import ConfigError, ParityError, RecsysExportError

__all__ = ["COMMANDS", "TRAIN_EXTRA_MODULES", "build_parser", "main"]

#: name -> the function running the command (``run(args) -> exit status``).
COMMANDS = {command.name: command.run for command in COMMAND_TABLE}


#: Modules only the ``train`` extra installs: a runtime-only install lacks them.
TRAIN_EXTRA_MODULES = frozenset({"torch", "onnx", "onnxscript", "pandas"})


class _Terminated(BaseException):
    """Raised in the main thread by SIGTERM, so that partial outputs are removed."""


def _on_sigterm(signum: int, frame: Any) -> None:
    """SIGTERM handler: unwind like Ctrl-C, so that ``finally`` blocks remove temporaries."""
    raise _Terminated()


def _make_parents(out: object) -> list[Path]:
    """Create the missing parent directories of an ``--out`` path; the ones created,
    deepest first (for :func:`_remove_empty`)."""
    if not isinstance(out, Path):
        return []
    missing = [d for d in out.absolute().parents if not d.exists()]
    if not missing:  # an existing parent (even a file) is the writer's to judge
        return []
    try:
        out.absolute().parent.mkdir(parents=True)
    except OSError as exc:
        raise ConfigError(
            f"cannot create the directory of --out {out}: {exc.strerror or exc}; choose "
            "another --out"
        ) from None
    return missing


def _remove_empty(created: list[Path]) -> None:
    for d in created:
        try:
            d.rmdir()
        except OSError:  # not empty (or gone): leave it
            return


def _error(command: str, exc: BaseException) -> str:
    """The one stderr line of an error, control characters escaped (cli/terminal.py)."""
    return f"recsys-export {command}: error: " + safe_text(" ".join(str(exc).split()))


#: SIGPIPE's number: a reader that closed the pipe early ends the command silently with
#: 128 + SIGPIPE, as a Unix tool killed by SIGPIPE does.
_SIGPIPE = getattr(signal, "SIGPIPE", 13)


def _silence_stdout() -> None:
    """Point stdout at /dev/null so that the interpreter's final flush stays silent."""
    try:
        fd = sys.stdout.fileno()
    except (AttributeError, OSError, ValueError):  # not a real file (tests capture it)
        return
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, fd)
    os.close(devnull)


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
    created: list[Path] = []
    status = 2
    try:
        refuse_ignored(args)
        created = _make_parents(getattr(args, "out", None))
        with contextlib.redirect_stdout(SafeStdout(sys.stdout)):  # no raw control chars
            status = COMMANDS[args.command](args)
        return status
    except ParityError as exc:  # the export is wrong, not the user's input: exit 1
        print(_error(args.command, exc), file=sys.stderr)
        return 1
    except RecsysExportError as exc:
        print(_error(args.command, exc), file=sys.stderr)
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
    except BrokenPipeError:  # `recsys-export inspect B | head -1`: the reader is gone
        _silence_stdout()
        return 128 + _SIGPIPE
    except KeyboardInterrupt:
        print(f"recsys-export {args.command}: interrupted; nothing was written", file=sys.stderr)
        return 130
    except _Terminated:
        print(f"recsys-export {args.command}: terminated; nothing was written", file=sys.stderr)
        return 128 + signal.SIGTERM
    finally:
        if status != 0:
            _remove_empty(created)
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
