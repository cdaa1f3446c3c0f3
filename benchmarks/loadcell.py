"""One measured cell of the load generator: a workload at one size and concurrency, and what it measured."""

from __future__ import annotations

import asyncio
import bisect
import itertools
import math
import os
import random
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import aiohttp

from benchmarks.procstat import ProcSampler, self_cpu_seconds
from benchmarks.s3load import OpError, S3LoadClient

__all__ = ["WORKLOADS", "CellResult", "KeySpace", "latency_summary", "run_cell"]

WORKLOADS = ("put", "get", "head", "list", "delete", "mixed")
_DELETE_TRIES = 8  # random picks a delete makes to find a key no one is reading before it gives up


class KeySpace:
    """The live keys of one size under the run's prefix, and which of them are being read now.

    A read picks only live keys and marks them; a delete takes a live key nobody reads and removes it
    before its request goes out. So no GET or HEAD is ever sent for a key a concurrent DELETE removed,
    and a 404 is always a store's error, not the generator's race.
    """

    def __init__(self, prefix: str, size: int) -> None:
        self.size = size
        self.prefix = f"{prefix}{size}/"
        self._live: list[str] = []
        self._where: dict[str, int] = {}
        self._reading: Counter[str] = Counter()
        self._counter = itertools.count(1)

    def __len__(self) -> int:
        return len(self._live)

    def new_key(self) -> str:
        return f"{self.prefix}{next(self._counter):010d}"

    def add(self, key: str) -> None:
        if key not in self._where:
            self._where[key] = len(self._live)
            self._live.append(key)

    def _drop(self, key: str) -> None:
        index = self._where.pop(key)
        last = self._live.pop()
        if last != key:  # move the last key into the hole: O(1) removal from the middle
            self._live[index] = last
            self._where[last] = index

    def start_read(self, rng: random.Random) -> str | None:
        if not self._live:
            return None
        key = self._live[rng.randrange(len(self._live))]
        self._reading[key] += 1
        return key

    def end_read(self, key: str) -> None:
        self._reading[key] -= 1
        if not self._reading[key]:
            del self._reading[key]

    def take(self, rng: random.Random, keep: int = 0) -> str | None:
        """A live key nobody is reading, removed from the live set; None if none was found or `keep` remain."""
        for _ in range(_DELETE_TRIES):
            if len(self._live) <= keep:
                return None
            key = self._live[rng.randrange(len(self._live))]
            if key not in self._reading:
                self._drop(key)
                return key
        return None

    def all(self) -> list[str]:
        return list(self._live)


def _percentile(ordered: Sequence[float], q: float) -> float:
    """Nearest-rank percentile of sorted values (0 for none)."""
    if not ordered:
        return 0.0
    return ordered[max(0, math.ceil(q * len(ordered)) - 1)]


def latency_summary(seconds: Sequence[float]) -> dict[str, float]:
    """p50/p90/p99/max/mean in milliseconds."""
    ordered = sorted(seconds)
    mean = sum(ordered) / len(ordered) if ordered else 0.0
    summary = {f"p{int(q * 100)}": _percentile(ordered, q) for q in (0.5, 0.9, 0.99)}
    summary |= {"max": ordered[-1] if ordered else 0.0, "mean": mean}
    return {name: round(value * 1000, 3) for name, value in summary.items()}


@dataclass
class CellResult:
    """What one (workload, size, concurrency) cell measured; `to_json` is the record a report script reads."""

    workload: str
    size: int
    concurrency: int
    ops: int  # successful operations
    errors: int  # failed ones (not in ops nor in the latencies)
    seconds: float  # from the first request sent to the last answer received
    bytes: int  # object body bytes moved by successful PUTs and GETs
    ops_per_s: float
    mb_per_s: float  # 10^6 bytes per second
    latency_ms: dict[str, float]
    errors_by_kind: dict[str, int] = field(default_factory=dict)
    by_op: dict[str, dict[str, float]] = field(default_factory=dict)  # per operation: ops, errors, latencies
    listed: int = 0  # keys seen on LIST pages
    stopped_by: str = ""  # max_ops, max_bytes, duration, or no_keys (a DELETE run that removed every key)
    client_cpu_seconds: float = 0.0  # the generator's own CPU over the cell (all its threads)
    server: dict[str, Any] = field(default_factory=dict)  # cpu_seconds, peak_rss_bytes (summed), per_pid
    first_error: str = ""  # one full error message, for the reader who wonders what the kinds mean
    slowdowns: int = 0  # PUTs answered 503 SlowDown and retried (S3LoadClient.put), not errors unless the last try
    load_average: float = 0.0  # the machine's 1-minute load average at the end: above its cores, figures are noisy

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


class _Substitute(Exception):
    """Raised by an operation that cannot run now, naming the one to run in its place."""

    def __init__(self, op: str) -> None:
        super().__init__(op)
        self.op = op


@dataclass
class _Tally:
    latencies: dict[str, list[float]] = field(default_factory=dict)
    errors: Counter[str] = field(default_factory=Counter)
    errors_by_op: Counter[str] = field(default_factory=Counter)
    bytes: int = 0
    listed: int = 0
    first_error: str = ""


class _Cell:
    """The workers of one cell, sharing bounds, keys and tallies (one event loop: no locks needed)."""

    def __init__(self, client: S3LoadClient, keys: KeySpace, workload: str, mix: Mapping[str, float],
                 rng: random.Random, max_ops: int, deadline: float, ops_bound_name: str = "max_ops") -> None:
        self.client, self.keys, self.workload, self.rng = client, keys, workload, rng
        self.max_ops, self.deadline, self.ops_bound_name = max_ops, deadline, ops_bound_name
        self.started = 0
        self.stopped_by = ""
        self.tally = _Tally()
        self.mix_ops = list(mix)
        total = sum(mix.values())
        self.mix_cumulative = list(itertools.accumulate(mix[name] / total for name in self.mix_ops))
        self.reads_keep = 0

    def _choose(self) -> str:
        if self.workload != "mixed":
            return self.workload
        index = bisect.bisect_left(self.mix_cumulative, self.rng.random())
        return self.mix_ops[min(index, len(self.mix_ops) - 1)]

    async def _one(self, op: str, list_token: list[str | None]) -> int | None:
        """Run one operation; bytes moved, or None when a DELETE run found no key left to take."""
        keys, client = self.keys, self.client
        if op == "delete":
            # in a mixed run, keep enough keys for the readers; a DELETE run may empty the prefix
            key = keys.take(self.rng, keep=self.reads_keep)
            if key is not None:
                return await client.delete(key)
            if self.workload == "delete":
                return None
            raise _Substitute("put")  # a mixed run short of keys writes one instead
        if op == "put":
            key = keys.new_key()
            moved = await client.put(key, keys.size)
            keys.add(key)
            return moved
        if op in ("get", "head"):
            key = keys.start_read(self.rng)
            if key is None:
                raise OpError(f"{op.upper()} no key", "the working set is empty")
            try:
                return await (client.get(key, keys.size) if op == "get" else client.head(key, keys.size))
            finally:
                keys.end_read(key)
        count, list_token[0] = await client.list_page(keys.prefix, list_token[0])
        self.tally.listed += count
        return 0

    async def worker(self) -> None:
        list_token: list[str | None] = [None]  # each worker pages through the prefix on its own
        tally = self.tally
        while True:
            if self.started >= self.max_ops:
                self.stopped_by = self.stopped_by or self.ops_bound_name
                return
            if time.monotonic() >= self.deadline:
                self.stopped_by = self.stopped_by or "duration"
                return
            self.started += 1
            op = self._choose()
            begin = time.perf_counter()
            try:
                try:
                    moved = await self._one(op, list_token)
                except _Substitute as instead:
                    op = instead.op
                    moved = await self._one(op, list_token)
            except (TimeoutError, OpError, aiohttp.ClientError, OSError, ValueError) as err:
                kind = err.kind if isinstance(err, OpError) else f"{op.upper()} {type(err).__name__}"
                tally.errors[kind] += 1
                tally.errors_by_op[op] += 1
                tally.first_error = tally.first_error or f"{kind}: {err}"
                continue
            if moved is None:
                self.started -= 1
                self.stopped_by = "no_keys"
                return
            tally.latencies.setdefault(op, []).append(time.perf_counter() - begin)
            tally.bytes += moved


async def run_cell(
    client: S3LoadClient,
    keys: KeySpace,
    workload: str,
    concurrency: int,
    *,
    max_ops: int,
    max_seconds: float,
    mix: Mapping[str, float],
    rng: random.Random,
    pids: Sequence[int] = (),
    ops_bound_name: str = "max_ops",
) -> CellResult:
    """Run `workload` on `keys` with `concurrency` workers until `max_ops` were started or `max_seconds` passed.

    `ops_bound_name` is what `stopped_by` says when `max_ops` ends the cell (the caller may have derived
    it from a byte bound)."""
    if workload not in WORKLOADS:
        raise ValueError(f"unknown workload {workload!r}")
    cell = _Cell(client, keys, workload, mix, rng, max_ops, time.monotonic() + max_seconds, ops_bound_name)
    cell.reads_keep = concurrency if workload == "mixed" else 0
    sampler = ProcSampler(pids)
    sampler.start()
    cpu_before = self_cpu_seconds()
    slowdowns_before = client.slowdowns
    begin = time.perf_counter()
    cell.deadline = time.monotonic() + max_seconds  # the duration counts from here, after the sampler's start
    try:
        async with asyncio.TaskGroup() as group:
            for _ in range(concurrency):
                group.create_task(cell.worker())
    finally:
        elapsed = time.perf_counter() - begin
        client_cpu = self_cpu_seconds() - cpu_before
        usage = sampler.stop()
    tally = cell.tally
    every = [lat for lats in tally.latencies.values() for lat in lats]
    ops = len(every)
    errors = sum(tally.errors.values())
    by_op: dict[str, dict[str, float]] = {}
    for op in sorted(set(tally.latencies) | set(tally.errors_by_op)):
        lats = tally.latencies.get(op, [])
        by_op[op] = {"ops": len(lats), "errors": tally.errors_by_op[op], **latency_summary(lats)}
    known = [u for u in usage if u.cpu_seconds is not None]
    server: dict[str, Any] = {}
    if usage:
        server = {
            "cpu_seconds": round(sum(u.cpu_seconds or 0.0 for u in known), 3) if known else None,
            "peak_rss_bytes": sum(u.peak_rss_bytes or 0 for u in usage) or None,
            "per_pid": [{"pid": u.pid, "cpu_seconds": u.cpu_seconds, "peak_rss_bytes": u.peak_rss_bytes,
                         "hwm_bytes": u.hwm_bytes, "alive": u.alive} for u in usage],
        }
    return CellResult(
        workload=workload, size=keys.size, concurrency=concurrency, ops=ops, errors=errors,
        seconds=round(elapsed, 4), bytes=tally.bytes,
        ops_per_s=round(ops / elapsed, 2) if elapsed else 0.0,
        mb_per_s=round(tally.bytes / elapsed / 1e6, 3) if elapsed else 0.0,
        latency_ms=latency_summary(every), errors_by_kind=dict(tally.errors), by_op=by_op, listed=tally.listed,
        stopped_by=cell.stopped_by, client_cpu_seconds=round(client_cpu, 3), server=server,
        first_error=tally.first_error, slowdowns=client.slowdowns - slowdowns_before,
        load_average=round(os.getloadavg()[0], 2),
    )
