"""The app on uvicorn: the listening socket, and one process serving on it.

:func:`bind` makes the socket listen before uvicorn starts (connections wait in its
backlog), so the caller can print the address first (:mod:`~recsys_export.serve.run`).
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

__all__ = ["CoalescingProtocol", "bind", "log_to_stderr", "run_app", "url_of"]


def url_of(host: str, port: int) -> str:
    """``http://host:port`` (IPv6 hosts in brackets)."""
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def log_to_stderr(level: str) -> None:
    """The server's log lines on stderr at ``level``."""
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
    log_to_stderr(log_level)
    if app is None:
        app = create_app(config)
    uvicorn.Server(_uvicorn_config(app, config, log_level, access_log)).run(sockets=[sock])
