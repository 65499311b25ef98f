"""Prometheus metrics of one server (``GET /metrics``).

Each app has its own registry (two apps in one process, as in the tests, do not share
counters). Names (docs/serving.md lists them):

* ``recsys_requests_total{route, status}``, ``recsys_request_duration_seconds{route}``;
* ``recsys_batch_size`` (requests per engine call), ``recsys_batch_users`` (users or
  pairs per engine call), ``recsys_queue_depth``, ``recsys_batches_in_flight``,
  ``recsys_workers`` (the server processes serving);
* ``recsys_rejected_total{reason}`` (``queue_full``, ``queue_delay``, ``loop_delay``,
  ``deadline``);
* ``recsys_bundle_info{version, kind}`` (1 for the served bundle) and
  ``recsys_bundle_swaps_total{outcome}`` (``swapped``, ``refused``);
* one process: prometheus-client's standard ``process_*`` metrics (CPU seconds,
  resident memory, open files), where an operator sees a server near one core of CPU
  and requests waiting: the GIL's bound, scale out with ``--workers``. Not with
  ``--workers`` (prometheus-client's multiprocess mode has no process metrics: one
  worker's values would read as the server's).

With ``serve --workers N`` every worker process writes its values to the directory
named by ``PROMETHEUS_MULTIPROC_DIR`` (prometheus-client's multiprocess mode, set by
:mod:`~recsys_export.serve.workers` before the workers start) and ``GET /metrics``, in
whichever worker answers it, adds up every worker's: counters and histograms summed,
the queue depth and calls in flight summed over the live workers, ``recsys_bundle_info``
1 for a version while any live worker serves it (0 once none does).

The queue depth and the engine calls in flight are *sampled* (:meth:`Metrics.sample`):
at every scrape, and every :data:`SAMPLE_S` seconds while serving (what other workers'
scrapes read), not written at every change: a gauge write costs 1-3 us (the most in
multiprocess mode, where every write goes to a memory-mapped file), and the queue
changes twice per request.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    ProcessCollector,
    disable_created_metrics,
    generate_latest,
    multiprocess,
)

__all__ = ["BATCH_BUCKETS", "MULTIPROC_ENV", "SAMPLE_S", "Metrics"]

#: The environment variable of prometheus-client's multiprocess mode.
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"

#: Request latency buckets (seconds): 0.5 ms .. 10 s.
LATENCY_BUCKETS = (
    0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0,
)  # fmt: skip
#: Seconds between two samples of the sampled gauges while serving.
SAMPLE_S = 0.1
#: Batch size buckets: powers of two.
BATCH_BUCKETS = tuple(float(2**i) for i in range(11))


class Metrics:
    """The metrics of one server, in their own registry."""

    def __init__(self) -> None:
        disable_created_metrics()  # no ``*_created`` series (process-wide setting)
        self.multiprocess = bool(os.environ.get(MULTIPROC_ENV))
        reg = self.registry = CollectorRegistry()
        self.requests = Counter(
            "recsys_requests", "HTTP requests by route and status", ["route", "status"],
            registry=reg,
        )  # fmt: skip
        self.latency = Histogram(
            "recsys_request_duration_seconds", "Request latency by route", ["route"],
            buckets=LATENCY_BUCKETS, registry=reg,
        )  # fmt: skip
        self.batch_size = Histogram(
            "recsys_batch_size", "Requests coalesced into one engine call",
            buckets=BATCH_BUCKETS, registry=reg,
        )  # fmt: skip
        self.batch_users = Histogram(
            "recsys_batch_users", "Users (or score pairs) in one engine call",
            buckets=BATCH_BUCKETS, registry=reg,
        )  # fmt: skip
        self.queue_depth = Gauge(
            "recsys_queue_depth", "Requests waiting for a batch", registry=reg,
            multiprocess_mode="livesum",
        )  # fmt: skip
        self.workers = Gauge(
            "recsys_workers", "Server processes serving (--workers)", registry=reg,
            multiprocess_mode="livesum",
        )  # fmt: skip
        self.in_flight = Gauge(
            "recsys_batches_in_flight", "Engine calls running", registry=reg,
            multiprocess_mode="livesum",
        )  # fmt: skip
        self.rejected = Counter(
            "recsys_rejected", "Requests answered 503 (queue full, deadline passed)",
            ["reason"], registry=reg,
        )  # fmt: skip
        self.bundle = Gauge(
            "recsys_bundle_info", "The served bundle (value 1)", ["version", "kind"],
            registry=reg, multiprocess_mode="livemax",
        )  # fmt: skip
        self.swaps = Counter(
            "recsys_bundle_swaps", "New bundles at the watched path, by outcome", ["outcome"],
            registry=reg,
        )  # fmt: skip
        if not self.multiprocess:  # process_cpu_seconds_total, process_resident_memory_bytes, ...
            ProcessCollector(registry=reg)
        self._children: dict[tuple[str, int], tuple[Any, Any]] = {}
        self._samplers: list[Callable[[], None]] = []
        self._served: tuple[str, str] | None = None
        #: ``recsys_rejected_total`` by reason, its children made once
        self.rejections = {
            reason: self.rejected.labels(reason)
            for reason in ("queue_full", "queue_delay", "loop_delay", "deadline")
        }

    def observe_request(self, route: str, status: int, seconds: float) -> None:
        """Count one answered request and its latency."""
        child = self._children.get((route, status))
        if child is None:
            child = (self.requests.labels(route, str(status)), self.latency.labels(route))
            self._children[(route, status)] = child
        child[0].inc()
        child[1].observe(seconds)

    def add_sampler(self, sampler: Callable[[], None]) -> None:
        """Call ``sampler`` (it sets sampled gauges) at every :meth:`sample`."""
        self._samplers.append(sampler)

    def sample(self) -> None:
        """Set the sampled gauges to their values now."""
        for sampler in self._samplers:
            sampler()

    def serving(self, version: str, kind: str) -> None:
        """Mark ``version`` as the served bundle (the previous one's series is removed)."""
        if self._served is not None:
            if self.multiprocess:  # no removal there: the old version's value becomes 0
                self.bundle.labels(*self._served).set(0)
            else:
                self.bundle.remove(*self._served)
        self._served = (version, kind)
        self.bundle.labels(version, kind).set(1)

    def render(self) -> tuple[bytes, str]:
        """The exposition text and its content type (every worker's, summed); this
        process's sampled gauges are sampled first."""
        self.sample()
        if not self.multiprocess:
            return generate_latest(self.registry), CONTENT_TYPE_LATEST
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
        return generate_latest(registry), CONTENT_TYPE_LATEST
