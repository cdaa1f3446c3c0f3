"""Repair and chaos phases of the report: a wiped node rebuilt under client load, nodes SIGKILLed under load."""

from __future__ import annotations

import asyncio
import math
import shutil
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from benchmarks.loadcell import KeySpace
from benchmarks.loadgen import preflight
from benchmarks.report_systems import (
    Reporter,
    System,
    disk_bytes,
    fill,
    measure,
    new_session,
    objstore_roles,
    verify_keys,
)
from benchmarks.s3load import PayloadStream
from tests.chaos.chaos import owner_health

__all__ = ["REPAIR_SETTINGS", "ChaosPlan", "RepairPlan", "WindowLoad", "run_chaos", "run_repair", "wait_redundant",
           "wipe_node"]

# repair starts within seconds of a node coming back, as in benchmarks/repair_bench.py; scrub stays out of the way
REPAIR_SETTINGS: dict[str, Any] = {"repair_interval": 2.0, "heartbeat_interval": 0.5, "repair_bandwidth_mb": 400.0,
                                   "repair_concurrency": 4, "scrub_interval": 3600.0}
DOWN_AFTER = 3.0


class WindowLoad:
    """A client load run as back-to-back cells of `window` seconds until stopped: throughput, p99 and errors
    over time. Each window is bounded in seconds and the whole run in windows."""

    def __init__(self, system: System, payloads: PayloadStream, keys: KeySpace, workload: str, concurrency: int,
                 mix: dict[str, float] | None = None, window: float = 1.0, max_windows: int = 3600) -> None:
        self.system, self.payloads, self.keys = system, payloads, keys
        self.workload, self.concurrency, self.mix = workload, concurrency, mix
        self.window, self.max_windows = window, max_windows
        self.windows: list[dict[str, Any]] = []

    async def run(self, stop: asyncio.Event, t0: float) -> None:
        for index in range(self.max_windows):
            if stop.is_set():
                return
            began = time.monotonic() - t0
            result, _ = await measure(self.system, self.payloads, self.keys, self.workload, self.concurrency,
                                      max_ops=1_000_000, max_seconds=self.window, mix=self.mix, seed=index,
                                      sample_pids=False)
            self.windows.append({"t": round(began, 2), "seconds": result.seconds, "ops": result.ops,
                                 "ops_per_s": result.ops_per_s, "mb_per_s": result.mb_per_s,
                                 "p50": result.latency_ms["p50"], "p99": result.latency_ms["p99"],
                                 "errors": result.errors, "errors_by_kind": result.errors_by_kind})

    def summary(self, start: float, end: float) -> dict[str, Any]:
        """Medians over the windows that began within [start, end): ops/s, MB/s, p99; errors and ops summed."""
        chosen = [w for w in self.windows if start <= w["t"] < end]
        if not chosen:
            return {"windows": 0}
        ops, errors = sum(w["ops"] for w in chosen), sum(w["errors"] for w in chosen)
        return {"windows": len(chosen), "ops": ops, "errors": errors,
                "error_rate": round(errors / (ops + errors), 5) if ops + errors else 0.0,
                "ops_per_s": statistics.median(w["ops_per_s"] for w in chosen),
                "mb_per_s": statistics.median(w["mb_per_s"] for w in chosen),
                "p99_ms": statistics.median(w["p99"] for w in chosen),
                "worst_p99_ms": max(w["p99"] for w in chosen)}


async def wipe_node(system: System, node_id: str) -> int:
    """SIGKILL the node by pid, delete its data dir, start it again empty; the shard bytes it held."""
    cluster = system.cluster
    assert cluster is not None, "only an objstore system has nodes to wipe"
    node = cluster.node(node_id)
    held = (await asyncio.to_thread(disk_bytes, node.data_dir / "data"))[0]
    await asyncio.to_thread(cluster.kill_node, node_id)
    await asyncio.to_thread(shutil.rmtree, node.data_dir)
    node.data_dir.mkdir()
    # the restarted node is a child of a worker thread of the loop's executor, which lives until the loop
    # closes: the cluster is stopped before that, so the parent-death signal never fires early
    await asyncio.to_thread(cluster.start_node, node_id)
    system.roles = objstore_roles(cluster)
    return held


async def wait_redundant(system: System, bucket: str, keys: Sequence[str], timeout: float, t0: float,
                         interval: float = 1.0, on_sample: Callable[[int, int], None] | None = None,
                         ) -> tuple[float | None, list[list[float]]]:
    """Poll the owners until every key's newest version has k+m healthy shards: (seconds or None after
    `timeout`, timeline of [t since t0, keys at full redundancy])."""
    assert system.cluster is not None
    width = system.cluster.k + system.cluster.m
    started = time.monotonic()
    timeline: list[list[float]] = []
    while True:
        health = await asyncio.to_thread(owner_health, system.cluster, bucket, list(keys))
        full = sum(v == width for v in health.values())
        now = time.monotonic()
        timeline.append([round(now - t0, 2), full])
        if on_sample is not None:
            on_sample(full, len(keys))
        if full == len(keys):
            return now - started, timeline
        if now - started > timeout:
            return None, timeline
        await asyncio.sleep(interval)


@dataclass
class RepairPlan:
    gib: float = 1.0  # shard bytes the wiped node holds
    object_mib: int = 64
    client_size: int = 1 << 20
    client_objects: int = 128
    client_concurrency: int = 4
    baseline_s: float = 15.0
    after_s: float = 5.0
    timeout_s: float = 900.0
    victim: str = "n2"


async def run_repair(system: System, plan: RepairPlan, payloads: PayloadStream, reporter: Reporter) -> dict[str, Any]:
    """Fill the cluster until the victim holds `plan.gib` of shards, run a client load, wipe the victim, and
    time the way back to full redundancy while the load goes on; then read every object back."""
    assert system.cluster is not None
    k, m = system.cluster.k, system.cluster.m
    size = plan.object_mib << 20
    count = max(1, math.ceil(plan.gib * (1 << 30) * (k + m) / len(system.cluster.nodes) / (size / k)))
    reporter.phase("repair under load", count + 3)
    await payloads.ensure(size)
    big, client_keys = KeySpace("repair/", size), KeySpace("client/", plan.client_size)
    async with new_session() as session:
        client = system.client(session, payloads)
        await preflight(client, "repair/")
        began = time.monotonic()
        failed = 0
        while len(big) < count and failed < count:
            before = len(big)
            failed += await fill(client, big, min(count, len(big) + 2), concurrency=2)
            reporter.step(f"writing {count} x {plan.object_mib} MiB", advance=len(big) - before,
                          quiet=True)
        write_s = time.monotonic() - began
        failed += await fill(client, client_keys, plan.client_objects)
    load = WindowLoad(system, payloads, client_keys, "mixed", plan.client_concurrency, mix={"get": 80.0, "put": 20.0})
    stop, t0 = asyncio.Event(), time.monotonic()
    task = asyncio.create_task(load.run(stop, t0))
    try:
        await asyncio.sleep(plan.baseline_s)
        tracked = big.all() + client_keys.all()
        # one poll before the wipe: the timeline starts from what was measured, every object at full width
        _, baseline = await wait_redundant(system, system.target.bucket, tracked, 0.0, t0)
        wiped_at = time.monotonic() - t0
        held = await wipe_node(system, plan.victim)
        restarted_at = time.monotonic() - t0
        reporter.step(f"{plan.victim} wiped and restarted; waiting for full redundancy of {len(tracked)} objects")
        took, timeline = await wait_redundant(
            system, system.target.bucket, tracked, plan.timeout_s, t0,
            on_sample=lambda full, total: reporter.log(f"{full}/{total} objects at full redundancy"))
        repaired_at = time.monotonic() - t0
        await asyncio.sleep(plan.after_s)
    finally:
        stop.set()
        await task
    reporter.step("verifying every object")
    rebuilt = (await asyncio.to_thread(disk_bytes, system.cluster.node(plan.victim).data_dir / "data"))[0]
    async with new_session() as session:
        client = system.client(session, payloads)
        bad = await verify_keys(client, big.all(), size, concurrency=2)
        bad_client = await verify_keys(client, client_keys.all(), plan.client_size)
    reporter.step()
    return {
        "plan": asdict(plan), "k": k, "m": m, "objects": len(big), "object_bytes": size, "write_failed": failed,
        "write_mb_s": round(len(big) * size / write_s / 1e6, 1), "victim_bytes_before": held,
        "victim_bytes_rebuilt": rebuilt, "tracked_objects": len(tracked),
        "wiped_at_s": round(wiped_at, 2), "restarted_at_s": round(restarted_at, 2),
        "repaired_at_s": round(repaired_at, 2) if took is not None else None,
        "time_to_full_redundancy_s": round(repaired_at - wiped_at, 2) if took is not None else None,
        "rebuild_mb_s": round(rebuilt / (repaired_at - restarted_at) / 1e6, 1) if took else None,
        "timeline": baseline + timeline, "windows": load.windows,
        "client_before": load.summary(0.0, wiped_at),
        "client_during": load.summary(wiped_at, repaired_at),
        "client_after": load.summary(repaired_at, 1e9),
        "verify_failures": {"big": bad, "client": bad_client},
        "client_objects_verified": len(client_keys), "big_objects_verified": len(big),
    }


@dataclass
class ChaosPlan:
    seconds: float = 60.0
    period: float = 10.0  # a node is killed every `period` seconds...
    down: float = 4.0  # ...and started again `down` seconds later
    size: int = 64 << 10
    objects: int = 200
    concurrency: int = 8


async def run_chaos(system: System, plan: ChaosPlan, payloads: PayloadStream, reporter: Reporter) -> dict[str, Any]:
    """PUT/GET load while one node at a time is SIGKILLed and restarted; then every acknowledged write is
    read back and compared byte for byte: a missing or different one is a lost write."""
    cluster = system.cluster
    assert cluster is not None
    kills = max(1, int(plan.seconds // plan.period))
    reporter.phase("chaos: nodes killed under load", kills + 2)
    await payloads.ensure(plan.size)
    keys = KeySpace("chaos/", plan.size)
    async with new_session() as session:
        await fill(system.client(session, payloads), keys, plan.objects)
    load = WindowLoad(system, payloads, keys, "mixed", plan.concurrency, mix={"put": 50.0, "get": 50.0})
    stop, t0 = asyncio.Event(), time.monotonic()
    task = asyncio.create_task(load.run(stop, t0))
    events: list[dict[str, Any]] = []
    node_ids = [n.id for n in cluster.nodes]
    try:
        for index in range(kills):
            await asyncio.sleep(max(0.0, plan.period - plan.down))
            victim = node_ids[(index * 2 + 1) % len(node_ids)]
            await asyncio.to_thread(cluster.kill_node, victim)
            events.append({"t": round(time.monotonic() - t0, 2), "event": "kill", "node": victim})
            await asyncio.sleep(plan.down)
            await asyncio.to_thread(cluster.start_node, victim)
            system.roles = objstore_roles(cluster)
            events.append({"t": round(time.monotonic() - t0, 2), "event": "restart", "node": victim})
            reporter.step(f"killed and restarted {victim}")
        await asyncio.sleep(2.0)
    finally:
        stop.set()
        await task
    acknowledged = keys.all()
    async with new_session() as session:
        bad = await verify_keys(system.client(session, payloads), acknowledged, plan.size)
    reporter.step(f"verified {len(acknowledged)} acknowledged writes: {sum(bad.values())} bad")
    puts = sum(w["ops"] for w in load.windows)  # ops of both kinds; the split is in the windows' errors
    return {"plan": asdict(plan), "events": events, "windows": load.windows,
            "overall": load.summary(0.0, 1e9), "acknowledged_keys": len(acknowledged),
            "lost_or_corrupt": sum(bad.values()), "verify_failures": bad, "ops": puts}
