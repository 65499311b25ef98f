"""The serve app's own CPU per request, in process: no sockets, no HTTP server, no load
generator sharing the cores, so it moves far less with a busy machine than the HTTP
numbers of serve_bench.py.

    python benchmarks/serve_inprocess.py BUNDLE [--requests 20000] [--callers 64] [--k 10]

``--callers`` coroutines call the ASGI app directly with single-user top-k
``POST /recommend`` requests (k at most the bundle's item count; raw ids, seen items
excluded) for ``--requests`` requests; prints requests/s and the CPU per request of the
event loop's thread (the route: body, JSON, batcher, metrics) and of the whole process
(engine threads included), and writes JSON (``--json``).
``PYTHONPATH=OTHER_CHECKOUT python benchmarks/serve_inprocess.py`` measures another
checkout's app (a before/after).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from recsys_export.runtime import Recommender
from recsys_export.serve.app import create_app
from recsys_export.serve.config import ServeConfig


async def _call(app: Any, body: bytes) -> int:
    scope = {
        "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST",
        "scheme": "http", "path": "/recommend", "raw_path": b"/recommend", "query_string": b"",
        "root_path": "", "client": ("127.0.0.1", 1), "server": ("127.0.0.1", 2), "state": {},
        "headers": [(b"host", b"bench"), (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode())],
    }  # fmt: skip
    sent = False
    status: list[int] = []

    async def receive() -> dict[str, Any]:
        nonlocal sent
        if sent:  # the app never reads past the body; a disconnect only if it did
            return {"type": "http.disconnect"}
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            status.append(message["status"])

    await app(scope, receive, send)
    return status[0]


async def measure(bundle: Path, requests: int, callers: int, k: int = 10) -> dict[str, Any]:
    rec = Recommender.load(bundle, verify=False)
    users = np.random.default_rng(0).choice(rec.user_map.raw_ids, 1000).tolist()
    k = min(k, len(rec.item_map))
    bodies = [json.dumps({"users": [str(u)], "k": k}).encode() for u in users]
    app = create_app(ServeConfig(bundle=bundle), watch=False)
    async with app.router.lifespan_context(app):
        for i in range(200):  # warm up
            assert await _call(app, bodies[i % len(bodies)]) == 200
        done = 0

        async def caller(first: int) -> None:
            nonlocal done
            for i in range(first, requests, callers):
                assert await _call(app, bodies[i % len(bodies)]) == 200
                done += 1

        wall, cpu, loop = time.perf_counter(), time.process_time(), time.thread_time()
        await asyncio.gather(*(caller(j) for j in range(callers)))
        wall = time.perf_counter() - wall
        cpu, loop = time.process_time() - cpu, time.thread_time() - loop
    return {
        "bundle": str(bundle), "requests": done, "callers": callers, "k": k,
        "req_per_s": done / wall, "cpu_us_per_request": cpu / done * 1e6,
        "loop_thread_us_per_request": loop / done * 1e6,
    }  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("bundle", type=Path)
    p.add_argument("--requests", type=int, default=20_000)
    p.add_argument("--callers", type=int, default=64)
    p.add_argument("--k", type=int, default=10, help="top-k (capped at the item count)")
    p.add_argument("--json", type=Path, help="where to write the result")
    args = p.parse_args(argv)
    try:
        import uvloop

        runner = uvloop.run
    except ImportError:
        runner = asyncio.run
    out = runner(measure(args.bundle, args.requests, args.callers, args.k))
    print(
        f"{out['requests']} requests, {out['callers']} callers: {out['req_per_s']:,.0f} req/s, "
        f"CPU {out['cpu_us_per_request']:.1f} us/request "
        f"(event loop thread {out['loop_thread_us_per_request']:.1f})"
    )
    if args.json:
        args.json.write_text(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
