"""Erasure-coded objects on the nodes: write blobs and commit records, retire old versions, rebuild lost shards."""

from __future__ import annotations

import asyncio
import logging
import time
from collections import defaultdict
from collections.abc import AsyncIterable, AsyncIterator, Callable
from dataclasses import dataclass, field, replace
from typing import Any

from objstore import codec
from objstore.client import NodeError
from objstore.cluster import ECProfile, NodeInfo
from objstore.quorum import settle
from objstore.reader import ObjectReader, ObjectVersion, PartReader, ReadFailed
from objstore.records import INLINE_MAX_SHARD, ObjectRecord, PartRef, evolve
from objstore.ring import Ring

__all__ = ["BlobWrite", "Committed", "ObjectIO", "ObjectVersion", "ReadFailed", "ShardWrite", "WriteFailed",
           "write_buffer_bytes"]

log = logging.getLogger("objstore.objects")

SHARD_QUEUE_DEPTH = 2
"""Blocks buffered per shard upload, besides the one being sent: bounds gateway memory at about
width * depth * block_size per write (at 4+2 and 256 KiB blocks: 3 MiB; it was 4 blocks, 6 MiB)."""
SHARD_STALL_TIMEOUT = 5.0
"""Seconds a shard upload may refuse new blocks before the write drops it and goes on without it."""
ENCODE_INLINE_MAX = 64 * 1024
"""Payloads up to this size are erasure-coded on the event loop (tens of microseconds), larger ones in the
executor."""


def write_buffer_bytes(ec: ECProfile, size: int | None) -> int:
    """The most bytes of payload and shards one write of `size` bytes (None: not known) buffers at once.

    A small write holds its payload and its k+m shards; a streamed one the stripe being cut from the
    body and the one being encoded (payload and blocks), its shard queues and one block per upload
    being sent. What a gateway reserves of its write budget before it reads a body.
    """
    stripe_blocks = ec.width * ec.block_size
    streamed = 2 * ec.stripe_size + (SHARD_QUEUE_DEPTH + 2) * stripe_blocks
    if size is None:
        return streamed
    small = size + -(-size // ec.k) * ec.width
    return min(small, streamed)


class WriteFailed(Exception):
    """Fewer than k+1 shards could be made durable: nothing of the write became visible."""


@dataclass
class ShardWrite:
    """One durable shard of a blob: where it went and what it holds."""

    index: int
    node: NodeInfo
    checksums: list[int]
    handoff: bool
    inline: bytes | None = None


@dataclass
class BlobWrite:
    """The outcome of writing one erasure-coded blob (an object, or one part of a multipart upload)."""

    blob: str
    size: int
    ec: ECProfile
    shards: list[ShardWrite] = field(default_factory=list)

    @property
    def indexes(self) -> set[int]:
        return {s.index for s in self.shards}


@dataclass
class Committed:
    """A committed version, and what its commit learnt: per node, the older versions of the key it holds."""

    record: ObjectRecord
    older: dict[str, tuple[NodeInfo, list[str] | None]] = field(default_factory=dict)
    """node id -> (node, older versions it holds; None if it did not say)."""


class ObjectIO(ObjectReader):
    """Reads (ObjectReader) and writes objects across the cluster; shared by gateways and the repair loop."""

    # -- writing -----------------------------------------------------------------------------------

    def _targets(self, ring: Ring, partition: int) -> tuple[list[NodeInfo], list[NodeInfo]]:
        """Owners (shard i to owner i) and the handoff candidates, unavailable owners replaced up front.

        Raises WriteFailed when the pool has fewer than k+1 nodes: such a write could not survive the
        loss of one of them, so it is refused rather than acknowledged.
        """
        if len(ring.nodes) < ring.ec.k + 1:
            raise WriteFailed(f"only {len(ring.nodes)} nodes can be placed on, need {ring.ec.k + 1}")
        return ring.owners(partition), self.view.by_availability(ring.handoffs(partition))

    def _short_of_nodes(self, ec: ECProfile, owners: list[NodeInfo], spares: list[NodeInfo]) -> bool:
        """Whether the owners and spares in rotation are too few for k+1 shards.

        A write that would then fail is better off also asking the nodes the error limiter set aside:
        one set aside after a few failed or timed-out calls may well be up again, and while it is out
        of rotation a cluster as wide as its EC profile (6 nodes at 4+2) would refuse every write. A node really down costs the write one failed attempt, and the write fails as it
        would have.
        """
        in_rotation = sum(1 for n in [*owners, *spares] if self.view.available(n))
        return in_rotation < ec.k + 1

    async def _with_handoff(self, index: int, owner: NodeInfo, spares: list[NodeInfo],
                            attempt: Callable[[NodeInfo], Any], last_resort: bool = False
                            ) -> tuple[NodeInfo, Any, bool]:
        """Run `attempt` on the owner, else on the next free spare; spares are shared between slots.

        An owner out of rotation is passed over for a spare; with `last_resort` (`_short_of_nodes`) it is
        still tried once no spare is left.
        """
        candidates = [owner] if self.view.available(owner) else []
        fallback = [owner] if last_resort and not candidates else []
        last: Exception | None = None
        while True:
            if candidates:
                node = candidates.pop()
            elif spares:
                node = spares.pop(0)
            elif fallback:
                node = fallback.pop()
            else:
                raise last or WriteFailed(f"no node left for shard {index}")
            started = time.monotonic()
            try:
                result = await attempt(node)
            except (NodeError, OSError, asyncio.TimeoutError) as e:
                self.view.record_failure(node)
                last = e
                continue
            self.view.record_success(node, time.monotonic() - started)
            return node, result, node.id != owner.id

    async def write_blob(self, ring: Ring, partition: int, blob: str, source: AsyncIterable[bytes],
                         on_payload: Callable[[bytes], None] | None = None, carry: bool = True) -> BlobWrite:
        """Stream `source` into k+m shards on the partition's owners (or handoffs).

        Payloads of one stripe at most are encoded whole. With `carry` their shards are not uploaded: they
        come back inline, for the caller to put into the records, which carry them to the nodes. A node
        keeps a shard of up to INLINE_MAX_SHARD inside the record and writes a larger one to a shard file
        in the same call: one request and one transaction a node, where an upload first would take two
        of each. Without `carry` (a multipart upload's part, whose shards wait in a KV document until the
        upload completes) only shards of up to INLINE_MAX_SHARD come back inline, and each larger one is
        sent as one body. Payloads above a stripe stream, stripe by stripe.
        """
        ec = ring.ec
        head, rest = await _peek(source, max(ec.k * INLINE_MAX_SHARD, ec.stripe_size) + 1)
        if rest is None and len(head) <= (max(ec.k * INLINE_MAX_SHARD, ec.stripe_size) if carry
                                          else ec.k * INLINE_MAX_SHARD):
            return await self._inline_blob(ring, partition, blob, head, on_payload)
        if rest is None:
            return await self._buffered_blob(ring, partition, blob, head, on_payload)
        # Only the chain may hold the head: it lets go of it once yielded, this frame would not.
        chained, head = _chain([head], rest), b""
        return await self._streamed_blob(ring, partition, blob, chained, on_payload)

    async def _inline_blob(self, ring: Ring, partition: int, blob: str, payload: bytes,
                           on_payload: Callable[[bytes], None] | None) -> BlobWrite:
        ec = ring.ec
        owners, _ = self._targets(ring, partition)
        stripe_codec = codec.codec_for(ec)
        loop = asyncio.get_running_loop()

        def encode_all() -> list[bytes]:
            if len(payload) <= ec.stripe_size:  # the usual case: the blocks are the shards, no copy
                if on_payload:
                    on_payload(payload)
                return stripe_codec.encode(payload)
            shards = [bytearray() for _ in range(ec.width)]
            for off in range(0, len(payload), ec.stripe_size):
                chunk = payload[off:off + ec.stripe_size]
                if on_payload:
                    on_payload(chunk)
                for i, b in enumerate(stripe_codec.encode(chunk)):
                    shards[i] += b
            return [bytes(shard) for shard in shards]

        # A few KiB encode (and hash) in less time than a hand-off to the thread pool takes.
        if len(payload) <= ENCODE_INLINE_MAX:
            shards = encode_all()
        else:
            shards = await loop.run_in_executor(self.executor, encode_all)
        out = BlobWrite(blob, len(payload), ec)
        for i, node in enumerate(owners):
            out.shards.append(ShardWrite(i, node, codec.shard_checksums(shards[i], ec.block_size), False, shards[i]))
        return out

    async def _buffered_blob(self, ring: Ring, partition: int, blob: str, payload: bytes,
                             on_payload: Callable[[bytes], None] | None) -> BlobWrite:
        """A payload of one stripe at most, whole in memory: each shard goes as one sized body.

        Cheaper than a streamed upload for the gateway and the node (no chunked framing, no queue per
        shard, one write each way), and a shard whose upload fails can be sent whole to a spare.
        """
        ec = ring.ec
        owners, spares = self._targets(ring, partition)
        last_resort = self._short_of_nodes(ec, owners, spares)
        stripe_codec = codec.codec_for(ec)

        def encode() -> tuple[list[bytes], list[list[int]]]:
            if on_payload:
                on_payload(payload)
            blocks = stripe_codec.encode(payload)
            return blocks, [codec.shard_checksums(b, ec.block_size) for b in blocks]

        shards, expected = await asyncio.get_running_loop().run_in_executor(self.executor, encode)

        async def upload(i: int) -> ShardWrite:
            async def attempt(node: NodeInfo) -> list[int]:
                sums = await self.client.put_blob(node, blob, i, partition, ec.block_size, shards[i])
                if sums != expected[i]:
                    raise WriteFailed(f"shard {i} checksums from {node.id} differ from what was sent")
                return sums
            node, sums, handoff = await self._with_handoff(i, owners[i], spares, attempt, last_resort)
            return ShardWrite(i, node, sums, handoff)

        # A shard upload that has not answered well after k+1 others did (a silent node) is cut off.
        results = await settle([asyncio.ensure_future(upload(i)) for i in range(ec.width)],
                               lambda done: len(done) >= min(ec.width, ec.k + 1))
        written = [r for r in results if isinstance(r, ShardWrite)]
        if len(written) < min(ec.width, ec.k + 1):
            self._discard(written, blob)
            raise WriteFailed(f"{len(written)} of {ec.width} shards durable, need {ec.k + 1}")
        return BlobWrite(blob, len(payload), ec, written)

    async def _streamed_blob(self, ring: Ring, partition: int, blob: str, source: AsyncIterable[bytes],
                             on_payload: Callable[[bytes], None] | None) -> BlobWrite:
        ec = ring.ec
        owners, spares = self._targets(ring, partition)
        last_resort = self._short_of_nodes(ec, owners, spares)
        queues: list[asyncio.Queue[bytes | None]] = [asyncio.Queue(SHARD_QUEUE_DEPTH) for _ in range(ec.width)]
        alive = [True] * ec.width
        size = 0

        def count(payload: bytes) -> None:
            nonlocal size
            size += len(payload)
            if on_payload:
                on_payload(payload)

        expected: list[list[int]] = [[] for _ in range(ec.width)]
        started = [False] * ec.width

        async def body(i: int) -> AsyncIterator[bytes]:
            while (block := await queues[i].get()) is not None:
                started[i] = True
                yield block

        async def upload(i: int) -> ShardWrite:
            async def attempt(node: NodeInfo) -> list[int]:
                if started[i]:
                    # Blocks already sent are gone: a spare could only get a shard with a hole in it.
                    raise WriteFailed(f"shard {i} failed mid-stream")
                sums = await self.client.put_blob(node, blob, i, partition, ec.block_size, body(i))
                if sums != expected[i]:
                    raise WriteFailed(f"shard {i} checksums from {node.id} differ from what was sent")
                return sums
            try:
                node, sums, handoff = await self._with_handoff(i, owners[i], spares, attempt, last_resort)
            finally:
                alive[i] = False
                while not queues[i].empty():
                    queues[i].get_nowait()
            return ShardWrite(i, node, sums, handoff)

        async def put_or_drop(i: int, block: bytes) -> None:
            # A shard upload that stalls (a node cut off mid-stream) is dropped, not waited for:
            # the write goes on with the others and repair rebuilds the missing shard.
            try:
                await asyncio.wait_for(queues[i].put(block), SHARD_STALL_TIMEOUT)
            except asyncio.TimeoutError:
                log.warning("shard %d of %s stalled for %.0fs: dropped", i, blob, SHARD_STALL_TIMEOUT)
                alive[i] = False
                uploads[i].cancel()

        async def feed() -> None:
            async for blocks, sums in codec.encode_stream_checked(source, ec, self.executor, count):
                for i, c in enumerate(sums):
                    expected[i].append(c)
                live = [i for i in range(ec.width) if alive[i]]
                if len(live) < ec.k + 1:
                    raise WriteFailed(f"only {len(live)} shard uploads left, need {ec.k + 1}")
                full = []
                for i in live:
                    if queues[i].full():
                        full.append(put_or_drop(i, blocks[i]))
                    else:
                        queues[i].put_nowait(blocks[i])  # the usual case: no task and no timer per block
                if full:
                    await asyncio.gather(*full)
            for i in range(ec.width):
                if alive[i]:
                    await queues[i].put(None)

        uploads = [asyncio.ensure_future(upload(i)) for i in range(ec.width)]
        try:
            await feed()
        except BaseException:
            for t in uploads:
                t.cancel()
            results = await asyncio.gather(*uploads, return_exceptions=True)
            self._discard([r for r in results if isinstance(r, ShardWrite)], blob)
            raise
        # A shard upload that has not answered well after k+1 others did (a silent node) is cut off.
        results = await settle(uploads, lambda done: len(done) >= min(ec.width, ec.k + 1))
        written = [r for r in results if isinstance(r, ShardWrite)]
        out = BlobWrite(blob, size, ec, written)
        if len(written) < min(ec.width, ec.k + 1):
            self._discard(written, blob)
            raise WriteFailed(f"{len(written)} of {ec.width} shards durable, need {ec.k + 1}")
        return out

    def _discard(self, shards: list[ShardWrite], blob: str) -> None:
        """Remove shards of a write that will not be committed (in the background, owned)."""
        for s in shards:
            if s.inline is None:
                self.background.spawn(self._quiet(self.client.delete_blob(s.node, blob, s.index)))

    async def discard(self, write: BlobWrite) -> None:
        """Drop an uncommitted blob (a PUT refused after its body was streamed: BadDigest and the like)."""
        await asyncio.gather(*(self._quiet(self.client.delete_blob(s.node, write.blob, s.index))
                               for s in write.shards if s.inline is None))

    @staticmethod
    async def _quiet(aw: Any) -> None:
        try:
            await aw
        except Exception as e:  # cleanup is best effort; repair's GC removes what is left
            log.debug("cleanup failed: %s", e)

    async def commit(self, ring: Ring, partition: int, template: ObjectRecord,
                     parts: list[tuple[PartRef, BlobWrite]]) -> Committed:
        """Write the version's records: one per (node, shard index) that holds a shard of any part.

        Returns once every target answered, with the older versions each node said it holds; raises
        WriteFailed (after removing what was committed) if fewer than k+1 distinct shard indexes were
        committed.
        """
        ec = ring.ec
        targets: dict[tuple[str, int], tuple[NodeInfo, bool]] = {}
        held: dict[tuple[str, int], dict[int, ShardWrite]] = defaultdict(dict)  # -> part position -> shard
        for pos, (_, bw) in enumerate(parts):
            for s in bw.shards:
                targets[(s.node.id, s.index)] = (s.node, s.handoff)
                held[(s.node.id, s.index)][pos] = s
        owners, _ = self._targets(ring, partition)
        if not parts:  # a delete marker: one record per owner
            for i, node in enumerate(owners):
                targets[(node.id, i)] = (node, False)
        elif len(parts) > 1:  # owners also learn of parts they lack, so repair can fill them in
            for i, node in enumerate(owners):
                if (node.id, i) not in targets and self.view.available(node):
                    targets[(node.id, i)] = (node, False)

        def record_for(node_id: str, index: int, handoff: bool) -> ObjectRecord:
            refs = []
            for pos, (ref, bw) in enumerate(parts):
                s = held[(node_id, index)].get(pos)
                sums = s.checksums if s else _sums_for(bw, index)
                refs.append(evolve(ref, blob=bw.blob, checksums=sums, present=s is not None,
                                   inline=s.inline if s else None))
            return evolve(template, shard=index, ec=ec, parts=refs, handoff=handoff)

        records = {key: record_for(key[0], key[1], handoff) for key, (node, handoff) in targets.items()}
        keys = list(records)

        _, spares = self._targets(ring, partition)
        last_resort = self._short_of_nodes(ec, owners, spares)

        async def put(key: tuple[str, int]) -> tuple[int, NodeInfo, list[str] | None]:
            node, rec = targets[key][0], records[key]
            if any(p.inline is None for p in rec.parts):  # its blobs are on that node: nowhere else will do
                return key[1], node, await self._timed(node, self.client.put_record(node, rec))

            async def attempt(n: NodeInfo) -> list[str] | None:  # inline shards and markers can land on a handoff
                handoff = rec.handoff or n.id != node.id
                return await self.client.put_record(n, rec if handoff == rec.handoff else evolve(rec, handoff=handoff))
            landed, older, _ = await self._with_handoff(key[1], node, spares, attempt, last_resort)
            return key[1], landed, older

        # Every target is waited for, except one still silent well after k+1 shard indexes are committed:
        # it goes on in the background (its record may still land), and repair fills in what it lacks.
        need = min(ec.width, ec.k + 1)
        results = await settle([asyncio.ensure_future(put(key)) for key in keys],
                               lambda done: len({index for index, _, _ in done}) >= need, background=self.background)
        done = [(index, (node, older)) for index, node, older in
                (r for r in results if not isinstance(r, BaseException))]
        committed = {index for index, _ in done}
        if len(committed) < need:
            for _, (node, _) in done:
                self.background.spawn(self._quiet(self.client.delete_record(
                    node, template.bucket, template.key, template.version)))
            raise WriteFailed(f"{len(committed)} shard records committed, need {ec.k + 1}")
        out = Committed(template)
        for _, (node, older) in done:
            known = out.older.get(node.id, (node, []))[1]
            out.older[node.id] = (node, None if older is None or known is None else sorted({*known, *older}))
        return out

    # -- removing ----------------------------------------------------------------------------------

    async def _on_every_node(self, ring: Ring, partition: int, call: Callable[[NodeInfo], Any]) -> None:
        nodes = ring.preference_list(partition)
        await asyncio.gather(*(self._quiet(call(n)) for n in nodes if self.view.available(n)))

    async def delete_version(self, ring: Ring, bucket: str, key: str, version: str) -> None:
        """Remove one version's records and shards from every node that may hold them."""
        await self._on_every_node(ring, ring.partition_of(bucket, key),
                                  lambda n: self.client.delete_record(n, bucket, key, version))

    async def prune(self, ring: Ring, bucket: str, key: str, keep: str,
                    only: Callable[[str], bool] | None = None, seen: Committed | None = None) -> None:
        """Remove the versions older than `keep` (unversioned buckets keep only the newest).

        With `only`, just the older versions it accepts (a versioning-suspended bucket retires its
        older "null" versions and keeps the others). With `seen`, the commit of `keep`: only the
        versions its nodes said they hold are removed, so a new key costs no call at all. Copies on
        nodes the commit did not write to (handoffs, old owners) are left to repair, which removes a
        superseded version once the newer one is whole and past the grace period.
        """
        def wanted(version: str) -> bool:
            return version < keep and (only is None or only(version))

        async def prune_node(node: NodeInfo, versions: list[str] | None) -> None:
            if versions is None:  # the node did not say what it holds
                versions = sorted({r.version for r in await self.client.get_versions(node, bucket, key)})
            for version in versions:
                if wanted(version):
                    await self.client.delete_record(node, bucket, key, version)

        if seen is None:
            await self._on_every_node(ring, ring.partition_of(bucket, key), lambda n: prune_node(n, None))
            return
        await asyncio.gather(*(self._quiet(prune_node(node, versions)) for node, versions in seen.older.values()
                               if versions is None or any(wanted(v) for v in versions)))

    # -- rebuilding (repair) -------------------------------------------------------------------------

    async def rebuild(self, ring: Ring, obj: ObjectVersion, targets: dict[int, NodeInfo],
                      throttle: Callable[[int], Any] | None = None) -> list[tuple[int, NodeInfo]]:
        """Recreate shard indexes `targets` (index -> node) of a version from any k healthy shards.

        Each target receives its rebuilt blobs, then its record. Returns the (index, node) pairs done.
        `throttle(nbytes)` is awaited for every rebuilt block, so repair can cap its bandwidth.
        """
        if obj.ring is None:
            obj.ring = ring
        await self.complete(obj)  # a rebuild reads from any k shards: it wants every one to choose from
        rec = obj.record
        ec = rec.ec
        partition = ring.partition_of(rec.bucket, rec.key)
        owners = {n.id for n in ring.owners(partition)}
        per_target: dict[int, list[PartRef]] = {i: [] for i in targets}
        for part in rec.parts:
            rebuilt = await self._rebuild_part(obj, part, ec, partition, targets, throttle)
            for i, ref in rebuilt.items():
                per_target[i].append(ref)
        done = []
        for i, node in targets.items():
            if len(per_target[i]) != len(rec.parts):
                continue  # a part's shard did not land: a record without it would pass for whole
            new = replace(rec, shard=i, parts=per_target[i], handoff=node.id not in owners)
            try:
                await self._timed(node, self.client.put_record(node, new))
            except (NodeError, OSError, asyncio.TimeoutError) as e:
                log.warning("repair: record of %s/%s shard %d on %s failed: %s", rec.bucket, rec.key, i, node.id, e)
                continue
            done.append((i, node))
        return done

    async def _rebuild_part(self, obj: ObjectVersion, part: PartRef, ec: ECProfile, partition: int,
                            targets: dict[int, NodeInfo], throttle: Callable[[int], Any] | None
                            ) -> dict[int, PartRef]:
        want = sorted(targets)
        sources = obj.sources(part.number)
        if part.size == 0 or any(s.part.inline is not None for srcs in sources.values() for s in srcs):
            return await self._rebuild_inline(obj, part, ec, want)
        reader = PartReader(self.client, self.view, self.executor, sources, part, ec, 0, part.size,
                            more=self.more_sources(obj, part.number))
        queues: dict[int, asyncio.Queue[bytes | None]] = {i: asyncio.Queue(SHARD_QUEUE_DEPTH) for i in want}
        sums: dict[int, list[int]] = {i: [] for i in want}

        async def body(i: int) -> AsyncIterator[bytes]:
            while (block := await queues[i].get()) is not None:
                yield block

        uploads = {i: asyncio.ensure_future(self.client.put_blob(targets[i], part.blob, i, partition,
                                                                 ec.block_size, body(i))) for i in want}
        try:
            loop = asyncio.get_running_loop()
            async for _, blocks in reader.stripes():
                made = await loop.run_in_executor(self.executor, self.codec_rebuild, ec, blocks, want)
                for i in want:
                    sums[i].append(codec.block_checksum(made[i]))
                    if not uploads[i].done():
                        await queues[i].put(made[i])
                    if throttle is not None:
                        await throttle(len(made[i]))
            for i in want:
                if not uploads[i].done():
                    await queues[i].put(None)
        except BaseException:
            for t in uploads.values():
                t.cancel()
            await asyncio.gather(*uploads.values(), return_exceptions=True)
            raise
        finally:
            await reader.close()
        out = {}
        for i in want:
            try:
                got = await uploads[i]
            except (NodeError, OSError, asyncio.TimeoutError) as e:
                log.warning("repair: blob %s.%d on %s failed: %s", part.blob, i, targets[i].id, e)
                continue
            if got != sums[i]:
                log.warning("repair: blob %s.%d on %s came back with other checksums", part.blob, i, targets[i].id)
                continue
            out[i] = replace(part, checksums=sums[i], inline=None, present=True)
        return out

    @staticmethod
    def codec_rebuild(ec: ECProfile, blocks: dict[int, bytes], want: list[int]) -> dict[int, bytes]:
        have = {i: b for i, b in blocks.items()}
        missing = [i for i in want if i not in have]
        made = codec.codec_for(ec).rebuild(have, missing) if missing else {}
        return {i: have[i] if i in have else made[i] for i in want}

    async def _rebuild_inline(self, obj: ObjectVersion, part: PartRef, ec: ECProfile, want: list[int]
                              ) -> dict[int, PartRef]:
        """Small shards travel in records: rebuild them from the inline bytes of k other records."""
        shards: dict[int, bytes] = {}
        for idx, sources in obj.sources(part.number).items():
            for src in sources:
                if src.part.inline is not None:
                    try:
                        codec.verify_block(src.part.inline[:ec.block_size], src.part.checksums[0], "inline")
                    except (codec.ChecksumError, IndexError):
                        if part.size:
                            continue
                    shards[idx] = src.part.inline
                    break
        if part.size == 0:
            return {i: replace(part, checksums=[], inline=b"", present=True) for i in want}
        if len(shards) < ec.k:
            raise ReadFailed(f"only {len(shards)} inline shards of {part.blob}, need {ec.k}")
        out: dict[int, bytearray] = {i: bytearray() for i in want}
        for stripe in range(codec.stripe_count(part.size, ec)):
            blen = codec.block_len(part.size, ec, stripe)
            start = stripe * ec.block_size
            blocks = {i: s[start:start + blen] for i, s in shards.items()}
            made = self.codec_rebuild(ec, blocks, want)
            for i in want:
                out[i] += made[i]
        return {i: replace(part, checksums=codec.shard_checksums(bytes(b), ec.block_size), inline=bytes(b),
                           present=True) for i, b in out.items()}


def _sums_for(bw: BlobWrite, index: int) -> list[int]:
    for s in bw.shards:
        if s.index == index:
            return s.checksums
    return []


async def _peek(source: AsyncIterable[bytes], limit: int) -> tuple[bytes, AsyncIterator[bytes] | None]:
    """Read up to `limit` bytes; returns them and the rest of the stream, or None if the source ended first."""
    it = source.__aiter__()
    chunks: list[bytes] = []
    size = 0
    while size < limit:
        try:
            chunk = await it.__anext__()
        except StopAsyncIteration:
            return b"".join(chunks), None
        chunks.append(chunk)
        size += len(chunk)
    return b"".join(chunks), it


async def _chain(head: list[bytes], rest: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    """`head` (a one-item list, emptied as it is yielded) then `rest`.

    The list is popped rather than held in a local, so the head's k x 64 KiB are freed once the
    encoder has taken them instead of staying referenced for as long as the body streams.
    """
    while head:
        chunk = head.pop()
        if chunk:
            yield chunk
        del chunk
    async for chunk in rest:
        yield chunk
