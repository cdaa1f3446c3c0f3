"""Async client of the node RPC: one pooled session, signed requests, timeouts, typed errors."""

from __future__ import annotations

import asyncio
import contextvars
import json
import time
from collections import deque
from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, Self, cast
from urllib.parse import quote, urlencode

import aiohttp
import msgpack
from yarl import URL

from objstore import auth
from objstore.blobstream import BlobStream, BlobStreams, StreamError
from objstore.cluster import ClusterMap, NodeInfo
from objstore.records import KVRecord, ListEntry, ObjectRecord

REQUEST_ID: contextvars.ContextVar[str | None] = contextvars.ContextVar("objstore_request_id", default=None)
"""The request id of the client request being served; sent to nodes so logs can be joined."""


class NodeError(Exception):
    """A node answered with an error (status and the node's error code), or could not be reached (status 0)."""

    def __init__(self, node_id: str, status: int, message: str, code: str = "") -> None:
        self.node_id, self.status, self.message, self.code = node_id, status, message, code
        super().__init__(f"node {node_id}: {status} {code + ': ' if code else ''}{message}")


class NodeUnavailable(NodeError):
    """Connection refused, reset or timed out, or a body cut short."""


class NotFound(NodeError):
    """404: the blob, record or document is not on that node."""


class ShardCorrupt(NodeError):
    """409 corrupt: the shard failed verification on the node and was quarantined (its bytes are never sent)."""


class DiskFull(NodeError):
    """507: the node's disk is full; nothing of the upload was kept."""


Digest = tuple[str, int, int, int]
"""A partition's digest on one node: xxh3 of its healthy versions, how many, the sum of their sizes, and how
many of them are delete markers."""


def _digest(d: Sequence[Any]) -> Digest:
    # A node from before sizes or marker counts answers fewer fields: 0 of those.
    return str(d[0]), int(d[1]), int(d[2]) if len(d) > 2 else 0, int(d[3]) if len(d) > 3 else 0


@dataclass
class PartitionDigests:
    """One node's partition digests (see `/partition/{p}/digest`), as a repair pass reads them at its start."""

    held: dict[int, Digest]  # partition -> digest of each partition holding a record
    empty: Digest  # what any other partition's digest is: the node holds nothing there

    def of(self, partition: int) -> Digest:
        return self.held.get(partition, self.empty)


def _packed_list(calls: list[Any]) -> bytes | list[bytes]:
    """`calls` as one msgpack array. A list of packed records (bytes) goes as the pieces of that array,
    headers between them, so a record carrying shards is not copied into the batch."""
    if not all(type(c) is bytes for c in calls):
        return msgpack.packb(calls, use_bin_type=True)
    pieces = [_PACKER.pack_array_header(len(calls))]
    for c in calls:
        n = len(c)
        pieces += [b"\xc4" + n.to_bytes(1, "big") if n < 1 << 8 else
                   b"\xc5" + n.to_bytes(2, "big") if n < 1 << 16 else b"\xc6" + n.to_bytes(4, "big"), c]
    return pieces


_PACKER = msgpack.Packer()


def _error_for(node: NodeInfo, status: int, body: bytes) -> NodeError:
    try:
        info = msgpack.unpackb(body, raw=False)
        code, message = str(info.get("code", "")), str(info.get("message", ""))
    except (ValueError, AttributeError, TypeError):
        code, message = "", body[:200].decode("utf-8", "replace")
    if status == 404:
        return NotFound(node.id, status, message, code)
    if status == 409 and code == "corrupt":
        return ShardCorrupt(node.id, status, message, code)
    if status == 507:
        return DiskFull(node.id, status, message, code)
    return NodeError(node.id, status, message, code)


class BlobReader:
    """An open shard read: the streamed body, read in order (exactly, into the caller's buffer, or by chunks)."""

    def __init__(self, node: NodeInfo, body: BlobStream) -> None:
        self.node, self.body = node, body

    async def read_into(self, buf: memoryview) -> None:
        """Fill `buf` with the next len(buf) bytes; the socket reads into it directly."""
        try:
            await self.body.read_into(buf)
        except StreamError as e:
            raise NodeUnavailable(self.node.id, 0, f"shard stream: {e}") from None

    async def read_exactly(self, n: int) -> bytearray:
        buf = bytearray(n)
        await self.read_into(memoryview(buf))
        return buf

    async def iter_chunks(self, size: int = 1 << 20) -> AsyncIterator[bytearray]:
        """The rest of the body; a body cut short (the node found damage mid-stream) raises NodeUnavailable."""
        while self.body.remaining:
            yield await self.read_exactly(min(size, self.body.remaining))


class _Coalescer:
    """Record calls to one node, sent as batches: a call made while `depth` batches are out waits for the
    next batch, together with every other call made meanwhile (at most MAX_BATCH_CALLS calls, and about
    MAX_BATCH_BYTES of records, per batch).

    A lone call goes at once, as a batch of one; under load the batch grows with the load, so one HTTP
    request and one node transaction (one fsync) serve many objects. `send` answers the batch with one
    result or exception per call, or raises for all of them.
    """

    def __init__(self, send: Callable[[list[Any]], Awaitable[list[Any]]], depth: int) -> None:
        self.send, self.depth = send, depth
        self.queue: deque[tuple[Any, asyncio.Future[Any]]] = deque()
        self.out = 0
        self.tasks: set[asyncio.Task[None]] = set()

    async def call(self, item: Any) -> Any:
        fut = asyncio.get_running_loop().create_future()
        self.queue.append((item, fut))
        if self.out < self.depth:
            self._next()
        return await fut

    def _next(self) -> None:
        batch: list[tuple[Any, asyncio.Future[Any]]] = []
        size = 0
        while self.queue and len(batch) < MAX_BATCH_CALLS and size < MAX_BATCH_BYTES:
            item, fut = self.queue.popleft()
            if not fut.done():  # a caller that gave up (cancelled) costs the node nothing
                batch.append((item, fut))
                size += len(item) if isinstance(item, bytes) else 0
        if batch:
            self.out += 1
            task = asyncio.get_running_loop().create_task(self._run(batch))
            self.tasks.add(task)
            task.add_done_callback(self.tasks.discard)

    async def _run(self, batch: list[tuple[Any, asyncio.Future[Any]]]) -> None:
        try:
            results = await self.send([item for item, _ in batch])
        except BaseException as e:  # noqa: BLE001 - every caller of the batch gets it
            if isinstance(e, asyncio.CancelledError):
                e = NodeUnavailable("?", 0, "client closed")
            results = [e] * len(batch)
            if isinstance(e, NodeUnavailable):
                # The calls queued behind an unreachable node's batch would each wait out the same timeout.
                batch += [(item, fut) for item, fut in self.queue if not fut.done()]
                results += [e] * (len(batch) - len(results))
                self.queue.clear()
        finally:
            self.out -= 1
            if self.queue:
                self._next()
        for (_, fut), result in zip(batch, results, strict=True):
            if fut.done():
                continue
            if isinstance(result, BaseException):
                fut.set_exception(result)
            else:
                fut.set_result(result)


MAX_BATCH_CALLS = 64
"""Record calls one batched RPC carries at most (the node takes up to 256)."""
MAX_BATCH_BYTES = 8 << 20
"""A batch closes once its packed records reach this size (a node reads at most 64 MiB of body; a record of
a 10,000-part upload is about 1 MB)."""
BATCH_DEPTH = 1
"""Batched record RPCs out to one node at once, per kind: the next batch fills while one is answered.

One, not two: under load each node then gets half as many requests for the same records, and at 4 KiB
x32 on the dev cluster that measured -11% server CPU per PUT and -23% per GET (+7% and +30% ops/s),
with 1 MiB unchanged; a lone call still goes at once."""


OLD_NODE_RECHECK = 600.0
"""Seconds a node found without a newer RPC is asked the older way before the newer one is tried again."""


class NodeClient:
    """Talks to every node of the cluster through one connection pool.

    Record reads, writes and deletes (`get_record`, `put_record`, `delete_record`) to one node are coalesced
    (`_Coalescer`).
    """

    def __init__(self, secret: str, timeout: float = 10.0, connect_timeout: float = 2.0,
                 local_addr: str = "") -> None:
        self.secret = secret
        # Outgoing connections leave from this address when given (a node's `source_address`).
        self.local_addr = (local_addr, 0) if local_addr else None
        # connect=None: waiting for a free pooled connection is not a connect failure (a fan-out of
        # hundreds of calls to one node queues); the TCP connect itself is bounded by sock_connect.
        self.timeout = aiohttp.ClientTimeout(total=None, connect=None, sock_connect=connect_timeout,
                                             sock_read=timeout)
        self._session: aiohttp.ClientSession | None = None
        self._streams: BlobStreams | None = None
        self._read_timeout, self._connect_timeout = timeout, connect_timeout
        self._batches: dict[tuple[str, str, str], _Coalescer] = {}
        # node id -> when it was found without POST /partitions/records (an older version; asked again
        # after OLD_NODE_RECHECK, so an upgraded node is not asked the slow way until the next restart)
        self._one_partition_a_call: dict[str, float] = {}

    def _coalescer(self, node: NodeInfo, path: str) -> _Coalescer:
        key = (node.id, node.url, path)
        c = self._batches.get(key)
        if c is None:
            async def send(calls: list[Any]) -> list[Any]:
                answers = await self._post(node, path, _packed_list(calls))
                if not isinstance(answers, list) or len(answers) != len(calls):
                    raise NodeError(node.id, 0, f"batch of {len(calls)} calls answered with {answers!r:.80}")
                return [result if status == 200 else
                        _error_for(node, status, msgpack.packb(result, use_bin_type=True))
                        for status, result in answers]
            c = self._batches[key] = _Coalescer(send, BATCH_DEPTH)
        return c

    def _sess(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(
                timeout=self.timeout, auto_decompress=False,
                connector=aiohttp.TCPConnector(limit=0, limit_per_host=64, keepalive_timeout=30,
                                               local_addr=self.local_addr))
        return self._session

    def _blob_streams(self) -> BlobStreams:
        if self._streams is None:
            self._streams = BlobStreams(self._read_timeout, self._connect_timeout, self.local_addr)
        return self._streams

    async def close(self) -> None:
        if self._streams is not None:
            self._streams.close()
            self._streams = None
        batches, self._batches = list(self._batches.values()), {}
        for c in batches:
            for task in list(c.tasks):
                task.cancel()
            await asyncio.gather(*c.tasks, return_exceptions=True)
        if self._session is not None:
            await self._session.close()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def _signed(self, method: str, path: str, params: dict[str, Any] | None) -> tuple[str, dict[str, str]]:
        """(path?query, headers) of a request: signed, and carrying the client request's id."""
        qs = urlencode({k: v for k, v in (params or {}).items() if v is not None}, quote_via=quote)
        path_qs = f"{path}?{qs}" if qs else path
        headers = auth.sign(self.secret, method, path_qs)
        rid = REQUEST_ID.get()
        if rid:
            headers["X-Request-Id"] = rid
        return path_qs, headers

    def _prepare(self, node: NodeInfo, method: str, path: str, params: dict[str, Any] | None) -> tuple[URL, dict[str, str]]:
        path_qs, headers = self._signed(method, path, params)
        return URL(f"{node.url}{path_qs}", encoded=True), headers

    async def _call(self, node: NodeInfo, method: str, path: str, params: dict[str, Any] | None = None,
                    data: Any = None, ok404: bool = False) -> bytes | None:
        url, headers = self._prepare(node, method, path, params)
        try:
            async with self._sess().request(method, url, headers=headers, data=data) as resp:
                body = await resp.read()
                if resp.status == 404 and ok404:
                    return None
                if resp.status >= 300:
                    raise _error_for(node, resp.status, body)
                return body
        except (TimeoutError, aiohttp.ClientError, OSError) as e:
            raise NodeUnavailable(node.id, 0, f"{type(e).__name__}: {e}") from None

    async def _post(self, node: NodeInfo, path: str, body: bytes | Sequence[bytes]) -> Any:
        """POST a msgpack body and unpack the answer, through `BlobStreams` (for the batched record calls:
        aiohttp's client machinery cost more than the rest of a small GET in the gateway)."""
        return await self._send(node, "POST", path, None, body)

    async def _send(self, node: NodeInfo, method: str, path: str, params: dict[str, Any] | None,
                    body: bytes | Sequence[bytes]) -> Any:
        """`method` with a body in memory, through `BlobStreams`; the answer unpacked (msgpack)."""
        return msgpack.unpackb(await self._exchange(node, method, path, params, body), raw=False)

    async def _exchange(self, node: NodeInfo, method: str, path: str, params: dict[str, Any] | None,
                        body: bytes | Sequence[bytes] = b"") -> bytearray:
        """The answer's body to an idempotent request with a body in memory, through `BlobStreams`."""
        path_qs, headers = self._signed(method, path, params)
        try:
            async with self._blob_streams().request(method, node.address, path_qs, headers, body) as (status, answer):
                data = await answer.read_exactly(answer.remaining)
        except StreamError as e:
            raise NodeUnavailable(node.id, 0, str(e)) from None
        if status >= 300:
            raise _error_for(node, status, bytes(data))
        return data

    async def _unpack(self, node: NodeInfo, method: str, path: str, params: dict[str, Any] | None = None,
                      data: Any = None) -> Any:
        body = await self._call(node, method, path, params, data)
        return msgpack.unpackb(body or b"\xc0", raw=False)

    # -- RPCs ------------------------------------------------------------------------------------

    async def health(self, node: NodeInfo, brief: bool = False) -> dict[str, Any]:
        """The node's /health document; `brief`: only its id, map epoch and peer states (a node that
        predates the brief answer sends the whole document, which holds them too)."""
        answer = await self._exchange(node, "GET", "/health", {"brief": "1"} if brief else None)
        return cast(dict[str, Any], json.loads(answer or b"{}"))

    async def stats(self, node: NodeInfo) -> dict[str, Any]:
        """Fresh counts: records, blobs, blob_bytes, pending_blobs, quarantined_blobs, corrupt_found."""
        return cast(dict[str, Any], json.loads(await self._call(node, "GET", "/stats") or b"{}"))

    async def pause(self, node: NodeInfo, seconds: float) -> float:
        """Hold the node's repair, scrub and pending-shard collection for `seconds` (0: resume); returns the
        seconds left of its pause."""
        answer = json.loads(await self._call(node, "PUT", "/pause", {"seconds": seconds}) or b"{}")
        return float(answer.get("paused_for", 0.0))

    async def put_blob(self, node: NodeInfo, blob: str, shard: int, partition: int, block_size: int,
                       body: AsyncIterable[bytes] | bytes) -> list[int]:
        """Stream one shard to a node; returns the block checksums the node computed as it wrote.

        A shard in memory (bytes) goes as one sized body through `BlobStreams`, a stream through aiohttp.
        """
        params = {"partition": partition, "block_size": block_size}
        if isinstance(body, bytes):
            result = await self._send(node, "PUT", _blob_path(blob, shard), params, body)
        else:
            result = await self._unpack(node, "PUT", _blob_path(blob, shard), params, body)
        return list(result["checksums"])

    @asynccontextmanager
    async def open_blob(self, node: NodeInfo, blob: str, shard: int, offset: int = 0,
                        length: int | None = None) -> AsyncIterator[BlobReader]:
        """A shard's bytes offset..offset+length (to its end if None), through `BlobStreams` (no copies)."""
        path_qs, headers = self._signed("GET", _blob_path(blob, shard), {"offset": offset, "length": length})
        try:
            async with self._blob_streams().get(node.address, path_qs, headers) as (status, body):
                if status != 200:
                    raise _error_for(node, status, bytes(await body.read_exactly(body.remaining)))
                yield BlobReader(node, body)
        except StreamError as e:
            raise NodeUnavailable(node.id, 0, str(e)) from None

    async def delete_blob(self, node: NodeInfo, blob: str, shard: int, force: bool = False) -> bool:
        """Remove a shard file; a blob a record still references is refused (NodeError 409) unless `force`."""
        result = await self._unpack(node, "DELETE", _blob_path(blob, shard), {"force": "1" if force else None})
        return bool(result["deleted"])

    async def put_record(self, node: NodeInfo, rec: ObjectRecord) -> list[str] | None:
        """Store a record; returns the older versions of its key the node holds (None if it did not say)."""
        reply = await self._coalescer(node, "/records").call(rec.pack())
        older = reply.get("older") if isinstance(reply, dict) else None
        return [str(v) for v in older] if isinstance(older, list) else None

    async def get_record(self, node: NodeInfo, bucket: str, key: str, version: str | None = None) -> list[ObjectRecord]:
        """The node's records (one per shard it holds) of the newest version, or of `version`."""
        packed = await self._coalescer(node, "/records/get").call([bucket, key, version])
        return [ObjectRecord.unpack(p) for p in packed]

    async def get_record_and_shards(self, node: NodeInfo, bucket: str, key: str, version: str | None,
                                    shard_max: int) -> list[tuple[ObjectRecord, bytes | None]]:
        """As `get_record`, each record with its shard's bytes when the node holds them in a file of at most
        `shard_max` bytes (verified by the node; the caller still checks them against the record's checksums).

        A node that predates it answers the records alone (every shard None).
        """
        answer = await self._coalescer(node, f"/records/get?shard_max={int(shard_max)}").call([bucket, key, version])
        if isinstance(answer, dict):
            packed, shards = answer["records"], answer["shards"]
        else:
            packed, shards = answer, [None] * len(answer)
        return [(ObjectRecord.unpack(p), s if isinstance(s, bytes) else None)
                for p, s in zip(packed, shards, strict=True)]

    async def get_versions(self, node: NodeInfo, bucket: str, key: str) -> list[ObjectRecord]:
        packed = await self._unpack(node, "GET", "/versions", {"bucket": bucket, "key": key})
        return [ObjectRecord.unpack(p) for p in packed]

    async def delete_record(self, node: NodeInfo, bucket: str, key: str, version: str) -> None:
        await self._coalescer(node, "/records/delete").call([bucket, key, version])

    async def list_entries(self, node: NodeInfo, bucket: str, prefix: str = "", start_after: str = "",
                           limit: int = 1000, versions: bool = False) -> list[ListEntry]:
        rows = await self._unpack(node, "GET", "/list", {"bucket": bucket, "prefix": prefix,
                                                         "start_after": start_after, "limit": limit,
                                                         "versions": "1" if versions else "0"})
        return [ListEntry.from_wire(r) for r in rows]

    async def partition_digest(self, node: NodeInfo, partition: int) -> Digest:
        d = await self._unpack(node, "GET", f"/partition/{int(partition)}/digest")
        return _digest((d["digest"], d["count"], d.get("bytes", 0), d.get("markers", 0)))

    async def partition_digests(self, node: NodeInfo) -> PartitionDigests:
        """The digest and count of every partition the node holds, in one call."""
        d = await self._unpack(node, "GET", "/partitions/digests")
        return PartitionDigests({int(row[0]): _digest(row[1:]) for row in d["held"]}, _digest(d["empty"]))

    async def partition_records(self, node: NodeInfo, partition: int) -> list[tuple[str, str, str, int, bool, bool]]:
        """(bucket, key, version, shard, deleted, healthy) of every record the node holds in a partition.

        Calls made together to one node go as one `POST /partitions/records` (coalesced); a node without
        it (an older version) is asked one partition a call."""
        rows = None
        if time.monotonic() - self._one_partition_a_call.get(node.id, -OLD_NODE_RECHECK) >= OLD_NODE_RECHECK:
            try:
                rows = await self._coalescer(node, "/partitions/records").call(int(partition))
            except NotFound:
                self._one_partition_a_call[node.id] = time.monotonic()
        if rows is None:
            rows = await self._unpack(node, "GET", f"/partition/{int(partition)}/records")
        return [(str(b), str(k), str(v), int(s), bool(d), bool(h)) for b, k, v, s, d, h in rows]

    async def partitions_held(self, node: NodeInfo) -> list[int]:
        """The partitions the node holds any record of."""
        return list(await self._unpack(node, "GET", "/partitions"))

    async def put_kv(self, node: NodeInfo, rec: KVRecord) -> None:
        await self._call(node, "PUT", "/kv", data=rec.pack())

    async def get_kv(self, node: NodeInfo, ns: str, name: str) -> KVRecord | None:
        body = await self._call(node, "GET", "/kv", {"ns": ns, "name": name}, ok404=True)
        return KVRecord.unpack(body) if body is not None else None

    async def list_kv(self, node: NodeInfo, ns: str, prefix: str = "") -> list[KVRecord]:
        return [KVRecord.unpack(p) for p in await self._unpack(node, "GET", "/kvlist", {"ns": ns, "prefix": prefix})]

    async def forget_kv(self, node: NodeInfo, ns: str, name: str, version: str) -> bool:
        """Remove a KV tombstone, only while the node still holds that version of it; whether it went."""
        answer = await self._coalescer(node, "/kv/forget").call([ns, name, version])
        return bool(answer.get("forgotten")) if isinstance(answer, dict) else False

    async def get_map(self, node: NodeInfo) -> ClusterMap:
        return ClusterMap.from_dict(json.loads(await self._call(node, "GET", "/map") or b"{}"))

    async def put_map(self, node: NodeInfo, cmap: ClusterMap) -> dict[str, Any]:
        """Offer a map; the node keeps it only if its epoch is newer. Returns {"adopted", "epoch"}."""
        return cast(dict[str, Any], json.loads(await self._call(node, "PUT", "/map", data=cmap.to_json().encode())
                                               or b"{}"))


def _blob_path(blob: str, shard: int) -> str:
    return f"/blob/{quote(blob, safe='')}/{int(shard)}"
