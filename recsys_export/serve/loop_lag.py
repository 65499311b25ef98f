"""How late the event loop runs, and the share of new requests it admits.

A tick every ``interval_s`` measures the loop's lateness (:class:`LoopLag`); while the
loop stays over a limit late, :meth:`LoopLag.admit` sheds a share of new requests (see
:mod:`~recsys_export.serve.batching` for the rest of admission). Standard library only.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

__all__ = ["SHED_CUT", "SHED_FLOOR", "SHED_RESTORE", "LoopLag"]

#: Load shedding under a late event loop (:meth:`LoopLag.admit`): each late tick keeps
#: this share of the admitted share, each tick on time adds back this much, never below
#: the floor (a trickle that tells when the flood is over).
SHED_CUT = 0.7
SHED_RESTORE = 0.05
SHED_FLOOR = 0.02


class LoopLag:
    """How late the event loop runs: a tick every ``interval_s`` measures it.

    When the loop has more ready work than it can run (a flood of requests on the
    sockets), every callback, timers included, runs late by about the time requests
    wait before any handler sees them; :meth:`now` is that delay, kept current between
    ticks (a tick overdue by ``x`` means the loop is at least ``x`` late).
    :meth:`sustained` is the lateness of the last two ticks both: a flood keeps every
    tick late, while one stall of the whole process (a busy machine's scheduler) makes
    one tick late and the next on time, and is no reason to refuse requests.

    :meth:`admit` sheds load in proportion, not all or nothing: every tick at which the
    loop has run over ``limit_s`` late (sustained) cuts the share of new requests
    admitted by :data:`SHED_CUT`, every other tick gives back :data:`SHED_RESTORE` of it
    (up to all). Refusing every request while the loop is late would not let it catch up
    (a refusal costs the loop nearly what an answer does, and the engine, which could
    serve, would idle): the share settles where the loop keeps up.
    """

    def __init__(
        self,
        interval_s: float = 0.02,
        clock: Callable[[], float] = time.perf_counter,
        limit_s: float = float("inf"),
    ) -> None:
        self.interval_s = interval_s
        self.limit_s = limit_s
        self.share = 1.0  # of new requests admitted
        self._credit = 0.0
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
        if self.sustained() > self.limit_s:
            self.share = max(SHED_FLOOR, self.share * SHED_CUT)
        else:
            self.share = min(1.0, self.share + SHED_RESTORE)
        self._schedule()

    def admit(self) -> bool:
        """Whether to admit one new request: every one while the loop keeps up, else
        ``share`` of them, evenly spread (one in four at 0.25)."""
        if self.share >= 1.0:
            return True
        self._credit += self.share
        if self._credit >= 1.0:
            self._credit -= 1.0
            return True
        return False

    def now(self) -> float:
        """Seconds the loop runs late now."""
        return max(self._lag, self._clock() - self._due)

    def sustained(self) -> float:
        """Seconds both of the last two ticks ran late (the lesser lateness)."""
        return min(self._previous, self._lag)
