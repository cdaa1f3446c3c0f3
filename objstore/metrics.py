"""Metrics every process shares: a Prometheus registry per app, request counters and latency, a per-second window."""

from __future__ import annotations

import math
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.exposition import choose_encoder
from prometheus_client.registry import Collector

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
"""Seconds; from a cached small read on a node up to a large streamed object on a slow link."""

WINDOW_SECONDS = 300
"""How far back the in-memory per-second window (the dashboard's charts) reaches."""

LATENCY_SAMPLE = 1024
"""Latencies kept per second for its percentiles (a uniform sample once a second sees more requests)."""


class ProcessMetrics:
    """One app's metrics: its own registry (never the global one), so several apps can share a process."""

    def __init__(self, process: str) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter(f"objstore_{process}_requests", "Requests served, by operation and HTTP status.",
                                ["operation", "status"], registry=self.registry)
        self.duration = Histogram(f"objstore_{process}_request_duration_seconds",
                                  "Time from a request's arrival to the end of its answer, by operation.",
                                  ["operation"], buckets=LATENCY_BUCKETS, registry=self.registry)
        self._before_scrape: list[Callable[[], Awaitable[None]]] = []
        # (operation, status) -> its request counter and duration histogram: `labels()` resolves them under a
        # lock each time, a cost of every request (operations and statuses are few and fixed)
        self._series: dict[tuple[str, int], tuple[Any, Any]] = {}

    def observe(self, operation: str, status: int, seconds: float) -> None:
        series = self._series.get((operation, status))
        if series is None:
            series = self._series[(operation, status)] = (self.requests.labels(operation, str(status)),
                                                          self.duration.labels(operation))
        series[0].inc()
        series[1].observe(seconds)

    def register(self, collector: Collector) -> None:
        """Add a collector whose values are read at scrape time."""
        self.registry.register(collector)

    def before_scrape(self, hook: Callable[[], Awaitable[None]]) -> None:
        """Run `hook` before each scrape: for values that need I/O (disk counts) and so cannot be read in collect()."""
        self._before_scrape.append(hook)

    async def render(self, accept: str = "") -> tuple[bytes, str]:
        """The exposition body and its content type, in the format the scraper's Accept header asks for."""
        for hook in self._before_scrape:
            await hook()
        encode, content_type = choose_encoder(accept)
        return encode(self.registry), content_type


def percentile(sorted_values: list[float], q: float) -> float:
    """Nearest-rank percentile (0 < q <= 1) of an ascending list; 0.0 for an empty one."""
    if not sorted_values:
        return 0.0
    # round first: 0.29 * 100 is 28.999999999999996, whose ceiling would be one rank too low
    rank = max(1, math.ceil(round(len(sorted_values) * q, 9)))
    return sorted_values[min(rank, len(sorted_values)) - 1]


@dataclass
class _Second:
    t: int
    requests: int = 0
    errors: int = 0
    bytes_in: int = 0
    bytes_out: int = 0
    latencies: list[float] = field(default_factory=list)


class SecondWindow:
    """Per-second totals of the last `seconds` seconds: requests, errors, bytes in and out, p50/p99 latency.

    A ring of one slot per second, so memory is bounded by the window, not by the request rate.
    """

    def __init__(self, seconds: int = WINDOW_SECONDS, sample: int = LATENCY_SAMPLE,
                 clock: Callable[[], float] = time.time, rng: random.Random | None = None) -> None:
        self.seconds, self.sample, self.clock = seconds, sample, clock
        self.rng = rng or random.Random()
        self._slots: list[_Second | None] = [None] * seconds

    def add(self, latency: float, bytes_in: int = 0, bytes_out: int = 0, error: bool = False) -> None:
        t = int(self.clock())
        i = t % self.seconds
        slot = self._slots[i]
        if slot is None or slot.t != t:
            slot = self._slots[i] = _Second(t)
        slot.requests += 1
        slot.errors += int(error)
        slot.bytes_in += bytes_in
        slot.bytes_out += bytes_out
        if len(slot.latencies) < self.sample:
            slot.latencies.append(latency)
        else:
            # reservoir sampling: every request of the second has the same chance to be in the sample
            j = self.rng.randrange(slot.requests)
            if j < self.sample:
                slot.latencies[j] = latency

    def samples(self, last: int | None = None) -> list[dict[str, Any]]:
        """One dict per second, oldest first, up to the last complete second (idle seconds are zeros)."""
        now = int(self.clock())
        count = min(last or self.seconds, self.seconds - 1)
        out: list[dict[str, Any]] = []
        for t in range(now - count, now):
            slot = self._slots[t % self.seconds]
            if slot is None or slot.t != t:
                out.append({"t": t, "requests": 0, "errors": 0, "bytes_in": 0, "bytes_out": 0,
                            "p50_ms": None, "p99_ms": None})
                continue
            lat = sorted(slot.latencies)
            out.append({"t": t, "requests": slot.requests, "errors": slot.errors, "bytes_in": slot.bytes_in,
                        "bytes_out": slot.bytes_out, "p50_ms": round(percentile(lat, 0.5) * 1000, 3),
                        "p99_ms": round(percentile(lat, 0.99) * 1000, 3)})
        return out
