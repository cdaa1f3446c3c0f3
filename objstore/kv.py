"""Replicated KV documents (buckets, multipart uploads): quorum writes, quorum reads, newest version wins."""

from __future__ import annotations

from collections.abc import Sequence

from objstore.client import NodeClient
from objstore.cluster import NodeInfo
from objstore.quorum import Background, QuorumError, quorum
from objstore.records import KVRecord


class KVUnavailable(Exception):
    """Too few nodes answered to read or write a document safely."""


def majority(n: int) -> int:
    return n // 2 + 1


class ReplicatedKV:
    """KV records on a set of nodes; reads and writes each reach a majority, so they always intersect."""

    def __init__(self, client: NodeClient, background: Background) -> None:
        self.client = client
        self.background = background

    async def put(self, nodes: Sequence[NodeInfo], rec: KVRecord) -> None:
        need = majority(len(nodes))

        async def put_one(node: NodeInfo) -> None:
            await self.client.put_kv(node, rec)

        try:
            await quorum(nodes, put_one, need=need, parallel=len(nodes), background=self.background)
        except QuorumError as e:
            raise KVUnavailable(f"{rec.ns}/{rec.name} written on {len(e.successes)} of {need} nodes") from None

    async def get(self, nodes: Sequence[NodeInfo], ns: str, name: str) -> KVRecord | None:
        """The newest record (a tombstone included) among a majority of nodes."""
        need = majority(len(nodes))

        async def get_one(node: NodeInfo) -> KVRecord | None:
            return await self.client.get_kv(node, ns, name)

        try:
            answers = await quorum(nodes, get_one, need=need, parallel=len(nodes), background=self.background)
        except QuorumError as e:
            raise KVUnavailable(f"{ns}/{name} read from {len(e.successes)} of {need} nodes") from None
        records = [r for _, r in answers if r is not None]
        return max(records, key=lambda r: r.version) if records else None

    async def list(self, nodes: Sequence[NodeInfo], ns: str, prefix: str = "") -> list[KVRecord]:
        """Newest record per name under a prefix (tombstones included), from a majority of nodes, by name."""
        need = majority(len(nodes))

        async def list_one(node: NodeInfo) -> list[KVRecord]:
            return await self.client.list_kv(node, ns, prefix)

        try:
            answers = await quorum(nodes, list_one, need=need, parallel=len(nodes), background=self.background)
        except QuorumError as e:
            raise KVUnavailable(f"{ns}/{prefix}* listed from {len(e.successes)} of {need} nodes") from None
        newest: dict[str, KVRecord] = {}
        for _, records in answers:
            for r in records:
                if r.name not in newest or r.version > newest[r.name].version:
                    newest[r.name] = r
        return [newest[n] for n in sorted(newest)]
