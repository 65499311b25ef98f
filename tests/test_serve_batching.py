"""Dynamic batching and overload, in process: concurrent requests are carved back out
of one engine call (asserted on the batch-size metrics), and overload is answered 503
at once (a full queue, work that would outlive its deadline, a congested queue) or at
the deadline. The engine blocks on an event where a test needs a full queue: nothing
depends on timing.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from helpers.serving import (
    ARTIFACTS,
    copy_bundle,
    expected_rows,
    gate_engine,
    metric,
    now,
    run,
    running,
    same_rows,
    until,
)

from recsys_export.runtime import Recommender
from recsys_export.serve.app import create_app
from recsys_export.serve.config import ServeConfig


@pytest.fixture(scope="module")
def bundles(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return {"mf": copy_bundle(ARTIFACTS / "toy-mf", tmp_path_factory.mktemp("batch") / "mf")}


def _app(bundle: Path, **options):
    return create_app(ServeConfig(bundle=bundle, **options), watch=False)


def test_batching_carves_each_response_out_of_one_engine_call(bundles):
    rec = Recommender.load(bundles["mf"])
    app = _app(bundles["mf"], max_batch=8, max_delay_us=0, concurrency=1)
    server = app.state.server
    gate = gate_engine(app)
    users = [0, 1, 2, 3, 4, 0, 1, 2]
    ks = [1, 2, 3, 4, 1, 2, 3, 4]

    async def body():
        async with running(app) as client:
            first = asyncio.create_task(client.post("/recommend", json={"users": [4], "k": 2}))
            await until(lambda: now(server.recommender._slots == 0), "the first engine call")
            tasks = [
                asyncio.create_task(client.post("/recommend", json={"users": [u], "k": k}))
                for u, k in zip(users, ks)
            ]
            tasks.append(asyncio.create_task(client.post("/recommend", json={"users": [2, 3]})))
            await until(lambda: now(len(server.recommender._queue) == 9), "9 queued requests")
            gate.set()
            responses = await asyncio.gather(first, *tasks)
            text = (await client.get("/metrics")).text
            return responses, text

    responses, text = run(body())
    assert all(r.status_code == 200 for r in responses)
    for resp, u, k in zip(responses[1:], users, ks):
        same_rows(resp.json()["results"], expected_rows(rec, [u], k=k))
    same_rows(responses[-1].json()["results"], expected_rows(rec, [2, 3], k=4))
    # engine calls: the first alone, then 8 requests (8 users: max_batch), then the last
    assert metric(text, "recsys_batch_size_count") == 3
    assert metric(text, "recsys_batch_size_sum") == 10
    assert metric(text, "recsys_batch_size_bucket", le="1.0") == 2
    assert metric(text, "recsys_batch_users_sum") == 11
    assert metric(text, "recsys_requests_total", route="/recommend", status="200") == 10


def test_overload_answers_503_at_once(bundles):
    app = _app(bundles["mf"], max_batch=1, max_queue=3, concurrency=1, deadline_ms=60_000)
    server = app.state.server
    gate = gate_engine(app)

    async def body():
        async with running(app) as client:
            post = lambda: client.post("/recommend", json={"users": [1]})  # noqa: E731
            running_call = asyncio.create_task(post())
            await until(lambda: now(server.recommender._slots == 0), "the first engine call")
            queued = [asyncio.create_task(post()) for _ in range(3)]
            await until(lambda: now(len(server.recommender._queue) == 3), "a full queue")
            rejected = await post()  # answered while the engine is still blocked
            gate.set()
            done = await asyncio.gather(running_call, *queued)
            return rejected, done, (await client.get("/metrics")).text

    rejected, done, text = run(body())
    assert rejected.status_code == 503 and rejected.headers["retry-after"] == "1"
    assert "overloaded (3 requests waiting)" in rejected.json()["error"]
    assert [r.status_code for r in done] == [200] * 4
    assert metric(text, "recsys_rejected_total", reason="queue_full") == 1
    assert metric(text, "recsys_rejected_total", reason="deadline") == 0
    assert metric(text, "recsys_queue_depth") == 0


def test_deadline_passes_in_the_queue(bundles):
    app = _app(bundles["mf"], max_batch=1, concurrency=1)
    server = app.state.server
    gate = gate_engine(app)

    async def body():
        async with running(app) as client:
            blocked = asyncio.create_task(client.post("/recommend", json={"users": [1]}))
            await until(lambda: now(server.recommender._slots == 0), "the first engine call")
            late = await client.post(
                "/recommend", json={"users": [2]}, headers={"X-Deadline-Ms": "20"}
            )
            gate.set()
            return late, await blocked, (await client.get("/metrics")).text

    late, blocked, text = run(body())
    assert late.status_code == 503 and "within its deadline (20 ms)" in late.json()["error"]
    assert blocked.status_code == 200
    assert metric(text, "recsys_rejected_total", reason="deadline") == 1
    assert metric(text, "recsys_queue_depth") == 0


async def _one_running_one_queued(client, server) -> tuple[asyncio.Task, asyncio.Task]:
    """One request in the (gated) engine, then one waiting in the queue."""
    first = asyncio.create_task(client.post("/recommend", json={"users": [1]}))
    await until(lambda: now(server.recommender._slots == 0), "the first engine call")
    second = asyncio.create_task(client.post("/recommend", json={"users": [1]}))
    await until(lambda: now(len(server.recommender._queue) == 1), "one queued")
    return first, second


def test_work_queued_past_the_deadline_is_refused_at_once(bundles):
    app = _app(bundles["mf"], max_batch=1, concurrency=1, deadline_ms=1000)
    server = app.state.server
    gate = gate_engine(app)

    async def body():
        async with running(app) as client:
            first, second = await _one_running_one_queued(client, server)
            server.recommender._row_seconds = 0.6  # as if engine calls took 0.6 s per user
            refused = await client.post("/recommend", json={"users": [1]})
            # (1 queued + 1) rows x 0.6 s = 1.2 s > the 1 s deadline
            gate.set()
            return refused, await first, await second

    refused, first, second = run(body())
    assert refused.status_code == 503 and refused.headers["retry-after"] == "1"
    assert "about 1200 ms of work queued" in refused.json()["error"]
    assert first.status_code == second.status_code == 200


def test_a_congested_queue_refuses_before_reading_the_body(bundles):
    app = _app(bundles["mf"], max_batch=1, concurrency=1, deadline_ms=60_000)
    server = app.state.server
    gate = gate_engine(app)

    async def body():
        async with running(app) as client:
            first, second = await _one_running_one_queued(client, server)
            server.recommender._queue[0].arrived -= 31.0  # as if it had waited 31 s
            refused = await client.post("/recommend", content=b"not even JSON")
            gate.set()
            return refused, await first, await second, (await client.get("/metrics")).text

    refused, first, second, text = run(body())
    assert refused.status_code == 503 and "ms in the queue); retry later" in refused.text
    assert int(refused.json()["error"].split("waited ")[1].split()[0]) >= 31_000
    assert first.status_code == second.status_code == 200
    assert metric(text, "recsys_rejected_total", reason="queue_delay") == 1
