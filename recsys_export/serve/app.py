"""The ASGI application: :func:`create_app` builds it on Starlette.

:class:`Server` holds what one app shares: its settings, metrics, the served model
(:class:`~recsys_export.serve.swap.ModelHolder`) and the two batchers (recommend,
score). :meth:`Server.endpoint` wraps every route the same way: the bearer token (off
for the health probes), errors as ``{"error": "one line"}`` with a 4xx or 503 status
and never a traceback, the ``X-Model-Version`` header, and the request metrics. The
routes live in :mod:`~recsys_export.serve.routes` (the JSON API) and
:mod:`~recsys_export.serve.oip` (the Open Inference Protocol).
"""

from __future__ import annotations

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
from recsys_export.serve.metrics import Metrics
from recsys_export.serve.schema import HTTPError, dumps
from recsys_export.serve.swap import ModelHolder

__all__ = ["VERSION_HEADER", "Server", "create_app"]

log = logging.getLogger("recsys_export.serve")

#: The response header naming the bundle version that answered.
VERSION_HEADER = "X-Model-Version"
#: A client's own deadline (milliseconds), at most the server's ``--deadline-ms``.
DEADLINE_HEADER = "x-deadline-ms"

Handler = Callable[["Server", Request], Awaitable[Response]]


class Server:
    """What the routes of one app share (see the module docstring)."""

    def __init__(self, config: ServeConfig, model: ServedModel) -> None:
        self.config = config
        self.metrics = Metrics()
        self.holder = ModelHolder(config.bundle, model, self.metrics, threads=config.engine_threads)
        self.recommender = self._batcher(self._run_recommend, "recommend")
        self.scorer = self._batcher(self._run_score, "score")
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
        )

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

    def _timeout(self, request: Request, limit_s: float | None = None) -> float:
        ms = self.config.deadline_ms
        if limit_s is not None:
            ms = min(ms, max(1, int(limit_s * 1000)))
        asked = request.headers.get(DEADLINE_HEADER)
        if asked is not None:
            try:
                ms = min(ms, max(1, int(asked)))
            except ValueError:
                raise HTTPError(
                    400, f"{DEADLINE_HEADER} must be an integer (milliseconds), got {asked!r}"
                ) from None
        return ms / 1000.0

    def admit(self, batcher: Batcher, request: Request) -> None:
        """Refuse a request before reading its body while the queue is congested."""
        batcher.admit(self._timeout(request))

    async def recommend(
        self, req: RecommendRequest, request: Request, limit_s: float | None = None
    ) -> tuple[str, Any]:
        """Answer one recommend request through the batcher: ``(version, result)``.

        The deadline is the server's, or less: the ``X-Deadline-Ms`` header, ``limit_s``.
        """
        timeout = self._timeout(request, limit_s)
        return await self.recommender.submit(req, len(req.users), timeout)

    async def score(self, req: ScoreRequest, request: Request) -> tuple[str, Any]:
        """Answer one score request through the batcher: ``(version, scores)``."""
        return await self.scorer.submit(req, len(req.users), self._timeout(request))

    # ------------------------------------------------------------------ HTTP plumbing
    async def read_body(self, request: Request) -> bytes:
        """The request body, at most ``max_body_bytes`` (HTTPError 413 past it)."""
        limit = self.config.max_body_bytes
        declared = request.headers.get("content-length")
        too_big = HTTPError(
            413, f"the request body is larger than {limit} bytes (--max-body-bytes)"
        )
        if declared is not None and declared.isdigit() and int(declared) > limit:
            raise too_big
        body = bytearray()
        async for chunk in request.stream():
            body += chunk
            if len(body) > limit:
                raise too_big
        return bytes(body)

    def json(self, obj: Any, status: int = 200, version: str | None = None) -> Response:
        """A JSON response carrying the version header."""
        headers = {VERSION_HEADER: version or self.model.version}
        return Response(dumps(obj), status, headers, media_type="application/json")

    def error(self, status: int, message: str, headers: dict[str, str] | None = None) -> Response:
        """``{"error": message}`` on one line."""
        response = self.json({"error": " ".join(message.split())}, status)
        response.headers.update(headers or {})
        return response

    def _authorize(self, request: Request) -> None:
        if self._token is None:
            return
        given = request.headers.get("authorization", "")
        scheme, _, token = given.partition(" ")
        ok = scheme.lower() == "bearer" and hmac.compare_digest(token.strip().encode(), self._token)
        if not ok:
            raise HTTPError(
                401,
                "missing or wrong bearer token; send 'Authorization: Bearer TOKEN' with the "
                "server's --token-file token",
                {"WWW-Authenticate": "Bearer"},
            )

    def endpoint(self, route: str, handler: Handler, *, public: bool = False) -> Any:
        """Wrap ``handler`` (auth, errors, metrics) as a Starlette endpoint."""

        async def call(request: Request) -> Response:
            start = time.perf_counter()
            try:
                if not public:
                    self._authorize(request)
                response = await handler(self, request)
            except HTTPError as exc:
                response = self.error(exc.status, str(exc), exc.headers)
            except Overloaded as exc:
                response = self.error(503, str(exc), {"Retry-After": str(exc.retry_after)})
            except UnknownIdError as exc:
                response = self.error(404, str(exc))
            except RecsysExportError as exc:
                response = self.error(400, str(exc))
            except Exception:
                log.exception("internal error on %s", route)
                response = self.error(500, "internal error; the server log has the details")
            self.metrics.observe_request(route, response.status_code, time.perf_counter() - start)
            return response

        return call


def create_app(
    config: ServeConfig,
    model: ServedModel | None = None,
    *,
    watch: bool = True,
) -> Starlette:
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
    Starlette
        The app; ``app.state.server`` is its :class:`Server`.

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
        try:
            yield
        finally:
            server.ready = False
            await server.holder.stop()
            await server.recommender.stop()
            await server.scorer.stop()

    table = routes.ROUTES + oip.ROUTES
    app_routes = [
        Route(path, server.endpoint(path, handler, public=public), methods=[method])
        for method, path, handler, public in table
    ]

    async def not_found(request: Request, exc: Exception) -> Response:
        status = exc.status_code if isinstance(exc, HTTPException) else 404
        message = (
            f"no route {request.method} {request.url.path}; see GET /model, POST /recommend, "
            "POST /score, GET /metrics, /v2/..."
            if status == 404
            else f"{request.method} is not allowed on {request.url.path}"
        )
        response = server.error(status, message)
        server.metrics.observe_request("unmatched", status, 0.0)
        return response

    app = Starlette(
        routes=app_routes,
        lifespan=lifespan,
        exception_handlers={404: not_found, 405: not_found},
    )
    app.state.server = server
    return app
