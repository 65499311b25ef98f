"""Request bodies in, response bodies out: the JSON API of ``/recommend`` and ``/score``.

Parsing checks a body's shape and types and raises :class:`HTTPError` (a 4xx status and
the one-line message the CLI would print); ids themselves are checked by the engine
against the served bundle. Rendering turns the engine's arrays into JSON: empty slots
(no admissible item) are left out as the CLI does, and scores without a model score
(the popularity fallback) are ``null``. JSON through orjson.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import orjson

from recsys_export.core.validation import check_choice, check_int
from recsys_export.errors import ConfigError, RecsysExportError
from recsys_export.serve.engine import Recommendations, RecommendRequest, ScoreRequest

__all__ = [
    "HTTPError",
    "dumps",
    "parse_json",
    "parse_recommend",
    "parse_score",
    "recommend_options",
    "recommendation_rows",
]

_RECOMMEND_FIELDS = ("users", "k", "exclude_seen", "exclude", "include", "unknown")
_UNKNOWN = ("raise", "skip", "popular")


class HTTPError(RecsysExportError):
    """An error answered with ``status`` and ``{"error": message}``.

    Parameters
    ----------
    status : int
        The HTTP status (4xx, or 503).
    message : str
        One line saying what was wrong and how to fix it.
    headers : dict, optional
        Extra response headers (``Retry-After``, ``WWW-Authenticate``).
    """

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.headers = headers or {}


def dumps(obj: Any) -> bytes:
    """Compact UTF-8 JSON bytes (NaN and infinities must have been replaced by ``null``)."""
    return orjson.dumps(obj)


def parse_json(body: bytes) -> Any:
    """Decode a JSON body (HTTPError 400 naming the problem).

    Strict JSON (RFC 8259): no ``NaN``/``Infinity`` literals, integers within 64 bits.
    """
    if not body:
        raise HTTPError(400, "the request has no body; send a JSON object")
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise HTTPError(400, f"the request body is not valid JSON ({exc})") from None


def _fields(body: Any, allowed: tuple[str, ...], required: tuple[str, ...]) -> dict[str, Any]:
    if not isinstance(body, dict):
        raise HTTPError(400, f"the body must be a JSON object with {', '.join(allowed)}")
    extra = sorted(set(body) - set(allowed))
    if extra:
        raise HTTPError(
            400, f"unknown field(s) {', '.join(map(repr, extra))}; fields: {', '.join(allowed)}"
        )
    missing = [name for name in required if name not in body]
    if missing:
        raise HTTPError(400, f"missing field(s) {', '.join(map(repr, missing))}")
    return body


def _id_list(value: Any, what: str, *, limit: int | None = None) -> list[Any]:
    if not isinstance(value, list) or not all(
        isinstance(v, (str, int, float)) and not isinstance(v, bool) for v in value
    ):
        raise HTTPError(400, f"{what} must be a list of ids (strings or integers)")
    if limit is not None and len(value) > limit:
        raise HTTPError(
            413, f"{what} has {len(value)} ids; at most {limit} per request (--max-users)"
        )
    return value


def recommend_options(k: Any, unknown: Any, exclude_seen: Any) -> tuple[int | None, str, bool]:
    """Check ``k`` (None: the default), ``unknown`` and ``exclude_seen`` (HTTPError 400)."""
    try:
        k = check_int("k", k, low=1, none_ok=True)
        unknown = check_choice("unknown", unknown, _UNKNOWN)
    except ConfigError as exc:
        raise HTTPError(400, str(exc)) from None
    if not isinstance(exclude_seen, bool):
        raise HTTPError(400, f"exclude_seen must be true or false, got {exclude_seen!r}")
    return k, unknown, exclude_seen


def parse_recommend(body: Any, max_users: int) -> RecommendRequest:
    """A ``/recommend`` body -> :class:`RecommendRequest`.

    ``{"users": [...], "k": 10, "exclude_seen": true, "exclude": [...] or {user: [...]},
    "include": [...], "unknown": "raise" | "skip" | "popular"}``; only ``users`` is
    required.
    """
    body = _fields(body, _RECOMMEND_FIELDS, ("users",))
    users = _id_list(body["users"], "users", limit=max_users)
    if not users:
        raise HTTPError(400, "users is empty; give at least one user id")
    k, unknown, exclude_seen = recommend_options(
        body.get("k"), body.get("unknown", "raise"), body.get("exclude_seen", True)
    )
    exclude = body.get("exclude")
    if isinstance(exclude, dict):
        exclude = {u: _id_list(v, f"exclude[{u!r}]") for u, v in exclude.items()}
    elif exclude is not None:
        exclude = _id_list(exclude, "exclude (a list, or an object user -> list)")
    include = body.get("include")
    if include is not None:
        include = _id_list(include, "include")
    return RecommendRequest(users, k, exclude_seen, exclude, include, unknown)


def parse_score(body: Any, max_pairs: int) -> ScoreRequest:
    """A ``/score`` body ``{"pairs": [[user, item], ...]}`` -> :class:`ScoreRequest`."""
    body = _fields(body, ("pairs",), ("pairs",))
    pairs = body["pairs"]
    if (
        not isinstance(pairs, list)
        or not pairs
        or not all(isinstance(p, list) and len(p) == 2 for p in pairs)
    ):
        raise HTTPError(400, "pairs must be a non-empty list of [user, item] pairs")
    if len(pairs) > max_pairs:
        raise HTTPError(413, f"{len(pairs)} pairs; at most {max_pairs} per request (--max-users)")
    users = _id_list([p[0] for p in pairs], "the users of pairs")
    items = _id_list([p[1] for p in pairs], "the items of pairs")
    return ScoreRequest(users, items)


def recommendation_rows(recs: Recommendations) -> list[dict[str, Any]]:
    """One JSON object per user: ``user``, ``items``, ``scores`` (+ ``names``,
    ``fallback``); empty slots left out, non-finite scores ``null``."""
    users = recs.users.tolist()
    items = recs.items.tolist()
    scores = recs.scores.tolist()
    fallback = recs.fallback.tolist() if recs.fallback.size else [False] * len(users)
    names = recs.names.tolist() if recs.names is not None else None
    rows = []
    for r, user in enumerate(users):
        its, scs = items[r], scores[r]
        nms = names[r] if names is not None else None
        if -math.inf in scs:  # empty slots: the user rated (nearly) every admissible item
            keep = [j for j, s in enumerate(scs) if s != -math.inf]
            its, scs = [its[j] for j in keep], [scs[j] for j in keep]
            nms = [nms[j] for j in keep] if nms is not None else None
        if fallback[r]:
            scs = [None if math.isnan(s) else s for s in scs]
        row: dict[str, Any] = {"user": user, "items": its, "scores": scs}
        if nms is not None:
            row["names"] = nms
        if fallback[r]:
            row["fallback"] = True
        rows.append(row)
    return rows


def finite_or_none(values: np.ndarray) -> list[Any]:
    """A float array as a list, with NaN and infinities as ``None`` (JSON ``null``)."""
    out = values.tolist()
    if np.isfinite(values).all():
        return out
    return [v if math.isfinite(v) else None for v in out]
