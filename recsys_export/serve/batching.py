"""Dynamic batching: concurrent requests coalesced into one engine call.

A :class:`Batcher` owns a bounded FIFO of jobs and a dispatcher coroutine on the event
loop. When an engine slot is free (``concurrency`` calls may run at once, each on its
own thread) it takes the jobs waiting, up to ``max_batch`` rows (users, or score
pairs), after waiting at most ``max_delay_us`` from the oldest job's arrival for the
batch to fill; a batch that is already full goes at once, and while every slot is busy
the queue fills by itself. The engine call returns one result (or exception) per job,
which is carved back to its caller.

Overload is answered, never queued without bound: past ``max_queue`` waiting jobs, or
when the rows queued would take longer than the job's deadline at the rate the engine
calls have been draining them, :meth:`Batcher.submit` raises :class:`Overloaded` at
once; a job still unanswered at its deadline raises :class:`DeadlineExceeded` (the
HTTP layer turns both into ``503`` with ``Retry-After``). Standard library only (plus
the metrics object).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from recsys_export.serve.metrics import Metrics

__all__ = ["Batcher", "DeadlineExceeded", "Overloaded"]


class Overloaded(Exception):
    """The queue is full: answer 503 now (``retry_after`` seconds)."""

    def __init__(self, message: str, retry_after: int = 1) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class DeadlineExceeded(Overloaded):
    """The request was not answered within its deadline."""


@dataclass(eq=False)
class _Job:
    payload: Any
    rows: int
    future: asyncio.Future[Any]
    arrived: float
    timer: asyncio.TimerHandle | None = None


#: ``run(payloads) -> (tag, results)``: one result or exception per payload; ``tag``
#: (the served bundle's version) is returned with every result.
Runner = Callable[[list[Any]], tuple[Any, list[Any]]]


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
    ) -> None:
        self._run = run
        self.name = name
        self.max_batch = max_batch
        self.max_delay = max_delay_us / 1e6
        self.max_queue = max_queue
        self._metrics = metrics
        self._queue: collections.deque[_Job] = collections.deque()
        self._rows = 0
        self._concurrency = concurrency
        self._row_seconds: float | None = None  # engine seconds per row (moving average)
        self._slots = concurrency
        self._executor = ThreadPoolExecutor(concurrency, thread_name_prefix=f"serve-{name}")
        self._loop: asyncio.AbstractEventLoop | None = None
        self._wake: asyncio.Future[None] | None = None
        self._task: asyncio.Task[None] | None = None
        self._running: set[asyncio.Task[None]] = set()
        self._closed = False

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> None:
        """Start the dispatcher on the running event loop."""
        self._loop = asyncio.get_running_loop()
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
        self._executor.shutdown(wait=False)

    # ------------------------------------------------------------------ submitting
    async def submit(self, payload: Any, rows: int, timeout_s: float) -> tuple[Any, Any]:
        """Queue one job; return ``(tag, result)`` once its batch ran.

        Raises
        ------
        Overloaded
            The queue holds ``max_queue`` jobs (or the server is stopping).
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
            self._metrics.rejected.labels("queue_full").inc()
            raise Overloaded(
                f"the server is overloaded ({self.max_queue} requests waiting); retry later"
            )
        if self._rows >= self.max_batch * self._concurrency and self._row_seconds is not None:
            wait = (self._rows + rows) * self._row_seconds / self._concurrency
            if wait > timeout_s:  # it would expire in the queue: say so now
                self._metrics.rejected.labels("queue_full").inc()
                raise Overloaded(
                    f"the server is overloaded (about {wait * 1000:.0f} ms of work queued, "
                    f"more than the {timeout_s * 1000:.0f} ms deadline); retry later"
                )
        job = _Job(payload, rows, loop.create_future(), loop.time())
        job.timer = loop.call_later(timeout_s, self._expire, job, timeout_s)
        self._queue.append(job)
        self._rows += rows
        self._set_depth()
        wake = self._wake
        if wake is not None and not wake.done() and (len(self._queue) == 1 or self.full):
            wake.set_result(None)
        return await job.future

    def admit(self, timeout_s: float) -> None:
        """Refuse new work while the oldest queued job has waited over half a deadline.

        Under a flood the event loop itself falls behind and jobs age in the queue; new
        requests are then answered 503 at once (the HTTP layer calls this before reading
        a body), which keeps the loop's work per refused request small until the queue
        is young again.

        Raises
        ------
        Overloaded
            The queue is congested.
        """
        if self._queue and self._loop is not None:
            waited = self._loop.time() - self._queue[0].arrived
            if waited > timeout_s / 2:
                self._metrics.rejected.labels("queue_delay").inc()
                raise Overloaded(
                    f"the server is overloaded (requests have waited {waited * 1000:.0f} ms "
                    "in the queue); retry later"
                )

    @property
    def full(self) -> bool:
        """Whether the queued rows fill a batch."""
        return self._rows >= self.max_batch

    def _expire(self, job: _Job, timeout_s: float) -> None:
        if job.future.done():
            return
        try:
            self._queue.remove(job)  # still waiting: it leaves the queue
            self._rows -= job.rows
            self._set_depth()
        except ValueError:
            pass  # already in an engine call: its result will be dropped
        self._metrics.rejected.labels("deadline").inc()
        job.future.set_exception(
            DeadlineExceeded(
                f"the request was not answered within its deadline ({timeout_s * 1000:.0f} "
                "ms); the server is overloaded, retry later"
            )
        )

    def _set_depth(self) -> None:
        self._metrics.queue_depth.set(len(self._queue))

    @staticmethod
    def _fail(job: _Job, exc: BaseException) -> None:
        if job.timer is not None:
            job.timer.cancel()
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

    def _take(self) -> list[_Job]:
        batch: list[_Job] = []
        rows = 0
        while self._queue:
            job = self._queue[0]
            if batch and rows + job.rows > self.max_batch:
                break
            self._queue.popleft()
            self._rows -= job.rows
            rows += job.rows
            batch.append(job)
        self._set_depth()
        if batch:
            self._metrics.batch_size.observe(len(batch))
            self._metrics.batch_users.observe(rows)
        return batch

    async def _call(self, batch: list[_Job]) -> None:
        assert self._loop is not None
        self._metrics.in_flight.inc()
        start = time.perf_counter()
        try:
            tag, results = await self._loop.run_in_executor(
                self._executor, self._run, [job.payload for job in batch]
            )
            per_row = (time.perf_counter() - start) / max(1, sum(job.rows for job in batch))
            old = self._row_seconds
            self._row_seconds = per_row if old is None else 0.8 * old + 0.2 * per_row
        except Exception as exc:  # the runner failed as a whole: every job gets it
            tag, results = None, [exc] * len(batch)
        finally:
            self._metrics.in_flight.dec()
            self._slots += 1
            wake = self._wake
            if wake is not None and not wake.done():
                wake.set_result(None)
        for job, result in zip(batch, results):
            if job.timer is not None:
                job.timer.cancel()
            if job.future.done():
                continue  # expired meanwhile
            if isinstance(result, BaseException):
                job.future.set_exception(result)
            else:
                job.future.set_result((tag, result))


def _resolve(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)
