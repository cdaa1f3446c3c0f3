"""Anti-entropy: compare what the nodes hold per partition, rebuild missing shards, move data home, remove garbage."""

from __future__ import annotations

import asyncio
import logging
import time
from collections import defaultdict
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import asdict, dataclass, field

from objstore.client import Digest, NodeClient, NodeError, PartitionDigests
from objstore.cluster import DEFAULT_POOL, NodeInfo
from objstore.kv import BUCKETS, copy_back, snapshot
from objstore.objects import ObjectIO, ReadFailed
from objstore.records import KVRecord
from objstore.ring import Ring
from objstore.versions import is_null, version_time_ns, wall_ns
from objstore.view import ClusterView

log = logging.getLogger("objstore.repair")

RECHECK_DELAY = 0.5
"""Seconds a pass waits before asking again for the digests of partitions whose owners differed."""
SCANS_AT_ONCE = 32
"""Partitions a pass looks into at once (see `run_pass`)."""

Summary = tuple[str, str, str, int, bool, bool]  # bucket, key, version, shard, deleted, healthy
Removal = tuple[str, str, str, dict[str, NodeInfo]]  # bucket, key, version, the nodes holding records of it
REMOVALS_BATCH = 4096
"""Versions a pass may have found to remove before it removes them (the rest go at the end of its scan)."""


@dataclass
class RepairStats:
    """What one pass saw and did; sums over the partitions this repairer led."""

    partitions_total: int = 0
    partitions_scanned: int = 0
    partitions_in_sync: int = 0
    objects_total: int = 0
    objects_degraded: int = 0
    objects_unreadable: int = 0
    objects_scanned: int = 0
    bytes_scanned: int = 0
    objects_rebuilt: int = 0
    objects_remaining: int = 0
    shards_rebuilt: int = 0
    bytes_rebuilt: int = 0
    bytes_remaining: int = 0
    handoffs_removed: int = 0
    garbage_removed: int = 0
    kv_copied: int = 0
    kv_forgotten: int = 0
    failures: int = 0
    started: float = 0.0
    finished: float = 0.0

    def to_dict(self) -> dict[str, float | int]:
        return asdict(self)


@dataclass
class Task:
    """One version to bring back to full redundancy on its owners."""

    ring: Ring
    bucket: str
    key: str
    version: str
    healthy: int  # distinct healthy shard indexes anywhere
    targets: dict[int, NodeInfo]  # missing index -> owner that should hold it
    stale: list[tuple[NodeInfo, str]] = field(default_factory=list)  # non-owner copies to drop once done
    size: int = 0
    degraded: bool = False  # counted in objects_degraded until rebuilt


TOMBSTONES_TRACKED = 200_000
"""KV tombstones a repairer times towards their removal at once (about 200 bytes each)."""


class Throttle:
    """A token bucket: repair traffic is capped at `rate` bytes per second."""

    def __init__(self, rate: float) -> None:
        self.rate = rate
        self.allowance = rate
        self.last = time.monotonic()

    async def __call__(self, nbytes: int) -> None:
        now = time.monotonic()
        self.allowance = min(self.rate, self.allowance + (now - self.last) * self.rate)
        self.last = now
        self.allowance -= nbytes
        if self.allowance < 0:
            await asyncio.sleep(-self.allowance / self.rate)


class Repairer:
    """Runs anti-entropy passes over the partitions a node leads (or all of them, for `repair --once`)."""

    def __init__(self, view: ClusterView, client: NodeClient, io: ObjectIO, *, me: str | None = None,
                 alive: Callable[[NodeInfo], bool] | None = None,
                 writable: Callable[[NodeInfo], bool] | None = None, concurrency: int = 2,
                 bandwidth_mb: float = 50.0, gc_grace: float = 600.0) -> None:
        self.view, self.client, self.io = view, client, io
        self.me = me
        self.alive = alive or view.available
        # Rebuilt shards go only to nodes known to answer: a node that just fell silent (suspect, not yet
        # down) still counts as alive, but rebuilding onto it reads k shards for a write that will fail.
        self.writable = writable or self.alive
        self.concurrency = concurrency
        self.throttle = Throttle(bandwidth_mb * 1e6)
        self.gc_grace_ns = int(gc_grace * 1e9)
        self.stats = RepairStats()
        self.last = RepairStats()
        self._first_seen: dict[tuple[str, str, str], float] = {}
        self._tombstones_seen: dict[tuple[str, str, str], float] = {}  # (ns, name, version) -> monotonic
        self._markers_seen: dict[tuple[str, int], float] = {}  # (pool, partition) -> monotonic, see _markers_due
        self.gate: Callable[[], Awaitable[None]] | None = None
        """Awaited before each partition scan and each object rebuilt: a node's pause holds a pass there."""

    def _aged(self, bucket: str, key: str, version: str, now: int) -> bool:
        """Past the grace period both by its version time and by how long this repairer has seen it.

        The second clock is this process's monotonic one: a node whose wall clock runs an hour ahead
        must not take a write in progress for an old failed one.
        """
        seen = self._first_seen.setdefault((bucket, key, version), time.monotonic())
        if len(self._first_seen) > 100_000:
            self._first_seen.clear()
        return now - version_time_ns(version) > self.gc_grace_ns and time.monotonic() - seen > self.gc_grace_ns / 1e9

    def _tombstone_aged(self, rec: KVRecord, now: int, asked: set[tuple[str, str, str]]) -> bool:
        """A KV tombstone past the grace period by its version time and by how long this repairer has seen it
        held everywhere (as `_aged`). At most TOMBSTONES_TRACKED are timed at once; the rest wait for room."""
        t = (rec.ns, rec.name, rec.version)
        seen = self._tombstones_seen.get(t)
        if seen is None:
            if len(self._tombstones_seen) >= TOMBSTONES_TRACKED:
                return False
            seen = self._tombstones_seen[t] = time.monotonic()
        asked.add(t)
        return (now - version_time_ns(rec.version) > self.gc_grace_ns
                and time.monotonic() - seen > self.gc_grace_ns / 1e9)

    # -- one pass ----------------------------------------------------------------------------------

    async def run_pass(self, progress: Callable[[RepairStats], None] | None = None) -> RepairStats:
        stats = self.stats = RepairStats(started=time.time())
        nodes = [n for n in self.view.all_nodes() if self.alive(n)]
        snap = await snapshot(self.client, nodes, BUCKETS, total=len(self.view.all_nodes()))
        if not snap.quorate:
            # Without a majority the bucket records may be missing or old: a versioned bucket would look
            # unversioned (its older versions retired), a bucket of another pool would move to the default.
            stats.failures += 1
            stats.finished = time.time()
            self.last = stats
            log.warning("repair: bucket records heard from %d of %d nodes; pass skipped", len(snap.held),
                        snap.total)
            return stats
        if self.me is None or self.me == min(n.id for n in nodes):
            asked: set[tuple[str, str, str]] = set()
            kv = await copy_back(self.client, nodes, self._owners_of_key, buckets=snap,
                                 members=[n.id for n in self.view.all_nodes()],
                                 aged=lambda r: self._tombstone_aged(r, wall_ns(), asked))
            self._tombstones_seen = {t: seen for t, seen in self._tombstones_seen.items() if t in asked}
            stats.kv_copied, stats.kv_forgotten = kv.copied, kv.forgotten
        buckets = {name: (r.value.get("pool"), r.value.get("versioning")) for name, r in snap.newest.items()
                   if not r.deleted}
        rings = [self.view.ring(None)] + [self.view.ring(p.name) for p in self.view.map.pools]
        held, digests = await self._partitions_held()
        tasks: list[Task] = []
        differ: list[tuple[Ring, int]] = []
        # Versions that may go, removed many partitions at a time: the node client batches the removals, so
        # they cost each node a transaction (an fsync) per batch, not one per version; deleted keys spread
        # over the partitions one or two each.
        removals: list[Removal] = []

        async def remove() -> None:
            batch, removals[:] = removals[:], []
            await asyncio.gather(*(self._remove_everywhere(*r) for r in batch))

        async def scan(ring: Ring, p: int, digests: dict[str, PartitionDigests], drill: bool) -> None:
            if self.gate is not None:
                await self.gate()
            try:
                found = await self._scan_partition(ring, p, buckets, stats, removals, digests, drill=drill)
                if len(removals) >= REMOVALS_BATCH:
                    await remove()
            except (NodeError, OSError, asyncio.TimeoutError) as e:
                stats.failures += 1
                log.warning("repair: partition %d scan failed: %s", p, e)
                found = []
            if found is None:
                differ.append((ring, p))
                return
            tasks.extend(found)
            if progress:
                progress(stats)

        async def scan_all(partitions: list[tuple[Ring, int]], digests: dict[str, PartitionDigests],
                           drill: bool) -> None:
            # SCANS_AT_ONCE partitions at a time: the record listings a drill asks for go to each node
            # as one batch (the node client coalesces them), not as a request a partition.
            for i in range(0, len(partitions), SCANS_AT_ONCE):
                await asyncio.gather(*(scan(ring, p, digests, drill) for ring, p in partitions[i:i + SCANS_AT_ONCE]))

        led: list[tuple[Ring, int]] = []
        for ring in rings:
            for p in sorted(held):
                leader = ring.leader(p, lambda nid: self.alive(self.view.map.node(nid)))
                if self.me is not None and (leader is None or leader.id != self.me):
                    continue
                stats.partitions_total += 1
                led.append((ring, p))
        await scan_all(led, digests, drill=False)
        if differ:
            # Owners' digests read while writes are in flight differ for the partitions those writes touch.
            # Asked again a moment later, most agree: only the others are drilled into, record by record.
            await asyncio.sleep(RECHECK_DELAY)
            _, digests = await self._partitions_held()
            await scan_all(differ[:], digests, drill=True)
        await remove()
        tasks.sort(key=lambda t: (t.healthy, t.version))  # most at risk first
        stats.objects_remaining = len(tasks)
        stats.bytes_remaining = sum(t.size * len(t.targets) // max(1, t.ring.ec.k) for t in tasks)
        sem = asyncio.Semaphore(self.concurrency)

        async def run(task: Task) -> None:
            async with sem:
                if self.gate is not None:
                    await self.gate()
                await self._repair(task, stats)
                stats.objects_remaining -= 1
                if progress:
                    progress(stats)

        await asyncio.gather(*(run(t) for t in tasks))
        stats.finished = time.time()
        self.last = stats
        return stats

    def _owners_of_key(self, bucket: str, key: str, pool: str | None) -> list[NodeInfo]:
        ring = self.view.ring(pool)
        return ring.owner_nodes(ring.partition_of(bucket, key))

    async def _partitions_held(self) -> tuple[set[int], dict[str, PartitionDigests]]:
        """The partitions any node holds, and each node's digests of them, read once for the whole pass.

        One call a node, not one a partition and node: with 4096 partitions the per-partition calls
        alone kept the nodes of an idle cluster busy. A node that does not answer it (an older version)
        is asked the old way: its partitions here, its digests partition by partition.
        """
        nodes = [n for n in self.view.all_nodes() if self.alive(n)]
        batches = await asyncio.gather(*(self.client.partition_digests(n) for n in nodes), return_exceptions=True)
        digests = {n.id: d for n, d in zip(nodes, batches) if isinstance(d, PartitionDigests)}
        rest = [n for n in nodes if n.id not in digests]
        results = await asyncio.gather(*(self.client.partitions_held(n) for n in rest), return_exceptions=True)
        held = {p for r in results if isinstance(r, list) for p in r}
        return held | {p for d in digests.values() for p in d.held}, digests

    async def _scan_partition(self, ring: Ring, p: int, buckets: dict[str, tuple[str | None, str | None]],
                              stats: RepairStats, removals: list[Removal],
                              kept: dict[str, PartitionDigests] | None = None, drill: bool = True) -> list[Task] | None:
        """The repairs a partition needs: none if its owners' digests agree; else, with `drill`, what
        comparing their records finds, and without it None when only the digests differ (ask again).

        The versions found that may go are added to `removals`, for the pass to remove."""
        pool_name = ring.pool.name
        owners = ring.owners(p)
        owner_ids = {n.id for n in owners}
        nodes = [n for n in self.view.all_nodes() if self.alive(n)]
        kept = kept or {}

        async def digest(n: NodeInfo) -> Digest:
            d = kept.get(n.id)
            return d.of(p) if d is not None else await self.client.partition_digest(n, p)

        digests = await asyncio.gather(*(digest(n) for n in nodes), return_exceptions=True)
        by_node = {n.id: d for n, d in zip(nodes, digests) if not isinstance(d, BaseException)}
        owner_digests = {by_node.get(o.id) for o in owners}
        others_hold = any(d[1] for nid, d in by_node.items() if nid not in owner_ids)
        plain = (all(self.alive(o) for o in owners) and len(owner_ids) == ring.ec.width
                 and pool_name == DEFAULT_POOL and not self.view.map.pools)
        if not drill and plain and not others_hold and None not in owner_digests and len(owner_digests) > 1:
            return None
        stats.partitions_scanned += 1
        # Bytes scanned: the object bytes of the versions the fullest node holds intact there.
        stats.bytes_scanned += max((d[2] for d in by_node.values()), default=0)
        # Equal digests say the owners hold the same versions, not how many shards each: an owner with
        # two slots (a pool smaller than k+m) may hold one, so such partitions are always drilled into.
        in_sync = len(owner_digests) == 1 and None not in owner_digests and not others_hold and plain
        if in_sync and not self._markers_due(ring, p, next(iter(owner_digests))[3]):  # type: ignore[index]
            stats.partitions_in_sync += 1
            count = next(iter(owner_digests))[1]  # type: ignore[index]
            stats.objects_total += count
            stats.objects_scanned += count
            return []
        summaries = await asyncio.gather(*(self.client.partition_records(n, p) for n in nodes), return_exceptions=True)
        holders: dict[tuple[str, str], dict[str, list[tuple[NodeInfo, int, bool, bool]]]] = defaultdict(
            lambda: defaultdict(list))
        # Failed writes may only be judged with every node of the map heard: a shard on a node that is
        # down or cut off is not a missing shard.
        complete = len(nodes) == len(self.view.all_nodes()) and not any(
            isinstance(r, BaseException) for r in summaries)
        for node, rows in zip(nodes, summaries):
            if isinstance(rows, BaseException):
                continue
            for bucket, key, version, shard, deleted, healthy in rows:
                if (buckets.get(bucket, (None, None))[0] or DEFAULT_POOL) != pool_name:
                    continue
                holders[(bucket, key)][version].append((node, shard, deleted, healthy))
        tasks = []
        now = wall_ns()
        for (bucket, key), versions in holders.items():
            # A bucket without a record (its objects outlived it) keeps every version: nothing says it may go.
            versioning = buckets.get(bucket, (None, "Enabled"))[1]
            tasks += self._plan_key(ring, p, owners, bucket, key, versions, versioning, now, stats, complete, removals)
        return tasks

    def _markers_due(self, ring: Ring, p: int, markers: int) -> bool:
        """Whether an in-sync partition holding delete markers is to be looked into anyway, for markers nothing
        needs any more (`_plan_key`): once it has held some for a grace period, then once per grace period."""
        slot = (ring.pool.name, p)
        if not markers:
            self._markers_seen.pop(slot, None)
            return False
        now = time.monotonic()
        since = self._markers_seen.setdefault(slot, now)
        if now - since < self.gc_grace_ns / 1e9:
            return False
        self._markers_seen[slot] = now
        return True

    def _plan_key(self, ring: Ring, p: int, owners: list[NodeInfo], bucket: str, key: str,
                  versions: dict[str, list[tuple[NodeInfo, int, bool, bool]]], versioning: str | None,
                  now: int, stats: RepairStats, complete: bool,
                  removals: list[Removal]) -> list[Task]:
        """The repairs a key needs; the versions that may go are added to `removals` (bucket, key, version, nodes)."""
        k, width = ring.ec.k, ring.ec.width
        owner_ids = {n.id for n in owners}
        ordered = sorted(versions, reverse=True)
        if versioning is None and complete and len(ordered) == 1:
            # A delete marker of a bucket never versioned that is the only version of its key anywhere
            # (every node heard) hides nothing any more: past the grace period it goes too, or every
            # deleted key would stay in the records, and in every listing's way, for good. Its age is its
            # version's time: the monotonic side of the grace is `_markers_due`'s, per partition (a
            # per-version clock for a million deleted keys would not fit `_first_seen`).
            entries = versions[ordered[0]]
            if all(deleted for _, _, deleted, _ in entries) and now - version_time_ns(ordered[0]) > self.gc_grace_ns:
                removals.append((bucket, key, ordered[0], {n.id: n for n, _, _, _ in entries}))
                stats.garbage_removed += 1
                return []
        visible = [v for v in ordered if len({s for _, s, _, h in versions[v] if h}) >= k]
        # What a write retires (gateway/versioning.py): a null version is replaced by a newer null version
        # unless versioning is Enabled; a version written while it was Enabled stays until deleted by id.
        nulls = [v for v in visible if is_null(v)] if versioning != "Enabled" else []
        newest = nulls[0] if nulls else None
        tasks = []
        for v in ordered:
            entries = versions[v]
            healthy_idx = {s for _, s, _, h in entries if h}
            # An older version goes only once the newer one has stood past the grace period too: a newer
            # write that is failing may show k records for a moment before its cleanup removes them.
            replaced = newest is not None and v < newest and is_null(v)
            superseded = (newest is not None and replaced and self._aged(bucket, key, newest, now)
                          and len(_healthy(versions[newest])) == width)
            # A write that never reached k nodes (damaged shards still count: unreadable is not garbage).
            failed = complete and len({s for _, s, _, _ in entries}) < k
            # Only versions that may go are timed: timing every version of every partition looked into filled
            # `_first_seen` past its bound (and emptied it) on a bucket of a few hundred thousand objects.
            old = (replaced or failed or len(healthy_idx) < k) and self._aged(bucket, key, v, now)
            if (superseded or failed) and old:
                removals.append((bucket, key, v, {n.id: n for n, _, _, _ in entries}))
                stats.garbage_removed += 1
                continue
            if superseded or len(healthy_idx) < k:
                if len(healthy_idx) < k and not old and v == ordered[0]:
                    continue  # maybe a write in progress
                if len(healthy_idx) < k and not replaced:  # a replaced one is garbage no read reaches
                    stats.objects_unreadable += 1
                continue
            stats.objects_scanned += 1
            stats.objects_total += 1
            on_owner: dict[str, set[int]] = defaultdict(set)
            for n, s, _, h in entries:
                if h and n.id in owner_ids:
                    on_owner[n.id].add(s)
            assigned: set[int] = set()
            lacking: list[NodeInfo] = []
            for o in owners:
                mine = sorted(on_owner.get(o.id, set()) - assigned)
                if mine:
                    assigned.add(mine[0])
                else:
                    lacking.append(o)
            if len(assigned) < width:
                stats.objects_degraded += 1
            missing = [i for i in range(width) if i not in assigned]
            targets = {i: o for i, o in zip(missing, lacking) if self.writable(o)}
            stale = [(n, v) for n, _, _, _ in entries if n.id not in owner_ids]
            if targets or (stale and len(assigned) == width):
                tasks.append(Task(ring, bucket, key, v, len(healthy_idx), targets, stale,
                                  degraded=len(assigned) < width and len(targets) == len(missing)))
        return tasks

    async def _remove_everywhere(self, bucket: str, key: str, version: str, nodes: dict[str, NodeInfo]) -> None:
        async def remove(node: NodeInfo) -> None:
            try:
                await self.client.delete_record(node, bucket, key, version)
            except (NodeError, OSError, asyncio.TimeoutError) as e:
                log.debug("repair: garbage removal on %s failed: %s", node.id, e)
        await asyncio.gather(*(remove(n) for n in nodes.values()))

    async def _repair(self, task: Task, stats: RepairStats) -> None:
        try:
            if task.targets:
                obj = await self.io.find(task.ring, task.bucket, task.key, task.version)
                if obj is None:
                    stats.failures += 1
                    return
                task.size = obj.record.size
                done = await self.io.rebuild(task.ring, obj, task.targets, self.throttle)
                stats.shards_rebuilt += len(done)
                stats.bytes_rebuilt += len(done) * obj.record.size // max(1, obj.record.ec.k)
                if len(done) < len(task.targets):
                    stats.failures += 1
                    return
                stats.objects_rebuilt += 1
                if task.degraded:  # back to k+m on its owners: no longer at risk
                    stats.objects_degraded -= 1
            # Every owner now holds its shard: copies on other nodes (handoffs, old owners) can go.
            for node, version in task.stale:
                if node.id in {t.id for t in task.targets.values()}:
                    continue
                try:
                    await self.client.delete_record(node, task.bucket, task.key, version)
                    stats.handoffs_removed += 1
                except (NodeError, OSError, asyncio.TimeoutError) as e:
                    log.debug("repair: dropping handoff on %s failed: %s", node.id, e)
        except (ReadFailed, NodeError, OSError, asyncio.TimeoutError) as e:
            stats.failures += 1
            log.warning("repair: %s/%s@%s failed: %s", task.bucket, task.key, task.version, e)


def _healthy(entries: list[tuple[NodeInfo, int, bool, bool]]) -> set[int]:
    return {s for _, s, _, h in entries if h}


def summarize(stats: Iterable[RepairStats]) -> RepairStats:
    """Sum the stats of several repairers (the nodes each lead a disjoint set of partitions)."""
    out = RepairStats()
    for s in stats:
        for name, value in asdict(s).items():
            if name in ("started", "finished"):
                setattr(out, name, max(getattr(out, name), value) if name == "finished" else
                        min(getattr(out, name) or value, value))
            else:
                setattr(out, name, getattr(out, name) + value)
    return out
