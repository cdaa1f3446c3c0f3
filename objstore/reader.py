"""Finding and reading objects: the newest visible version from the owners' records, then k verified shard streams per stripe, a spare for a failed, corrupt or slow shard."""

from __future__ import annotations

import asyncio
import logging
import time
from collections import defaultdict
from collections.abc import AsyncIterator, Awaitable, Callable
from concurrent.futures import Executor
from dataclasses import dataclass, field
from typing import Any

from objstore import codec
from objstore.blobstream import HEAD_MAX
from objstore.client import NodeClient, NodeError
from objstore.cluster import ECProfile, NodeInfo
from objstore.quorum import Background, QuorumError, quorum
from objstore.records import ObjectRecord, PartRef
from objstore.ring import Ring
from objstore.view import ClusterView

log = logging.getLogger("objstore.objects")

MAP_SETTLE_SECONDS = 300.0
"""After a map change moves a partition, reads of it ask every node this long (repair moves it meanwhile)."""

PREFETCH_SHARD_MAX = 1 << 20
"""A GET asks the owners for the bytes of shards up to this size with their records (one call per holder
instead of a record call and a shard stream): at 4+2, objects up to 4 MiB."""

STREAM_READAHEAD = HEAD_MAX
"""Bytes one open shard stream may hold unread: its connection's head buffer, and the body bytes that came in
with the head (`objstore.blobstream`). The rest of the body waits in the kernel until a block's buffer takes it."""


def read_buffer_bytes(rec: ObjectRecord, offset: int, length: int) -> int:
    """The most bytes of blocks and payload one read of object bytes [offset, offset+length) holds at once.

    While one stripe's blocks are read (k streams, and a spare for each laggard once the read hedges: at
    most min(k, m) more), the previous stripe's blocks and the payload joined from them are still held
    (the response is sending it); a ranged read's first stripe holds its payload and the slice cut from
    it instead. Each shard stream may hold STREAM_READAHEAD unread bytes on top (none for inline shards,
    which came with the records). What a gateway reserves of its read budget for a GET.
    """
    ec = rec.ec
    blen, streams, start = 0, False, 0
    for part in rec.parts:
        end = start + part.size
        if part.size and end > offset and start < offset + length:
            blen = max(blen, codec.block_len(part.size, ec, 0))  # stripe 0 has the largest blocks
            streams = streams or part.inline is None
        start = end
    if length <= 0 or not blen:
        return 0
    in_flight = ec.k + min(ec.k, ec.m)
    return (2 * ec.k + in_flight) * blen + (in_flight * STREAM_READAHEAD if streams else 0)


class ReadFailed(Exception):
    """Fewer than k healthy shards of a version could be read."""


@dataclass
class ShardSource:
    """A place to read one shard of one part from."""

    index: int
    node: NodeInfo
    part: PartRef
    data: bytes | None = None  # the whole shard, if it came with the record (checked like a stream's blocks)


MoreSources = Callable[[], Awaitable[dict[int, list[ShardSource]]]]
"""Where else the shards of a part may be read: asked when a reader has used up the places it knew."""


@dataclass
class ObjectVersion:
    """A visible version of an object: its metadata and, per part, where each shard index can be read."""

    record: ObjectRecord  # metadata (any of the version's records; per-shard fields are meaningless)
    holders: list[tuple[NodeInfo, ObjectRecord]]
    ring: Ring | None = None  # the placement it was found with (None: made by hand, cannot be completed)
    complete: bool = False  # every node that may hold a shard of it was asked
    shards: dict[tuple[str, int, str], bytes] = field(default_factory=dict)  # (node, index, blob) -> bytes sent

    @property
    def deleted(self) -> bool:
        return self.record.deleted

    def sources(self, part_number: int) -> dict[int, list[ShardSource]]:
        """Shard index -> places holding that shard of the part (owners first, then handoffs)."""
        out: dict[int, list[ShardSource]] = defaultdict(list)
        for node, rec in sorted(self.holders, key=lambda h: h[1].handoff):
            for p in rec.parts:
                if p.number == part_number and p.present:
                    data = self.shards.get((node.id, rec.shard, p.blob))
                    out[rec.shard].append(ShardSource(rec.shard, node, p, data))
        return out


def visible_versions(records: list[tuple[NodeInfo, ObjectRecord]], k: int) -> list[ObjectVersion]:
    """Group records by version, newest first, keeping those with at least k distinct shard indexes."""
    by_version: dict[str, list[tuple[NodeInfo, ObjectRecord]]] = defaultdict(list)
    for node, rec in records:
        by_version[rec.version].append((node, rec))
    out = []
    for version in sorted(by_version, reverse=True):
        holders = by_version[version]
        if len({r.shard for _, r in holders}) >= min(k, holders[0][1].ec.k):
            out.append(ObjectVersion(holders[0][1], holders))
    return out


class ObjectReader:
    """Finds the visible version of a key and streams its bytes; ObjectIO adds writing and rebuilding."""

    def __init__(self, view: ClusterView, client: NodeClient, executor: Executor | None = None,
                 background: Background | None = None) -> None:
        self.view = view
        self.client = client
        self.executor = executor
        self.background = background or Background()

    # -- finding -----------------------------------------------------------------------------------

    async def find(self, ring: Ring, bucket: str, key: str, version: str | None = None,
                   prefetch: bool = False) -> ObjectVersion | None:
        """The newest visible version of a key (or the given version), or None.

        Asks just enough owners that every acknowledged write is among the answers: a write is
        acknowledged once k+1 distinct shards are committed, so max(k, m) of the k+m owners overlap
        it, and k answers holding the newest version make it readable. A lagging owner is hedged by
        the others. Only if those answers show no readable newest version, or the partition moved
        with a recent map change, is every node of the pool asked (handoffs, old owners).
        The holders found are enough to read; a read that loses a shard asks for the rest (`complete`).
        `prefetch` (a GET): the owners send shards of up to PREFETCH_SHARD_MAX bytes with their records,
        and the read uses them instead of opening shard streams.
        """
        partition = ring.partition_of(bucket, key)
        if self.view.moved_lately(ring, partition, MAP_SETTLE_SECONDS):
            return await self._find_everywhere(ring, partition, bucket, key, version)
        ec = ring.ec
        owners = self.view.by_availability(ring.owner_nodes(partition))
        need = max(1, min(len(owners), max(ec.k, ec.m)))

        shards: dict[tuple[str, int, str], bytes] = {}

        async def newest(node: NodeInfo) -> tuple[NodeInfo, list[ObjectRecord]]:
            if not prefetch:
                return node, await self._timed(node, self.client.get_record(node, bucket, key, version))
            pairs = await self._timed(node, self.client.get_record_and_shards(node, bucket, key, version,
                                                                              PREFETCH_SHARD_MAX))
            for rec, data in pairs:
                if data is not None and len(rec.parts) == 1:
                    shards[(node.id, rec.shard, rec.parts[0].blob)] = data
            return node, [rec for rec, _ in pairs]

        try:
            answers = await quorum(owners, newest, need=need, parallel=need, background=self.background,
                                   hedge_after=self.view.hedge_delay())
        except QuorumError as e:
            answers = e.successes
        records = [(n, r) for _, (n, recs) in answers for r in recs]
        found = visible_versions(records, ec.k)
        if found and found[0].record.version == max(r.version for _, r in records):
            found[0].ring = ring
            found[0].complete = len({r.shard for _, r in found[0].holders}) >= ec.width
            found[0].shards = dict(shards)  # not the answers of hedged calls still running
            return found[0]
        if not records and len(answers) >= need:
            return None
        # The newest version seen is not visible among these answers: ask every node, every version.
        return await self._find_everywhere(ring, partition, bucket, key, version)

    async def complete(self, obj: ObjectVersion) -> ObjectVersion:
        """Add the holders `find` did not ask, so a degraded read or a rebuild has every shard to choose from.

        Runs once per ObjectVersion (later calls return at once); `obj` itself gains the holders.
        """
        if obj.complete or obj.ring is None:
            return obj
        obj.complete = True
        rec = obj.record
        full = await self._find_everywhere(obj.ring, obj.ring.partition_of(rec.bucket, rec.key), rec.bucket,
                                           rec.key, rec.version, timeout=self.view.hedge_delay())
        if full is not None:
            seen = {(n.id, r.shard) for n, r in obj.holders}
            obj.holders += [(n, r) for n, r in full.holders if (n.id, r.shard) not in seen]
        return obj

    async def _find_everywhere(self, ring: Ring, partition: int, bucket: str, key: str,
                               version: str | None, timeout: float | None = None) -> ObjectVersion | None:
        # Every node of the pool that may hold data: handoffs, and old owners during a migration.
        nodes = self.view.by_availability(n for n in ring.map.pool_nodes(ring.pool.name) if n.state != "removed")

        async def versions(node: NodeInfo) -> list[tuple[NodeInfo, ObjectRecord]]:
            if version is not None:
                return [(node, r) for r in await self._timed(node, self.client.get_record(node, bucket, key, version))]
            return [(node, r) for r in await self._timed(node, self.client.get_versions(node, bucket, key))]

        calls = [versions(n) for n in nodes]
        if timeout is not None:
            results = await asyncio.gather(*(asyncio.wait_for(c, timeout) for c in calls), return_exceptions=True)
        else:
            results = await asyncio.gather(*calls, return_exceptions=True)
        records = [x for r in results if isinstance(r, list) for x in r]
        found = visible_versions(records, ring.ec.k)
        if not found:
            return None
        found[0].ring, found[0].complete = ring, True
        return found[0]

    async def _timed(self, node: NodeInfo, aw: Any) -> Any:
        started = time.monotonic()
        try:
            result = await aw
        except (NodeError, OSError, asyncio.TimeoutError):
            self.view.record_failure(node)
            raise
        self.view.record_success(node, time.monotonic() - started)
        return result

    # -- reading -----------------------------------------------------------------------------------

    async def read(self, obj: ObjectVersion, offset: int = 0, length: int | None = None) -> AsyncIterator[bytes]:
        """Stream object bytes [offset, offset+length), part by part, stripe by stripe."""
        rec = obj.record
        end = rec.size if length is None else min(rec.size, offset + length)
        part_start = 0
        for part in rec.parts:
            part_end = part_start + part.size
            if part_end > offset and part_start < end:
                lo = max(offset, part_start) - part_start
                hi = min(end, part_end) - part_start
                async for chunk in self._read_part(obj, part, lo, hi - lo):
                    yield chunk
            part_start = part_end
            if part_start >= end:
                break

    def held_payload(self, obj: ObjectVersion, offset: int, length: int) -> bytes | None:
        """Object bytes [offset, offset+length) of a one-part, one-stripe object whose k data shards all came
        with its records (inline, or sent along by the owners): verified and joined, with no shard stream.

        None when the general `read` is needed: an empty range, several parts or stripes, a data shard not
        held, or a block that is short or fails its checksum (`read` then logs it and decodes from a spare).
        """
        rec = obj.record
        ec = rec.ec
        if length <= 0 or len(rec.parts) != 1 or rec.parts[0].size > ec.stripe_size:
            return None
        part = rec.parts[0]
        blen = codec.block_len(part.size, ec, 0)
        sources = obj.sources(part.number)
        blocks = []
        for idx in range(ec.k):
            src = next((s for s in sources.get(idx, ()) if s.part.inline is not None or s.data is not None), None)
            if src is None:
                return None
            held = src.part.inline if src.part.inline is not None else src.data
            assert held is not None
            if len(held) != blen or not src.part.checksums:
                return None
            if codec.block_checksum(held) != src.part.checksums[0]:
                return None
            blocks.append(held)
        payload = b"".join(blocks)
        return payload if offset == 0 and length == len(payload) else payload[offset:offset + length]

    async def _read_part(self, obj: ObjectVersion, part: PartRef, offset: int, length: int) -> AsyncIterator[bytes]:
        if length <= 0:
            return
        ec = obj.record.ec
        reader = PartReader(self.client, self.view, self.executor, obj.sources(part.number), part, ec, offset, length,
                            more=self.more_sources(obj, part.number))
        try:
            async for chunk in reader.stream():
                yield chunk
        finally:
            await reader.close()

    def more_sources(self, obj: ObjectVersion, part_number: int) -> MoreSources | None:
        if obj.complete:
            return None

        async def more() -> dict[int, list[ShardSource]]:
            return (await self.complete(obj)).sources(part_number)
        return more


class PartReader:
    """Reads the stripes of one part from k shards, replacing failed, corrupt or slow shards with spares."""

    def __init__(self, client: NodeClient, view: ClusterView, executor: Executor | None,
                 sources: dict[int, list[ShardSource]], part: PartRef, ec: ECProfile, offset: int, length: int,
                 more: MoreSources | None = None) -> None:
        """`more`, if given, is awaited once when every source is used up, for places not known yet."""
        self.client, self.view, self.executor = client, view, executor
        self.part, self.ec = part, ec
        self.offset, self.length = offset, length
        self.codec = codec.codec_for(ec)
        self.first, self.last = codec.range_to_stripes(offset, length, part.size, ec)
        self.candidates: list[ShardSource] = []
        self.known: set[tuple[str, int]] = set()
        self._add(sources)
        self.more = more
        self.open: dict[int, ShardStream] = {}
        self.failed: set[int] = set()

    def _add(self, sources: dict[int, list[ShardSource]]) -> None:
        """Queue sources not seen yet: data shards first (no decode needed), then parity; available nodes
        first within each index."""
        for idx in sorted(sources):
            for node in self.view.by_availability([s.node for s in sources[idx]]):
                src = next(s for s in sources[idx] if s.node.id == node.id)
                if (node.id, idx) not in self.known:
                    self.known.add((node.id, idx))
                    self.candidates.append(src)
        self.candidates.sort(key=lambda s: s.index)  # stable: keeps the availability order per index

    async def _next_candidate(self) -> ShardSource | None:
        while True:
            for src in self.candidates:
                if src.index not in self.open and src.index not in self.failed:
                    self.candidates.remove(src)
                    return src
            if self.more is None:
                return None
            more, self.more = self.more, None
            try:
                self._add(await more())
            except (NodeError, OSError, asyncio.TimeoutError) as e:
                log.warning("looking for more shards of %s failed: %s", self.part.blob, e)

    def _open(self, src: ShardSource, stripe: int) -> ShardStream:
        shard_off, shard_len = codec.shard_span(stripe, self.last, self.part.size, self.ec)
        stream = ShardStream(self.client, self.view, src, self.ec.block_size, shard_off, shard_len)
        self.open[src.index] = stream
        return stream

    async def stripes(self) -> AsyncIterator[tuple[int, dict[int, bytes | memoryview]]]:
        """At least k verified blocks of every stripe in the range, by shard index."""
        async for stripe, blocks, _ in self._stripes():
            yield stripe, blocks

    async def _stripes(self) -> AsyncIterator[tuple[int, dict[int, bytes | memoryview], bytearray]]:
        """`stripes`, with each stripe's buffer: data blocks read from nodes land in it, block i at i * blen."""
        for _ in range(self.ec.k):
            src = await self._next_candidate()
            if src is None:
                break
            self._open(src, self.first)
        for stripe in range(self.first, self.last + 1):
            blen = codec.block_len(self.part.size, self.ec, stripe)
            # Held shards (they came with the record) need no buffer: their blocks are joined.
            streamed = any(s.held is None for s in self.open.values())
            buf = bytearray(self.ec.k * blen if streamed else 0)
            yield stripe, await self._stripe_blocks(stripe, blen, buf), buf

    async def stream(self) -> AsyncIterator[bytes | memoryview]:
        k = self.ec.k
        stripe_start = self.first * self.ec.stripe_size
        async for stripe, blocks, buf in self._stripes():
            payload_len = codec.stripe_payload_len(self.part.size, self.ec, stripe)
            payload: bytes | memoryview
            if all(i in blocks for i in range(k)):
                if all(isinstance(b, memoryview) and b.obj is buf for b in (blocks[i] for i in range(k))):
                    payload = memoryview(buf)[:payload_len]  # the nodes' bytes landed in place
                else:
                    payload = b"".join(blocks[i] for i in range(k))[:payload_len]
            else:
                payload = await asyncio.get_running_loop().run_in_executor(
                    self.executor, self.codec.decode, blocks, payload_len)
            lo = max(self.offset - stripe_start, 0)
            hi = min(self.offset + self.length - stripe_start, payload_len)
            yield payload[lo:hi]
            stripe_start += self.ec.stripe_size

    async def _stripe_blocks(self, stripe: int, blen: int, buf: bytearray) -> dict[int, bytes | memoryview]:
        """k verified blocks of one stripe; a shard that errs or lags is replaced by the next candidate.

        Data block i read from its node lands in `buf` at i * blen (no copy); parity blocks get their own.
        """
        k = self.ec.k
        view = memoryview(buf)

        def slot(idx: int) -> memoryview | None:
            return view[idx * blen:(idx + 1) * blen] if idx < k and len(buf) else None

        blocks: dict[int, bytes | memoryview] = {}
        pending: dict[asyncio.Task[bytes | memoryview], int] = {}
        if all(s.held is not None for s in self.open.values()):
            # Shards that came with their records (small objects, prefetched medium ones): no task, no wait.
            for idx, s in list(self.open.items()):
                try:
                    blocks[idx] = s.held_block(stripe, blen)
                except (codec.ChecksumError, ReadFailed) as e:
                    await self._drop(idx, e)
            if len(blocks) >= k:
                return blocks
        for idx, s in list(self.open.items()):
            if idx not in blocks:
                pending[asyncio.ensure_future(s.block(stripe, blen, slot(idx)))] = idx
        hedged = False
        try:
            while len(blocks) < k:
                if not pending:
                    src = await self._next_candidate()
                    if src is None:
                        raise ReadFailed(f"only {len(blocks)} of {k} shards readable for part {self.part.number}")
                    pending[asyncio.ensure_future(self._open(src, stripe).block(stripe, blen, slot(src.index)))] = src.index
                    continue
                timeout = None if hedged else self.view.hedge_delay()
                done, _ = await asyncio.wait(pending, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
                if not done:
                    # Hedge: race a spare against each laggard; whichever k blocks arrive first win.
                    hedged = True
                    for _ in range(len(pending)):
                        src = await self._next_candidate()
                        if src is None:
                            break
                        pending[asyncio.ensure_future(self._open(src, stripe).block(stripe, blen, slot(src.index)))] = src.index
                    continue
                for task in done:
                    idx = pending.pop(task)
                    try:
                        blocks[idx] = task.result()
                    except (NodeError, OSError, asyncio.TimeoutError, codec.ChecksumError, ReadFailed) as e:
                        await self._drop(idx, e)
                        if len(blocks) + len(pending) < k:
                            src = await self._next_candidate()
                            if src is not None:
                                pending[asyncio.ensure_future(self._open(src, stripe).block(stripe, blen, slot(src.index)))] = src.index
        finally:
            for task, idx in pending.items():
                # Laggards lose their place: their stream is now behind, so close it.
                task.cancel()
                stream = self.open.pop(idx, None)
                if stream:
                    self.failed.add(idx)
                    await stream.close()
        return blocks

    async def _drop(self, idx: int, e: Exception) -> None:
        """Shard `idx` failed (unreachable, short, corrupt): never read it again for this part."""
        log.warning("shard %d of %s unreadable: %s", idx, self.part.blob, e)
        self.failed.add(idx)
        stream = self.open.pop(idx, None)
        if stream:
            await stream.close()

    async def close(self) -> None:
        for s in self.open.values():
            await s.close()
        self.open.clear()


class ShardStream:
    """One open shard read: returns its blocks in order, each verified against the record's checksum."""

    def __init__(self, client: NodeClient, view: ClusterView, src: ShardSource, block_size: int, shard_off: int,
                 shard_len: int) -> None:
        self.client, self.view, self.src, self.block_size = client, view, src, block_size
        self.shard_off, self.shard_len = shard_off, shard_len
        self._cm: Any = None
        self._reader: Any = None
        self._pos = shard_off
        self._started = time.monotonic()

    @property
    def held(self) -> bytes | None:
        """The whole shard, when it came with the record (inline, or sent along by the node)."""
        return self.src.part.inline if self.src.part.inline is not None else self.src.data

    def held_block(self, stripe: int, blen: int) -> bytes:
        """`block` of a held shard, without the event loop."""
        held = self.held
        if held is None:
            raise ValueError("held_block of a shard that is read from its node")
        self._check_pos(stripe)
        return self._verified(held[self._pos:self._pos + blen], stripe, blen)

    def _check_pos(self, stripe: int) -> None:
        expected_pos = stripe * self.block_size
        if expected_pos != self._pos:
            raise ReadFailed(f"shard stream at {self._pos}, asked for {expected_pos}")

    async def block(self, stripe: int, blen: int, into: memoryview | None = None) -> bytes | memoryview:
        """The next block (stripe `stripe`, `blen` bytes), verified; read from the node into `into` if given."""
        if self.held is not None:
            return self.held_block(stripe, blen)
        self._check_pos(stripe)
        if self._reader is None:
            self._cm = self.client.open_blob(self.src.node, self.src.part.blob, self.src.index,
                                             self.shard_off, self.shard_len)
            self._reader = await self._cm.__aenter__()
        if into is None or len(into) != blen:
            into = memoryview(bytearray(blen))
        await self._reader.read_into(into)
        if self._started:
            self.view.record_success(self.src.node, time.monotonic() - self._started)
            self._started = 0.0
        return self._verified(into, stripe, blen)

    def _verified(self, data: bytes | memoryview, stripe: int, blen: int) -> bytes | memoryview:
        if len(data) != blen:
            raise ReadFailed(f"shard {self.src.index} is short")
        sums = self.src.part.checksums
        codec.verify_block(data, sums[stripe] if stripe < len(sums) else -1,
                           f"{self.src.part.blob}.{self.src.index} block {stripe} on {self.src.node.id}")
        self._pos += blen
        return data

    async def close(self) -> None:
        if self._cm is not None:
            cm, self._cm, self._reader = self._cm, None, None
            try:
                await cm.__aexit__(None, None, None)
            except Exception as e:
                log.debug("closing shard stream: %s", e)

