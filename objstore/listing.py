"""Cluster-wide listing: merge the sorted record listings of the nodes into visible versions per key."""

from __future__ import annotations

import asyncio
from collections import defaultdict
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass

from objstore.client import NodeClient, NodeError
from objstore.cluster import NodeInfo
from objstore.records import ListEntry
from objstore.ring import Ring
from objstore.view import ClusterView

PAGE = 1000
"""Entries asked of a node at a time (at most; an S3 page of fewer keys asks for fewer)."""
MAX_PAGE = 10000
"""The most a node answers at once: a key with more versions than a page is asked for whole, up to this."""
KEY_CEILING = "\U0010ffff"
"""Sorts after every character a key may hold: `prefix + KEY_CEILING` skips every key under a prefix."""


def node_page(keys: int) -> int:
    """Entries to ask of each node for the next `keys` keys (of one version each) in one call.

    A node's full page may end in the middle of a key's versions, so its last key is dropped: one entry
    more than the keys needed, or every S3 page of 1000 keys took a second call to every node.
    """
    return min(MAX_PAGE, keys + 1)


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
                 versions: bool, page: int) -> None:
        self.client, self.node = client, node
        self.bucket, self.prefix, self.versions = bucket, prefix, versions
        self.after = start_after
        self.page = page
        self.buffer: list[ListEntry] = []
        self.pos = 0
        self.done = False
        self.failed = False

    @property
    def hungry(self) -> bool:
        return not self.done and self.pos >= len(self.buffer)

    def peek_key(self) -> str | None:
        return self.buffer[self.pos].key if self.pos < len(self.buffer) else None

    async def fill(self) -> None:
        if not self.hungry:
            return
        limit = self.page
        while True:
            try:
                page = await self.client.list_entries(self.node, self.bucket, prefix=self.prefix,
                                                      start_after=self.after, limit=limit, versions=self.versions)
            except (NodeError, OSError, asyncio.TimeoutError):
                self.done = self.failed = True
                self.buffer, self.pos = [], 0
                return
            if len(page) < limit:
                self.done = True
            elif page[0].key != page[-1].key:
                # A full page may end in the middle of a key's versions: keep whole keys only.
                last = page[-1].key
                page = [e for e in page if e.key != last]
            elif limit < MAX_PAGE:
                limit = min(MAX_PAGE, limit * 4)  # one key fills the page: ask again for all of it
                continue
            break
        self.buffer, self.pos = page, 0
        if page:
            self.after = page[-1].key

    def take(self, key: str) -> list[ListEntry]:
        start = self.pos
        while self.pos < len(self.buffer) and self.buffer[self.pos].key == key:
            self.pos += 1
        return self.buffer[start:self.pos]

    def skip_to(self, after: str) -> None:
        """Drop everything up to and including keys <= `after`."""
        while self.pos < len(self.buffer) and self.buffer[self.pos].key <= after:
            self.pos += 1
        if self.pos >= len(self.buffer) and after > self.after:
            self.after = after

    def skip_before(self, key: str) -> None:
        """Drop the keys sorting before `key`."""
        while True:
            head = self.peek_key()
            if head is None or head >= key:
                return
            self.take(head)


def listing_nodes(view: ClusterView, ring: Ring) -> tuple[list[NodeInfo], list[NodeInfo]]:
    """The nodes a listing asks, and those it keeps in reserve for keys it cannot settle without them.

    A write is acknowledged with k+1 distinct shards, each on its own node when the pool has at least
    k+m active nodes, so the listings of all nodes but one still show k of them: one node is left out
    (one out of rotation if any, else the last), and asked only if a key shows a version with fewer
    than k shards (a write in progress, or one that lost a shard since). Nodes out of rotation are kept
    in reserve as well, so they do not stall every listing.
    """
    nodes = [n for n in ring.map.pool_nodes(ring.pool.name) if n.state != "removed"]
    if len(ring.nodes) < ring.ec.width:  # a node may hold several shards of a version: all are needed
        return nodes, []
    live = [n for n in nodes if view.available(n)]
    if len(live) == len(nodes) and len(live) > ring.ec.k:
        return live[:-1], live[-1:]
    return live, [n for n in nodes if not view.available(n)]


class MergedListing:
    """Keys of a bucket in order, each with its visible versions (newest first), merged across nodes.

    A version is visible when at least `k` distinct shard records of it are found, the same rule as
    reads, so a failed write never shows up in a listing. `page` entries are asked of a node at a time;
    `reserve` nodes join the listing the first time a key shows a version with fewer than `k` shards.
    """

    def __init__(self, client: NodeClient, nodes: Sequence[NodeInfo], bucket: str, k: int, prefix: str = "",
                 start_after: str = "", versions: bool = True, page: int = PAGE,
                 reserve: Sequence[NodeInfo] = ()) -> None:
        self.k = k
        self.client, self.bucket, self.prefix, self.versions, self.page = client, bucket, prefix, versions, page
        self.cursors = [_NodeCursor(client, n, bucket, prefix, start_after, versions, page) for n in nodes]
        self.reserve = list(reserve)
        self.last = start_after  # every key up to this one has been yielded or passed over

    @property
    def nodes_failed(self) -> int:
        return sum(c.failed for c in self.cursors)

    def skip_to(self, after: str) -> None:
        for c in self.cursors:
            c.skip_to(after)
        self.last = max(self.last, after)

    async def _call_reserve(self, key: str) -> list[ListEntry]:
        """Bring the reserve nodes in from `key` on; their entries of `key`."""
        joining = [_NodeCursor(self.client, n, self.bucket, self.prefix, self.last, self.versions, self.page)
                   for n in self.reserve]
        self.reserve = []
        await asyncio.gather(*(c.fill() for c in joining))
        for c in joining:
            c.skip_before(key)  # keys no other node holds cannot have k shards
            await c.fill()
        self.cursors += joining
        return [e for c in joining for e in c.take(key)]

    async def keys(self) -> AsyncIterator[tuple[str, list[VersionInfo]]]:
        while True:
            hungry = [c for c in self.cursors if c.hungry]
            if hungry:
                await asyncio.gather(*(c.fill() for c in hungry))
            key = min((k for c in self.cursors if (k := c.peek_key()) is not None), default=None)
            if key is None:
                return
            entries = [e for c in self.cursors for e in c.take(key)]
            visible = visible_entries(entries, self.k)
            if self.reserve and _unsettled(entries, visible):
                entries += await self._call_reserve(key)
                visible = visible_entries(entries, self.k)
            self.last = max(self.last, key)
            if visible:
                yield key, visible


def _unsettled(entries: list[ListEntry], visible: list[VersionInfo]) -> bool:
    """Some version shows fewer than k distinct shards (`visible_entries` left it out): another node may
    hold the one that makes it visible."""
    return len(visible) < len({e.version for e in entries})


def visible_entries(entries: list[ListEntry], k: int) -> list[VersionInfo]:
    first = entries[0]
    if all(e.version == first.version for e in entries):  # the usual case: one version of the key
        shards = len({e.shard for e in entries})
        if shards < k:
            return []
        return [VersionInfo(first.key, first.version, first.deleted, first.size, first.etag, first.created, shards)]
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
