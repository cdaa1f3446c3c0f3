"""Side-by-side phase of the report: the same cells on every store in turn, and the bytes each one puts on disk."""

from __future__ import annotations

import asyncio
import os
import statistics
import time
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from benchmarks.loadcell import KeySpace
from benchmarks.loadgen import format_size, preflight, warm_up
from benchmarks.procstat import cpu_seconds, machine_cpu_seconds
from benchmarks.report_systems import (
    Reporter,
    System,
    cdf_points,
    delete_all,
    disk_bytes,
    fill,
    measure,
    new_session,
)
from benchmarks.s3load import PayloadStream

__all__ = ["ComparePlan", "by_role", "hold_others", "idle_cpu", "machine_share", "medians", "run_compare", "settle",
           "store_cpu"]

SMALL = 4096
PREFIX = "report/"
HOLD_MARGIN = 120.0
"""Seconds a store's pause outlasts the cell it is held for (a 256 MiB cell bounded by bytes runs past its
`seconds`); the next cell lifts or renews it, and a run that dies leaves no pause behind for long."""
TARGET_CONCURRENCY = {SMALL: 32, 1 << 20: 16, 16 << 20: 4}
"""The concurrency each size's SeaweedFS figures of issue #5 were seen at."""
TARGETS = [("put", SMALL, 1.0), ("get", SMALL, 1.0), ("put", 1 << 20, 1.2), ("get", 1 << 20, 0.8),
           ("put", 16 << 20, 1.2), ("get", 16 << 20, 0.7)]
"""Issue #5's targets: (workload, size, least ratio objstore / SeaweedFS), at TARGET_CONCURRENCY."""


@dataclass
class ComparePlan:
    """Which cells the side-by-side phase runs and how each is bounded (the first bound reached ends a cell)."""

    sizes: list[int]
    concurrency: list[int]
    big_concurrency: list[int]  # for sizes of 16 MiB and more: 32 of 256 MiB in flight would be 8 GiB per store
    small_workloads: list[str] = field(default_factory=lambda: ["put", "get", "head", "list", "delete", "mixed"])
    seconds: float = 5.0
    max_ops: int = 20_000
    max_bytes: int = 2 << 30
    bytes_bound: list[str] = field(default_factory=lambda: ["put", "mixed"])
    """Workloads `max_bytes` bounds: those that store what they send. A GET cell runs its `seconds`: bounded
    by bytes, SeaweedFS's 16 MiB GET cells lasted 1.9 s against objstore's 3 to 5 s, too short a sample
    of the machine's noise for the faster store."""
    rounds: int = 1  # repeats of the target cells (PUT and GET at `targets[size]`)
    headline_concurrency: int = 8
    targets: dict[int, int] = field(default_factory=lambda: dict(TARGET_CONCURRENCY))
    """size -> the concurrency issue #5 sets its targets at; PUT and GET there run `rounds` times (medians)."""
    idle_seconds: float = 5.0  # every store at rest, its CPU sampled
    overhead_objects: dict[int, int] = field(default_factory=lambda: {1 << 20: 128, SMALL: 512})
    settle_seconds: float = 15.0
    """Before each cell: dirty pages flushed, then at most this long waiting for the machine to be quiet, so
    that no cell pays for the writeback or background work of the cell before it (0: neither)."""
    quiet_cores: float = 0.3
    """Busy cores (whole machine, over 0.5 s) below which it counts as quiet; every store at rest uses ~0.05."""

    def workloads(self, size: int) -> list[str]:
        return self.small_workloads if size == SMALL else ["put", "get"]

    def cells(self, size: int) -> list[tuple[str, int, int]]:
        """(workload, concurrency, round) in the order they run for `size`."""
        sweep = self.concurrency if size < (16 << 20) else self.big_concurrency
        target = self.targets.get(size)
        sweep = sorted({*sweep, target}) if target else sweep
        out: list[tuple[str, int, int]] = []
        for workload in self.workloads(size):
            for concurrency in sweep:
                repeated = workload in ("put", "get") and concurrency == target
                out.extend((workload, concurrency, r) for r in range(self.rounds if repeated else 1))
        return out

    @staticmethod
    def working_set(size: int) -> int:
        """Keys that GET/HEAD/LIST/DELETE/mixed work on: 1000 small ones, about 256 MiB of 1 MiB, a few big ones."""
        if size <= SMALL:
            return 1000
        if size <= 1 << 20:
            return 256
        return max(2, min(8, (512 << 20) // size))

    def step_count(self, systems: int) -> int:
        return systems * (sum(len(self.cells(size)) for size in self.sizes) + 1)


async def measure_overhead(systems: Sequence[System], payloads: PayloadStream, plan: ComparePlan,
                           reporter: Reporter) -> list[dict[str, Any]]:
    """Write a fresh set of objects per size into each store and divide the bytes its data dirs grew by
    (allocated blocks and apparent sizes, after a sync) by the object bytes written."""
    out: list[dict[str, Any]] = []
    for system in systems:
        for size, count in sorted(plan.overhead_objects.items()):
            await payloads.ensure(size)
            keys = KeySpace(f"overhead/{system.name}/", size)
            async with new_session() as session:
                client = system.client(session, payloads)
                await fill(client, keys, 1, concurrency=1)  # a store's first write may create volumes, files
                os.sync()
                before = disk_bytes(system.disk_root)
                failed = await fill(client, keys, count + 1, concurrency=8)
            os.sync()
            after = disk_bytes(system.disk_root)
            logical = (len(keys) - 1) * size
            out.append({"system": system.name, "size": size, "objects": len(keys) - 1, "failed": failed,
                        "logical_bytes": logical, "apparent_bytes": after[0] - before[0],
                        "allocated_bytes": after[1] - before[1],
                        "apparent_ratio": round((after[0] - before[0]) / logical, 3) if logical else None,
                        "allocated_ratio": round((after[1] - before[1]) / logical, 3) if logical else None})
            reporter.log(f"{system.name}: {count} x {format_size(size)} take "
                         f"{out[-1]['allocated_ratio']}x their size on disk (allocated)")
        reporter.step(f"storage overhead: {system.name}")
    return out


async def settle(max_seconds: float, quiet_cores: float, window: float = 0.5) -> float:
    """Flush dirty pages (a store that does not fsync leaves its writes to the kernel, which writes them back
    during whatever runs next) and wait until the machine's busy cores fall below `quiet_cores` over `window`
    seconds, at most `max_seconds` in all. Returns the seconds it took."""
    if max_seconds <= 0:
        return 0.0
    start = time.monotonic()
    await asyncio.to_thread(os.sync)
    while time.monotonic() - start < max_seconds:
        busy = machine_cpu_seconds()[0]
        await asyncio.sleep(window)
        if (machine_cpu_seconds()[0] - busy) / window < quiet_cores:
            break
    return round(time.monotonic() - start, 2)


async def hold_others(system: System, others: Sequence[System], plan: ComparePlan) -> list[str]:
    """Before a cell of `system`: its own background work runs, the other stores' is paused where they have
    a control for it (objstore's repair and scrub; the peers run none here), long enough for the settling
    and the cell, so that none of it lands in another store's figures. Returns the stores paused."""
    await system.hold_background(0)
    hold = plan.settle_seconds + plan.seconds + HOLD_MARGIN
    return [other.name for other in others if await other.hold_background(hold)]


def store_cpu(systems: Sequence[System]) -> dict[str, float]:
    """CPU seconds so far of each store's server processes."""
    return {s.name: sum(cpu_seconds(pid) or 0.0 for pid in s.pids) for s in systems}


def machine_share(before: tuple[float, float], after: tuple[float, float], seconds: float,
                  result: dict[str, Any], stores: dict[str, float] | None = None) -> dict[str, Any]:
    """The whole machine over one cell, in cores: busy, waiting on I/O, and busy with anything but the store
    measured and the load generator (the other stores' leftovers, the kernel's writeback, other tenants);
    `stores`: CPU seconds each of the stores not measured used meanwhile."""
    busy, iowait = after[0] - before[0], after[1] - before[1]
    ours = (result.get("server") or {}).get("cpu_seconds") or 0.0
    other = busy - ours - (result.get("client_cpu_seconds") or 0.0)
    out: dict[str, Any] = {"busy_cores": round(busy / seconds, 3), "iowait_cores": round(iowait / seconds, 3),
                           "other_cores": round(max(0.0, other) / seconds, 3)}
    if stores is not None:
        out["other_stores_cores"] = {name: round(used / seconds, 3) for name, used in stores.items()}
    return out


async def idle_cpu(systems: Sequence[System], seconds: float) -> dict[str, float]:
    """CPU cores each store burns while nobody sends it a request (heartbeats, background loops), all
    sampled over the same `seconds`: what it takes from the 2 cores the others are measured on."""
    before = store_cpu(systems)
    await asyncio.sleep(seconds)
    after = store_cpu(systems)
    return {name: round((after[name] - before[name]) / seconds, 3) for name in before}


def by_role(result: dict[str, Any], roles: dict[int, str]) -> dict[str, Any]:
    """The server figures of a cell per role (gateway, node n1, volume0, proxy...) instead of per pid."""
    server = dict(result.get("server") or {})
    grouped: dict[str, dict[str, float]] = {}
    for entry in server.pop("per_pid", []):
        role = roles.get(entry["pid"], "other")
        slot = grouped.setdefault(role, {"cpu_seconds": 0.0, "peak_rss_bytes": 0})
        slot["cpu_seconds"] = round(slot["cpu_seconds"] + (entry["cpu_seconds"] or 0.0), 3)
        slot["peak_rss_bytes"] += entry["peak_rss_bytes"] or 0
    server["by_role"] = grouped
    return result | {"server": server}


async def run_compare(systems: Sequence[System], plan: ComparePlan, payloads: PayloadStream, reporter: Reporter,
                      seed: int = 1) -> dict[str, Any]:
    """Every cell of `plan` on every system, the order of the systems rotated from one cell to the next so
    that no store always runs first (or right after the same neighbour) while the machine's noise drifts."""
    reporter.phase("side by side", plan.step_count(len(systems)))
    for system in systems:
        async with new_session() as session:
            await preflight(system.client(session, payloads), PREFIX)
    idle = await idle_cpu(systems, plan.idle_seconds)
    reporter.log("CPU cores used at rest: " + ", ".join(f"{name} {cores:.2f}" for name, cores in idle.items()))
    overhead = await measure_overhead(systems, payloads, plan, reporter)
    rows: list[dict[str, Any]] = []
    turn = 0
    try:
        for size in plan.sizes:
            await payloads.ensure(size)
            spaces = {s.name: KeySpace(PREFIX, size) for s in systems}
            for system in systems:
                async with new_session() as session:
                    await warm_up(system.client(session, payloads), f"{PREFIX}warm-up/{size}", size)
            for workload, concurrency, round_ in plan.cells(size):
                order = [systems[(turn + i) % len(systems)] for i in range(len(systems))]
                turn += 1
                for position, system in enumerate(order):
                    keys = spaces[system.name]
                    refill_failed = 0
                    if workload != "put":
                        async with new_session() as session:
                            refill_failed = await fill(system.client(session, payloads), keys, plan.working_set(size))
                    max_ops = plan.max_ops
                    if workload in plan.bytes_bound:
                        max_ops = min(max_ops, max(1, plan.max_bytes // size))
                    others = [s for s in systems if s is not system]
                    held = await hold_others(system, others, plan)
                    settled = await settle(plan.settle_seconds, plan.quiet_cores)
                    before, stores_before, began = machine_cpu_seconds(), store_cpu(others), time.monotonic()
                    result, samples = await measure(system, payloads, keys, workload, concurrency, max_ops=max_ops,
                                                    max_seconds=plan.seconds, seed=seed + turn)
                    measured = result.to_json()
                    stores = {name: used - stores_before[name] for name, used in store_cpu(others).items()}
                    machine = machine_share(before, machine_cpu_seconds(), time.monotonic() - began, measured, stores)
                    every = [lat for lats in samples.values() for lat in lats]
                    rows.append({"system": system.name, "workload": workload, "size": size, "concurrency": concurrency,
                                 "round": round_, "position": position, "refill_failed": refill_failed,
                                 "settle_s": settled, "held": held, "machine": machine,
                                 "result": by_role(measured, system.roles), "cdf_ms": cdf_points(every)})
                    reporter.step(f"{workload} {format_size(size)} x{concurrency} on {system.name}: "
                                  f"{result.ops_per_s:,.0f} ops/s, {result.mb_per_s:,.1f} MB/s")
                    if result.errors:
                        reporter.log(f"[red]{system.name} {workload} {format_size(size)} x{concurrency}: "
                                     f"{result.errors} errors[/red] {result.errors_by_kind} {result.first_error[:200]}")
            for system in systems:
                async with new_session() as session:
                    await delete_all(system.client(session, payloads), spaces[system.name])
    finally:  # a run that fails leaves no store paused for long (the pause also runs out by itself)
        for system in systems:
            await system.hold_background(0)
    return {"plan": asdict(plan) | {"overhead_objects": {str(k): v for k, v in plan.overhead_objects.items()},
                                    "targets": {str(k): v for k, v in plan.targets.items()}},
            "systems": [s.name for s in systems], "idle_cpu_cores": idle, "overhead": overhead, "cells": rows}


def medians(rows: Sequence[dict[str, Any]]) -> dict[tuple[str, str, int, int], dict[str, float]]:
    """(system, workload, size, concurrency) -> medians over rounds of ops/s, MB/s, p50, p99 and the errors summed."""
    groups: dict[tuple[str, str, int, int], list[dict[str, Any]]] = defaultdict(list)
    for row in rows:
        groups[(row["system"], row["workload"], row["size"], row["concurrency"])].append(row["result"])
    out: dict[tuple[str, str, int, int], dict[str, float]] = {}
    for key, results in groups.items():
        out[key] = {
            "ops_per_s": statistics.median(r["ops_per_s"] for r in results),
            "mb_per_s": statistics.median(r["mb_per_s"] for r in results),
            "p50": statistics.median(r["latency_ms"]["p50"] for r in results),
            "p99": statistics.median(r["latency_ms"]["p99"] for r in results),
            "errors": sum(r["errors"] for r in results),
            "ops": sum(r["ops"] for r in results),
            "rounds": len(results),
            "server_cpu_s_per_op": statistics.median(
                (r["server"].get("cpu_seconds") or 0.0) / r["ops"] if r["ops"] else 0.0 for r in results),
            "peak_rss": max(r["server"].get("peak_rss_bytes") or 0 for r in results),
        }
    return out
