"""The size table of the gateway benchmark: PUT and GET MB/s, ops/s and gateway peak RSS for 4 KiB, 1 MiB and 256 MiB."""

from __future__ import annotations

import statistics
from dataclasses import asdict, dataclass, field
from typing import Any

from rich.console import Console

from benchmarks.loadgen import CellResult, run_workload
from benchmarks.procstat import memory_bytes
from benchmarks.s3load import S3Target
from tests.cluster import DevCluster

__all__ = ["SizePlan", "TablePlan", "run_table"]

MB = 1_000_000


@dataclass(frozen=True)
class SizePlan:
    """One row pair of the table: the object size, requests in flight and the bounds of each PUT and GET cell."""

    size: int
    concurrency: int
    max_seconds: float
    max_bytes: int
    objects: int  # keys the GET cell reads (written first if the PUT cell left fewer)


def _default_sizes() -> list[SizePlan]:
    # Bounds keep the whole table near 3 minutes on 2 cores: a few seconds of 4 KiB and 1 MiB, and four
    # 256 MiB objects (two rounds at concurrency 2) per cell.
    return [
        SizePlan(4096, 8, 5.0, 1 << 30, 200),
        SizePlan(1 << 20, 8, 5.0, 1 << 30, 32),
        SizePlan(256 << 20, 2, 60.0, 1 << 30, 2),
    ]


@dataclass(frozen=True)
class TablePlan:
    """Every size, in ascending order (RSS peaks carry over from one cell to the next), `reps` times each."""

    reps: int = 3
    seed: int = 1
    sizes: list[SizePlan] = field(default_factory=_default_sizes)


def _run_record(cell: CellResult, gateway_pid: int, rss_before: int) -> dict[str, Any]:
    per_pid = {p["pid"]: p for p in cell.server.get("per_pid", [])}
    gateway = per_pid.get(gateway_pid, {})
    nodes = [p for pid, p in per_pid.items() if pid != gateway_pid]
    return {
        "ops": cell.ops, "errors": cell.errors, "seconds": cell.seconds, "ops_per_s": cell.ops_per_s,
        "mb_per_s": cell.mb_per_s, "p50_ms": cell.latency_ms.get("p50"), "p99_ms": cell.latency_ms.get("p99"),
        "gateway_rss_before": rss_before, "gateway_rss_peak": gateway.get("peak_rss_bytes"),
        "gateway_cpu_seconds": gateway.get("cpu_seconds"),
        "node_rss_peak_max": max((p.get("peak_rss_bytes") or 0 for p in nodes), default=None),
        "stopped_by": cell.stopped_by, "load_average": cell.load_average, "errors_by_kind": cell.errors_by_kind,
    }


def _median(runs: list[dict[str, Any]], key: str) -> float | None:
    values = [r[key] for r in runs if r.get(key) is not None]
    return statistics.median(values) if values else None


async def run_table(cluster: DevCluster, plan: TablePlan, console: Console) -> dict[str, Any]:
    """PUT then GET of every size, `plan.reps` times, against `cluster`; every run kept and medians per cell."""
    gateway_pid = int(cluster.require_gateway()["pid"])
    pids = [gateway_pid] + [n.pid for n in cluster.nodes]
    target = S3Target(cluster.endpoint, "gateway-table", cluster.access_key, cluster.secret_key, cluster.region)
    cells: dict[tuple[int, str], dict[str, Any]] = {}
    total = len(plan.sizes) * plan.reps
    done = 0
    for size_plan in plan.sizes:
        for rep in range(plan.reps):
            mem = memory_bytes(gateway_pid)
            rss_before = mem[0] if mem else 0
            results = await run_workload(
                target, ["put", "get"], [size_plan.size], [size_plan.concurrency], max_ops=100_000,
                max_seconds=size_plan.max_seconds, max_bytes=size_plan.max_bytes, objects=size_plan.objects,
                pids=pids, seed=plan.seed + rep, timeout=300.0, prefix=f"table/{size_plan.size}/{rep}/",
            )
            done += 1
            for result in results:
                run = _run_record(result, gateway_pid, rss_before)
                cell = cells.setdefault((size_plan.size, result.workload), {
                    "size": size_plan.size, "workload": result.workload, "concurrency": size_plan.concurrency,
                    "runs": []})
                cell["runs"].append(run)
                console.log(
                    f"[{done}/{total}] {result.workload.upper():3} {size_plan.size:>10,} B x{size_plan.concurrency} "
                    f"rep {rep + 1}: {run['ops_per_s']:8.1f} ops/s {run['mb_per_s']:8.1f} MB/s, p99 "
                    f"{run['p99_ms'] or 0:7.1f} ms, gateway RSS {(run['gateway_rss_peak'] or 0) / MB:6.1f} MB, "
                    f"errors {run['errors']}, load {run['load_average']}")
    for cell in cells.values():
        cell["median"] = {key: _median(cell["runs"], key) for key in (
            "ops_per_s", "mb_per_s", "p50_ms", "p99_ms", "gateway_rss_peak", "gateway_rss_before",
            "node_rss_peak_max", "load_average")}
    return {"plan": {"reps": plan.reps, "sizes": [asdict(s) for s in plan.sizes]}, "cells": list(cells.values())}
