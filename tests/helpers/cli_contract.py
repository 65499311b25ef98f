"""The command-line contract as test helpers: run ``recsys-export`` and check its answer.

Shared by tests/test_catalogue.py and tests/test_contract_files.py: run a command
in-process (fast) or as ``python -m recsys_export.cli`` (the real process: no traceback,
no stray warnings, signals), assert the one-line error of exit status 2, and list the
temporaries (``.NAME.partial-*``, ``.NAME.old-*``) a run left in a directory.
"""

from __future__ import annotations

import contextlib
import io
import os
import subprocess
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from recsys_export.cli import main

ROOT = Path(__file__).resolve().parents[2]


def run_inprocess(argv: list[str]) -> tuple[int, str, str]:
    """``main(argv)`` with stdout and stderr captured: ``(exit status, stdout, stderr)``."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = main(argv)
    return rc, out.getvalue(), err.getvalue()


def cli_env() -> dict[str, str]:
    """The environment of a ``python -m recsys_export.cli`` child: this checkout first."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    env["PYTHONIOENCODING"] = "utf-8"
    return env


def run_subprocess(
    argv: list[str], preexec_fn: Callable[[], Any] | None = None, timeout: float = 180
) -> tuple[int, str, str]:
    """``python -m recsys_export.cli argv``: ``(exit status, stdout, stderr)``."""
    proc = subprocess.run(
        [sys.executable, "-m", "recsys_export.cli", *argv],
        capture_output=True,
        text=True,
        encoding="utf-8",
        env=cli_env(),
        timeout=timeout,
        preexec_fn=preexec_fn,
    )
    return proc.returncode, proc.stdout, proc.stderr


def dead_pid() -> int:
    """The pid of a process that has exited (what a ``kill -9`` leaves in temp names)."""
    proc = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        capture_output=True,
        text=True,
        check=True,
    )
    return int(proc.stdout)


def leftovers(directory: Path) -> list[str]:
    """Temporaries of killed or failed writes in ``directory`` (sorted names)."""
    if not directory.is_dir():
        return []
    return sorted(p.name for p in directory.iterdir() if ".partial" in p.name or ".old-" in p.name)


def assert_one_line_error(
    rc: int,
    stdout: str,
    stderr: str,
    command: str,
    words: list[str],
    forbidden: Sequence[str] = (),
) -> str:
    """Exit 2, exactly one ``recsys-export CMD: error: ...`` line naming ``words``."""
    assert rc == 2, f"exit {rc}; stderr: {stderr!r}"
    assert "Traceback" not in stdout + stderr
    lines = stderr.strip("\n").split("\n")
    assert len(lines) == 1, f"expected one line on stderr, got: {stderr!r}"
    line = lines[0]
    assert line.startswith(f"recsys-export {command}: error: "), line
    for word in words:
        assert word.lower() in line.lower(), f"{word!r} not in {line!r}"
    for word in forbidden:
        assert word not in line, f"{word!r} in {line!r}"
    return line
