"""Repair benchmark: wipe one node of a loaded `objstore dev` cluster and time the way back to full redundancy.

    .venv/bin/python -m benchmarks.repair_bench --gib 1.0 [--object-mib 64] [--fsync/--no-fsync]

Fills the cluster until the victim node holds about --gib of shards, kills it, wipes its data dir,
restarts it, and polls the owners until every object has k+m healthy shards on them. Prints the time
to full redundancy, the rebuild rate (MB of shards written per second, and the object MB/s it
restored), the gateway's peak RSS while writing, and the nodes' progress while repair runs.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import sys
import tempfile
import time
from pathlib import Path

from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.chaos.chaos import owner_health, status  # noqa: E402
from tests.cluster import start_dev_cluster  # noqa: E402


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    return 0


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--gib", type=float, default=1.0, help="shard data on the wiped node")
    ap.add_argument("--object-mib", type=int, default=64, help="size of each object")
    ap.add_argument("--fsync", action=argparse.BooleanOptionalAction, default=True)
    ap.add_argument("--bandwidth-mb", type=float, default=400.0, help="repair bandwidth per node")
    ap.add_argument("--json", help="write the figures here")
    args = ap.parse_args(argv)
    console = Console()
    work = Path(tempfile.mkdtemp(prefix="objstore-repair-bench-"))
    settings = {"repair_interval": 2.0, "heartbeat_interval": 0.5, "repair_bandwidth_mb": args.bandwidth_mb,
                "repair_concurrency": 4, "scrub_interval": 3600.0}
    cluster = start_dev_cluster(work, down_after=3.0, fsync=args.fsync, node_settings=settings)
    try:
        s3 = cluster.s3(read_timeout=300)
        s3.create_bucket(Bucket="bench")
        k, m = cluster.k, cluster.m
        obj = args.object_mib * 1024 * 1024
        count = max(1, int(args.gib * 1024**3 * k / obj))  # the victim holds one shard (size/k) of each
        body = os.urandom(obj)
        keys = [f"o/{i:05d}" for i in range(count)]
        gw_pid = int(cluster.gateway["pid"])  # type: ignore[index]
        started = time.monotonic()
        with Progress(TextColumn("{task.description}"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
                      TimeElapsedColumn(), console=console) as progress:
            task = progress.add_task(f"writing {count} x {args.object_mib} MiB", total=count)
            for key in keys:
                s3.put_object(Bucket="bench", Key=key, Body=body)
                progress.advance(task)
        write_s = time.monotonic() - started
        gw_rss = rss_kib(gw_pid)
        victim = cluster.node("n2")
        held = sum(p.stat().st_size for p in (victim.data_dir / "data").rglob("*") if p.is_file())
        cluster.kill_node("n2")
        shutil.rmtree(victim.data_dir)
        victim.data_dir.mkdir()
        cluster.start_node("n2")
        started = time.monotonic()
        width = k + m
        with Progress(TextColumn("{task.description}"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
                      TimeElapsedColumn(), console=console) as progress:
            task = progress.add_task("objects back at full redundancy", total=count)
            while True:
                health = owner_health(cluster, "bench", keys)
                done = sum(v == width for v in health.values())
                progress.update(task, completed=done)
                if done == count:
                    break
                if time.monotonic() - started > 3600:
                    raise SystemExit("repair did not finish within an hour")
                time.sleep(1.0)
        took = time.monotonic() - started
        rebuilt = sum(p.stat().st_size for p in (victim.data_dir / "data").rglob("*") if p.is_file())
        figures = {
            "objects": count, "object_mib": args.object_mib, "fsync": args.fsync, "k": k, "m": m,
            "victim_bytes_before": held, "victim_bytes_rebuilt": rebuilt,
            "time_to_full_redundancy_s": round(took, 2),
            "rebuild_mb_s": round(rebuilt / took / 1e6, 1),
            "restored_object_mb_s": round(rebuilt * k / took / 1e6, 1),
            "write_mb_s": round(count * obj / write_s / 1e6, 1),
            "gateway_peak_rss_mib": round(gw_rss / 1024, 1),
            "status_after": {key: status(cluster)[key] for key in ("objects_total", "objects_degraded",
                                                                   "objects_unreadable")},
        }
        console.print_json(json.dumps(figures))
        if args.json:
            Path(args.json).write_text(json.dumps(figures, indent=2))
    finally:
        cluster.stop()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))
    main()
