"""Reading one part of an object: k verified shard streams per stripe, a spare for a failed, corrupt or slow shard."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from concurrent.futures import Executor
from dataclasses import dataclass
from typing import Any

from objstore import codec
from objstore.client import NodeClient, NodeError
from objstore.cluster import ECProfile, NodeInfo
from objstore.records import PartRef
from objstore.view import ClusterView

log = logging.getLogger("objstore.objects")


class ReadFailed(Exception):
    """Fewer than k healthy shards of a version could be read."""


@dataclass
class ShardSource:
    """A place to read one shard of one part from."""

    index: int
    node: NodeInfo
    part: PartRef


class PartReader:
    """Reads the stripes of one part from k shards, replacing failed, corrupt or slow shards with spares."""

    def __init__(self, client: NodeClient, view: ClusterView, executor: Executor | None,
                 sources: dict[int, list[ShardSource]], part: PartRef, ec: ECProfile, offset: int, length: int
                 ) -> None:
        self.client, self.view, self.executor = client, view, executor
        self.part, self.ec = part, ec
        self.offset, self.length = offset, length
        self.codec = codec.codec_for(ec)
        self.first, self.last = codec.range_to_stripes(offset, length, part.size, ec)
        # Data shards first (no decode needed), then parity; available nodes first within each index.
        self.candidates: list[ShardSource] = []
        for idx in sorted(sources):
            for src in view.by_availability([s.node for s in sources[idx]]):
                self.candidates.append(next(s for s in sources[idx] if s.node.id == src.id))
        self.open: dict[int, ShardStream] = {}
        self.failed: set[int] = set()

    def _next_candidate(self) -> ShardSource | None:
        for src in self.candidates:
            if src.index not in self.open and src.index not in self.failed:
                self.candidates.remove(src)
                return src
        return None

    def _open(self, src: ShardSource, stripe: int) -> ShardStream:
        shard_off, shard_len = codec.shard_span(stripe, self.last, self.part.size, self.ec)
        stream = ShardStream(self.client, self.view, src, self.ec.block_size, shard_off, shard_len)
        self.open[src.index] = stream
        return stream

    async def stripes(self) -> AsyncIterator[tuple[int, dict[int, bytes]]]:
        """At least k verified blocks of every stripe in the range, by shard index."""
        for _ in range(self.ec.k):
            src = self._next_candidate()
            if src is None:
                break
            self._open(src, self.first)
        for stripe in range(self.first, self.last + 1):
            yield stripe, await self._stripe_blocks(stripe, codec.block_len(self.part.size, self.ec, stripe))

    async def stream(self) -> AsyncIterator[bytes]:
        k = self.ec.k
        stripe_start = self.first * self.ec.stripe_size
        async for stripe, blocks in self.stripes():
            payload_len = codec.stripe_payload_len(self.part.size, self.ec, stripe)
            if all(i in blocks for i in range(k)):
                payload = b"".join(blocks[i] for i in range(k))[:payload_len]
            else:
                payload = await asyncio.get_running_loop().run_in_executor(
                    self.executor, self.codec.decode, blocks, payload_len)
            lo = max(self.offset - stripe_start, 0)
            hi = min(self.offset + self.length - stripe_start, payload_len)
            yield payload[lo:hi]
            stripe_start += self.ec.stripe_size

    async def _stripe_blocks(self, stripe: int, blen: int) -> dict[int, bytes]:
        """k verified blocks of one stripe; a shard that errs or lags is replaced by the next candidate."""
        k = self.ec.k
        blocks: dict[int, bytes] = {}
        pending: dict[asyncio.Task[bytes], int] = {}
        for idx, s in list(self.open.items()):
            pending[asyncio.ensure_future(s.block(stripe, blen))] = idx
        hedged = False
        try:
            while len(blocks) < k:
                if not pending:
                    src = self._next_candidate()
                    if src is None:
                        raise ReadFailed(f"only {len(blocks)} of {k} shards readable for part {self.part.number}")
                    pending[asyncio.ensure_future(self._open(src, stripe).block(stripe, blen))] = src.index
                    continue
                timeout = None if hedged else self.view.hedge_delay()
                done, _ = await asyncio.wait(pending, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
                if not done:
                    # Hedge: race a spare against each laggard; whichever k blocks arrive first win.
                    hedged = True
                    for _ in range(len(pending)):
                        src = self._next_candidate()
                        if src is None:
                            break
                        pending[asyncio.ensure_future(self._open(src, stripe).block(stripe, blen))] = src.index
                    continue
                for task in done:
                    idx = pending.pop(task)
                    try:
                        blocks[idx] = task.result()
                    except (NodeError, OSError, asyncio.TimeoutError, codec.ChecksumError, ReadFailed) as e:
                        log.warning("shard %d of %s unreadable: %s", idx, self.part.blob, e)
                        self.failed.add(idx)
                        stream = self.open.pop(idx, None)
                        if stream:
                            await stream.close()
                        if len(blocks) + len(pending) < k:
                            src = self._next_candidate()
                            if src is not None:
                                pending[asyncio.ensure_future(self._open(src, stripe).block(stripe, blen))] = src.index
        finally:
            for task, idx in pending.items():
                # Laggards lose their place: their stream is now behind, so close it.
                task.cancel()
                stream = self.open.pop(idx, None)
                if stream:
                    self.failed.add(idx)
                    await stream.close()
        return blocks

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

    async def block(self, stripe: int, blen: int) -> bytes:
        expected_pos = stripe * self.block_size
        if expected_pos != self._pos:
            raise ReadFailed(f"shard stream at {self._pos}, asked for {expected_pos}")
        if self.src.part.inline is not None:
            data = self.src.part.inline[self._pos:self._pos + blen]
        else:
            if self._reader is None:
                self._cm = self.client.open_blob(self.src.node, self.src.part.blob, self.src.index,
                                                    self.shard_off, self.shard_len)
                self._reader = await self._cm.__aenter__()
            data = await self._reader.read_exactly(blen)
            if self._started:
                self.view.record_success(self.src.node, time.monotonic() - self._started)
                self._started = 0.0
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

