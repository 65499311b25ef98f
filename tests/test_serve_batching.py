"""Dynamic batching and overload, in process: concurrent requests are carved back out
of one engine call (asserted on the batch-size metrics), and overload is answered 503
at once (a full queue, work that would outlive its deadline, a congested queue) or at
the deadline. The engine blocks on an event where a test needs a full queue: nothing
depends on timing.
"""

from __future__ import annotations

import asyncio
import threading
import time
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
from recsys_export.serve.batching import Batcher, Overloaded
from recsys_export.serve.config import ServeConfig
from recsys_export.serve.loop_lag import SHED_CUT, SHED_FLOOR, SHED_RESTORE, LoopLag
from recsys_export.serve.metrics import Metrics


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
            busy = (await client.get("/metrics")).text  # the gauges, sampled at the scrape
            gate.set()
            done = await asyncio.gather(running_call, *queued)
            return rejected, done, (await client.get("/metrics")).text, busy

    rejected, done, text, busy = run(body())
    assert metric(busy, "recsys_queue_depth") == 3
    assert metric(busy, "recsys_batches_in_flight") == 1
    assert metric(text, "recsys_batches_in_flight") == 0
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


def test_one_engine_call_applies_each_requests_unknown_user_policy(bundles):
    """Requests of one batch, one engine call: an unknown user fails (raise), is left out
    (skip) or gets the fallback (popular) in its own request only; an id that is no id
    (1.5) fails its request and no other."""
    rec = Recommender.load(bundles["mf"])
    app = _app(bundles["mf"], max_batch=16, concurrency=1)
    server = app.state.server
    gate = gate_engine(app)
    bodies = [
        {"users": [0, 3], "k": 2},
        {"users": [1, 77], "k": 2},
        {"users": [2, 77], "k": 2, "unknown": "skip"},
        {"users": [77, 4], "k": 2, "unknown": "popular"},
        {"users": [1.5], "k": 2},
        {"users": [4], "k": 2},
    ]

    async def body():
        async with running(app) as client:
            first = asyncio.create_task(client.post("/recommend", json={"users": [0]}))
            await until(lambda: now(server.recommender._slots == 0), "the first engine call")
            tasks = [asyncio.create_task(client.post("/recommend", json=b)) for b in bodies]
            await until(lambda: now(len(server.recommender._queue) == len(bodies)), "queued")
            gate.set()
            await first
            return await asyncio.gather(*tasks), (await client.get("/metrics")).text

    (ok, raised, skipped, popular, float_id, last), text = run(body())
    assert metric(text, "recsys_batch_size_count") == 2  # the first call, then all six
    assert ok.status_code == 200
    same_rows(ok.json()["results"], expected_rows(rec, [0, 3], k=2))
    assert raised.status_code == 404 and "unknown user id(s): 77" in raised.json()["error"]
    assert skipped.status_code == 200 and skipped.json()["skipped"] == [77]
    same_rows(skipped.json()["results"], expected_rows(rec, [2], k=2))
    assert popular.status_code == 200
    same_rows(popular.json()["results"], expected_rows(rec, [77, 4], k=2, unknown="popular"))
    assert float_id.status_code == 404 and "not an exact integer" in float_id.json()["error"]
    same_rows(last.json()["results"], expected_rows(rec, [4], k=2))


def test_a_request_in_a_blocked_engine_call_gets_503_at_its_deadline(bundles):
    app = _app(bundles["mf"], max_batch=1, concurrency=1)
    gate = gate_engine(app)

    async def body():
        async with running(app) as client:
            late = await client.post(
                "/recommend", json={"users": [2]}, headers={"X-Deadline-Ms": "30"}
            )  # answered while the engine still holds its call
            gate.set()
            after = await client.post("/recommend", json={"users": [2]})
            return late, after, (await client.get("/metrics")).text

    late, after, text = run(body())
    assert late.status_code == 503 and "within its deadline (30 ms)" in late.json()["error"]
    assert after.status_code == 200
    assert metric(text, "recsys_rejected_total", reason="deadline") == 1


def test_deadlines_are_checked_when_a_batch_forms_and_when_it_is_answered(bundles):
    """A queued request already past its deadline is answered 503 without an engine call;
    one whose deadline passed during its engine call gets 503, not the late answer.
    (Deadlines are moved into the past by hand: the timer armed at submission is
    minutes away, so only these two checks can answer.)"""
    app = _app(bundles["mf"], max_batch=1, concurrency=1, deadline_ms=600_000)
    server = app.state.server
    gate = gate_engine(app)

    async def body():
        async with running(app) as client:
            first, second = await _one_running_one_queued(client, server)
            server.recommender._queue[0].deadline -= 1000.0  # the queued one: late
            (running_batch,) = server.recommender._calls
            running_batch[0].deadline -= 1000.0  # the one in the engine: late too
            gate.set()
            return await first, await second, (await client.get("/metrics")).text

    first, second, text = run(body())
    assert first.status_code == second.status_code == 503
    assert "within its deadline" in first.json()["error"] + second.json()["error"]
    assert metric(text, "recsys_rejected_total", reason="deadline") == 2
    assert metric(text, "recsys_batch_size_count") == 1  # the late queued one never ran


def test_a_late_event_loop_refuses_requests_at_once(bundles):
    app = _app(bundles["mf"], deadline_ms=1000)
    server = app.state.server

    async def body():
        async with running(app) as client:
            ok = await client.post("/recommend", json={"users": [1]})
            server.lag.sustained = lambda: 0.3  # as if the loop ran 300 ms late (> 100)
            server.lag.share = 0.0  # and the flood had cut what it admits
            refused = await client.post("/recommend", content=b"not even JSON")
            return ok, refused, (await client.get("/metrics")).text

    ok, refused, text = run(body())
    assert ok.status_code == 200
    assert refused.status_code == 503 and refused.headers["retry-after"] == "1"
    assert "answers requests 300 ms late" in refused.json()["error"]
    assert metric(text, "recsys_rejected_total", reason="loop_delay") == 1


def test_a_late_loop_sheds_a_share_of_requests_and_gives_it_back():
    """Each tick with the loop late (two in a row) cuts the admitted share by SHED_CUT,
    each tick on time adds SHED_RESTORE; admissions follow the share evenly."""
    clock = [100.0]
    lag = LoopLag(interval_s=0.02, clock=lambda: clock[0], limit_s=0.05)

    def tick(late_s: float) -> float:
        clock[0] += 0.02 + late_s
        lag._tick()
        return lag.share

    async def body():
        lag.start()
        try:
            every = [lag.admit() for _ in range(8)]
            flood = [tick(0.2) for _ in range(4)]  # the first late tick alone cuts nothing
            lag.share = 0.25
            quarter = [lag.admit() for _ in range(8)]
            recovery = [tick(0.0) for _ in range(3)]
            floor = [tick(0.2) for _ in range(20)][-1]
            return every, flood, quarter, recovery, floor
        finally:
            lag.stop()

    every, flood, quarter, recovery, floor = run(body())
    assert every == [True] * 8
    assert flood == pytest.approx([1.0, SHED_CUT, SHED_CUT**2, SHED_CUT**3])
    assert quarter == [False, False, False, True] * 2
    assert recovery == pytest.approx([0.25 + SHED_RESTORE * i for i in (1, 2, 3)])
    assert floor == pytest.approx(SHED_FLOOR)


def test_loop_lag_measures_a_late_tick_and_an_overdue_one():
    clock = [100.0]
    lag = LoopLag(interval_s=0.02, clock=lambda: clock[0])

    async def body():
        lag.start()
        try:
            first = lag.now()
            clock[0] += 0.52  # the tick due at 100.02 has not run: 0.5 s overdue
            overdue = lag.now()
            lag._tick()  # it runs now, 0.5 s late; the next is due at 100.54
            late = lag.now()
            clock[0] += 0.01
            return first, overdue, late, lag.now()
        finally:
            lag.stop()

    first, overdue, late, recovered = run(body())
    assert first == 0.0
    assert overdue == pytest.approx(0.5)
    assert late == pytest.approx(0.5)  # the last tick's lateness
    assert recovered == pytest.approx(0.5)  # until the next tick measures again


def test_loop_lag_is_sustained_only_when_two_ticks_in_a_row_ran_late():
    clock = [100.0]
    lag = LoopLag(interval_s=0.02, clock=lambda: clock[0])

    def tick(late_s: float) -> float:
        clock[0] += 0.02 + late_s  # the next tick runs late_s after it was due
        lag._tick()
        return lag.sustained()

    async def body():
        lag.start()
        try:
            # one stall of the process: one late tick, then on time again
            stall = [tick(0.0), tick(0.3), tick(0.0), tick(0.0)]
            # a flood: every tick late, more and more
            flood = [tick(0.2), tick(0.3), tick(0.4)]
            return stall, flood
        finally:
            lag.stop()

    stall, flood = run(body())
    assert stall == pytest.approx([0.0] * 4, abs=1e-9)
    assert flood == pytest.approx([0.0, 0.2, 0.3])


def test_engine_calls_on_the_event_loop_carve_responses_too(bundles):
    """--concurrency 0: engine calls run on the event loop, batches still carved."""
    rec = Recommender.load(bundles["mf"])
    app = _app(bundles["mf"], max_batch=8, concurrency=0)
    users = [0, 1, 2, 3, 4, 0, 1, 2]

    async def body():
        async with running(app) as client:
            tasks = [client.post("/recommend", json={"users": [u], "k": 2}) for u in users]
            return await asyncio.gather(*tasks), (await client.get("/metrics")).text

    responses, text = run(body())
    for resp, u in zip(responses, users):
        assert resp.status_code == 200
        same_rows(resp.json()["results"], expected_rows(rec, [u], k=2))
    assert metric(text, "recsys_batch_size_sum") == len(users)


def _batcher(runner, **options) -> Batcher:
    settings = {"max_batch": 2, "max_delay_us": 0, "max_queue": 8, "concurrency": 1}
    return Batcher(runner, name="t", metrics=Metrics(), **{**settings, **options})


def test_engine_threads_form_and_run_batches_without_the_event_loop():
    """A blocked event loop does not hold engine calls back: the engine thread takes the
    batch and runs it by itself (only the answer waits for the loop)."""
    ran = threading.Event()

    def runner(payloads):
        ran.set()
        return "v1", [p * 2 for p in payloads]

    async def body():
        batcher = _batcher(runner)
        batcher.start()
        try:
            job = asyncio.ensure_future(batcher.submit(21, 1, 10.0))
            await asyncio.sleep(0)  # queued
            ran_while_blocked = ran.wait(10)  # blocks the event loop itself
            return ran_while_blocked, await job
        finally:
            await batcher.stop()

    ran_while_blocked, answer = run(body())
    assert ran_while_blocked
    assert answer == ("v1", 42)


def test_inline_engine_calls_run_a_full_batch_in_the_request_that_fills_it():
    """--concurrency 0: the request that fills a batch runs it at once (no turn of the
    dispatcher coroutine); a batch that did not fill goes from the dispatcher."""
    callers: list[bool] = []

    def runner(payloads):
        callers.append(asyncio.current_task() is batcher._task)
        return "v1", payloads

    batcher = _batcher(runner, concurrency=0)

    async def body():
        batcher.start()
        try:
            full = await asyncio.gather(*(batcher.submit(i, 1, 10.0) for i in range(2)))
            alone = await batcher.submit(7, 1, 10.0)
            return full, alone
        finally:
            await batcher.stop()

    full, alone = run(body())
    assert full == [("v1", 0), ("v1", 1)] and alone == ("v1", 7)
    assert callers == [False, True]  # the filling request's own task, then the dispatcher


def test_stopping_answers_queued_jobs_and_ends_the_engine_threads():
    gate = threading.Event()

    def runner(payloads):
        assert gate.wait(10)
        return "v1", payloads

    async def body():
        batcher = _batcher(runner, max_batch=1)
        batcher.start()
        running_job = asyncio.ensure_future(batcher.submit(1, 1, 30.0))
        await until(lambda: now(batcher._slots == 0), "the first engine call")
        queued = asyncio.ensure_future(batcher.submit(2, 1, 30.0))
        await until(lambda: now(len(batcher._queue) == 1), "one queued")
        stopping = asyncio.ensure_future(batcher.stop())
        await asyncio.sleep(0)
        gate.set()
        await stopping
        results = await asyncio.gather(running_job, queued, return_exceptions=True)
        return results, [t.is_alive() for t in batcher._threads]

    (first, second), alive = run(body())
    assert first == ("v1", 1)
    assert isinstance(second, Overloaded) and "shutting down" in str(second)
    assert alive == [False]


@pytest.mark.parametrize("concurrency", [1, 0], ids=["engine-thread", "inline"])
def test_a_batch_that_did_not_fill_waits_max_delay_and_a_full_one_goes_at_once(concurrency):
    """--max-delay-us: the first request of a batch waits that long for company (the
    second joins its engine call), never less; a batch that fills goes without waiting."""
    calls: list[tuple[float, list[int]]] = []

    def runner(payloads):
        calls.append((time.monotonic(), list(payloads)))
        return "v1", payloads

    async def body(max_delay_s: float, n: int) -> tuple[float, list]:
        batcher = _batcher(
            runner, max_batch=3, max_delay_us=int(max_delay_s * 1e6), concurrency=concurrency
        )
        batcher.start()
        try:
            start = time.monotonic()
            answers = await asyncio.gather(*(batcher.submit(i, 1, 120.0) for i in range(n)))
            return start, answers
        finally:
            await batcher.stop()

    start, answers = run(body(0.5, 2))  # 2 of 3: waits the delay, then runs both
    assert answers == [("v1", 0), ("v1", 1)]
    assert [payloads for _, payloads in calls] == [[0, 1]]
    assert calls[0][0] - start >= 0.5
    calls.clear()
    start, answers = run(body(60.0, 3))  # full: no wait for the minute
    assert answers == [("v1", 0), ("v1", 1), ("v1", 2)]
    assert [payloads for _, payloads in calls] == [[0, 1, 2]]
    assert calls[0][0] - start < 30.0
