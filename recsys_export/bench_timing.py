"""Timing for ``recsys-export bench``: rows timed in interleaved rounds, latencies.

Rows of a section run in rounds after one warm-up round (:class:`Rounds`), so a drift of
the machine's speed over minutes hits every row alike, not the later ones; :func:`row`
is the report's ROW (:data:`recsys_export.bench_report.SCHEMA`).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

__all__ = ["Rounds", "latency", "row", "timed"]


def timed(fn: Callable[[], Any], repeat: int) -> list[float]:
    """Seconds of ``repeat`` calls of ``fn``."""
    runs = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        runs.append(time.perf_counter() - t0)
    return runs


def row(runs: list[float], users: int, n_items: int, flops: int) -> dict[str, Any]:
    """A ROW of the report (see :data:`recsys_export.bench_report.SCHEMA`)."""
    med = float(np.median(runs))
    pairs = users * n_items
    return {
        "users": users,
        "runs_s": [round(r, 6) for r in runs],
        "median_s": med,
        "min_s": float(min(runs)),
        "max_s": float(max(runs)),
        "pairs_per_s": pairs / med,
        "ns_per_pair": med / pairs * 1e9,
        "gflops": flops * pairs / med / 1e9,
    }


@dataclass
class Rounds:
    """Rows of one section, timed in interleaved rounds after one warm-up round (a
    first run over 2 s counts as a run)."""

    n_items: int
    flops: int
    repeat: int
    pending: list[tuple[dict, str, Callable[[], Any], int]] = field(default_factory=list)

    def add(self, table: dict, name: str, fn: Callable[[], Any], users: int) -> None:
        table[name] = {}  # keeps the row order; filled by flush()
        self.pending.append((table, name, fn, users))

    def flush(self, ceiling: float | None = None) -> float:
        """Time the pending rows; ratios to ``ceiling`` ns/pair (default: the ``ceiling``
        row of the first table). Returns the ceiling used."""
        runs = []
        for _t, _n, fn, _u in self.pending:
            first = timed(fn, 1)
            runs.append(first if first[0] > 2.0 else [])
        for _ in range(max(1, self.repeat)):
            for (_t, _n, fn, _u), got in zip(self.pending, runs):
                if len(got) < max(1, self.repeat):
                    got.extend(timed(fn, 1))
        for (table, name, _fn, users), got in zip(self.pending, runs):
            table[name] = row(got, users, self.n_items, self.flops)
        if ceiling is None:
            ceiling = self.pending[0][0]["ceiling"]["ns_per_pair"]
        for table, name, _fn, _u in self.pending:
            table[name]["ratio_to_ceiling"] = table[name]["ns_per_pair"] / ceiling
        self.pending.clear()
        return float(ceiling)


def latency(fn: Callable[[int], Any], picks: list[int]) -> dict[str, Any]:
    """p50/p99/mean microseconds of ``fn(user)`` over ``picks`` (after 50 warm-up calls)."""
    for u in picks[:50]:
        fn(u)
    lat = np.empty(len(picks))
    for j, u in enumerate(picks):
        t0 = time.perf_counter()
        fn(u)
        lat[j] = time.perf_counter() - t0
    return {
        "p50_us": float(np.percentile(lat, 50) * 1e6),
        "p99_us": float(np.percentile(lat, 99) * 1e6),
        "mean_us": float(lat.mean() * 1e6),
        "calls": len(picks),
    }
