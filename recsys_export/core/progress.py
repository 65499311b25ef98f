"""A dependency-free progress line on stderr (no torch, usable by the runtime)."""

from __future__ import annotations

import os
import sys
import time
from typing import TextIO

#: Environment variable overriding the non-terminal print interval (seconds, >= 0).
INTERVAL_ENV = "RECSYS_EXPORT_PROGRESS_INTERVAL"
DEFAULT_INTERVAL = 5.0


def _env_interval() -> float:
    """The interval from ``RECSYS_EXPORT_PROGRESS_INTERVAL``; 5 s when unset or invalid."""
    raw = os.environ.get(INTERVAL_ENV, "").strip()
    try:
        value = float(raw) if raw else DEFAULT_INTERVAL
    except ValueError:
        return DEFAULT_INTERVAL
    return value if value >= 0 and value == value and value != float("inf") else DEFAULT_INTERVAL


class Progress:
    """Report progress of a long loop on stderr.

    On a terminal the line is redrawn in place (at most ~10 times a second); otherwise
    a line is printed at most every ``interval`` seconds and at the end, so logs of
    batch jobs stay short. ``enabled=False`` prints nothing (``--quiet``).

    Parameters
    ----------
    total : int
        Number of units of work (users, epochs, ...).
    unit : str
        Name of a unit, shown with the rate (``"users"`` -> ``users/s``).
    desc : str
        Prefix of the line.
    enabled : bool
        Whether to print anything.
    interval : float, optional
        Seconds between lines when the stream is not a terminal; default: the
        ``RECSYS_EXPORT_PROGRESS_INTERVAL`` environment variable, else 5.
    """

    def __init__(
        self,
        total: int,
        *,
        unit: str = "it",
        desc: str = "",
        enabled: bool = True,
        stream: TextIO | None = None,
        interval: float | None = None,
    ) -> None:
        self.total = max(int(total), 0)
        self.unit = unit
        self.desc = desc
        self.enabled = enabled
        self.stream = stream if stream is not None else sys.stderr
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        if interval is None:
            interval = _env_interval()
        self.interval = 0.1 if self.tty else interval
        self.done = 0
        self.start = time.perf_counter()
        self._last = 0.0
        self._postfix = ""

    def update(self, n: int = 1, postfix: str | None = None, *, force: bool = False) -> None:
        """Advance by ``n`` units; ``postfix`` (e.g. ``"loss 0.91"``) is shown after the rate."""
        self.done += n
        if postfix is not None:
            self._postfix = postfix
        if not self.enabled:
            return
        now = time.perf_counter()
        if force or now - self._last >= self.interval or self.done >= self.total:
            self._last = now
            self._draw(now)

    def _draw(self, now: float) -> None:
        elapsed = max(now - self.start, 1e-9)
        rate = self.done / elapsed
        pct = f"{100.0 * self.done / self.total:5.1f}% " if self.total else ""
        line = (
            f"{self.desc}{pct}{self.done}/{self.total} {self.unit} "
            f"[{elapsed:6.1f}s, {rate:,.1f} {self.unit}/s]"
        )
        if self._postfix:
            line += f" {self._postfix}"
        if self.tty:
            self.stream.write("\r\x1b[2K" + line)
        else:
            self.stream.write(line + "\n")
        self.stream.flush()

    def close(self) -> None:
        """Finish the line (on a terminal) once the loop ends."""
        if self.enabled and self.tty:
            self.stream.write("\n")
            self.stream.flush()

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
