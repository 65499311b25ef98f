"""Run the app on uvicorn (``recsys-export serve``), in this process.

The socket is bound and listening before uvicorn starts, so the line naming the address (with the
real port when ``--port 0`` asked for an ephemeral one) is printed, flushed, before the
first request can arrive: scripts and tests read it to find the server.
"""

from __future__ import annotations

import importlib.util
import logging
import sys
from typing import Any

import uvicorn

from recsys_export.serve.app import create_app
from recsys_export.serve.config import ServeConfig

__all__ = ["serve_forever", "url_of"]


def url_of(host: str, port: int) -> str:
    """``http://host:port`` (IPv6 hosts in brackets)."""
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def _log_to_stderr(level: str) -> None:
    logger = logging.getLogger("recsys_export.serve")
    if not logger.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(levelname)s:     recsys-export: %(message)s"))
        logger.addHandler(handler)
    logger.setLevel(level.upper())


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
    _log_to_stderr(log_level)
    app = create_app(config)
    server_state = app.state.server
    uv_config = uvicorn.Config(
        app,
        host=config.host,
        port=config.port,
        loop="uvloop" if importlib.util.find_spec("uvloop") else "asyncio",
        http="httptools" if importlib.util.find_spec("httptools") else "h11",
        lifespan="on",
        log_level=log_level,
        access_log=access_log,
        server_header=False,
        backlog=4096,
        timeout_keep_alive=30,
    )
    sock = uv_config.bind_socket()
    sock.listen(uv_config.backlog)  # connections wait in the backlog until uvicorn runs
    host, port = sock.getsockname()[:2]
    model = server_state.model
    print(
        f"serving {config.name} (bundle version {model.version}, {model.kind}, "
        f"{model.n_users} users x {model.n_items} items) on {url_of(host, port)}",
        file=out or sys.stdout,
        flush=True,
    )
    uvicorn.Server(uv_config).run(sockets=[sock])
