"""``serve --ray``: the same app as a Ray Serve deployment answers exactly as the
embedded server does (a local Ray instance; loopback only)."""

from __future__ import annotations

import socket

import httpx
import pytest
from helpers.serving import ARTIFACTS, copy_bundle, run, running

from recsys_export.serve.app import create_app
from recsys_export.serve.config import ServeConfig

pytestmark = [pytest.mark.ray, pytest.mark.slow]

REQUESTS = [
    ("POST", "/recommend", {"users": [1, 2], "k": 3}),
    ("POST", "/recommend", {"users": ["0", "nobody"], "k": 2, "unknown": "popular"}),
    ("POST", "/recommend", {"users": [4], "include": [0, 3], "k": 2}),
    ("POST", "/recommend", {"users": [77]}),
    ("POST", "/score", {"pairs": [[0, 1], [4, 3]]}),
    (
        "POST",
        "/v2/models/toy/infer",
        {"inputs": [{"name": "user_ids", "datatype": "INT64", "shape": [2], "data": [3, 1]}]},
    ),
    ("GET", "/model", None),
]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_ray_serve_replicas_answer_like_the_embedded_server(tmp_path):
    ray = pytest.importorskip("ray")
    serve = pytest.importorskip("ray.serve")
    from recsys_export.serve.ray_app import start_on_ray

    bundle = copy_bundle(ARTIFACTS / "toy-mf", tmp_path / "toy")
    config = ServeConfig(bundle=bundle, port=_free_port(), model_name="toy")

    async def embedded():
        async with running(create_app(config, watch=False)) as client:
            return [await client.request(m, p, json=b) for m, p, b in REQUESTS]

    want = run(embedded())
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        url = start_on_ray(config, replicas=2)
        with httpx.Client(base_url=url, timeout=60) as client:
            got = [client.request(m, p, json=b) for m, p, b in REQUESTS for _ in range(2)]
    finally:
        serve.shutdown()
        ray.shutdown()
    for i, expected in enumerate(want):
        for resp in got[2 * i : 2 * i + 2]:  # twice: both replicas are likely hit
            assert resp.status_code == expected.status_code, resp.text
            assert resp.headers["x-model-version"] == expected.headers["x-model-version"]
            assert resp.json() == expected.json()
