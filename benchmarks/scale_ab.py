"""A/B of two source trees on one bucket: grow it once, restart the same data dir on each tree in turn, measure.

Each start waits 50 s (a first repair pass), samples the nodes' CPU for 45 s with no load, then runs GET and
HEAD x8 and LIST x1/x8 of 1000-key pages for 8 s each, so both trees are measured within one run:

    git archive OLD | tar -x -C /tmp/a; git archive NEW | tar -x -C /tmp/b
    cd /tmp/b && PYTHONPATH=/tmp/b REPO/.venv/bin/python -m benchmarks.scale_ab --a /tmp/a --b /tmp/b --out ab.json

The cluster runs each tree's code through PYTHONPATH; the bucket is grown with tree b.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks.loadcell import KeySpace
from benchmarks.loadgen import preflight
from benchmarks.procstat import cpu_seconds
from benchmarks.report_systems import System, measure, new_session, objstore_roles
from benchmarks.s3load import PayloadStream, S3Target
from tests.cluster import start_dev_cluster


def start(work: Path, tree: str, data_dir: Path | None) -> System:
    c = start_dev_cluster(work, fsync=True, down_after=5.0, data_dir=data_dir, env={"PYTHONPATH": tree})
    target = S3Target(c.endpoint, "bench", c.access_key, c.secret_key, c.region)
    return System(tree, target, objstore_roles(c), c.data_dir, "", c.stop, c, {})


def idle(system: System, seconds: float) -> float:
    pids = [p for p, r in system.roles.items() if r.startswith("node")]
    before = {p: cpu_seconds(p) or 0 for p in pids}
    t0 = time.monotonic()
    time.sleep(seconds)
    return round(sum((cpu_seconds(p) or 0) - before[p] for p in pids) / (time.monotonic() - t0), 3)


async def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--objects", type=int, default=100_000)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--a", required=True)
    ap.add_argument("--b", required=True)
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="ab-", dir="/tmp"))
    payloads = PayloadStream(1)
    await payloads.ensure(4096)
    keys = KeySpace("scale/", 4096)
    results: list[dict[str, Any]] = []
    system = start(work, args.b, None)
    assert system.cluster is not None
    data_dir = system.cluster.data_dir
    try:
        async with new_session() as session:
            await preflight(system.client(session, payloads), "scale/")
        while len(keys) < args.objects:
            r, _ = await measure(system, payloads, keys, "put", 32, max_ops=min(5000, args.objects - len(keys)),
                                 max_seconds=900, sample_pids=False)
            print("grown to", len(keys), round(r.ops_per_s), flush=True)
    finally:
        await asyncio.to_thread(system.stop)
    for rnd in range(args.rounds):
        for name, tree in (("before", args.a), ("after", args.b)):
            system = start(work, tree, data_dir)
            try:
                await asyncio.sleep(50)  # a first repair pass reads every partition once (after: then kept)
                cores = await asyncio.to_thread(idle, system, 45)
                row: dict[str, Any] = {"round": rnd, "tree": name, "idle_node_cores": cores}
                for workload, conc in (("get", 8), ("head", 8), ("list", 1), ("list", 8)):
                    r, _ = await measure(system, payloads, keys, workload, conc, max_ops=50_000, max_seconds=8)
                    row[f"{workload}x{conc}"] = round(r.ops_per_s, 1)
                    row[f"{workload}x{conc}_p99"] = r.latency_ms["p99"]
                    row[f"{workload}x{conc}_errors"] = r.errors
                print(json.dumps(row), flush=True)
                results.append(row)
            finally:
                await asyncio.to_thread(system.stop)
    Path(args.out).write_text(json.dumps({"objects": len(keys), "rows": results}, indent=1))
    subprocess.run(["rm", "-rf", str(work)])


if __name__ == "__main__":
    asyncio.run(main())
