"""The node's background loops: heartbeats and map gossip, anti-entropy repair of the partitions it leads, scrub,
and the removal of shards whose upload was never committed."""

from __future__ import annotations

import asyncio
import logging
import os
import re
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any

from objstore.client import NodeClient
from objstore.cluster import EXIT_RESTART, NodeInfo
from objstore.config import MAX_PAUSE
from objstore.kv import PARTS
from objstore.objects import ObjectIO
from objstore.quorum import Background
from objstore.records import KVRecord
from objstore.repair import Repairer, Throttle
from objstore.view import ClusterView

from node.store import CorruptShard

if TYPE_CHECKING:
    from node.server import Node

log = logging.getLogger("objstore.node.loops")

PART_BLOB = re.compile(r"(?P<upload>[0-9a-f]{32})-(?P<number>\d{5})-[0-9a-f]+")
"""Blob id of a multipart part (gateway/s3multipart.py): the upload id, the part number, a random suffix."""
DISK_WATCH_INTERVAL = 1.0
"""Seconds between two checks that the records database is still the one the node opened."""
LOOKUP_TIMEOUT = 5.0
"""Seconds a peer may take to answer whether it still needs a shard before the shard is kept for now."""


class Loops:
    """Owns the background work of one node and what it reports in /health."""

    def __init__(self, node: Node) -> None:
        self.node = node
        cfg = node.cfg
        self.client = NodeClient(cfg.secret, timeout=30.0, local_addr=cfg.source_address)
        self.view = ClusterView(node.cmap)
        self.executor = ThreadPoolExecutor(max_workers=2, thread_name_prefix=f"repair-{cfg.id}")
        self.background = Background()
        self.io = ObjectIO(self.view, self.client, self.executor, self.background)
        self.repairer = Repairer(self.view, self.client, self.io, me=cfg.id, alive=self.alive,
                                 writable=lambda n: self.node.peer_state(n.id) == "up" and self.view.available(n),
                                 concurrency=cfg.repair_concurrency, bandwidth_mb=cfg.repair_bandwidth_mb,
                                 gc_grace=cfg.gc_grace)
        self.repair_running = False
        self.repair_passes = 0
        self.scrub = {"passes": 0, "bytes": 0, "shards": 0, "corrupt": 0, "running": False}
        self.gc = {"passes": 0, "pending_removed": 0, "pending_kept": 0}
        self._pending_seen: dict[tuple[str, int], float] = {}  # (blob, shard) -> monotonic time first seen pending
        self.kick = asyncio.Event()
        self._paused_until = 0.0  # monotonic
        self._resumed = asyncio.Event()
        self.repairer.gate = self.unpaused

    def alive(self, n: NodeInfo) -> bool:
        return self.node.peer_state(n.id) != "down"

    # -- pausing -----------------------------------------------------------------------------------

    def pause(self, seconds: float) -> float:
        """Hold repair, scrub and the collection of never-committed shards for `seconds` (0 or less: resume).

        Heartbeats, map gossip and the data-dir watch go on, so failures are still seen. Work in progress
        stops at its next step (a partition, an object, a block) and takes up where it stopped. The pause
        lives in this process only: a restarted node runs its background work again. Returns the seconds
        left of the pause.
        """
        if seconds > MAX_PAUSE:
            raise ValueError(f"a pause may last at most {MAX_PAUSE:.0f} s")
        if seconds > 0:
            self._paused_until = time.monotonic() + seconds
            self._resumed.clear()
            log.warning("background work paused for %.0f s: repair, scrub and pending-shard collection hold",
                        seconds)
        else:
            if self.paused_for():
                log.warning("background work resumed")
            self._paused_until = 0.0
            self._resumed.set()
        return self.paused_for()

    def paused_for(self) -> float:
        """Seconds left of the current pause, 0.0 when not paused."""
        return max(0.0, self._paused_until - time.monotonic())

    async def unpaused(self) -> None:
        """Return at once when not paused, else once the pause runs out or is lifted."""
        while (left := self.paused_for()) > 0:
            try:
                await asyncio.wait_for(self._resumed.wait(), left)
            except asyncio.TimeoutError:
                pass

    def start(self) -> list[asyncio.Task[Any]]:
        return [asyncio.create_task(self.heartbeat()), asyncio.create_task(self.repair_loop()),
                asyncio.create_task(self.scrub_loop()), asyncio.create_task(self.pending_gc_loop()),
                asyncio.create_task(self.disk_watch())]

    async def disk_watch(self) -> None:
        """Stop the node (exit code EXIT_RESTART) once its records database is gone or replaced.

        A data dir wiped under a running node leaves it serving from open files that no longer exist:
        it would go on claiming shards it lost, and repair would trust it. Started again, it opens an
        empty store, says it holds nothing, and repair refills it.
        """
        node = self.node
        db = Path(node.cfg.data_dir) / "records.db"
        identity = _file_identity(db)
        while identity is not None:
            await asyncio.sleep(DISK_WATCH_INTERVAL)
            now = _file_identity(db)
            if now != identity:
                log.critical("data dir %s was wiped or replaced under the running node (records.db %s): "
                             "stopping to start again empty", node.cfg.data_dir, "gone" if now is None else "replaced")
                node.exit_code = EXIT_RESTART
                node.stopping.set()
                return

    async def close(self) -> None:
        await self.background.close(timeout=1.0)
        await self.client.close()
        self.executor.shutdown(wait=False, cancel_futures=True)

    def report(self) -> dict[str, Any]:
        stats = self.repairer.stats if self.repair_running else self.repairer.last
        return {"repair": {**stats.to_dict(), "running": self.repair_running, "passes": self.repair_passes},
                "scrub": dict(self.scrub), "gc": dict(self.gc), "paused_for": round(self.paused_for(), 1)}

    async def heartbeat(self) -> None:
        """Ping every peer; learn newer maps from them (gossip), remember when each last answered."""
        from node.server import PeerState

        node = self.node
        while True:
            peers = [n for n in node.cmap.nodes if n.id != node.cfg.id and n.state != "removed"]

            async def ping(peer: NodeInfo) -> None:
                try:
                    info = await asyncio.wait_for(self.client.health(peer, brief=True),
                                                  timeout=max(1.0, node.cfg.heartbeat_interval * 2))
                except Exception:
                    return
                state = node.peers.setdefault(peer.id, PeerState())
                state.last_ok, state.epoch = time.monotonic(), int(info.get("epoch", 0))
                self.view.record_success(peer)
                if state.epoch > node.cmap.epoch:
                    try:
                        await node.run(node.adopt_map, await self.client.get_map(peer))
                    except Exception as e:
                        log.warning("pulling map from %s failed: %s", peer.id, e)

            await asyncio.gather(*(ping(p) for p in peers))
            await asyncio.sleep(node.cfg.heartbeat_interval)

    async def repair_loop(self) -> None:
        # Let the heartbeats learn who is alive before the first pass.
        await asyncio.sleep(min(self.node.cfg.repair_interval, 3 * self.node.cfg.heartbeat_interval + 1))
        while True:
            await self.unpaused()
            self.repair_running = True
            try:
                stats = await self.repairer.run_pass()
                if stats.shards_rebuilt or stats.garbage_removed or stats.handoffs_removed:
                    log.info("repair pass: %s", stats.to_dict())
            except Exception:
                log.exception("repair pass failed")
            finally:
                self.repair_running = False
                self.repair_passes += 1
            try:
                await asyncio.wait_for(self.kick.wait(), self.node.cfg.repair_interval)
            except asyncio.TimeoutError:
                pass
            self.kick.clear()

    async def scrub_loop(self) -> None:
        """Re-read every shard at a throttled rate; a bad block quarantines the shard (repair rebuilds it).

        Then re-read the records of every partition: one no longer readable turns unhealthy in the
        partition's digest, which the store keeps between changes and would otherwise not see."""
        node = self.node
        throttle = Throttle(node.cfg.scrub_rate_mb * 1e6)
        await asyncio.sleep(min(node.cfg.scrub_interval, 10.0))
        while True:
            await self.unpaused()
            self.scrub["running"] = True
            found = 0
            for row in await node.run(node.store.blobs):
                last = max(0, (row.size - 1) // row.block_size) if row.size else -1
                try:
                    for b in range(0, last + 1):
                        await self.unpaused()
                        await node.run(lambda b=b: sum(len(x) for x in node.store.read_blob_blocks(row, b, b)))
                        await throttle(row.block_size)
                        self.scrub["bytes"] += row.block_size
                except (CorruptShard, FileNotFoundError) as e:
                    if await node.sql(node.store.blob, row.blob, row.shard) is None:
                        continue  # removed since the pass began (a deleted version, an upload never committed)
                    found += 1
                    log.warning("scrub: %s", e)
                self.scrub["shards"] += 1
            for p in await node.sql(node.store.partitions_held):
                await self.unpaused()
                if await node.sql(node.store.scrub_records, p):  # one partition a job: requests go on between
                    found += 1
                    log.warning("scrub: records of partition %d changed on disk", p)
            self.scrub["corrupt"] += found
            self.scrub["passes"] += 1
            self.scrub["running"] = False
            if found:
                self.kick.set()
            await asyncio.sleep(node.cfg.scrub_interval)

    async def pending_gc_loop(self) -> None:
        """Every repair interval, remove the shards whose upload was never committed (see collect_pending)."""
        await asyncio.sleep(min(self.node.cfg.repair_interval, 3 * self.node.cfg.heartbeat_interval + 1))
        while True:
            await self.unpaused()
            try:
                await self.collect_pending()
            except Exception:
                log.exception("pending shard collection failed")
            await asyncio.sleep(self.node.cfg.repair_interval)

    async def collect_pending(self) -> int:
        """Remove pending shards older than `pending_grace`; returns how many went.

        A shard is pending from its upload until a record names it. One still pending after the grace
        belongs to a write whose gateway died or gave up before the commit (a failed cleanup leaves the
        same), or to a multipart part: those stay while their upload's part record names them.
        The grace is measured by the shard's time and by this process's monotonic clock, so a wall clock
        that jumps ahead never removes an upload in progress.
        """
        node = self.node
        grace = node.cfg.pending_grace
        rows = await node.sql(node.store.pending_blobs)
        now = time.monotonic()
        self._pending_seen = {(r.blob, r.shard): self._pending_seen.get((r.blob, r.shard), now) for r in rows}
        made_before = time.time_ns() - int(grace * 1e9)
        removed = kept = 0
        for row in rows:
            if row.created >= made_before or now - self._pending_seen[(row.blob, row.shard)] < grace:
                continue
            if not await self._unclaimed(row.blob):
                kept += 1
                continue
            if await node.run(node.store.drop_pending_blob, row.blob, row.shard, made_before):
                removed += 1
                self._pending_seen.pop((row.blob, row.shard), None)
                log.info("removed shard %s.%d: never committed", row.blob, row.shard,
                         extra={"blob": row.blob, "shard": row.shard})
        self.gc["passes"] += 1
        self.gc["pending_removed"] += removed
        self.gc["pending_kept"] = kept
        return removed

    async def _unclaimed(self, blob: str) -> bool:
        """True unless the blob is a multipart part that its upload may still complete with.

        The part records of an upload live on its key's owners, under whichever map was current then:
        every node is asked, and the blob is unclaimed only if all of them answered and the newest part
        record of that number (if any) is a tombstone or names another blob (the part was uploaded again).
        """
        m = PART_BLOB.fullmatch(blob)
        if m is None:
            return True
        name = f"{m['upload']}\0{m['number']}"
        node = self.node
        peers = [n for n in node.cmap.nodes if n.state != "removed" and n.id != node.cfg.id]
        try:
            async with asyncio.timeout(LOOKUP_TIMEOUT):
                answers = await asyncio.gather(node.sql(node.store.get_kv, PARTS, name),
                                               *(self.client.get_kv(n, PARTS, name) for n in peers),
                                               return_exceptions=True)
        except TimeoutError:
            return False
        if any(isinstance(a, BaseException) for a in answers):
            return False  # a node that cannot answer may hold the record that claims the part
        records = [r for r in answers if isinstance(r, KVRecord)]
        newest = max(records, key=lambda r: r.version) if records else None
        return newest is None or newest.deleted or newest.value.get("blob") != blob


def _file_identity(path: Path) -> tuple[int, int] | None:
    """(device, inode) of a file, None if it is not there."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None
    return st.st_dev, st.st_ino
