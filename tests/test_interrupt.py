"""Interrupted and killed CLI runs leave nothing partial behind; divergence is a user error.

* Ctrl-C (SIGINT) during ``recsys-export train``: exit 130, one ``interrupted`` line
  on stderr, no traceback, no checkpoint.
* SIGKILL during ``recsys-export score --all --out x.npy``: nothing at ``x.npy`` that
  looks complete (an older ``x.npy`` stays as it was); the next run removes the killed
  run's hidden temporary. SIGTERM: exit 143, one line, no temporary left.
* ``train --lr 1e6 --optimizer sgd``: exit 2 suggesting a lower learning rate, no
  checkpoint.

The subprocesses are synchronised on their own progress lines (stderr), never by
sleeping: ``RECSYS_EXPORT_PROGRESS_INTERVAL=0`` makes the progress bar print every
update even though stderr is a pipe.
"""

from __future__ import annotations

import contextlib
import io
import os
import re
import signal
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest

from recsys_export import data
from recsys_export.cli import main

ROOT = Path(__file__).resolve().parents[1]
HELPERS = Path(__file__).resolve().parent / "helpers"
WATCHDOG_S = 180  # a hung subprocess is killed (and the test fails) after this long


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    env["RECSYS_EXPORT_PROGRESS_INTERVAL"] = "0"
    return env


def _write_synthetic_csv(path: Path, n_users: int, n_items: int, n_ratings: int) -> Path:
    r = data.synthetic_ratings(n_users, n_items, n_ratings=n_ratings, seed=3)
    table = np.c_[r.users, r.items, r.ratings]
    np.savetxt(
        path, table, fmt=["%d", "%d", "%.3f"], delimiter=",", header="user,item,rating", comments=""
    )
    return path


def _default_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)


@contextlib.contextmanager
def _popen(argv: list[str], **kwargs):  # type: ignore[no-untyped-def]
    """Popen with text pipes and a watchdog that kills the process if the test hangs."""
    proc = subprocess.Popen(
        argv,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=_env(),
        **kwargs,
    )
    watchdog = threading.Timer(WATCHDOG_S, proc.kill)
    watchdog.start()
    try:
        yield proc
    finally:
        watchdog.cancel()
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        for fh in (proc.stdin, proc.stdout, proc.stderr):
            if fh is not None:
                fh.close()


def _read_until(proc: subprocess.Popen, pattern: str) -> list[str]:
    """Read stderr lines until one matches ``pattern``; fail if the process ends first."""
    seen: list[str] = []
    regex = re.compile(pattern)
    while True:
        line = proc.stderr.readline()
        if not line:
            rest = proc.stdout.read()
            pytest.fail(
                f"process ended (rc {proc.wait()}) before a line matching {pattern!r}; "
                f"stderr: {''.join(seen)!r}, stdout: {rest!r}"
            )
        seen.append(line)
        if regex.search(line):
            return seen


def _leftovers(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if ".partial" in p.name)


# ---------------------------------------------------------------------------- Ctrl-C


@pytest.mark.slow
def test_ctrl_c_during_training_saves_nothing(tmp_path: Path) -> None:
    ratings = _write_synthetic_csv(tmp_path / "ratings.csv", 1000, 400, 40_000)
    out = tmp_path / "model.pt"
    argv = [sys.executable, "-m", "recsys_export.cli", "train", str(ratings), "--out", str(out)]
    # 1000 epochs without early stopping: minutes of work, interrupted after the first
    argv += ["--epochs", "1000", "--patience", "0"]
    # a run started in the background by a non-interactive shell (`make test &`) inherits
    # SIGINT ignored, and Python keeps it so: give the child the default disposition,
    # which a terminal's Ctrl-C meets
    with _popen(argv, preexec_fn=_default_sigint) as proc:
        before = _read_until(proc, r"^train mf .*\b1/1000 epochs")
        proc.send_signal(signal.SIGINT)
        stdout, stderr_rest = proc.communicate(timeout=WATCHDOG_S)
    stderr = "".join(before) + stderr_rest

    assert proc.returncode == 130, stderr
    assert "Traceback" not in stderr + stdout
    assert "KeyboardInterrupt" not in stderr
    progress = re.compile(r"^(data: |train mf )")
    messages = [ln for ln in stderr.splitlines() if ln.strip() and not progress.match(ln)]
    assert messages == ["recsys-export train: interrupted; nothing was written"], stderr
    assert "checkpoint:" not in stdout
    assert not out.exists()
    assert _leftovers(tmp_path) == []


# ---------------------------------------------------------------------------- SIGKILL


@pytest.fixture(scope="module")
def small_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An ONNX bundle of an untrained MF (8 users, 6 items): export only, no training."""
    import torch

    from recsys_export.core.ids import IdMap
    from recsys_export.export import export_bundle
    from recsys_export.models import MatrixFactorization
    from recsys_export.models.checkpoint import Checkpoint

    torch.manual_seed(0)
    model = MatrixFactorization(8, 6, 4, biased=True, sparse=False, init_std=0.3).eval()
    ckpt = Checkpoint(
        model,
        IdMap(np.arange(8), "user"),
        IdMap(np.arange(6), "item"),
        seen_users=np.array([0, 1], dtype=np.int64),
        seen_items=np.array([2, 3], dtype=np.int64),
    )
    path = tmp_path_factory.mktemp("interrupt") / "bundle"
    export_bundle(ckpt, path, formats="onnx", verify=False)
    return path


@pytest.mark.parametrize("existing", [False, True], ids=["fresh", "over-existing"])
def test_sigkill_during_score_all_leaves_no_complete_output(
    small_bundle: Path, tmp_path: Path, existing: bool
) -> None:
    out = tmp_path / "x.npy"
    old = np.full((2, 2), 7.0, dtype=np.float32)
    if existing:
        np.save(out, old)
    argv = [sys.executable, str(HELPERS / "catalogue_stall_score.py"), str(small_bundle), str(out)]
    with _popen(argv) as proc:
        # the first chunk (one user) is written and reported; the second one stalls
        _read_until(proc, r"^score matrix .*\b1/8 users")
        leftovers = _leftovers(tmp_path)
        assert len(leftovers) == 1 and leftovers[0].startswith(".x.npy.partial-"), leftovers
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=WATCHDOG_S)
    assert proc.returncode == -signal.SIGKILL

    if existing:
        np.testing.assert_array_equal(np.load(out), old)  # the old result, untouched
    else:
        assert not out.exists()
    # the killed run's temporary file cannot pass for a result: hidden, not *.npy
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".npy")] == (
        ["x.npy"] if existing else []
    )

    # the next run removes the dead run's full-size temporary, as export does its own
    assert len(_leftovers(tmp_path)) == 1
    rc = main(["score", str(small_bundle), "--all", "--out", str(out), "--force", "-q"])
    assert rc == 0
    assert _leftovers(tmp_path) == []
    assert np.load(out).shape == (8, 6)


def test_sigterm_during_score_all_removes_its_partial_file(
    small_bundle: Path, tmp_path: Path
) -> None:
    """SIGTERM (what a scheduler sends first) cleans up like Ctrl-C: exit 143, one line."""
    out = tmp_path / "x.npy"
    argv = [sys.executable, str(HELPERS / "catalogue_stall_score.py"), str(small_bundle), str(out)]
    with _popen(argv) as proc:
        _read_until(proc, r"^score matrix .*\b1/8 users")
        assert len(_leftovers(tmp_path)) == 1
        proc.send_signal(signal.SIGTERM)  # interrupts the stalled read (PEP 475)
        stderr = proc.stderr.read()
        proc.wait(timeout=WATCHDOG_S)
    assert proc.returncode == 128 + signal.SIGTERM, stderr
    assert stderr.strip().splitlines() == ["recsys-export score: terminated; nothing was written"]
    assert _leftovers(tmp_path) == [] and not out.exists()


# ---------------------------------------------------------------------------- divergence


def test_diverging_training_is_a_user_error(tmp_path: Path) -> None:
    ratings = _write_synthetic_csv(tmp_path / "ratings.csv", 300, 100, 6000)
    out = tmp_path / "model.pt"
    stdout, stderr = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
        rc = main(
            ["train", str(ratings), "--out", str(out), "--lr", "1e6", "--optimizer", "sgd", "-q"]
        )
    assert rc == 2
    err = stderr.getvalue()
    assert "Traceback" not in err
    (line,) = err.strip().split("\n")
    assert line.startswith("recsys-export train: error: training diverged")
    assert "lower the learning rate" in line
    assert not out.exists()
    assert _leftovers(tmp_path) == []
