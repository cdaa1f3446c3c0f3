"""The node's background loops: heartbeats and map gossip, anti-entropy repair of the partitions it leads, scrub."""

from __future__ import annotations

import asyncio
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

from objstore.client import NodeClient
from objstore.cluster import NodeInfo
from objstore.objects import ObjectIO
from objstore.quorum import Background
from objstore.repair import Repairer, Throttle
from objstore.view import ClusterView

from node.store import CorruptShard

if TYPE_CHECKING:
    from node.server import Node

log = logging.getLogger("objstore.node.loops")


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
                                 concurrency=cfg.repair_concurrency, bandwidth_mb=cfg.repair_bandwidth_mb,
                                 gc_grace=cfg.gc_grace)
        self.repair_running = False
        self.repair_passes = 0
        self.scrub = {"passes": 0, "bytes": 0, "shards": 0, "corrupt": 0, "running": False}
        self.kick = asyncio.Event()

    def alive(self, n: NodeInfo) -> bool:
        return self.node.peer_state(n.id) != "down"

    def start(self) -> list[asyncio.Task[Any]]:
        return [asyncio.create_task(self.heartbeat()), asyncio.create_task(self.repair_loop()),
                asyncio.create_task(self.scrub_loop())]

    async def close(self) -> None:
        await self.background.close(timeout=1.0)
        await self.client.close()
        self.executor.shutdown(wait=False, cancel_futures=True)

    def report(self) -> dict[str, Any]:
        stats = self.repairer.stats if self.repair_running else self.repairer.last
        return {"repair": {**stats.to_dict(), "running": self.repair_running, "passes": self.repair_passes},
                "scrub": dict(self.scrub)}

    async def heartbeat(self) -> None:
        """Ping every peer; learn newer maps from them (gossip), remember when each last answered."""
        from node.server import PeerState

        node = self.node
        while True:
            peers = [n for n in node.cmap.nodes if n.id != node.cfg.id and n.state != "removed"]

            async def ping(peer: NodeInfo) -> None:
                try:
                    info = await asyncio.wait_for(self.client.health(peer),
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
        """Re-read every shard at a throttled rate; a bad block quarantines the shard (repair rebuilds it)."""
        node = self.node
        throttle = Throttle(node.cfg.scrub_rate_mb * 1e6)
        await asyncio.sleep(min(node.cfg.scrub_interval, 10.0))
        while True:
            self.scrub["running"] = True
            found = 0
            for row in await node.run(node.store.blobs):
                last = max(0, (row.size - 1) // row.block_size) if row.size else -1
                try:
                    for b in range(0, last + 1):
                        await node.run(lambda b=b: sum(len(x) for x in node.store.read_blob_blocks(row, b, b)))
                        await throttle(row.block_size)
                        self.scrub["bytes"] += row.block_size
                except (CorruptShard, FileNotFoundError) as e:
                    found += 1
                    log.warning("scrub: %s", e)
                self.scrub["shards"] += 1
            self.scrub["corrupt"] += found
            self.scrub["passes"] += 1
            self.scrub["running"] = False
            if found:
                self.kick.set()
            await asyncio.sleep(node.cfg.scrub_interval)
