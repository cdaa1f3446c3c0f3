"""Helpers of the chaos tests: a model of what must be stored, cluster health checks, shard damage."""

from __future__ import annotations

import asyncio
import hashlib
import random
import sqlite3
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

from objstore.ops import collect_status
from objstore.ring import Ring

from tests.cluster import DevCluster

# Seconds, not minutes: every chaos test also runs the removal of shards never committed (pending_grace) while
# it breaks things, so a shard in use that it took for garbage would show up as a lost write.
FAST_REPAIR = {"repair_interval": 1.0, "heartbeat_interval": 0.3, "gc_grace": 3.0, "scrub_interval": 2.0,
               "scrub_rate_mb": 200.0, "repair_bandwidth_mb": 500.0, "repair_concurrency": 4, "pending_grace": 5.0}


def payload(seed: int, size: int) -> bytes:
    return random.Random(seed).randbytes(size)


def md5(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


def status(cluster: DevCluster) -> dict[str, Any]:
    return asyncio.run(collect_status(cluster.cluster_map(), cluster.secret))


async def _owner_health(cluster: DevCluster, bucket: str, keys: list[str]) -> dict[str, int]:
    """key -> number of distinct healthy shard indexes of its newest version held by its owners."""
    cmap = cluster.cluster_map()
    async with cluster.node_client(timeout=5.0) as client:
        newest = None
        for n in cmap.nodes:
            if n.state != "removed":
                try:
                    newest = await client.get_map(n)
                    break
                except Exception:
                    continue
        ring = Ring(newest or cmap)
        by_partition: dict[int, list[str]] = defaultdict(list)
        for key in keys:
            by_partition[ring.partition_of(bucket, key)].append(key)
        out: dict[str, int] = {}
        for p, pkeys in by_partition.items():
            owners = ring.owners(p)
            rows = await asyncio.gather(*(client.partition_records(o, p) for o in owners), return_exceptions=True)
            for key in pkeys:
                best: dict[str, set[int]] = defaultdict(set)
                for owner, r in zip(owners, rows):
                    if isinstance(r, BaseException):
                        continue
                    for b, k, v, shard, _, healthy in r:
                        if b == bucket and k == key and healthy:
                            best[v].add(shard)
                out[key] = len(best[max(best)]) if best else 0
        return out


def owner_health(cluster: DevCluster, bucket: str, keys: list[str]) -> dict[str, int]:
    return asyncio.run(_owner_health(cluster, bucket, keys))


def wait_full_redundancy(cluster: DevCluster, bucket: str, keys: list[str], timeout: float) -> float:
    """Seconds until every key's newest version has k+m distinct healthy shards on its owners."""
    width = cluster.k + cluster.m
    started = time.monotonic()
    last: dict[str, int] = {}
    while time.monotonic() - started < timeout:
        last = owner_health(cluster, bucket, keys)
        if all(v == width for v in last.values()):
            return time.monotonic() - started
        time.sleep(0.5)
    short = {k: v for k, v in last.items() if v != width}
    raise AssertionError(f"not at full redundancy after {timeout}s: {len(short)} keys short, e.g. "
                         f"{list(short.items())[:5]}\nstatus: {status(cluster)}")


def wait_status_clean(cluster: DevCluster, timeout: float, min_objects: int = 0) -> dict[str, Any]:
    """Until `objstore status` reports no object at risk (after at least one full repair pass)."""
    deadline = time.monotonic() + timeout
    s: dict[str, Any] = {}
    while time.monotonic() < deadline:
        s = status(cluster)
        if s["objects_at_risk"] == 0 and s["objects_total"] >= min_objects and all(
                n["state"] == "up" for n in s["nodes"] if n["map_state"] == "active"):
            return s
        time.sleep(0.5)
    raise AssertionError(f"status not clean after {timeout}s: {s}")


def shard_files(cluster: DevCluster, node_id: str) -> list[Path]:
    data = cluster.node(node_id).data_dir / "data"
    return sorted(p for p in data.rglob("*") if p.is_file() and p.suffix[1:].isdigit())


def flip_byte(path: Path, offset: int = 100) -> None:
    b = bytearray(path.read_bytes())
    b[min(offset, len(b) - 1)] ^= 0xFF
    path.write_bytes(bytes(b))


def truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def append_garbage(path: Path) -> None:
    with open(path, "ab") as f:
        f.write(b"garbage" * 10)


def kv_names(cluster: DevCluster, node_id: str, ns: str) -> set[str]:
    """Names of the live (not deleted) KV documents of a namespace that one node holds."""
    async def names() -> set[str]:
        async with cluster.node_client(timeout=5.0) as client:
            node = cluster.cluster_map().node(node_id)
            return {r.name for r in await client.list_kv(node, ns) if not r.deleted}
    return asyncio.run(names())


def damage_record(cluster: DevCluster, node_id: str, bucket: str, key: str) -> int:
    """Overwrite a node's stored record of a key with truncated bytes (SQLite stays consistent)."""
    db = sqlite3.connect(cluster.node(node_id).data_dir / "records.db", timeout=10)
    try:
        cur = db.execute("UPDATE objects SET record = substr(record, 1, 20) WHERE bucket=? AND key=?", (bucket, key))
        db.commit()
        return cur.rowcount
    finally:
        db.close()


def spawn_extra_node(cluster: DevCluster, node_id: str, port: int, workdir: Path) -> Any:
    """Start one more node process from a copy of n1's config (new id, port and data dir); the caller adds
    it to the map. Returns the Popen; stop it by pid."""
    import subprocess
    import sys
    import tomllib

    from objstore.devcluster import child_env, die_with_parent, probe_node

    cfg = tomllib.loads(cluster.node("n1").config.read_text())
    cfg.update(id=node_id, listen=f"127.0.0.1:{port}", data_dir=str(workdir / node_id))
    path = workdir / f"{node_id}.toml"
    path.write_text("".join(f"{k} = {json_value(v)}\n" for k, v in cfg.items()))
    log = open(workdir / f"{node_id}.log", "ab")
    proc = subprocess.Popen([sys.executable, "-m", "node", "--config", str(path)], stdout=log, stderr=log,
                            stdin=subprocess.DEVNULL, env=child_env(), preexec_fn=die_with_parent())
    deadline = time.monotonic() + 30
    while not probe_node(f"127.0.0.1:{port}", cluster.secret):
        if proc.poll() is not None or time.monotonic() > deadline:
            raise AssertionError(f"extra node {node_id} did not start: {(workdir / f'{node_id}.log').read_text()}")
        time.sleep(0.1)
    return proc


def json_value(v: Any) -> str:
    import json

    return json.dumps(v)
