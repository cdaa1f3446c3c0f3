"""Scale and EC-profile phases of the report: a bucket grown to many small objects, and k+m profiles compared."""

from __future__ import annotations

import asyncio
import os
import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from benchmarks.loadcell import CellResult, KeySpace
from benchmarks.loadgen import format_size, preflight
from benchmarks.report_chaos import (
    DOWN_AFTER,
    REPAIR_SETTINGS,
    wait_redundant,
    wipe_node,
)
from benchmarks.report_systems import (
    Reporter,
    System,
    cdf_points,
    disk_bytes,
    fill,
    measure,
    new_session,
    rss_by_role,
)
from benchmarks.s3load import PayloadStream

__all__ = ["EcPlan", "ScalePlan", "run_ec", "run_scale"]


def _cell(result: CellResult, samples: dict[str, list[float]] | None = None) -> dict[str, Any]:
    out = {"workload": result.workload, "size": result.size, "concurrency": result.concurrency, "ops": result.ops,
           "errors": result.errors, "seconds": result.seconds, "ops_per_s": result.ops_per_s,
           "mb_per_s": result.mb_per_s, "latency_ms": result.latency_ms, "errors_by_kind": result.errors_by_kind}
    if samples is not None:
        out["cdf_ms"] = cdf_points([lat for lats in samples.values() for lat in lats])
    return out


@dataclass
class ScalePlan:
    checkpoints: list[int] = field(default_factory=lambda: [10_000, 100_000])
    batch: int = 2000  # objects written per growth step (one measured PUT cell)
    fill_concurrency: int = 32
    seconds: float = 5.0  # each measured cell at a checkpoint
    budget_s: float = 900.0  # growth stops before a checkpoint it cannot reach within this time
    size: int = 4096


async def run_scale(system: System, plan: ScalePlan, payloads: PayloadStream, reporter: Reporter) -> dict[str, Any]:
    """Grow one prefix of small objects through the checkpoints; at each, measure PUT, GET, HEAD and LIST
    (1000-key pages, walked from the start) and the RSS of the gateway and the nodes."""
    reporter.phase(f"scale: growing a bucket to {plan.checkpoints[-1]:,} objects", plan.checkpoints[-1])
    await payloads.ensure(plan.size)
    keys = KeySpace("scale/", plan.size)
    growth: list[dict[str, Any]] = []
    points: list[dict[str, Any]] = []
    async with new_session() as session:
        await preflight(system.client(session, payloads), "scale/")
    began = time.monotonic()
    stopped = ""
    for checkpoint in plan.checkpoints:
        while len(keys) < checkpoint:
            recent = [g["ops_per_s"] for g in growth[-10:] if g["ops_per_s"] > 0]
            if recent:
                needed = (checkpoint - len(keys)) / statistics.median(recent)
                if time.monotonic() - began + needed > plan.budget_s:
                    stopped = (f"stopped at {len(keys):,} objects: {checkpoint:,} needed about {needed:,.0f} s "
                               f"more, past the {plan.budget_s:,.0f} s budget")
                    break
            result, _ = await measure(system, payloads, keys, "put", plan.fill_concurrency,
                                      max_ops=min(plan.batch, checkpoint - len(keys)), max_seconds=600.0,
                                      sample_pids=False)
            growth.append({"objects": len(keys), "t": round(time.monotonic() - began, 1),
                           "ops_per_s": result.ops_per_s, "p50": result.latency_ms["p50"],
                           "p99": result.latency_ms["p99"], "errors": result.errors, "rss": rss_by_role(system)})
            reporter.step(f"scale: {len(keys):,} objects, {result.ops_per_s:,.0f} PUT/s", advance=result.ops,
                          quiet=len(growth) % 5 != 0)
            if result.ops == 0:
                stopped = f"stopped at {len(keys):,} objects: a growth step wrote nothing ({result.errors_by_kind})"
                break
        if stopped:
            break
        point: dict[str, Any] = {"objects": len(keys), "rss": rss_by_role(system), "cells": []}
        if system.cluster is not None:
            point["disk"] = await asyncio.to_thread(_node_disk, system)
        for workload, concurrency in (("get", 8), ("head", 8), ("list", 1), ("list", 8), ("put", 8)):
            result, samples = await measure(system, payloads, keys, workload, concurrency, max_ops=50_000,
                                            max_seconds=plan.seconds)
            point["cells"].append(_cell(result, samples))
        points.append(point)
        reporter.log(f"scale checkpoint {point['objects']:,}: " + ", ".join(
            f"{c['workload']} x{c['concurrency']} {c['ops_per_s']:,.0f}/s p99 {c['latency_ms']['p99']:.1f} ms"
            for c in point["cells"]))
    rates = [g["ops_per_s"] for g in growth[-10:] if g["ops_per_s"] > 0]
    rate = statistics.median(rates) if rates else 0.0
    return {"plan": asdict(plan), "growth": growth, "points": points, "reached": len(keys),
            "stopped": stopped, "elapsed_s": round(time.monotonic() - began, 1),
            "recent_put_rate": rate,
            "projected_1m_s": round(1_000_000 / rate) if rate else None,
            "projected_1m_remaining_s": round(max(0, 1_000_000 - len(keys)) / rate) if rate else None}


@dataclass
class EcPlan:
    profiles: list[tuple[int, int, int, int]] = field(
        default_factory=lambda: [(2, 1, 6, 3), (4, 2, 6, 3), (8, 3, 11, 3)])  # k, m, nodes, zones
    sizes: list[int] = field(default_factory=lambda: [1 << 20, 64 << 20])
    concurrency: dict[int, int] = field(default_factory=lambda: {1 << 20: 8, 64 << 20: 2})
    seconds: float = 6.0
    repair_bytes: int = 256 << 20  # logical bytes of 1 MiB objects present when a node is wiped
    repair_timeout_s: float = 600.0


def _node_disk(system: System) -> dict[str, int]:
    """Bytes under the nodes' data dirs: shard files apparent and allocated, and everything (records too)."""
    assert system.cluster is not None
    out = {"shard_apparent": 0, "shard_allocated": 0, "all_apparent": 0, "all_allocated": 0}
    for node in system.cluster.nodes:
        shards = disk_bytes(node.data_dir / "data")
        total = disk_bytes(node.data_dir)
        out["shard_apparent"] += shards[0]
        out["shard_allocated"] += shards[1]
        out["all_apparent"] += total[0]
        out["all_allocated"] += total[1]
    return out


async def run_ec(workdir: Path, plan: EcPlan, payloads: PayloadStream, reporter: Reporter,
                 start: Callable[..., System], done_with: Callable[[Path], None] = lambda path: None
                 ) -> list[dict[str, Any]]:
    """For each k+m profile, a fresh fsync cluster: PUT and GET throughput, bytes on disk per logical byte,
    and the time to rebuild a wiped node. `done_with` gets each profile's data dir once its cluster stopped."""
    reporter.phase("EC profiles", len(plan.profiles) * 4)
    out: list[dict[str, Any]] = []
    for k, m, nodes, zones in plan.profiles:
        name = f"ec{k}+{m}"
        reporter.step(f"{name}: starting {nodes} nodes in {zones} zones")
        system = start(workdir / f"ec{k}-{m}", name=name, k=k, m=m, nodes=nodes, zones=zones,
                       down_after=DOWN_AFTER, node_settings=REPAIR_SETTINGS)
        try:
            entry: dict[str, Any] = {"k": k, "m": m, "nodes": nodes, "zones": zones,
                                     "nominal_overhead": round((k + m) / k, 3), "cells": []}
            async with new_session() as session:
                await preflight(system.client(session, payloads), "ec/")
            logical = 0
            spaces: dict[int, KeySpace] = {}
            for size in plan.sizes:
                await payloads.ensure(size)
                keys = spaces[size] = KeySpace("ec/", size)
                for workload in ("put", "get"):
                    result, samples = await measure(system, payloads, keys, workload, plan.concurrency[size],
                                                    max_ops=20_000, max_seconds=plan.seconds)
                    entry["cells"].append(_cell(result, samples))
                    reporter.log(f"{name} {workload} {format_size(size)}: {result.mb_per_s:,.1f} MB/s")
            reporter.step(f"{name}: measuring bytes on disk")
            small = spaces[plan.sizes[0]]
            async with new_session() as session:
                entry["fill_failed"] = await fill(system.client(session, payloads), small,
                                                  max(len(small), plan.repair_bytes // small.size))
            logical = sum(len(keys) * size for size, keys in spaces.items())
            await asyncio.to_thread(os.sync)
            disk = await asyncio.to_thread(_node_disk, system)
            entry |= {"logical_bytes": logical, "disk": disk,
                      "shard_overhead": round(disk["shard_apparent"] / logical, 3),
                      "allocated_overhead": round(disk["all_allocated"] / logical, 3)}
            reporter.step(f"{name}: wiping n2 and timing the repair")
            t0 = time.monotonic()
            held = await wipe_node(system, "n2")
            tracked = [key for keys in spaces.values() for key in keys.all()]
            took, timeline = await wait_redundant(system, system.target.bucket, tracked, plan.repair_timeout_s, t0)
            elapsed = time.monotonic() - t0  # from the kill: the wipe and the restart are part of the outage
            assert system.cluster is not None
            rebuilt = (await asyncio.to_thread(disk_bytes, system.cluster.node("n2").data_dir / "data"))[0]
            entry |= {"victim_bytes_before": held, "victim_bytes_rebuilt": rebuilt,
                      "time_to_full_redundancy_s": round(elapsed, 2) if took is not None else None,
                      "rebuild_mb_s": round(rebuilt / elapsed / 1e6, 1) if took is not None else None,
                      "repair_objects": len(tracked), "timeline": timeline}
            out.append(entry)
            reporter.step(f"{name}: repaired in {entry['time_to_full_redundancy_s']} s")
        finally:
            await asyncio.to_thread(system.stop)
            done_with(workdir / f"ec{k}-{m}")
    return out
