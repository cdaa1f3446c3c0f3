"""The stores a benchmark report measures (objstore dev and the peers) and the load helpers every report phase uses."""

from __future__ import annotations

import asyncio
import os
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Self

import aiohttp
from rich.console import Console
from rich.progress import BarColumn, Progress, TaskID, TextColumn, TimeElapsedColumn

from benchmarks.loadcell import CellResult, KeySpace, run_cell
from benchmarks.peers import Peer
from benchmarks.procstat import memory_bytes
from benchmarks.s3load import OpError, PayloadStream, S3LoadClient, S3Target
from objstore.codec import codec_backend
from objstore.ops import set_pause
from tests.cluster import DevCluster, start_dev_cluster

__all__ = ["Reporter", "System", "TimedClient", "cdf_points", "delete_all", "disk_bytes", "fill", "measure", "new_session",
           "objstore_roles", "rss_by_role", "start_objstore", "start_peer", "verify_keys"]

CDF_POINTS = 101  # quantiles kept per cell for the latency CDFs: small JSON, smooth curves
_ERRORS = (TimeoutError, OpError, aiohttp.ClientError, OSError)


class Reporter:
    """Progress of a report run: one bar for the whole run, one for the current phase, and a log."""

    def __init__(self, console: Console) -> None:
        self.console = console
        self.progress = Progress(TextColumn("{task.description}"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
                                 TimeElapsedColumn(), console=console, transient=False)
        self._overall: TaskID | None = None
        self._phase: TaskID | None = None

    def __enter__(self) -> Self:
        self.progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.progress.stop()

    def run(self, phases: int) -> None:
        self._overall = self.progress.add_task("report", total=phases)

    def phase(self, name: str, total: int) -> None:
        """Start a phase of `total` steps; the previous phase's bar counts as one step of the run."""
        if self._phase is not None:
            self.progress.remove_task(self._phase)
            if self._overall is not None:
                self.progress.advance(self._overall)
        self._phase = self.progress.add_task(name, total=max(1, total))
        self.log(f"[bold]{name}[/bold]")

    def step(self, text: str | None = None, advance: int = 1, quiet: bool = False) -> None:
        """Advance the phase's bar; `text` becomes its description and, unless `quiet`, a log line."""
        if self._phase is not None:
            self.progress.update(self._phase, advance=advance, description=text)
        if text and not quiet:
            self.log(text)

    def total(self, total: int) -> None:
        if self._phase is not None:
            self.progress.update(self._phase, total=max(1, total))

    def log(self, text: str) -> None:
        self.progress.console.log(text)


@dataclass
class System:
    """One store under test: where to send S3 requests, its processes (pid -> role), its data on disk."""

    name: str  # objstore, seaweedfs, seaweedfs-fsync, swift
    target: S3Target
    roles: dict[int, str]  # every server pid -> gateway, node n1, master, volume0, proxy, ...
    disk_root: Path  # everything the store writes lives under here
    notes: str
    stop: Callable[[], object]
    cluster: DevCluster | None = None
    describe: dict[str, Any] = field(default_factory=dict)

    @property
    def pids(self) -> list[int]:
        return list(self.roles)

    async def hold_background(self, seconds: float) -> bool:
        """Pause (seconds > 0) or resume (0) the store's own background work where it has a control for it
        (objstore: `objstore pause`, repair and scrub; heartbeats go on). False for a store without one."""
        if self.cluster is None:
            return False
        answers = await set_pause(self.cluster.cluster_map(), self.cluster.secret, seconds)
        failed = {node: answer for node, answer in answers.items() if not isinstance(answer, float)}
        if failed:
            raise RuntimeError(f"{self.name}: pausing background work failed on {failed}")
        return True

    def client(self, session: aiohttp.ClientSession, payloads: PayloadStream, bucket: str | None = None) -> TimedClient:
        target = self.target if bucket is None else S3Target(self.target.endpoint, bucket, self.target.access_key,
                                                             self.target.secret_key, self.target.region)
        return TimedClient(session, target, payloads)


def objstore_roles(cluster: DevCluster) -> dict[int, str]:
    roles = {n.pid: f"node {n.id}" for n in cluster.nodes}
    if cluster.gateway and cluster.gateway.get("pid"):
        roles[int(cluster.gateway["pid"])] = "gateway"
    return roles


def start_objstore(workdir: Path, *, name: str = "objstore", bucket: str = "bench", nodes: int = 6, zones: int = 3,
                   k: int = 4, m: int = 2, fsync: bool = True, down_after: float = 5.0,
                   node_settings: dict[str, Any] | None = None) -> System:
    """`objstore dev` under `workdir` (blocking: call it from the main thread, whose exit its children follow)."""
    workdir.mkdir(parents=True, exist_ok=True)
    cluster = start_dev_cluster(workdir, nodes=nodes, zones=zones, k=k, m=m, fsync=fsync, down_after=down_after,
                                node_settings=node_settings)
    code = "zfec's code, ISA-L's arithmetic" if codec_backend() == "isa-l" else "zfec"
    notes = (f"EC {k}+{m} ({code}) over {nodes} nodes in {zones} zones: storage overhead {(k + m) / k:.2f}x; "
             f"{'fsync of shards and records before the answer' if fsync else 'no fsync'}; "
             "metadata: replicated records in SQLite on the nodes")
    target = S3Target(cluster.endpoint, bucket, cluster.access_key, cluster.secret_key, cluster.region)
    return System(name, target, objstore_roles(cluster), cluster.data_dir, notes, cluster.stop, cluster,
                  {"k": k, "m": m, "nodes": nodes, "zones": zones, "fsync": fsync, "endpoint": cluster.endpoint})


def start_peer(peer: Peer, workdir: Path, name: str, bucket: str = "bench", timeout: float = 90.0) -> System:
    """Start a peer store (SeaweedFS, Swift) under `workdir`; PeerError if it cannot run here."""
    peer.start(workdir, timeout=timeout)
    roles: dict[int, str] = {}
    for proc in peer.procs:
        roles[proc.pid] = proc.name
    for pid in peer.pids:
        roles.setdefault(pid, "worker")
    target = S3Target(peer.endpoint, bucket, peer.access_key, peer.secret_key, peer.region)
    info = {key: value for key, value in peer.describe().items() if key not in ("secret_key", "access_key")}
    return System(name, target, roles, Path(workdir), peer.notes(), lambda: peer.stop(), None, info)


class TimedClient(S3LoadClient):
    """An S3LoadClient that keeps the latency of every successful operation, per operation, for the CDFs."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.samples: dict[str, list[float]] = {}

    async def _timed(self, op: str, call: Any) -> Any:
        begin = time.perf_counter()
        result = await call
        self.samples.setdefault(op, []).append(time.perf_counter() - begin)
        return result

    async def put(self, key: str, size: int) -> int:
        return int(await self._timed("put", super().put(key, size)))

    async def get(self, key: str, size: int) -> int:
        return int(await self._timed("get", super().get(key, size)))

    async def head(self, key: str, size: int) -> int:
        return int(await self._timed("head", super().head(key, size)))

    async def delete(self, key: str) -> int:
        return int(await self._timed("delete", super().delete(key)))

    async def list_page(self, prefix: str, token: str | None, max_keys: int = 1000) -> tuple[int, str | None]:
        result: tuple[int, str | None] = await self._timed("list", super().list_page(prefix, token, max_keys))
        return result


def new_session(timeout: float = 300.0) -> aiohttp.ClientSession:
    """As the load generator's: no connection limit (workers bound concurrency), bytes as stored."""
    return aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0),
                                 timeout=aiohttp.ClientTimeout(total=timeout, sock_connect=10),
                                 auto_decompress=False, skip_auto_headers=("Accept-Encoding",))


def cdf_points(samples: Sequence[float], points: int = CDF_POINTS) -> list[float]:
    """Latency in ms at quantiles 0, 1/(points-1), ..., 1 (nearest rank): a CDF in a few hundred bytes."""
    ordered = sorted(samples)
    if not ordered:
        return []
    last = len(ordered) - 1
    return [round(ordered[round(last * i / (points - 1))] * 1000, 3) for i in range(points)]


async def _each(items: Sequence[Any], concurrency: int, action: Callable[[Any], Any]) -> list[str]:
    """Run `action` on every item, `concurrency` at once; the error kinds of the failures."""
    queue = iter(items)
    failures: list[str] = []

    async def worker() -> None:
        for item in queue:
            try:
                await action(item)
            except _ERRORS as err:
                failures.append(getattr(err, "kind", type(err).__name__))

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return failures


async def fill(client: S3LoadClient, keys: KeySpace, count: int, concurrency: int = 16) -> int:
    """PUT new keys until `keys` holds `count`; returns how many PUTs failed (not timed)."""
    fresh = [keys.new_key() for _ in range(count - len(keys))]

    async def put(key: str) -> None:
        await client.put(key, keys.size)
        keys.add(key)

    return len(await _each(fresh, concurrency, put))


async def delete_all(client: S3LoadClient, keys: KeySpace, concurrency: int = 16) -> int:
    """DELETE every key of `keys` (the caller drops the KeySpace afterwards); how many failed."""
    return len(await _each(keys.all(), concurrency, client.delete))


async def verify_keys(client: S3LoadClient, keys: Sequence[str], size: int, concurrency: int = 16) -> dict[str, int]:
    """GET every key and compare its bytes: {error kind: count}, empty when every one came back intact."""
    failures = await _each(keys, concurrency, lambda key: client.get(key, size))
    counts: dict[str, int] = {}
    for kind in failures:
        counts[kind] = counts.get(kind, 0) + 1
    return counts


async def measure(system: System, payloads: PayloadStream, keys: KeySpace, workload: str, concurrency: int, *,
                  max_ops: int, max_seconds: float, mix: dict[str, float] | None = None, seed: int = 1,
                  bucket: str | None = None, sample_pids: bool = True) -> tuple[CellResult, dict[str, list[float]]]:
    """One cell on `system` in a fresh connection pool: (result, latency samples in seconds per operation)."""
    async with new_session() as session:
        client = system.client(session, payloads, bucket)
        result = await run_cell(client, keys, workload, concurrency, max_ops=max_ops, max_seconds=max_seconds,
                                mix=mix or {"get": 70.0, "put": 20.0, "list": 5.0, "delete": 5.0},
                                rng=random.Random(seed), pids=system.pids if sample_pids else ())
    return result, client.samples


def rss_by_role(system: System) -> dict[str, int]:
    """Current RSS of each server process by role, in bytes (gone processes left out)."""
    out: dict[str, int] = {}
    for pid, role in system.roles.items():
        mem = memory_bytes(pid)
        if mem is not None:
            out[role] = out.get(role, 0) + mem[0]
    return out


def disk_bytes(root: Path) -> tuple[int, int]:
    """(apparent bytes, allocated bytes) of every regular file under `root`; sparse files count what they hold."""
    apparent = allocated = 0
    for dirpath, _, files in os.walk(root):
        for name in files:
            try:
                st = os.lstat(os.path.join(dirpath, name))
            except OSError:
                continue  # removed while we walk: a store's temporary file
            apparent += st.st_size
            allocated += st.st_blocks * 512
    return apparent, allocated
