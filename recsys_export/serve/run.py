"""Run the app on uvicorn (``recsys-export serve``): one process, or ``--workers N``.

The socket is bound and listening before uvicorn starts, so the line naming the address (with the
real port when ``--port 0`` asked for an ephemeral one) is printed, flushed, before the
first request can arrive: scripts and tests read it to find the server.

uvicorn runs with the httptools parser and uvloop (where installed), without its proxy
headers middleware (the app reads no client address), and with
:class:`CoalescingProtocol`: uvicorn writes a response's status line and headers, then
its body, with one ``write`` each; the protocol holds the head until the body comes and
writes both at once (one system call, one TCP segment, for every response).
"""

from __future__ import annotations

import asyncio
import importlib.util
import logging
import socket
import sys
from typing import Any

import uvicorn
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from recsys_export.serve.app import create_app
from recsys_export.serve.config import ServeConfig
from recsys_export.serve.engine import ServedModel

__all__ = ["CoalescingProtocol", "bind", "run_app", "serve_forever", "url_of"]


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


class _HeldHead:
    """A transport that holds a response head until its body is written."""

    __slots__ = ("_head", "_transport")

    def __init__(self, transport: asyncio.Transport) -> None:
        self._transport = transport
        self._head: bytes | None = None

    def write(self, data: bytes) -> None:
        if self._head is not None:
            data, self._head = self._head + data, None
        elif data[:5] == b"HTTP/" and data[9:10] != b"1" and data[-4:] == b"\r\n\r\n":
            self._head = data  # a final status line and headers: the body follows
            return
        self._transport.write(data)

    def flush(self) -> None:
        """Write a head still held (a response without a body: HEAD, 204, 304)."""
        if self._head is not None:
            head, self._head = self._head, None
            self._transport.write(head)

    def close(self) -> None:
        self.flush()
        self._transport.close()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)


class CoalescingProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol writing each response's head and body at once."""

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self.transport = _HeldHead(transport)  # type: ignore[assignment]

    def on_response_complete(self) -> None:
        self.transport.flush()  # type: ignore[attr-defined]
        super().on_response_complete()


def _uvicorn_config(app: Any, config: ServeConfig, log_level: str, access_log: bool) -> Any:
    return uvicorn.Config(
        app,
        host=config.host,
        port=config.port,
        loop="uvloop" if importlib.util.find_spec("uvloop") else "asyncio",
        http=CoalescingProtocol,
        lifespan="on",
        log_level=log_level,
        access_log=access_log,
        server_header=False,
        proxy_headers=False,
        backlog=4096,
        timeout_keep_alive=30,
    )


def bind(config: ServeConfig, log_level: str = "info") -> socket.socket:
    """The listening socket of ``config.host``/``config.port``."""
    uv_config = uvicorn.Config(
        "unused:app", host=config.host, port=config.port, backlog=4096, log_level=log_level
    )  # only binds: the app is never loaded
    sock = uv_config.bind_socket()
    sock.listen(uv_config.backlog)  # connections wait in the backlog until uvicorn runs
    return sock


def run_app(
    config: ServeConfig,
    sock: socket.socket,
    *,
    log_level: str = "info",
    access_log: bool = False,
    app: Any = None,
) -> None:
    """Serve the app (built here unless given) on uvicorn on ``sock`` until stopped."""
    _log_to_stderr(log_level)
    if app is None:
        app = create_app(config)
    uvicorn.Server(_uvicorn_config(app, config, log_level, access_log)).run(sockets=[sock])


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
    _log_to_stderr(log_level)

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
        from recsys_export.serve.workers import serve_workers

        serve_workers(config, log_level=log_level, access_log=access_log, announce=announce)
        return
    app = create_app(config)
    sock = bind(config, log_level)
    announce(app.state.server.model, sock)
    run_app(config, sock, log_level=log_level, access_log=access_log, app=app)
