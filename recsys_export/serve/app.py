"""The ASGI application: :func:`create_app` builds it on Starlette.

:class:`Server` holds what one app shares: its settings, metrics, the served model
(:class:`~recsys_export.serve.swap.ModelHolder`) and the two batchers (recommend,
score). :class:`Endpoint` wraps every route the same way: the bearer token (off for
the health probes), errors as ``{"error": "one line"}`` with a 4xx or 503 status and
never a traceback, the ``X-Model-Version`` header, and the request metrics. The routes
live in :mod:`~recsys_export.serve.routes` (the JSON API) and
:mod:`~recsys_export.serve.oip` (the Open Inference Protocol); they take a
:class:`~recsys_export.serve.http.Call` and return a
:class:`~recsys_export.serve.http.Reply`. :class:`ServeApp` is a Starlette app whose
hot routes (fixed paths: ``/recommend``, ``/score``, the probes, OIP ``infer``) skip
Starlette's middleware and router: the per-request cost is the route's own work.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from recsys_export.errors import RecsysExportError, UnknownIdError
from recsys_export.serve.batching import Batcher, Overloaded
from recsys_export.serve.config import ServeConfig
from recsys_export.serve.engine import RecommendRequest, ScoreRequest, ServedModel
from recsys_export.serve.http import (
    JSON,
    Call,
    Disconnected,
    Receive,
    Reply,
    Scope,
    Send,
    send_reply,
)
from recsys_export.serve.loop_lag import LoopLag
from recsys_export.serve.metrics import SAMPLE_S, Metrics
from recsys_export.serve.schema import HTTPError, dumps
from recsys_export.serve.swap import ModelHolder

__all__ = ["VERSION_HEADER", "Endpoint", "ServeApp", "Server", "create_app"]

log = logging.getLogger("recsys_export.serve")

#: The response header naming the bundle version that answered.
VERSION_HEADER = "X-Model-Version"
#: A client's own deadline (milliseconds), at most the server's ``--deadline-ms``.
DEADLINE_HEADER = "x-deadline-ms"
_VERSION = VERSION_HEADER.lower().encode()
_DEADLINE = DEADLINE_HEADER.encode()

Handler = Callable[["Server", Call], Awaitable[Reply]]


class Server:
    """What the routes of one app share (see the module docstring)."""

    def __init__(self, config: ServeConfig, model: ServedModel) -> None:
        self.config = config
        self.metrics = Metrics()
        self.holder = ModelHolder(config.bundle, model, self.metrics, threads=config.engine_threads)
        self.lag = LoopLag(limit_s=config.deadline_ms / 10_000)  # a tenth of the deadline
        self.recommender = self._batcher(self._run_recommend, "recommend")
        self.scorer = self._batcher(self._run_score, "score")
        self.metrics.add_sampler(self._sample)
        self.ready = False
        self._token = config.token.encode() if config.token else None

    def _batcher(self, run: Callable[[list[Any]], tuple[str, list[Any]]], name: str) -> Batcher:
        cfg = self.config
        return Batcher(
            run,
            name=name,
            max_batch=cfg.max_batch,
            max_delay_us=cfg.max_delay_us,
            max_queue=cfg.max_queue,
            concurrency=cfg.concurrency,
            metrics=self.metrics,
            lag=self.lag,
        )

    def _sample(self) -> None:
        batchers = (self.recommender, self.scorer)
        self.metrics.queue_depth.set(sum(b.depth for b in batchers))
        self.metrics.in_flight.set(sum(b.running for b in batchers))

    async def sample_metrics(self) -> None:
        """Sample the sampled gauges every :data:`~recsys_export.serve.metrics.SAMPLE_S`
        seconds, until cancelled."""
        while True:
            self.metrics.sample()
            await asyncio.sleep(SAMPLE_S)

    @property
    def model(self) -> ServedModel:
        """The model serving now."""
        return self.holder.model

    # ------------------------------------------------------------------ engine calls
    def _run_recommend(self, reqs: list[Any]) -> tuple[str, list[Any]]:
        model = self.holder.model  # read once: the whole batch is one bundle's
        return model.version, model.recommend_batch(reqs)

    def _run_score(self, reqs: list[Any]) -> tuple[str, list[Any]]:
        model = self.holder.model
        return model.version, model.score_batch(reqs)

    def _timeout(self, call: Call, limit_s: float | None = None) -> float:
        ms = self.config.deadline_ms
        if limit_s is not None:
            ms = min(ms, max(1, int(limit_s * 1000)))
        asked = call.headers.get(_DEADLINE)
        if asked is not None:
            try:
                ms = min(ms, max(1, int(asked)))
            except ValueError:
                raise HTTPError(
                    400,
                    f"{DEADLINE_HEADER} must be an integer (milliseconds), "
                    f"got {asked.decode('latin-1')!r}",
                ) from None
        return ms / 1000.0

    def admit(self, batcher: Batcher, call: Call) -> None:
        """Refuse a request before reading its body while the queue is congested or the
        event loop runs late (:meth:`Batcher.admit`)."""
        batcher.admit(self._timeout(call))

    async def recommend(
        self, req: RecommendRequest, call: Call, limit_s: float | None = None
    ) -> tuple[str, Any]:
        """Answer one recommend request through the batcher: ``(version, result)``.

        The deadline is the server's, or less: the ``X-Deadline-Ms`` header, ``limit_s``.
        """
        timeout = self._timeout(call, limit_s)
        return await self.recommender.submit(req, len(req.users), timeout)

    async def score(self, req: ScoreRequest, call: Call) -> tuple[str, Any]:
        """Answer one score request through the batcher: ``(version, scores)``."""
        return await self.scorer.submit(req, len(req.users), self._timeout(call))

    # ------------------------------------------------------------------ HTTP plumbing
    async def read_body(self, call: Call) -> bytes:
        """The request body, at most ``max_body_bytes`` (HTTPError 413 past it)."""
        return await call.body(self.config.max_body_bytes)

    def reply(
        self, body: bytes, status: int = 200, version: str | None = None, content_type: bytes = JSON
    ) -> Reply:
        """A reply carrying the version header (default: the version serving now)."""
        headers = [(_VERSION, (version or self.model.version).encode())]
        return Reply(status, body, headers, content_type)

    def json(self, obj: Any, status: int = 200, version: str | None = None) -> Reply:
        """A JSON reply carrying the version header."""
        return self.reply(dumps(obj), status, version)

    def error(self, status: int, message: str, headers: dict[str, str] | None = None) -> Reply:
        """``{"error": message}`` on one line."""
        reply = self.json({"error": " ".join(message.split())}, status)
        for name, value in (headers or {}).items():
            reply.header(name, value)
        return reply

    def authorize(self, call: Call) -> None:
        """Check the bearer token (HTTPError 401), when the server has one."""
        if self._token is None:
            return
        given = (call.header(b"authorization") or "").encode("latin-1")
        scheme, _, token = given.partition(b" ")
        ok = scheme.lower() == b"bearer" and hmac.compare_digest(token.strip(), self._token)
        if not ok:
            raise HTTPError(
                401,
                "missing or wrong bearer token; send 'Authorization: Bearer TOKEN' with the "
                "server's --token-file token",
                {"WWW-Authenticate": "Bearer"},
            )

    def answer(self, route: str, exc: Exception) -> Reply:
        """The reply to a request whose handler raised ``exc``."""
        if isinstance(exc, HTTPError):
            return self.error(exc.status, str(exc), exc.headers)
        if isinstance(exc, Overloaded):
            return self.error(503, str(exc), {"Retry-After": str(exc.retry_after)})
        if isinstance(exc, UnknownIdError):
            return self.error(404, str(exc))
        if isinstance(exc, RecsysExportError):
            return self.error(400, str(exc))
        log.error("internal error on %s", route, exc_info=exc)
        return self.error(500, "internal error; the server log has the details")


class Endpoint:
    """One route as an ASGI app: the token, the handler, errors as JSON, metrics.

    Starlette routes to it (a non-function endpoint is called as ASGI), and
    :class:`ServeApp` calls the hot ones directly.
    """

    __slots__ = ("handler", "public", "route", "server")

    def __init__(self, server: Server, route: str, handler: Handler, *, public: bool) -> None:
        self.server = server
        self.route = route
        self.handler = handler
        self.public = public

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        server = self.server
        start = time.perf_counter()
        call = Call(scope, receive)
        try:
            if not self.public:
                server.authorize(call)
            reply = await self.handler(server, call)
        except Disconnected:
            return  # nobody to answer
        except Exception as exc:
            reply = server.answer(self.route, exc)
        server.metrics.observe_request(self.route, reply.status, time.perf_counter() - start)
        await send_reply(send, reply)


class ServeApp(Starlette):
    """Starlette, with the routes of fixed paths dispatched before its middleware."""

    #: (method, path) -> (endpoint, path parameters)
    hot: dict[tuple[str, str], tuple[Endpoint, dict[str, str] | None]]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and not scope.get("root_path"):
            found = self.hot.get((scope["method"], scope["path"]))
            if found is not None:
                endpoint, params = found
                if params is not None:
                    scope["path_params"] = params
                await endpoint(scope, receive, send)
                return
        await super().__call__(scope, receive, send)


def _response(reply: Reply) -> Response:
    """A Starlette response for a reply (the 404/405 handlers must return one)."""
    response = Response(reply.body, reply.status, media_type=reply.content_type.decode())
    for name, value in reply.headers:
        response.headers[name.decode("latin-1")] = value.decode("latin-1")
    return response


def create_app(
    config: ServeConfig,
    model: ServedModel | None = None,
    *,
    watch: bool = True,
) -> ServeApp:
    """The ASGI app serving ``config.bundle``.

    Parameters
    ----------
    config : ServeConfig
        Checked settings (:meth:`ServeConfig.check` is called here).
    model : ServedModel, optional
        The bundle, already loaded (default: loaded here, so that a bad bundle fails
        before the server binds).
    watch : bool
        Watch the bundle path for a new bundle (``config.watch_interval_s``).

    Returns
    -------
    ServeApp
        The app (a Starlette app); ``app.state.server`` is its :class:`Server`.

    Raises
    ------
    BundleError, ConfigError
        A bundle that cannot be served, or invalid settings.
    """
    from recsys_export.serve import oip, routes

    config.check()
    if model is None:
        model = ServedModel.load(config.bundle, threads=config.engine_threads)
    server = Server(config, model)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        server.recommender.start()
        server.scorer.start()
        if watch and config.watch_interval_s is not None:
            server.holder.start(config.watch_interval_s)
        server.ready = True
        server.metrics.workers.set(1)
        sampling = asyncio.create_task(server.sample_metrics())
        try:
            yield
        finally:
            server.ready = False
            server.metrics.workers.set(0)
            sampling.cancel()
            await server.holder.stop()
            await server.recommender.stop()
            await server.scorer.stop()

    endpoints = [
        (method, path, Endpoint(server, path, handler, public=public))
        for method, path, handler, public in routes.ROUTES + oip.ROUTES
    ]

    async def not_found(request: Request, exc: Exception) -> Response:
        status = exc.status_code if isinstance(exc, HTTPException) else 404
        message = (
            f"no route {request.method} {request.url.path}; see GET /model, POST /recommend, "
            "POST /score, GET /metrics, /v2/..."
            if status == 404
            else f"{request.method} is not allowed on {request.url.path}"
        )
        server.metrics.observe_request("unmatched", status, 0.0)
        return _response(server.error(status, message))

    app = ServeApp(
        routes=[Route(path, endpoint, methods=[method]) for method, path, endpoint in endpoints],
        lifespan=lifespan,
        exception_handlers={404: not_found, 405: not_found},
    )
    app.hot = {}
    for method, path, endpoint in endpoints:  # fixed paths, and this model's name filled in
        if "{" not in path.replace("{name}", ""):
            params = {"name": config.name} if "{name}" in path else None
            app.hot[method, path.replace("{name}", config.name)] = (endpoint, params)
    app.state.server = server
    return app
