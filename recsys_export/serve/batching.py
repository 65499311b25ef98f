"""Dynamic batching: concurrent requests coalesced into one engine call.

A :class:`Batcher` owns a bounded FIFO of jobs and a dispatcher coroutine on the event
loop. When an engine slot is free (``concurrency`` calls may run at once, each on its
own thread) it takes the jobs waiting, up to ``max_batch`` rows (users, or score
pairs), after waiting at most ``max_delay_us`` from the oldest job's arrival for the
batch to fill; a batch that is already full goes at once, and while every slot is busy
the queue fills by itself. The engine call returns one result (or exception) per job,
which is carved back to its caller.

Overload is answered, never queued without bound. :meth:`Batcher.submit` raises
:class:`Overloaded` at once past ``max_queue`` waiting jobs, when the rows queued would
take longer than the job's deadline at the rate engine calls have been draining them,
and (:meth:`Batcher.admit`, before the body is read) while the oldest queued job has
waited over half a deadline or the event loop itself runs over a tenth of the server's
deadline late (:class:`LoopLag`: requests then wait in the loop, before any queue). Every job has a
deadline (70% of its timeout, less the loop's lateness when it arrived: :data:`SPARE`),
checked when its batch is formed (a job already late, or that the engine call would
make late, is answered then), when its answer comes back (a late answer becomes a
:class:`DeadlineExceeded`) and by one timer at the earliest deadline pending, which
answers jobs still waiting (or still in a blocked engine call) when it passes.
The HTTP layer turns both errors into ``503`` with ``Retry-After``. Standard library
only (plus the metrics object).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from recsys_export.serve.metrics import Metrics

__all__ = ["Batcher", "DeadlineExceeded", "LoopLag", "Overloaded"]


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


class LoopLag:
    """How late the event loop runs: a tick every ``interval_s`` measures it.

    When the loop has more ready work than it can run (a flood of requests on the
    sockets), every callback, timers included, runs late by about the time requests
    wait before any handler sees them; :meth:`now` is that delay, kept current between
    ticks (a tick overdue by ``x`` means the loop is at least ``x`` late).
    :meth:`sustained` is the lateness of the last two ticks both: a flood keeps every
    tick late, while one stall of the whole process (a busy machine's scheduler) makes
    one tick late and the next on time, and is no reason to refuse requests.
    """

    def __init__(
        self, interval_s: float = 0.02, clock: Callable[[], float] = time.perf_counter
    ) -> None:
        self.interval_s = interval_s
        self._clock = clock
        self._lag = 0.0
        self._previous = 0.0
        self._due = float("inf")
        self._loop: asyncio.AbstractEventLoop | None = None
        self._handle: asyncio.TimerHandle | None = None

    def start(self) -> None:
        """Start ticking on the running event loop."""
        if self._loop is None:
            self._loop = asyncio.get_running_loop()
            self._schedule()

    def stop(self) -> None:
        """Stop ticking."""
        if self._handle is not None:
            self._handle.cancel()
        self._loop, self._handle, self._due = None, None, float("inf")

    def _schedule(self) -> None:
        assert self._loop is not None
        self._due = self._clock() + self.interval_s
        self._handle = self._loop.call_later(self.interval_s, self._tick)

    def _tick(self) -> None:
        self._previous, self._lag = self._lag, max(0.0, self._clock() - self._due)
        self._schedule()

    def now(self) -> float:
        """Seconds the loop runs late now."""
        return max(self._lag, self._clock() - self._due)

    def sustained(self) -> float:
        """Seconds both of the last two ticks ran late (the lesser lateness)."""
        return min(self._previous, self._lag)


class Batcher:
    """Coalesce jobs into engine calls (see the module docstring).

    Parameters
    ----------
    run : callable
        ``run(payloads) -> (tag, results)``, called on an engine thread.
    name : str
        For messages and thread names (``recommend``, ``score``).
    max_batch, max_delay_us, max_queue, concurrency : int
        As :class:`~recsys_export.serve.config.ServeConfig`.
    metrics : Metrics
        Where batch sizes, queue depth and rejections are recorded.
    lag : LoopLag, optional
        The event loop's lateness (default: its own, started with the batcher).
    lag_limit_s : float
        Refuse new requests while the loop runs later than this (a tenth of the server's
        deadline; a client's shorter ``X-Deadline-Ms`` does not lower it).
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
        lag_limit_s: float = 1.0,
    ) -> None:
        self._run = run
        self.name = name
        self.max_batch = max_batch
        self.max_delay = max_delay_us / 1e6
        self.max_queue = max_queue
        self._metrics = metrics
        self._rejected = metrics.rejections
        self.lag = lag or LoopLag()
        self.lag_limit_s = lag_limit_s
        self._queue: collections.deque[_Job] = collections.deque()
        self._rows = 0
        self._inline = concurrency == 0  # engine calls on the event loop itself
        concurrency = max(1, concurrency)
        self._concurrency = concurrency
        self._row_seconds: float | None = None  # engine seconds per row (moving average)
        self._call_seconds = 0.0  # engine seconds per call (moving average)
        self._slots = concurrency
        self._executor = ThreadPoolExecutor(concurrency, thread_name_prefix=f"serve-{name}")
        self._loop: asyncio.AbstractEventLoop | None = None
        self._wake: asyncio.Future[None] | None = None
        self._task: asyncio.Task[None] | None = None
        self._running: set[asyncio.Task[None]] = set()
        self._calls: set[tuple[_Job, ...]] = set()  # the batches in engine calls
        self._timer: asyncio.TimerHandle | None = None  # at the earliest pending deadline
        self._timer_at = float("inf")
        self._closed = False

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> None:
        """Start the dispatcher on the running event loop."""
        self._loop = asyncio.get_running_loop()
        self.lag.start()
        self._task = self._loop.create_task(self._dispatch())

    async def stop(self) -> None:
        """Finish the engine calls running, answer the queued jobs 503, stop."""
        self._closed = True
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._running:
            await asyncio.gather(*self._running, return_exceptions=True)
        while self._queue:
            self._fail(self._queue.popleft(), Overloaded("the server is shutting down"))
        self._set_depth()
        if self._timer is not None:
            self._timer.cancel()
        self.lag.stop()
        self._executor.shutdown(wait=False)

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
        if len(self._queue) >= self.max_queue:
            self._rejected["queue_full"].inc()
            raise Overloaded(
                f"the server is overloaded ({self.max_queue} requests waiting); retry later"
            )
        if self._rows >= self.max_batch * self._concurrency and self._row_seconds is not None:
            wait = (self._rows + rows) * self._row_seconds / self._concurrency
            if wait > timeout_s:  # it would expire in the queue: say so now
                self._rejected["queue_full"].inc()
                raise Overloaded(
                    f"the server is overloaded (about {wait * 1000:.0f} ms of work queued, "
                    f"more than the {timeout_s * 1000:.0f} ms deadline); retry later"
                )
        budget = timeout_s * (1 - SPARE) - self.lag.now()
        if budget <= 0:
            self._rejected["deadline"].inc()
            raise DeadlineExceeded(self._late_message(timeout_s))
        job = _Job(payload, rows, loop.create_future(), loop.time(), timeout_s, budget)
        self._queue.append(job)
        self._rows += rows
        self._set_depth()
        if job.deadline < self._timer_at:
            self._arm(job.deadline)
        wake = self._wake
        if wake is not None and not wake.done() and (len(self._queue) == 1 or self.full):
            wake.set_result(None)
        return await job.future

    def admit(self, timeout_s: float) -> None:
        """Refuse new work while the queue or the event loop runs too late.

        Under a flood, requests wait before they are answered either in the queue (the
        engine is the bound: the oldest queued job ages) or in the event loop itself
        (the HTTP work is the bound: the loop runs late, :class:`LoopLag`). While the
        oldest queued job has waited over half ``timeout_s``, or the loop has run over
        ``lag_limit_s`` late at two ticks in a row (:meth:`LoopLag.sustained`), new
        requests are then answered 503 at once (the HTTP layer calls this before reading a
        body), which keeps the loop's work per refused request small until it catches
        up.

        Raises
        ------
        Overloaded
            The queue is congested, or the loop is late.
        """
        if self._queue and self._loop is not None:
            waited = self._loop.time() - self._queue[0].arrived
            if waited > timeout_s / 2:
                self._rejected["queue_delay"].inc()
                raise Overloaded(
                    f"the server is overloaded (requests have waited {waited * 1000:.0f} ms "
                    "in the queue); retry later"
                )
        late = self.lag.sustained()
        if late > self.lag_limit_s:
            self._rejected["loop_delay"].inc()
            raise Overloaded(
                f"the server is overloaded (it answers requests {late * 1000:.0f} ms late); "
                "retry later"
            )

    @property
    def full(self) -> bool:
        """Whether the queued rows fill a batch."""
        return self._rows >= self.max_batch

    # ------------------------------------------------------------------ deadlines
    def _arm(self, when: float) -> None:
        """Run :meth:`_expire_due` at loop time ``when`` (the earliest deadline pending)."""
        assert self._loop is not None
        if self._timer is not None:
            self._timer.cancel()
        self._timer_at = when
        self._timer = self._loop.call_at(when, self._expire_due)

    def _expire_due(self) -> None:
        """Answer every job past its deadline; re-arm at the next deadline pending."""
        assert self._loop is not None
        self._timer, self._timer_at = None, float("inf")
        now = self._loop.time()
        late = [job for job in self._queue if job.deadline <= now]
        if late:
            self._queue = collections.deque(job for job in self._queue if job.deadline > now)
            self._rows -= sum(job.rows for job in late)
            self._set_depth()
        for batch in self._calls:  # in a blocked engine call: answered now, result dropped
            late.extend(job for job in batch if job.deadline <= now and not job.future.done())
        for job in late:
            self._expire(job)
        pending = [job.deadline for job in self._queue]
        for batch in self._calls:
            pending.extend(job.deadline for job in batch if not job.future.done())
        if pending:
            self._arm(min(pending))

    def _expire(self, job: _Job) -> None:
        if job.future.done():
            return
        self._rejected["deadline"].inc()
        job.future.set_exception(DeadlineExceeded(self._late_message(job.timeout_s)))

    @staticmethod
    def _late_message(timeout_s: float) -> str:
        return (
            f"the request cannot be answered within its deadline ({timeout_s * 1000:.0f} ms); "
            "the server is overloaded, retry later"
        )

    def _set_depth(self) -> None:
        self._metrics.queue_depth.set(len(self._queue))

    @staticmethod
    def _fail(job: _Job, exc: BaseException) -> None:
        if not job.future.done():
            job.future.set_exception(exc)

    # ------------------------------------------------------------------ dispatching
    async def _sleep_until(self, when: float) -> None:
        """Sleep until loop time ``when``, or until :meth:`submit` wakes us."""
        assert self._loop is not None
        self._wake = wake = self._loop.create_future()
        timer = None
        if when != float("inf"):
            timer = self._loop.call_at(when, _resolve, wake)
        try:
            await wake
        finally:
            if timer is not None:
                timer.cancel()
            self._wake = None

    async def _dispatch(self) -> None:
        assert self._loop is not None
        loop = self._loop
        while True:
            while not self._queue or self._slots == 0:
                await self._sleep_until(float("inf"))
            # wait for the batch to fill, at most max_delay from the oldest arrival
            while not self.full and self._queue:
                until = self._queue[0].arrived + self.max_delay
                if loop.time() >= until:
                    break
                await self._sleep_until(until)
            batch = self._take()
            if not batch:
                continue
            self._slots -= 1
            task = loop.create_task(self._call(batch))
            self._running.add(task)
            task.add_done_callback(self._running.discard)

    def _take(self) -> tuple[_Job, ...]:
        """The next batch; jobs that would only finish past their deadline answered now."""
        assert self._loop is not None
        done_by = self._loop.time() + self._call_seconds
        batch: list[_Job] = []
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
                self._expire(job)
                continue
            rows += job.rows
            batch.append(job)
        self._set_depth()
        if batch:
            self._metrics.batch_size.observe(len(batch))
            self._metrics.batch_users.observe(rows)
        return tuple(batch)

    async def _call(self, batch: tuple[_Job, ...]) -> None:
        assert self._loop is not None
        self._metrics.in_flight.inc()
        self._calls.add(batch)
        start = time.perf_counter()
        try:
            payloads = [job.payload for job in batch]
            if self._inline:
                tag, results = self._run(payloads)
            else:
                tag, results = await self._loop.run_in_executor(self._executor, self._run, payloads)
            seconds = time.perf_counter() - start
            per_row = seconds / max(1, sum(job.rows for job in batch))
            old = self._row_seconds
            self._row_seconds = per_row if old is None else 0.8 * old + 0.2 * per_row
            self._call_seconds = 0.8 * self._call_seconds + 0.2 * seconds
        except Exception as exc:  # the runner failed as a whole: every job gets it
            tag, results = None, [exc] * len(batch)
        finally:
            self._calls.discard(batch)
            self._metrics.in_flight.dec()
            self._slots += 1
            wake = self._wake
            if wake is not None and not wake.done():
                wake.set_result(None)
        now = self._loop.time()
        for job, result in zip(batch, results):
            if job.future.done():
                continue  # expired meanwhile
            if job.deadline < now:
                self._expire(job)  # the answer came too late: a 503, as the timer would
            elif isinstance(result, BaseException):
                job.future.set_exception(result)
            else:
                job.future.set_result((tag, result))


def _resolve(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)
