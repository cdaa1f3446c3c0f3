"""Placement: partitions, and per partition the ranked preference list of a pool's nodes."""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable, Sequence

from xxhash import xxh3_64_intdigest

from .cluster import ClusterMap, ECProfile, NodeInfo

# 52 random bits per (partition, node) score: (h + 0.5) / 2**52 lies strictly
# inside (0, 1) and every value is exactly representable, so ln(u) never is 0.
_SCORE_BITS = 52
_INV_SCORE_RANGE = 1.0 / (1 << _SCORE_BITS)


def partition_of(bucket: str, key: str, partition_bits: int) -> int:
    """The partition of an object key: the top `partition_bits` bits of xxh3_64(bucket NUL key)."""
    if not 1 <= partition_bits <= 64:
        raise ValueError(f"partition_bits must be in 1..64, got {partition_bits}")
    digest = xxh3_64_intdigest(f"{bucket}\0{key}".encode())
    return digest >> (64 - partition_bits)


def zone_cap(zone_sizes: Sequence[int], width: int) -> int:
    """Most owners of one partition that may share a zone.

    `ceil(width / zones)` (so 1 when there are at least `width` zones). When
    the zones are so uneven that this cap cannot fill `min(width, nodes)`
    owner slots, the cap is raised to the smallest value that can: a partition
    with fewer than `k+m` owners could never be written whole, while a zone
    holding one shard too many only weakens zone-failure tolerance.
    """
    if not zone_sizes:
        return 0
    target = min(width, sum(zone_sizes))
    cap = max(1, -(-width // len(zone_sizes)))
    while sum(min(size, cap) for size in zone_sizes) < target:
        cap += 1
    return cap


class Ring:
    """The placement of one pool under one cluster map; a pure function of the map.

    Ranks are weighted rendezvous hashing: node n scores
    `-weight / ln(u)` with `u` drawn from xxh3_64(partition, node id), so a
    node tops a partition with probability proportional to its weight, and
    adding or removing a node changes no other pair's relative order. Owners
    are taken greedily down the ranking under the zone cap. Preference lists
    are computed on first use and cached.

    Only active nodes of the pool take part: draining nodes neither own nor
    take handoffs (their data moves off), removed nodes never appear. The
    locations of data written under an older map come from a Ring built from
    that map.
    """

    def __init__(self, cmap: ClusterMap, pool: str | None = None) -> None:
        self.map = cmap
        self.pool = cmap.pool(pool)
        self.ec: ECProfile = self.pool.ec
        self.partition_bits: int = cmap.partition_bits
        self.partitions: int = 1 << cmap.partition_bits
        # Sorted by id so that nothing depends on the order of nodes in the map file.
        self.nodes: tuple[NodeInfo, ...] = tuple(
            sorted((n for n in cmap.pool_nodes(pool) if n.state == "active"), key=lambda n: n.id)
        )
        self.owner_count: int = min(self.ec.width, len(self.nodes))
        self.zone_cap: int = zone_cap(list(Counter(n.zone for n in self.nodes).values()), self.ec.width)
        self._hash_inputs: tuple[tuple[NodeInfo, bytes], ...] = tuple(
            (n, n.id.encode()) for n in self.nodes
        )
        self._lists: dict[int, tuple[NodeInfo, ...]] = {}
        self._slots: dict[int, tuple[NodeInfo, ...]] = {}
        self._by_node: dict[str, list[int]] | None = None

    def __repr__(self) -> str:
        return (
            f"Ring(epoch={self.map.epoch}, pool={self.pool.name!r}, nodes={len(self.nodes)}, "
            f"partitions={self.partitions}, ec={self.ec.k}+{self.ec.m})"
        )

    def partition_of(self, bucket: str, key: str) -> int:
        """The partition of an object key under this ring's partition count."""
        return partition_of(bucket, key, self.partition_bits)

    def preference_list(self, partition: int) -> list[NodeInfo]:
        """Every eligible node, ranked: the owners first, then the handoff candidates."""
        return list(self._preference(partition))

    def owners(self, partition: int) -> list[NodeInfo]:
        """Owner of each shard index: the first k+m nodes of the preference list.

        A pool of fewer than k+m nodes still gets k+m slots, so its objects can be whole: the extra
        slots go to owners again, each to the owner of the zone, then the node, with the fewest slots
        so far (preference order breaks ties). A node losing such a partition loses two shards of it.
        """
        slots = self._slots.get(partition)
        if slots is None:
            distinct = list(self._preference(partition)[: self.owner_count])
            slots_list = list(distinct)
            if distinct:
                per_zone = Counter(n.zone for n in distinct)
                per_node = Counter(n.id for n in distinct)
                while len(slots_list) < self.ec.width:
                    extra = min(distinct, key=lambda n: (per_zone[n.zone], per_node[n.id]))
                    slots_list.append(extra)
                    per_zone[extra.zone] += 1
                    per_node[extra.id] += 1
            slots = self._slots[partition] = tuple(slots_list)
        return list(slots)

    def owner_nodes(self, partition: int) -> list[NodeInfo]:
        """The partition's owners, each once, in preference order."""
        return list(self._preference(partition)[: self.owner_count])

    def handoffs(self, partition: int) -> list[NodeInfo]:
        """The preference list after the owners, in rank order."""
        return list(self._preference(partition)[self.owner_count :])

    def leader(self, partition: int, alive: Callable[[str], bool] | None = None) -> NodeInfo | None:
        """The first node of the preference list that `alive(node_id)` accepts; None if none does."""
        for node in self._preference(partition):
            if alive is None or alive(node.id):
                return node
        return None

    def partitions_of(self, node_id: str) -> list[int]:
        """The partitions `node_id` owns, ascending (computes every preference list once)."""
        if self._by_node is None:
            by_node: dict[str, list[int]] = {n.id: [] for n in self.nodes}
            for p in range(self.partitions):
                for owner in self._preference(p)[: self.owner_count]:
                    by_node[owner.id].append(p)
            self._by_node = by_node
        return list(self._by_node.get(node_id, ()))

    def is_owner(self, partition: int, node_id: str) -> bool:
        return any(n.id == node_id for n in self._preference(partition)[: self.owner_count])

    def _preference(self, partition: int) -> tuple[NodeInfo, ...]:
        cached = self._lists.get(partition)
        if cached is None:
            if not 0 <= partition < self.partitions:
                raise ValueError(f"partition must be in 0..{self.partitions - 1}, got {partition}")
            cached = self._lists[partition] = self._build(partition)
        return cached

    def _build(self, partition: int) -> tuple[NodeInfo, ...]:
        prefix = partition.to_bytes(4, "big")
        scored: list[tuple[float, str, NodeInfo]] = []
        for node, node_id in self._hash_inputs:
            h = xxh3_64_intdigest(prefix + node_id) >> (64 - _SCORE_BITS)
            u = (h + 0.5) * _INV_SCORE_RANGE
            scored.append((-node.weight / math.log(u), node.id, node))
        # Highest score first; the node id breaks (practically impossible) exact ties.
        scored.sort(key=lambda s: (-s[0], s[1]))
        owners: list[NodeInfo] = []
        rest: list[NodeInfo] = []
        per_zone: Counter[str] = Counter()
        for _, _, node in scored:
            if len(owners) < self.owner_count and per_zone[node.zone] < self.zone_cap:
                owners.append(node)
                per_zone[node.zone] += 1
            else:
                rest.append(node)
        return tuple(owners + rest)
