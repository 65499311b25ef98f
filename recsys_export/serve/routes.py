"""The JSON API: ``/recommend``, ``/score``, ``/model``, ``/healthz``, ``/readyz``, ``/metrics``.

Each handler takes the app's :class:`~recsys_export.serve.app.Server` and the request
(a :class:`~recsys_export.serve.http.Call`) and returns a :class:`~recsys_export.serve.http.Reply`;
:data:`ROUTES` lists them as ``(method, path, handler, public)`` (public: no token).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from recsys_export.serve.http import Call, Reply
from recsys_export.serve.schema import (
    finite_or_none,
    parse_json,
    parse_recommend,
    parse_score,
    recommendation_rows,
)

if TYPE_CHECKING:
    from recsys_export.serve.app import Server

__all__ = ["ROUTES"]


async def recommend(server: Server, call: Call) -> Reply:
    """``POST /recommend``: top-k items per user (see docs/serving.md)."""
    server.admit(server.recommender, call)
    body = parse_json(await server.read_body(call))
    req = parse_recommend(body, server.config.max_users)
    version, recs = await server.recommend(req, call)
    out: dict[str, Any] = {"model_version": version, "results": recommendation_rows(recs)}
    if recs.skipped:
        out["skipped"] = recs.skipped
    return server.json(out, version=version)


async def score(server: Server, call: Call) -> Reply:
    """``POST /score``: the scores of ``[user, item]`` pairs."""
    server.admit(server.scorer, call)
    body = parse_json(await server.read_body(call))
    req = parse_score(body, server.config.max_users)
    version, scores = await server.score(req, call)
    out = {"model_version": version, "scores": finite_or_none(scores)}
    return server.json(out, version=version)


async def model(server: Server, call: Call) -> Reply:
    """``GET /model``: the served bundle's summary and the serving settings."""
    served = server.model
    cfg = server.config
    out = {
        "name": cfg.name,
        **served.describe(),
        "serving": {
            "max_batch": cfg.max_batch,
            "max_delay_us": cfg.max_delay_us,
            "max_queue": cfg.max_queue,
            "concurrency": cfg.concurrency,
            "deadline_ms": cfg.deadline_ms,
            "max_users": cfg.max_users,
            "watch_interval_s": cfg.watch_interval_s,
        },
    }
    return server.json(out, version=served.version)


async def healthz(server: Server, call: Call) -> Reply:
    """``GET /healthz``: the process answers (liveness)."""
    return server.json({"status": "ok"})


async def readyz(server: Server, call: Call) -> Reply:
    """``GET /readyz``: 200 while serving, 503 while starting or shutting down."""
    if not server.ready:
        return server.error(503, "not ready: the server is starting or shutting down")
    return server.json({"status": "ready", "model_version": server.model.version})


async def metrics(server: Server, call: Call) -> Reply:
    """``GET /metrics``: Prometheus exposition text."""
    body, content_type = server.metrics.render()
    return server.reply(body, content_type=content_type.encode())


ROUTES = [
    ("POST", "/recommend", recommend, False),
    ("POST", "/score", score, False),
    ("GET", "/model", model, False),
    ("GET", "/metrics", metrics, False),
    ("GET", "/healthz", healthz, True),
    ("GET", "/readyz", readyz, True),
]
