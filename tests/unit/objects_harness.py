"""An in-process cluster for ObjectIO and listing tests: six nodes on 127.0.0.1 (aiohttp TestServer, EC 4+2,
no fsync), a ClusterView over them and a node client that counts every RPC and can delay one node."""

from __future__ import annotations

import asyncio
import random
from collections import Counter
from collections.abc import AsyncIterable, AsyncIterator
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiohttp import web
from aiohttp.test_utils import TestServer

from node.server import NODE, build_app
from node.store import Store
from objstore.client import BlobReader, NodeClient
from objstore.cluster import ClusterMap, ECProfile, NodeInfo
from objstore.config import NodeConfig
from objstore.objects import Committed, ObjectIO
from objstore.records import ObjectRecord, PartRef
from objstore.ring import Ring
from objstore.versions import new_version, version_time_ns
from objstore.view import ClusterView

SECRET = "objects-test-secret"
BATCHED = {"/records", "/records/get", "/records/delete"}
BS = 4096
EC = ECProfile(4, 2, BS)
BUCKET = "b"


class CountingClient(NodeClient):
    """A NodeClient that counts its calls by "METHOD /path" and node, and can make a node answer late.

    Record reads and writes count as the single RPCs they stand for ("GET /record", "PUT /record"; a record
    read that brings small shards along is "GET /record+shards"), whatever batch they travelled in. Shard
    streams opened count as "GET /blob".
    """

    def __init__(self, secret: str) -> None:
        super().__init__(secret, timeout=5.0)
        self.calls: Counter[str] = Counter()
        self.by_node: Counter[tuple[str, str]] = Counter()
        self.delays: dict[str, float] = {}

    async def _call(self, node: NodeInfo, method: str, path: str, params: dict[str, Any] | None = None,
                    data: Any = None, ok404: bool = False) -> bytes | None:
        if path.partition("?")[0] not in BATCHED and not (method == "PUT" and path.startswith("/blob/")):
            await self._count(node, f"{method} {path}")
        return await super()._call(node, method, path, params, data, ok404)

    async def _count(self, node: NodeInfo, call: str) -> None:
        self.calls[call] += 1
        self.by_node[(node.id, call)] += 1
        if node.id in self.delays:
            await asyncio.sleep(self.delays[node.id])

    async def put_blob(self, node: NodeInfo, blob: str, shard: int, partition: int, block_size: int,
                       body: AsyncIterable[bytes] | bytes) -> list[int]:
        await self._count(node, "PUT /blob" if isinstance(body, bytes) else "PUT /blob (streamed)")
        return await super().put_blob(node, blob, shard, partition, block_size, body)

    async def put_record(self, node: NodeInfo, rec: ObjectRecord) -> list[str] | None:
        await self._count(node, "PUT /record")
        return await super().put_record(node, rec)

    async def get_record(self, node: NodeInfo, bucket: str, key: str, version: str | None = None) -> list[ObjectRecord]:
        await self._count(node, "GET /record")
        return await super().get_record(node, bucket, key, version)

    async def get_record_and_shards(self, node: NodeInfo, bucket: str, key: str, version: str | None,
                                    shard_max: int) -> list[tuple[ObjectRecord, bytes | None]]:
        await self._count(node, "GET /record+shards")
        return await super().get_record_and_shards(node, bucket, key, version, shard_max)

    def open_blob(self, node: NodeInfo, blob: str, shard: int, offset: int = 0,
                  length: int | None = None) -> AbstractAsyncContextManager[BlobReader]:
        self.calls["GET /blob"] += 1
        self.by_node[(node.id, "GET /blob")] += 1
        return super().open_blob(node, blob, shard, offset, length)

    async def delete_record(self, node: NodeInfo, bucket: str, key: str, version: str) -> None:
        await self._count(node, "DELETE /record")
        await super().delete_record(node, bucket, key, version)

    def count(self, call: str) -> int:
        return self.calls[call]


@dataclass
class MiniCluster:
    apps: dict[str, web.Application]
    servers: list[TestServer]
    cmap: ClusterMap
    view: ClusterView
    client: CountingClient
    io: ObjectIO
    nodes: list[NodeInfo] = field(default_factory=list)

    @property
    def ring(self) -> Ring:
        return self.view.ring(None)

    def store(self, node_id: str) -> Store:
        return self.apps[node_id][NODE].store

    def node(self, node_id: str) -> NodeInfo:
        return next(n for n in self.nodes if n.id == node_id)

    def owners(self, key: str) -> list[NodeInfo]:
        return self.ring.owners(self.ring.partition_of(BUCKET, key))

    def push_back(self, *nodes: NodeInfo) -> None:
        """Take nodes out of rotation, so they are asked last."""
        for n in nodes:
            for _ in range(3):
                self.view.record_failure(n)

    def restore(self) -> None:
        for n in self.nodes:
            self.view.record_success(n)

    async def close(self) -> None:
        await self.io.background.close(timeout=1.0)
        await self.client.close()
        for s in self.servers:
            await s.close()


async def start_cluster(root: Path, count: int = 6) -> MiniCluster:
    placeholder = ClusterMap(epoch=1, ec=EC, nodes=tuple(NodeInfo(f"n{i}", "127.0.0.1:1", f"z{i % 3}")
                                                         for i in range(1, count + 1)), partition_bits=8)
    apps, servers, nodes = {}, [], []
    for info in placeholder.nodes:
        cfg = NodeConfig(id=info.id, listen="127.0.0.1:0", data_dir=str(root / info.id), secret=SECRET, fsync=False)
        app = build_app(cfg, placeholder, loops=False)
        server = TestServer(app, host="127.0.0.1")
        await server.start_server()
        apps[info.id] = app
        servers.append(server)
        nodes.append(NodeInfo(info.id, f"127.0.0.1:{server.port}", info.zone))
    cmap = ClusterMap(epoch=1, ec=EC, nodes=tuple(nodes), partition_bits=8)
    view = ClusterView(cmap)
    client = CountingClient(SECRET)
    return MiniCluster(apps, servers, cmap, view, client, ObjectIO(view, client), nodes)


def payload(n: int, seed: int = 0) -> bytes:
    return random.Random(seed).randbytes(n)


async def _chunks(data: bytes, size: int = 50_000) -> AsyncIterator[bytes]:
    for i in range(0, len(data), size):
        yield data[i:i + size]


async def put(c: MiniCluster, key: str, data: bytes, version: str | None = None, carry: bool = True) -> Committed:
    """What a gateway PUT does: write the blob (inline when small), then commit the version's records.
    Without `carry`, as a multipart part's blob is written: only small shards ride in the records."""
    ring = c.ring
    partition = ring.partition_of(BUCKET, key)
    blob = await c.io.write_blob(ring, partition, new_version(), _chunks(data), carry=carry)
    version = version or new_version()
    template = ObjectRecord(bucket=BUCKET, key=key, version=version, shard=0, ec=ring.ec, size=blob.size,
                            etag="e", parts=[PartRef(1, blob.size, "e", blob.blob)], created=version_time_ns(version))
    return await c.io.commit(ring, partition, template, [(template.parts[0], blob)])


async def read(c: MiniCluster, key: str, prefetch: bool = False) -> bytes | None:
    obj = await c.io.find(c.ring, BUCKET, key, prefetch=prefetch)
    if obj is None or obj.deleted:
        return None
    return b"".join([chunk async for chunk in c.io.read(obj)])
