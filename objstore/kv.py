"""Replicated KV documents (buckets, users, multipart uploads): quorum writes, quorum reads, newest version wins,
and the anti-entropy that copies each document back to the nodes that lost it."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Collection, Iterable, Sequence
from dataclasses import dataclass, field

from objstore.client import NodeClient, NodeError
from objstore.cluster import NodeInfo
from objstore.quorum import Background, QuorumError, quorum
from objstore.records import KVRecord

BUCKETS, USERS = "bucket", "user"
"""Namespaces kept on every node: a bucket record (its owner, pool, versioning) and an S3 user."""
UPLOADS, PARTS = "upload", "part"
"""Namespaces kept on the owners of the object key's partition: a multipart upload (named `<bucket>\\0<upload id>`,
its value names the key) and one part of it (named `<upload id>\\0<part number>`)."""
SEP = "\0"


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


@dataclass
class KVSnapshot:
    """What the nodes that answered hold in one namespace: the newest record per name, and each node's versions."""

    ns: str
    newest: dict[str, KVRecord] = field(default_factory=dict)
    held: dict[str, dict[str, str]] = field(default_factory=dict)  # node id -> name -> version held
    total: int = 0  # nodes a quorum write of this namespace was spread over

    @property
    def quorate(self) -> bool:
        """Enough nodes answered that each meets every majority write: every acknowledged document is here."""
        return len(self.held) >= self.total - majority(self.total) + 1

    def stale(self, name: str, nodes: Iterable[NodeInfo]) -> list[NodeInfo]:
        """Nodes among `nodes` that answered and hold no copy, or an older one, of the newest `name`."""
        version = self.newest[name].version
        return [n for n in nodes if n.id in self.held and self.held[n.id].get(name, "") < version]


async def snapshot(client: NodeClient, nodes: Sequence[NodeInfo], ns: str, total: int | None = None) -> KVSnapshot:
    """List a namespace on `nodes` (of the `total` its documents are written across; default: these); a node
    that does not answer is left out of `held`."""
    answers = await asyncio.gather(*(client.list_kv(n, ns) for n in nodes), return_exceptions=True)
    snap = KVSnapshot(ns, total=len(nodes) if total is None else total)
    for node, records in zip(nodes, answers):
        if isinstance(records, (NodeError, OSError, asyncio.TimeoutError)):
            continue
        if isinstance(records, BaseException):
            raise records
        snap.held[node.id] = {r.name: r.version for r in records}
        for r in records:
            if r.name not in snap.newest or r.version > snap.newest[r.name].version:
                snap.newest[r.name] = r
    return snap


def forgettable(snap: KVSnapshot, members: Collection[str], aged: Callable[[KVRecord], bool]) -> list[KVRecord]:
    """The tombstones of a namespace no node needs any more.

    A tombstone stops an older copy of its document from coming back (anti-entropy copies the newest copy it
    finds). It can go once no such copy can exist: every member of the map answered the snapshot, no node
    holds an older version of the name (live or deleted; a node without the name is fine), and the tombstone
    is past the grace period (`aged`), so no write of an older version can still be on its way.
    """
    if not set(members) <= set(snap.held):
        return []
    out = []
    for name, rec in snap.newest.items():
        if rec.deleted and all(held.get(name, rec.version) == rec.version for held in snap.held.values()) \
                and aged(rec):
            out.append(rec)
    return out


async def forget(client: NodeClient, nodes: Sequence[NodeInfo], snap: KVSnapshot, tombstones: Sequence[KVRecord],
                 sem: asyncio.Semaphore) -> int:
    """Remove each tombstone from every node of the snapshot that holds it (each node only while it still holds
    that version); how many went from every one of them."""
    by_id = {n.id: n for n in nodes}

    async def one(node: NodeInfo, rec: KVRecord) -> bool:
        async with sem:
            try:
                return await client.forget_kv(node, rec.ns, rec.name, rec.version)
            except (NodeError, OSError, asyncio.TimeoutError):
                return False

    async def everywhere(rec: KVRecord) -> bool:
        holders = [by_id[nid] for nid, held in snap.held.items() if held.get(rec.name) == rec.version and nid in by_id]
        return all(await asyncio.gather(*(one(n, rec) for n in holders)))

    return sum(await asyncio.gather(*(everywhere(rec) for rec in tombstones)))


@dataclass
class KVRepair:
    """What one anti-entropy pass of the KV namespaces did."""

    copied: int = 0  # copies written to nodes that lacked a document or held an older one
    forgotten: int = 0  # tombstones removed from every node, nobody needing them any more


Placement = Callable[[str, str, str], list[NodeInfo]]
"""(bucket, key, bucket pool) -> the owners of that object key's partition."""


async def copy_back(client: NodeClient, nodes: Sequence[NodeInfo], placement: Placement,
                    buckets: KVSnapshot | None = None, members: Collection[str] | None = None,
                    aged: Callable[[KVRecord], bool] | None = None) -> KVRepair:
    """Anti-entropy of every namespace: write the newest copy of each document (tombstones too) to each node that
    should hold it and answered without it — a node whose disk was wiped or that was down or new when it was
    written. Returns how many copies were written, and how many tombstones removed (below).

    A node that did not answer is left alone, so a document is never judged missing on a node nobody heard.
    Bucket and user records belong on every node; an upload and its parts on the owners of the key's
    partition in the current map (after a membership change they so reach the new owners); a part whose
    upload record is gone everywhere is left where it is. `buckets`: a snapshot of the bucket namespace
    just taken over the same nodes.

    With `members` (the ids of every node of the map) and `aged` (past the grace period), the tombstones
    nobody needs any more are then removed everywhere (`forgettable`): a completed or aborted multipart
    upload leaves one per part, and every pass lists every namespace whole.
    """
    buckets = buckets or await snapshot(client, nodes, BUCKETS)
    snaps = [buckets, await snapshot(client, nodes, USERS)]
    copies: list[tuple[NodeInfo, KVRecord]] = []
    for snap in snaps:
        for name, rec in snap.newest.items():
            copies += [(n, rec) for n in snap.stale(name, nodes)]
    uploads, parts = await snapshot(client, nodes, UPLOADS), await snapshot(client, nodes, PARTS)
    homes: dict[str, list[NodeInfo]] = {}  # upload id -> owners
    for name, rec in uploads.newest.items():
        bucket, _, upload_id = name.partition(SEP)
        key = rec.value.get("key")
        if not isinstance(key, str):
            continue
        pool = buckets.newest[bucket].value.get("pool") if bucket in buckets.newest else None
        homes[upload_id] = placement(bucket, key, pool)
        copies += [(n, rec) for n in uploads.stale(name, homes[upload_id])]
    for name, rec in parts.newest.items():
        owners = homes.get(name.partition(SEP)[0])
        if owners:
            copies += [(n, rec) for n in parts.stale(name, owners)]

    sem = asyncio.Semaphore(16)

    async def put(node: NodeInfo, rec: KVRecord) -> bool:
        async with sem:
            try:
                await client.put_kv(node, rec)
                return True
            except (NodeError, OSError, asyncio.TimeoutError):
                return False

    out = KVRepair(copied=sum(await asyncio.gather(*(put(n, r) for n, r in copies))))
    if members is not None and aged is not None:
        for snap in (*snaps, uploads, parts):
            out.forgotten += await forget(client, nodes, snap, forgettable(snap, members, aged), sem)
    return out
