"""Cluster-wide listing: merge the sorted record listings of the nodes into visible versions per key."""

from __future__ import annotations

import asyncio
import heapq
from collections import defaultdict
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass

from objstore.client import NodeClient, NodeError
from objstore.cluster import NodeInfo
from objstore.records import ListEntry

PAGE = 1000
KEY_CEILING = "\U0010ffff"
"""Sorts after every character a key may hold: `prefix + KEY_CEILING` skips every key under a prefix."""


@dataclass
class VersionInfo:
    """One visible version of a key, as the listing sees it."""

    key: str
    version: str
    deleted: bool
    size: int
    etag: str
    created: int
    shards: int  # distinct shard indexes found


class _NodeCursor:
    """Pages through one node's sorted listing, holding only whole keys."""

    def __init__(self, client: NodeClient, node: NodeInfo, bucket: str, prefix: str, start_after: str,
                 versions: bool) -> None:
        self.client, self.node = client, node
        self.bucket, self.prefix, self.versions = bucket, prefix, versions
        self.after = start_after
        self.buffer: list[ListEntry] = []
        self.pos = 0
        self.done = False
        self.failed = False

    def peek_key(self) -> str | None:
        return self.buffer[self.pos].key if self.pos < len(self.buffer) else None

    async def fill(self) -> None:
        if self.done or self.pos < len(self.buffer):
            return
        try:
            page = await self.client.list_entries(self.node, self.bucket, prefix=self.prefix,
                                                  start_after=self.after, limit=PAGE, versions=self.versions)
        except (NodeError, OSError, asyncio.TimeoutError):
            self.done = self.failed = True
            self.buffer, self.pos = [], 0
            return
        if len(page) < PAGE:
            self.done = True
        elif page[0].key != page[-1].key:
            # A full page may end in the middle of a key's versions: keep whole keys only.
            last = page[-1].key
            page = [e for e in page if e.key != last]
        self.buffer, self.pos = page, 0
        if page:
            self.after = page[-1].key

    def take(self, key: str) -> list[ListEntry]:
        out = []
        while self.pos < len(self.buffer) and self.buffer[self.pos].key == key:
            out.append(self.buffer[self.pos])
            self.pos += 1
        return out

    def skip_to(self, after: str) -> None:
        """Drop everything up to and including keys <= `after`."""
        while self.pos < len(self.buffer) and self.buffer[self.pos].key <= after:
            self.pos += 1
        if self.pos >= len(self.buffer) and after > self.after:
            self.after = after


class MergedListing:
    """Keys of a bucket in order, each with its visible versions (newest first), merged across nodes.

    A version is visible when at least `k` distinct shard records of it are found, the same rule as
    reads, so a failed write never shows up in a listing.
    """

    def __init__(self, client: NodeClient, nodes: Sequence[NodeInfo], bucket: str, k: int, prefix: str = "",
                 start_after: str = "", versions: bool = True) -> None:
        self.k = k
        self.cursors = [_NodeCursor(client, n, bucket, prefix, start_after, versions) for n in nodes]

    @property
    def nodes_failed(self) -> int:
        return sum(c.failed for c in self.cursors)

    def skip_to(self, after: str) -> None:
        for c in self.cursors:
            c.skip_to(after)

    async def keys(self) -> AsyncIterator[tuple[str, list[VersionInfo]]]:
        while True:
            await asyncio.gather(*(c.fill() for c in self.cursors))
            heads = [k for c in self.cursors if (k := c.peek_key()) is not None]
            if not heads:
                return
            key = heapq.nsmallest(1, heads)[0]
            entries = [e for c in self.cursors for e in c.take(key)]
            visible = visible_entries(entries, self.k)
            if visible:
                yield key, visible


def visible_entries(entries: list[ListEntry], k: int) -> list[VersionInfo]:
    by_version: dict[str, list[ListEntry]] = defaultdict(list)
    for e in entries:
        by_version[e.version].append(e)
    out = []
    for version in sorted(by_version, reverse=True):
        group = by_version[version]
        shards = len({e.shard for e in group})
        if shards >= k:
            e = group[0]
            out.append(VersionInfo(e.key, version, e.deleted, e.size, e.etag, e.created, shards))
    return out
