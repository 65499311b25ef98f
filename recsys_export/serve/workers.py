"""``recsys-export serve --workers N``: N server processes behind one listening socket.

The parent checks the bundle (a bad one fails before binding, as with one process),
binds the socket, prints the address line, then starts N worker processes (the
``spawn`` start method: each loads the bundle itself, onnxruntime sessions do not
survive a fork). Every worker runs the whole app on uvicorn with its own event loop,
batcher, watcher and engine threads, and accepts connections from the shared socket;
each watches the bundle path and swaps on its own, and every response still names
the version that answered it. Metrics use prometheus-client's multiprocess mode (a
temporary directory in ``PROMETHEUS_MULTIPROC_DIR``), so ``GET /metrics`` from any
worker sums them all. The parent restarts a worker that dies, and on ``SIGTERM`` or
``SIGINT`` stops them gracefully (requests in flight are answered) and removes the
directory.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import shutil
import signal
import socket
import tempfile
import time
from multiprocessing.connection import wait
from multiprocessing.process import BaseProcess
from typing import Any

from recsys_export.serve.config import ServeConfig
from recsys_export.serve.engine import ServedModel
from recsys_export.serve.metrics import MULTIPROC_ENV
from recsys_export.serve.server import bind, run_app

__all__ = ["serve_workers"]

log = logging.getLogger("recsys_export.serve")

#: Seconds a stopping worker gets to answer its requests in flight.
STOP_TIMEOUT_S = 30.0


def _worker(config: ServeConfig, sock: socket.socket, log_level: str, access_log: bool) -> None:
    """One worker process: the app on uvicorn, on the shared socket."""
    run_app(config, sock, log_level=log_level, access_log=access_log)


def serve_workers(config: ServeConfig, *, log_level: str, access_log: bool, announce: Any) -> None:
    """Serve with ``config.workers`` processes until SIGTERM or SIGINT.

    Parameters
    ----------
    config : ServeConfig
        Checked settings, ``workers`` > 1.
    log_level, access_log
        As :func:`~recsys_export.serve.run.serve_forever`.
    announce : callable
        ``announce(model, sock)`` prints the address line once the socket listens.

    Raises
    ------
    BundleError
        Before binding: the bundle cannot be served.
    """
    model = ServedModel.load(config.bundle, threads=1)  # fail here, before binding
    sock = bind(config, log_level)
    announce(model, sock)
    del model
    metrics_dir = tempfile.mkdtemp(prefix="recsys-serve-metrics-")
    previous = os.environ.get(MULTIPROC_ENV)
    os.environ[MULTIPROC_ENV] = metrics_dir  # the workers inherit it
    stopping = False

    def stop(signum: int, frame: Any) -> None:
        nonlocal stopping
        stopping = True

    handlers = {sig: signal.signal(sig, stop) for sig in (signal.SIGTERM, signal.SIGINT)}
    context = multiprocessing.get_context("spawn")

    def start() -> BaseProcess:
        proc = context.Process(
            target=_worker, args=(config, sock, log_level, access_log), name="recsys-serve"
        )
        proc.start()
        return proc

    procs = [start() for _ in range(config.workers)]
    try:
        while not stopping:
            wait([p.sentinel for p in procs], timeout=0.5)
            for i, proc in enumerate(procs):
                if proc.exitcode is not None and not stopping:
                    log.error(
                        "worker %s exited (code %s); starting another", proc.pid, proc.exitcode
                    )
                    _forget(proc.pid)
                    procs[i] = start()
    finally:
        _stop_all(procs)
        for sig, handler in handlers.items():
            signal.signal(sig, handler)
        if previous is None:
            os.environ.pop(MULTIPROC_ENV, None)
        else:
            os.environ[MULTIPROC_ENV] = previous
        shutil.rmtree(metrics_dir, ignore_errors=True)
        sock.close()


def _forget(pid: int | None) -> None:
    """Drop a dead worker's live gauges from the metrics directory."""
    from prometheus_client import multiprocess

    if pid is not None:
        multiprocess.mark_process_dead(pid)


def _stop_all(procs: list[BaseProcess]) -> None:
    """SIGTERM every worker (uvicorn's graceful shutdown), then wait; kill stragglers."""
    for proc in procs:
        if proc.exitcode is None:
            proc.terminate()
    deadline = time.monotonic() + STOP_TIMEOUT_S
    for proc in procs:
        proc.join(max(0.0, deadline - time.monotonic()))
        if proc.exitcode is None:
            log.warning("worker %s did not stop in %.0f s; killing it", proc.pid, STOP_TIMEOUT_S)
            proc.kill()
            proc.join()
