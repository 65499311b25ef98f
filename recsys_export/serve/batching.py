"""Dynamic batching: concurrent requests coalesced into one engine call.

A :class:`Batcher` owns a bounded FIFO of jobs and ``concurrency`` engine threads. An
idle engine thread takes the jobs waiting, up to ``max_batch`` rows (users, or score
pairs), after waiting at most ``max_delay_us`` from the oldest job's arrival for the
batch to fill (a batch that is already full goes at once, and while every thread is
busy the queue fills by itself), runs the engine call and hands the answers back to the
event loop, which carves one result (or exception) back to each caller. Batches form on
the engine threads, not on the event loop: under a flood the loop runs every handler
queued before it gets to anything else, and engine calls that waited for it would
starve. With ``concurrency`` 0 the engine calls run on the event loop itself: a request
that fills a batch runs it at once, and a coroutine runs the batches that did not fill.

Overload is answered, never queued without bound. :meth:`Batcher.submit` raises
:class:`Overloaded` at once past ``max_queue`` waiting jobs, when the rows queued would
take longer than the job's deadline at the rate engine calls have been draining them,
and (:meth:`Batcher.admit`, before the body is read) while the oldest queued job has
waited over half a deadline; while the event loop itself runs late (:class:`LoopLag`:
requests then wait in the loop, before any queue), a share of new requests, cut while
the loop stays late and given back while it keeps up. Every job has a deadline (70% of its
timeout, less the loop's lateness when it arrived: :data:`SPARE`), checked when its
batch is formed (a job already late, or that the engine call would make late, is
answered then), when its answer comes back (a late answer becomes a
:class:`DeadlineExceeded`) and by one timer at the earliest deadline pending, which
answers jobs still waiting (or still in a blocked engine call) when it passes. The HTTP
layer turns both errors into ``503`` with ``Retry-After``. Standard library only (plus
the metrics object).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import threading
import time
from collections.abc import Callable
from typing import Any

from recsys_export.serve.loop_lag import LoopLag
from recsys_export.serve.metrics import Metrics

__all__ = ["Batcher", "DeadlineExceeded", "Overloaded"]


class Overloaded(Exception):
    """The queue is full: answer 503 now (``retry_after`` seconds)."""

    def __init__(self, message: str, retry_after: int = 1) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class DeadlineExceeded(Overloaded):
    """The request was not answered within its deadline."""


#: The share of every deadline kept for what happens outside the batcher: a request is
#: answered 503 by 70% of its deadline, less the time it already waited in a late event
#: loop before its handler ran; the rest covers the timer and the handler resuming late
#: (each up to the loop's lateness, which admission keeps under a tenth of the server's
#: deadline) and writing the answer.
SPARE = 0.3


class _Job:
    __slots__ = ("arrived", "deadline", "future", "payload", "rows", "timeout_s")

    def __init__(
        self,
        payload: Any,
        rows: int,
        future: asyncio.Future[Any],
        now: float,
        timeout_s: float,
        budget_s: float,
    ) -> None:
        self.payload = payload
        self.rows = rows
        self.future = future
        self.arrived = now
        self.timeout_s = timeout_s
        self.deadline = now + budget_s


#: ``run(payloads) -> (tag, results)``: one result or exception per payload; ``tag``
#: (the served bundle's version) is returned with every result.
Runner = Callable[[list[Any]], tuple[Any, list[Any]]]


class Batcher:
    """Coalesce jobs into engine calls (see the module docstring).

    Parameters
    ----------
    run : callable
        ``run(payloads) -> (tag, results)``, called on an engine thread (or on the event
        loop when ``concurrency`` is 0).
    name : str
        For messages and thread names (``recommend``, ``score``).
    max_batch, max_delay_us, max_queue, concurrency : int
        As :class:`~recsys_export.serve.config.ServeConfig`.
    metrics : Metrics
        Where batch sizes and rejections are recorded (the queue depth and the calls
        running are read from :attr:`depth` and :attr:`running` when sampled).
    lag : LoopLag, optional
        The event loop's lateness and load shedding (default: its own, started with the
        batcher, which never sheds).
    """

    def __init__(
        self,
        run: Runner,
        *,
        name: str,
        max_batch: int,
        max_delay_us: int,
        max_queue: int,
        concurrency: int,
        metrics: Metrics,
        lag: LoopLag | None = None,
    ) -> None:
        self._run = run
        self.name = name
        self.max_batch = max_batch
        self.max_delay = max_delay_us / 1e6
        self.max_queue = max_queue
        self._metrics = metrics
        self._rejected = metrics.rejections
        self.lag = lag or LoopLag()
        # The queue, its row count, the engine slots and the batches in engine calls are
        # shared by the event loop and the engine threads: every access holds the lock.
        self._lock = threading.Lock()
        self._ready = threading.Condition(self._lock)  # a job queued, or closing
        self._queue: collections.deque[_Job] = collections.deque()
        self._rows = 0
        self._inline = concurrency == 0  # engine calls on the event loop itself
        self._concurrency = max(1, concurrency)
        self._slots = self._concurrency  # engine calls that may start now
        self._calls: set[tuple[_Job, ...]] = set()  # the batches in engine calls
        self._row_seconds: float | None = None  # engine seconds per row (moving average)
        self._call_seconds = 0.0  # engine seconds per call (moving average)
        self._threads: list[threading.Thread] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self._wake: asyncio.Future[None] | None = None  # the inline dispatcher's
        self._task: asyncio.Task[None] | None = None
        self._timer: asyncio.TimerHandle | None = None  # at the earliest pending deadline
        self._timer_at = float("inf")
        self._closed = False

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> None:
        """Start dispatching: engine threads, or a coroutine for inline engine calls."""
        self._loop = asyncio.get_running_loop()
        self.lag.start()
        if self._inline:
            self._task = self._loop.create_task(self._dispatch())
            return
        for i in range(self._concurrency):
            thread = threading.Thread(target=self._work, name=f"serve-{self.name}_{i}", daemon=True)
            thread.start()
            self._threads.append(thread)

    async def stop(self) -> None:
        """Finish the engine calls running, answer the queued jobs 503, stop."""
        with self._lock:
            self._closed = True
            self._ready.notify_all()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        for thread in self._threads:
            await asyncio.to_thread(thread.join)
        await asyncio.sleep(0)  # the last answers the engine threads posted
        with self._lock:
            queued, self._queue, self._rows = list(self._queue), collections.deque(), 0
        for job in queued:
            self._fail(job, Overloaded("the server is shutting down"))
        if self._timer is not None:
            self._timer.cancel()
        self.lag.stop()

    # ------------------------------------------------------------------ submitting
    async def submit(self, payload: Any, rows: int, timeout_s: float) -> tuple[Any, Any]:
        """Queue one job; return ``(tag, result)`` once its batch ran.

        Raises
        ------
        Overloaded
            The queue holds ``max_queue`` jobs, or is congested, or the server is
            stopping.
        DeadlineExceeded
            Not answered within ``timeout_s`` seconds.
        Exception
            The job's own error, as the runner returned it.
        """
        loop = self._loop
        if loop is None or self._closed:
            raise Overloaded("the server is not serving (starting or shutting down)")
        self.admit(timeout_s)
        budget = timeout_s * (1 - SPARE) - self.lag.now()
        if budget <= 0:
            self._rejected["deadline"].inc()
            raise DeadlineExceeded(self._late_message(timeout_s))
        job = _Job(payload, rows, loop.create_future(), time.monotonic(), timeout_s, budget)
        with self._lock:
            refusal = self._refusal(rows, timeout_s)
            if refusal is None:
                self._queue.append(job)
                self._rows += rows
                self._ready.notify()
            full = self._rows >= self.max_batch
        if refusal is not None:
            self._rejected["queue_full"].inc()
            raise Overloaded(refusal)
        if job.deadline < self._timer_at:
            self._arm(job.deadline)
        if self._inline:
            if full and self._slots > 0:
                self._run_inline()  # a full batch runs now, not after the loop's queue
            wake = self._wake
            if self._queue and wake is not None and not wake.done():
                wake.set_result(None)
        return await job.future

    def _refusal(self, rows: int, timeout_s: float) -> str | None:
        """Why a job of ``rows`` cannot be queued now (None: it can); holds the lock."""
        if len(self._queue) >= self.max_queue:
            return f"the server is overloaded ({self.max_queue} requests waiting); retry later"
        if self._rows >= self.max_batch * self._concurrency and self._row_seconds is not None:
            wait = (self._rows + rows) * self._row_seconds / self._concurrency
            if wait > timeout_s:  # it would expire in the queue: say so now
                return (
                    f"the server is overloaded (about {wait * 1000:.0f} ms of work queued, "
                    f"more than the {timeout_s * 1000:.0f} ms deadline); retry later"
                )
        return None

    def admit(self, timeout_s: float) -> None:
        """Refuse new work while the queue or the event loop runs too late.

        Under a flood, requests wait before they are answered either in the queue (the
        engine is the bound: the oldest queued job ages) or in the event loop itself
        (the HTTP work is the bound: the loop runs late, :class:`LoopLag`). While the
        oldest queued job has waited over half ``timeout_s``, new requests are answered
        503 at once (the HTTP layer calls this before reading a body); while the loop runs
        late, the share of them :meth:`LoopLag.admit` sheds.

        Raises
        ------
        Overloaded
            The queue is congested, or the loop is late.
        """
        with self._lock:
            oldest = self._queue[0].arrived if self._queue else None
        if oldest is not None:
            waited = time.monotonic() - oldest
            if waited > timeout_s / 2:
                self._rejected["queue_delay"].inc()
                raise Overloaded(
                    f"the server is overloaded (requests have waited {waited * 1000:.0f} ms "
                    "in the queue); retry later"
                )
        if not self.lag.admit():
            self._rejected["loop_delay"].inc()
            late = max(self.lag.sustained(), self.lag.limit_s)
            raise Overloaded(
                f"the server is overloaded (it answers requests {late * 1000:.0f} ms late "
                f"and admits {self.lag.share:.0%} of new ones); retry later"
            )

    @property
    def depth(self) -> int:
        """Jobs waiting in the queue."""
        return len(self._queue)

    @property
    def running(self) -> int:
        """Engine calls running now."""
        return self._concurrency - self._slots

    @property
    def full(self) -> bool:
        """Whether the queued rows fill a batch."""
        return self._rows >= self.max_batch

    # ------------------------------------------------------------------ deadlines
    def _arm(self, when: float) -> None:
        """Run :meth:`_expire_due` at ``when`` (``time.monotonic``; the earliest deadline
        pending)."""
        assert self._loop is not None
        if self._timer is not None:
            self._timer.cancel()
        self._timer_at = when
        self._timer = self._loop.call_later(max(0.0, when - time.monotonic()), self._expire_due)

    def _expire_due(self) -> None:
        """Answer every job past its deadline; re-arm at the next deadline pending."""
        self._timer, self._timer_at = None, float("inf")
        now = time.monotonic()
        with self._lock:
            late = [job for job in self._queue if job.deadline <= now]
            if late:
                self._queue = collections.deque(j for j in self._queue if j.deadline > now)
                self._rows -= sum(job.rows for job in late)
            for batch in self._calls:  # in a blocked engine call: answered now, result dropped
                late.extend(j for j in batch if j.deadline <= now and not j.future.done())
            pending = [job.deadline for job in self._queue]
            for batch in self._calls:
                pending.extend(j.deadline for j in batch if not j.future.done())
        for job in late:
            self._expire(job)
        if pending:
            self._arm(min(pending))

    def _expire(self, job: _Job) -> None:
        if job.future.done():
            return
        self._rejected["deadline"].inc()
        job.future.set_exception(DeadlineExceeded(self._late_message(job.timeout_s)))

    def _expire_all(self, jobs: list[_Job]) -> None:
        for job in jobs:
            self._expire(job)

    @staticmethod
    def _late_message(timeout_s: float) -> str:
        return (
            f"the request cannot be answered within its deadline ({timeout_s * 1000:.0f} ms); "
            "the server is overloaded, retry later"
        )

    @staticmethod
    def _fail(job: _Job, exc: BaseException) -> None:
        if not job.future.done():
            job.future.set_exception(exc)

    # ------------------------------------------------------------------ batches
    def _take(self) -> tuple[tuple[_Job, ...], list[_Job]]:
        """The next batch, and the jobs that would only finish past their deadline (to be
        answered on the event loop); holds the lock. Takes an engine slot for a batch."""
        done_by = time.monotonic() + self._call_seconds
        batch: list[_Job] = []
        late: list[_Job] = []
        rows = 0
        while self._queue:
            job = self._queue[0]
            if batch and rows + job.rows > self.max_batch:
                break
            self._queue.popleft()
            self._rows -= job.rows
            if job.future.done():  # its caller went away
                continue
            if job.deadline < done_by:
                late.append(job)
                continue
            rows += job.rows
            batch.append(job)
        taken = tuple(batch)
        if taken:
            self._slots -= 1
            self._calls.add(taken)
            self._metrics.batch_size.observe(len(taken))
            self._metrics.batch_users.observe(rows)
        return taken, late

    def _fill_wait(self) -> float:
        """Seconds the next batch may still wait to fill (<= 0: it goes now): until
        ``max_delay`` after the oldest job's arrival, none once the batch is full."""
        if not self._queue or self.full:
            return 0.0
        return self._queue[0].arrived + self.max_delay - time.monotonic()

    def _execute(self, batch: tuple[_Job, ...]) -> tuple[Any, list[Any]]:
        """Run one engine call; every job gets the runner's error if it fails as a whole."""
        start = time.perf_counter()
        try:
            tag, results = self._run([job.payload for job in batch])
        except Exception as exc:
            tag, results = None, [exc] * len(batch)
        else:
            seconds = time.perf_counter() - start
            per_row = seconds / max(1, sum(job.rows for job in batch))
            with self._lock:
                old = self._row_seconds
                self._row_seconds = per_row if old is None else 0.8 * old + 0.2 * per_row
                self._call_seconds = 0.8 * self._call_seconds + 0.2 * seconds
        finally:
            with self._lock:
                self._calls.discard(batch)
                self._slots += 1
        return tag, results

    def _deliver(self, batch: tuple[_Job, ...], tag: Any, results: list[Any]) -> None:
        """Carve an engine call's results back to its jobs (on the event loop)."""
        now = time.monotonic()
        for job, result in zip(batch, results):
            if job.future.done():
                continue  # expired meanwhile
            if job.deadline < now:
                self._expire(job)  # the answer came too late: a 503, as the timer would
            elif isinstance(result, BaseException):
                job.future.set_exception(result)
            else:
                job.future.set_result((tag, result))

    def _work(self) -> None:
        """An engine thread: take a batch, run it, hand the answers to the event loop.

        Batches form here, not on the event loop: under a flood the loop runs every
        handler queued before it gets to anything else, and engine calls that waited
        for it would starve while requests pile up.
        """
        loop = self._loop
        assert loop is not None
        while True:
            with self._ready:
                while not self._closed and not self._queue:
                    self._ready.wait()
                while not self._closed and (left := self._fill_wait()) > 0:
                    self._ready.wait(left)
                if self._closed:
                    return
                batch, late = self._take()
            if late:
                self._post(loop, self._expire_all, late)
            if batch:
                tag, results = self._execute(batch)
                self._post(loop, self._deliver, batch, tag, results)

    @staticmethod
    def _post(loop: asyncio.AbstractEventLoop, fn: Callable[..., None], *args: Any) -> None:
        with contextlib.suppress(RuntimeError):  # the loop closed: nobody is waiting
            loop.call_soon_threadsafe(fn, *args)

    # ------------------------------------------------------------------ inline calls
    async def _sleep_until(self, when: float) -> None:
        """Sleep until ``when`` (``time.monotonic``), or until :meth:`submit` wakes us."""
        assert self._loop is not None
        self._wake = wake = self._loop.create_future()
        timer = None
        if when != float("inf"):
            timer = self._loop.call_later(max(0.0, when - time.monotonic()), _resolve, wake)
        try:
            await wake
        finally:
            if timer is not None:
                timer.cancel()
            self._wake = None

    async def _dispatch(self) -> None:
        """``concurrency`` 0: batches that did not fill are run from here, on the loop."""
        while True:
            while not self._queue or self._slots == 0:
                await self._sleep_until(float("inf"))
            while (left := self._fill_wait()) > 0:
                await self._sleep_until(time.monotonic() + left)
            self._run_inline()
            await asyncio.sleep(0)  # the loop's other work between two engine calls

    def _run_inline(self) -> None:
        """Take the next batch and run it on the event loop now."""
        with self._lock:
            batch, late = self._take()
        self._expire_all(late)
        if batch:
            tag, results = self._execute(batch)
            self._deliver(batch, tag, results)


def _resolve(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)
