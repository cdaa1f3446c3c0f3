"""What a process knows of the cluster: the newest map, its rings, and how each node has been answering."""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from dataclasses import dataclass, field
from statistics import median
from typing import TYPE_CHECKING, Iterable

from objstore.cluster import ClusterMap, ClusterMapError, NodeInfo
from objstore.ring import Ring

if TYPE_CHECKING:
    from objstore.client import NodeClient

log = logging.getLogger("objstore.view")

ERROR_THRESHOLD = 3
"""Consecutive failures after which a node is taken out of rotation."""
BACKOFF_MIN, BACKOFF_MAX = 2.0, 30.0
HEDGE_MIN, HEDGE_MAX = 0.05, 1.0
HEDGE_REFRESH = 0.2
"""Seconds a computed hedge delay is reused."""


@dataclass
class NodeHealth:
    """Error limiter and latency memory of one node, as seen by this process."""

    failures: int = 0
    out_until: float = 0.0
    backoff: float = BACKOFF_MIN
    latencies: deque[float] = field(default_factory=lambda: deque(maxlen=200))

    def available(self, now: float) -> bool:
        return now >= self.out_until

    def success(self, latency: float | None) -> None:
        self.failures = 0
        self.backoff = BACKOFF_MIN
        self.out_until = 0.0
        if latency is not None:
            self.latencies.append(latency)

    def failure(self, now: float) -> bool:
        """Count a failure; True if the node was just taken out of rotation."""
        self.failures += 1
        if self.failures >= ERROR_THRESHOLD and now >= self.out_until:
            self.out_until = now + self.backoff
            self.backoff = min(self.backoff * 2, BACKOFF_MAX)
            return True
        return False


class ClusterView:
    """The newest cluster map this process has seen, rings derived from it, and node health."""

    def __init__(self, cmap: ClusterMap) -> None:
        self.map = cmap
        self.previous: ClusterMap | None = None
        """The map this process held before the current one (None until it adopts a newer one)."""
        self.changed_at = float("-inf")
        """time.monotonic() when the current map was adopted over an older one."""
        self._rings: dict[tuple[int, str | None], Ring] = {}
        self._previous_rings: dict[tuple[int, str | None], Ring] = {}
        self.health: dict[str, NodeHealth] = {}
        self._refresh_lock = asyncio.Lock()
        self._hedge: tuple[float, float] = (float("-inf"), 0.0)  # (when computed, delay)

    # -- map and rings -------------------------------------------------------------------------

    def ring(self, pool: str | None = None) -> Ring:
        key = (self.map.epoch, pool)
        ring = self._rings.get(key)
        if ring is None:
            self._rings = {k: v for k, v in self._rings.items() if k[0] == self.map.epoch}
            ring = self._rings[key] = Ring(self.map, pool)
        return ring

    def adopt(self, cmap: ClusterMap) -> bool:
        """Take a newer map; an older or equal epoch is ignored. True if adopted."""
        if cmap.epoch <= self.map.epoch:
            return False
        log.info("cluster map epoch %d -> %d", self.map.epoch, cmap.epoch)
        self.previous, self.changed_at = self.map, time.monotonic()
        self.map = cmap
        return True

    def moved_lately(self, ring: Ring, partition: int, within: float) -> bool:
        """True if the partition's owners changed with the map adopted in the last `within` seconds.

        Until repair has moved such a partition its data may sit on the old owners only, so reads
        must not trust the new owners' answers alone.
        """
        previous = self.previous
        if previous is None or time.monotonic() - self.changed_at > within:
            return False
        key = (previous.epoch, ring.pool.name)
        old = self._previous_rings.get(key)
        if old is None:
            try:
                old = Ring(previous, ring.pool.name)
            except ClusterMapError:  # a pool the old map lacked: everything in it moved
                return True
            self._previous_rings = {key: old}
        return [n.id for n in old.owners(partition)] != [n.id for n in ring.owners(partition)]

    async def refresh(self, client: NodeClient, sample: int = 3) -> bool:
        """Ask a few available nodes for their map and adopt the newest."""
        async with self._refresh_lock:
            nodes = [n for n in self.live_nodes() if n.state != "removed"][:sample]
            results = await asyncio.gather(*(client.get_map(n) for n in nodes), return_exceptions=True)
            adopted = False
            for r in results:
                if isinstance(r, ClusterMap):
                    adopted |= self.adopt(r)
            return adopted

    def all_nodes(self) -> tuple[NodeInfo, ...]:
        return tuple(n for n in self.map.nodes if n.state != "removed")

    # -- health ----------------------------------------------------------------------------------

    def _health(self, node_id: str) -> NodeHealth:
        h = self.health.get(node_id)
        if h is None:
            h = self.health[node_id] = NodeHealth()
        return h

    def available(self, node: NodeInfo) -> bool:
        return self._health(node.id).available(time.monotonic())

    def live_nodes(self) -> list[NodeInfo]:
        return [n for n in self.all_nodes() if self.available(n)]

    def record_success(self, node: NodeInfo, latency: float | None = None) -> None:
        self._health(node.id).success(latency)

    def record_failure(self, node: NodeInfo) -> None:
        if self._health(node.id).failure(time.monotonic()):
            log.warning("node %s out of rotation after repeated failures", node.id)

    def learn_states(self, states: dict[str, str], hold: float) -> None:
        """Take nodes the cluster's failure detector calls down out of rotation for `hold` seconds."""
        now = time.monotonic()
        for node_id, state in states.items():
            if state == "down":
                h = self._health(node_id)
                h.out_until = max(h.out_until, now + hold)

    def by_availability(self, nodes: Iterable[NodeInfo]) -> list[NodeInfo]:
        """Available nodes first, keeping the given order within each group."""
        nodes = list(nodes)
        return [n for n in nodes if self.available(n)] + [n for n in nodes if not self.available(n)]

    def hedge_delay(self) -> float:
        """How long to wait for a shard before racing a spare: a few times the typical node's latency.

        The typical node is the median of the per-node medians, so one slow node cannot drag the
        threshold up to its own latency (which would make hedging useless exactly when needed).
        Computed at most every HEDGE_REFRESH seconds: every read asks, and the medians are sorts.
        """
        now = time.monotonic()
        at, delay = self._hedge
        if now - at < HEDGE_REFRESH:
            return delay
        medians = sorted(median(h.latencies) for h in self.health.values() if len(h.latencies) >= 5)
        if len(medians) < 2:
            delay = HEDGE_MAX / 2
        else:
            delay = min(HEDGE_MAX, max(HEDGE_MIN, 4 * medians[len(medians) // 2]))
        self._hedge = (now, delay)
        return delay
