"""Run the app (``recsys-export serve``): one process, or ``--workers N``.

The socket is bound and listening before uvicorn starts, so the line naming the address
(with the real port when ``--port 0`` asked for an ephemeral one) is printed, flushed,
before the first request can arrive: scripts and tests read it to find the server.
"""

from __future__ import annotations

import socket
import sys
from typing import Any

from recsys_export.serve.app import create_app
from recsys_export.serve.config import ServeConfig
from recsys_export.serve.engine import ServedModel
from recsys_export.serve.server import bind, log_to_stderr, run_app, url_of
from recsys_export.serve.workers import serve_workers

__all__ = ["serve_forever"]


def serve_forever(
    config: ServeConfig, *, log_level: str = "info", access_log: bool = False, out: Any = None
) -> None:
    """Load the bundle, bind, print ``serving NAME version V on URL``, serve until stopped.

    Parameters
    ----------
    config : ServeConfig
        The settings (checked here).
    log_level : str
        uvicorn's and the server's log level.
    access_log : bool
        One log line per request (off by default: it costs throughput).
    out : file, optional
        Where the address line goes (default stdout).

    Raises
    ------
    BundleError, ConfigError
        Before binding: a bundle that cannot be served, invalid settings.
    """
    config.check()
    log_to_stderr(log_level)

    def announce(model: ServedModel, sock: socket.socket) -> None:
        host, port = sock.getsockname()[:2]
        workers = f" with {config.workers} workers" if config.workers > 1 else ""
        print(
            f"serving {config.name} (bundle version {model.version}, {model.kind}, "
            f"{model.n_users} users x {model.n_items} items) on {url_of(host, port)}{workers}",
            file=out or sys.stdout,
            flush=True,
        )

    if config.workers > 1:
        serve_workers(config, log_level=log_level, access_log=access_log, announce=announce)
        return
    app = create_app(config)
    sock = bind(config, log_level)
    announce(app.state.server.model, sock)
    run_app(config, sock, log_level=log_level, access_log=access_log, app=app)
