"""The request and the answer as the routes see them, on bare ASGI.

A route handler takes a :class:`Call` (the ASGI scope's method, path, headers and path
parameters, and its body read with a size limit) and returns a :class:`Reply` (status,
body bytes, extra headers), which :func:`send_reply` sends as the two ASGI messages.
No framework object is built per request: the hot routes (``/recommend``, ``/score``,
the health probes, OIP ``infer``) go from uvicorn to their handler with nothing in
between; Starlette routes the others to the same handlers
(:mod:`~recsys_export.serve.app`).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from recsys_export.serve.schema import HTTPError

__all__ = ["JSON", "Call", "Disconnected", "Reply", "send_reply"]

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]

#: The content type of every JSON reply.
JSON = b"application/json"


class Disconnected(Exception):
    """The client went away before its request body was read."""


class Call:
    """One HTTP request: ``method``, ``path``, ``path_params`` and its headers.

    Header names are ASGI's (lower-case bytes); :meth:`header` decodes one value.
    """

    __slots__ = ("_receive", "headers", "method", "path", "path_params")

    def __init__(self, scope: Scope, receive: Receive) -> None:
        self.method: str = scope["method"]
        self.path: str = scope["path"]
        self.headers: dict[bytes, bytes] = dict(scope["headers"])
        self.path_params: dict[str, Any] = scope.get("path_params") or {}
        self._receive = receive

    def header(self, name: bytes) -> str | None:
        """The value of header ``name`` (lower-case), or None."""
        value = self.headers.get(name)
        return None if value is None else value.decode("latin-1")

    async def body(self, limit: int) -> bytes:
        """The request body, at most ``limit`` bytes.

        Raises
        ------
        HTTPError
            413: the body (declared or streamed) is larger than ``limit``.
        Disconnected
            The client closed the connection first.
        """
        too_big = HTTPError(
            413, f"the request body is larger than {limit} bytes (--max-body-bytes)"
        )
        declared = self.headers.get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            raise too_big
        message = await self._receive()
        body = message.get("body", b"")
        if message["type"] != "http.request":
            raise Disconnected
        if not message.get("more_body", False) and len(body) <= limit:
            return body  # the usual case: one message
        chunks, size = [body], len(body)
        while message.get("more_body", False):
            if size > limit:
                raise too_big
            message = await self._receive()
            if message["type"] != "http.request":
                raise Disconnected
            chunk = message.get("body", b"")
            chunks.append(chunk)
            size += len(chunk)
        if size > limit:
            raise too_big
        return b"".join(chunks)


class Reply:
    """A response: ``status``, ``body`` bytes, ``content_type``, extra ``headers``."""

    __slots__ = ("body", "content_type", "headers", "status")

    def __init__(
        self,
        status: int,
        body: bytes,
        headers: list[tuple[bytes, bytes]],
        content_type: bytes = JSON,
    ) -> None:
        self.status = status
        self.body = body
        self.headers = headers
        self.content_type = content_type

    def header(self, name: str, value: str) -> None:
        """Add header ``name: value``."""
        self.headers.append((name.lower().encode("latin-1"), value.encode("latin-1")))


async def send_reply(send: Send, reply: Reply) -> None:
    """Send ``reply`` as ``http.response.start`` and one ``http.response.body``."""
    body = reply.body
    headers = [
        (b"content-type", reply.content_type),
        (b"content-length", b"%d" % len(body)),
        *reply.headers,
    ]
    await send({"type": "http.response.start", "status": reply.status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
