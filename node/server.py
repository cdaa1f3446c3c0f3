"""The storage node process: the signed node RPC over the Store, the map it holds, and `run`."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import shutil
import signal
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import msgpack
from aiohttp import web

from node import metrics
from node.shards import BlobRow, ShardReader, ShardUpload
from node.store import BlobMissing, BlobReferenced, CorruptShard, DiskFull, Store, carries_shards
from objstore import auth
from objstore.cluster import ClusterMap, ClusterMapError, NodeInfo
from objstore.codec import codec_summary
from objstore.config import NodeConfig
from objstore.logs import setup_logging
from objstore.records import KVRecord, ObjectRecord, PartRef, RecordError
from objstore.runtime import tune_gc

log = logging.getLogger("objstore.node")
R = TypeVar("R")

WRITE_BATCH = 1 << 20
"""Bytes of an incoming shard gathered before one write+hash job; one job runs while the next batch arrives."""
READ_BATCH = 1 << 20
"""Bytes of verified blocks read per job when serving a shard; the next batch is read while this one is sent."""
MAX_BLOCK_SIZE = 64 << 20
OLDER_VERSIONS_SHOWN = 100
"""Older versions of a key a put_record answer names at most (a versioned key may have thousands)."""
COUNTS_TTL = 5.0
"""Seconds /health reuses the record and blob counts: peers ask every second, counting is a table scan."""
FAULT_DELAY = float(os.environ.get("OBJSTORE_FAULT_DELAY", "0") or 0)
"""Fault hook: seconds every RPC but /health waits before it is served (tests of slow nodes)."""
FAULT_DISK_FULL_AFTER = "OBJSTORE_FAULT_DISK_FULL_AFTER"
"""Fault hook (environment): a shard upload fails with ENOSPC once it would pass this many bytes."""


@dataclass
class PeerState:
    last_ok: float = 0.0
    epoch: int = 0


@dataclass
class Node:
    """Everything the handlers share."""

    cfg: NodeConfig
    store: Store
    cmap: ClusterMap
    disk: ThreadPoolExecutor  # shard file I/O and hashing; SQLite has its own thread (store.sql_executor)
    started: float = field(default_factory=time.monotonic)
    peers: dict[str, PeerState] = field(default_factory=dict)
    loops: Any = None  # node.loops.Loops once the app runs with its background loops
    stopping: asyncio.Event = field(default_factory=asyncio.Event)
    exit_code: int = 0  # what the process exits with once `stopping` is set
    _map_lock: threading.Lock = field(default_factory=threading.Lock)
    digests_lock: asyncio.Lock = field(default_factory=asyncio.Lock)  # one `partition_digests` settles at a time
    _counts: tuple[float, dict[str, int]] = (0.0, {})

    def run(self, fn: Callable[..., R], *args: Any) -> asyncio.Future[R]:
        """Start fn(*args) on the disk pool now; await the result."""
        return asyncio.get_running_loop().run_in_executor(self.disk, fn, *args)

    def sql(self, fn: Callable[..., R], *args: Any) -> asyncio.Future[R]:
        """Start a Store query on the SQLite thread now; await the result."""
        return asyncio.get_running_loop().run_in_executor(self.store.sql_executor, fn, *args)

    async def counts(self) -> dict[str, int]:
        at, counts = self._counts
        if time.monotonic() - at > COUNTS_TTL:
            counts = await self.sql(self.store.counts)
            self._counts = (time.monotonic(), counts)
        return {**counts, "corrupt_found": self.store.corrupt_found}

    def peer_state(self, node_id: str) -> str:
        """up, suspect or down, by the time since the last answered heartbeat."""
        if node_id == self.cfg.id:
            return "up"
        p = self.peers.get(node_id)
        last = p.last_ok if p and p.last_ok else self.started
        silent = time.monotonic() - last
        if silent < 3 * self.cfg.heartbeat_interval:
            return "up"
        return "suspect" if silent < self.cfg.down_after else "down"

    def adopt_map(self, cmap: ClusterMap) -> bool:
        """Keep a map with a newer epoch (saved to data_dir/cluster.json first); older or equal ones are ignored.

        Blocks (it writes a file): call it from the disk pool. The lock keeps two concurrent adoptions
        from ending on the older map.
        """
        with self._map_lock:
            if cmap.epoch <= self.cmap.epoch:
                return False
            cmap.save(Path(self.cfg.data_dir) / "cluster.json")
            self.cmap = cmap
        if self.loops is not None:
            self.loops.view.adopt(cmap)
        log.info("adopted cluster map epoch %d", cmap.epoch, extra={"epoch": cmap.epoch})
        return True


NODE = web.AppKey("node", Node)
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _packed(obj: Any, status: int = 200) -> web.Response:
    return web.Response(status=status, body=msgpack.packb(obj, use_bin_type=True), content_type="application/msgpack")


def _error(status: int, code: str, message: str) -> web.Response:
    return _packed({"code": code, "message": message}, status)


@web.middleware
async def auth_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Refuse unsigned, stale or forged calls before anything else runs."""
    node = request.app[NODE]
    # /metrics alone is unsigned: Prometheus cannot sign, and it serves counters only (see node/metrics.py)
    if request.path != metrics.METRICS_PATH and not auth.verify(node.cfg.secret, request.method, request.raw_path,
                                                                 request.headers):
        return _error(401, "unauthorized", "missing, stale or invalid signature")
    if FAULT_DELAY and request.path != "/health":
        await asyncio.sleep(FAULT_DELAY)  # fault hook: a slow disk or link, for the hedged-read chaos test
    return await handler(request)


def _failure(e: Exception) -> tuple[int, str, str] | None:
    """The status, code and message a typed failure is answered with; None for anything else (a 500)."""
    if isinstance(e, RecordError):
        return 400, "bad_record", str(e)
    if isinstance(e, (KeyError, ValueError)):
        return 400, "bad_request", f"{type(e).__name__}: {e}"
    if isinstance(e, DiskFull):
        return 507, "disk_full", str(e)
    if isinstance(e, CorruptShard):
        return 409, "corrupt", str(e)
    if isinstance(e, BlobMissing):
        return 409, "blob_missing", str(e)
    if isinstance(e, BlobReferenced):
        return 409, "referenced", str(e)
    return None


@web.middleware
async def errors_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Typed failures to statuses, in one table (`_failure`); anything else is a 500 with a logged traceback."""
    try:
        return await handler(request)
    except (RecordError, KeyError, ValueError, DiskFull, CorruptShard, BlobMissing, BlobReferenced) as e:
        if isinstance(e, DiskFull):
            log.warning("disk full: %s", e, extra={"path": request.path})
        elif isinstance(e, CorruptShard):
            log.warning("%s", e, extra={"blob": e.row.blob, "shard": e.row.shard})
        status, code, message = _failure(e) or (500, "internal", str(e))
        return _error(status, code, message)


def _q(request: web.Request, name: str) -> str:
    value = request.query.get(name)
    if value is None:
        raise KeyError(f"query parameter {name!r} is required")
    return value


def _blob_id(request: web.Request) -> tuple[str, int]:
    return request.match_info["blob"], int(request.match_info["shard"])


# -- shards ---------------------------------------------------------------------------------------


async def put_blob(request: web.Request) -> web.Response:
    """Stream the body into a temp file (write and hash in the disk pool), make it durable, then add the row.

    The body is handed over in batches of WRITE_BATCH bytes, one job each while the next batch arrives;
    the first job makes the temp file and the last one makes it durable, so a shard of one batch is one job.
    """
    node = request.app[NODE]
    blob, shard = _blob_id(request)
    partition, block_size = int(_q(request, "partition")), int(_q(request, "block_size"))
    if not 0 <= partition < 1 << 20 or not 0 < block_size <= MAX_BLOCK_SIZE:
        return _error(400, "bad_request", f"partition {partition} or block_size {block_size} out of range")
    store = node.store
    store.blob_path(partition, blob, shard)  # a bad blob id is a 400 before a byte of the body is read
    upload: ShardUpload[BlobRow] = ShardUpload(
        lambda: store.begin_blob(partition, blob, shard, block_size),
        lambda w: store.finish_blob(w, partition, blob, shard))
    in_flight: asyncio.Future[BlobRow | None] | None = None
    ok = False
    try:
        batch: list[bytes] = []
        size = 0
        async for chunk in request.content.iter_any():
            batch.append(chunk)
            size += len(chunk)
            if size >= WRITE_BATCH:
                if in_flight is not None:
                    await in_flight
                in_flight, batch, size = node.run(upload.write, batch), [], 0
        if in_flight is not None:
            await in_flight
        in_flight = node.run(upload.write, batch, True)
        row = await in_flight
        assert row is not None
        ok = True
    finally:
        if not ok:
            # abort waits for a job still running (the upload's lock) and refuses any that starts after it;
            # shielded so a cancelled handler still removes its temp file.
            await asyncio.shield(node.run(upload.abort))
    log.debug("blob stored", extra={"blob": blob, "shard": shard, "size": row.size})
    return _packed({"checksums": row.checksums, "size": row.size})


@dataclass
class _ShardRead:
    """What the first disk job of a GET found: the row (None: not here), and if the range is valid and the
    shard healthy, the open reader and the first verified blocks."""

    row: BlobRow | None
    length: int = 0
    reader: ShardReader | None = None
    data: bytes = b""


def _open_and_read(node: Node, blob: str, shard: int, offset: int, length: int | None) -> _ShardRead:
    """Look the shard's row up, open the file (its size is checked: CorruptShard) and read the first verified
    blocks of the range, in one disk job; the file is closed in the same job when that is the whole range."""
    row = node.store.blob_for_read(blob, shard)
    if row is None or row.state == "corrupt":
        return _ShardRead(row)
    if length is None:
        length = max(0, row.size - offset)
    if offset < 0 or length < 0 or offset + length > row.size:
        return _ShardRead(row, length)
    bs = row.block_size
    per_job = max(1, READ_BATCH // bs)
    first, end = offset // bs, -(-(offset + length) // bs) if length else offset // bs
    reader = node.store.open_shard(row)
    return _ShardRead(row, length, reader, reader.read_blocks(first, min(per_job, end - first), close=first + per_job >= end))


async def get_blob(request: web.Request) -> web.StreamResponse:
    """Stream a byte range of a shard; every block it touches is verified before any of its bytes go out.

    Disk work is one job per READ_BATCH (the next batch is read while this one is sent): the first job
    also looks the row up and opens the file, the last one closes it, so a shard of one batch is one job.
    """
    node = request.app[NODE]
    blob, shard = _blob_id(request)
    offset = int(request.query.get("offset", "0"))
    length = int(request.query["length"]) if "length" in request.query else None
    opening = node.disk.submit(_open_and_read, node, blob, shard, offset, length)
    reader: ShardReader | None = None
    next_read: asyncio.Future[bytes] | None = None
    try:
        found = await asyncio.wrap_future(opening)  # a bad size or first block is still a clean 409
        row, reader, data = found.row, found.reader, found.data
        if row is None:
            return _error(404, "not_found", f"blob {blob}.{shard} not here")
        if row.state == "corrupt":
            return _error(409, "corrupt", f"blob {blob}.{shard} is quarantined")
        if reader is None:
            return _error(416, "bad_range", f"range {offset}+{found.length} of a {row.size}-byte shard")
        length = found.length
        bs = row.block_size
        per_job = max(1, READ_BATCH // bs)
        first, end = offset // bs, -(-(offset + length) // bs) if length else offset // bs
        resp = web.StreamResponse(status=200, headers={"Content-Type": "application/octet-stream"})
        resp.content_length = length
        await resp.prepare(request)
        skip, remaining, block = offset - first * bs, length, first
        while remaining > 0:
            block += per_job
            next_read = node.run(reader.read_blocks, block, min(per_job, end - block),
                                 block + per_job >= end) if block < end else None
            piece = memoryview(data)[skip:skip + remaining]
            await resp.write(piece)
            skip, remaining = 0, remaining - len(piece)
            if next_read is None:
                break
            try:
                data = await next_read
            except CorruptShard as e:
                # Headers are gone already: cut the connection so the reader sees a short, failed body.
                log.warning("%s (mid-stream)", e, extra={"blob": blob, "shard": shard})
                if request.transport is not None:
                    request.transport.abort()
                return resp
        await resp.write_eof()
        return resp
    finally:
        if not opening.done() or reader is None:
            # Cancelled while the first job ran: the reader it makes (if any) is closed where it is made.
            opening.add_done_callback(_close_opened)
        else:
            if next_read is not None and not next_read.done():
                await asyncio.gather(next_read, return_exceptions=True)
            if not reader.closed:
                await asyncio.shield(node.run(reader.close))


def _close_opened(done: Future[_ShardRead]) -> None:
    if not done.cancelled() and done.exception() is None:
        reader = done.result().reader
        if reader is not None:
            reader.close()


async def delete_blob(request: web.Request) -> web.Response:
    """Remove a shard file; refused (409 referenced) while a record names it, unless force=1."""
    node = request.app[NODE]
    blob, shard = _blob_id(request)
    found = await node.run(node.store.delete_blob, blob, shard, request.query.get("force") == "1")
    return _packed({"deleted": found})


# -- records --------------------------------------------------------------------------------------


async def put_record(request: web.Request) -> web.Response:
    """Store a record; the answer names the older versions of its key held here, so a writer that
    retires them knows where to go (omitted past OLDER_VERSIONS_SHOWN: the writer asks /versions)."""
    node = request.app[NODE]
    rec = ObjectRecord.unpack(await request.read())

    def commit() -> list[str]:
        node.store.put_record(rec)
        return node.store.older_versions(rec.bucket, rec.key, rec.version, OLDER_VERSIONS_SHOWN + 1)

    older = await node.run(commit)
    return _packed({"ok": True, **({"older": older} if len(older) <= OLDER_VERSIONS_SHOWN else {})})


async def get_record(request: web.Request) -> web.Response:
    node = request.app[NODE]
    recs = await node.sql(node.store.get_record, _q(request, "bucket"), _q(request, "key"),
                          request.query.get("version"))
    return _packed([r.pack() for r in recs])


MAX_BATCH = 256
"""Calls one batched record RPC may carry."""


async def _batch(request: web.Request) -> list[Any]:
    calls = msgpack.unpackb(await request.read(), raw=False)
    if not isinstance(calls, list) or not 0 < len(calls) <= MAX_BATCH:
        raise ValueError(f"a batch is a list of 1 to {MAX_BATCH} calls")
    return calls


def _answer(result: Any) -> list[Any]:
    """One call of a batch: [200, result] or [status, {code, message}] as the single RPC would answer."""
    if isinstance(result, Exception):
        status, code, message = _failure(result) or (500, "internal", str(result))
        return [status, {"code": code, "message": message}]
    return [200, result]


async def put_records(request: web.Request) -> web.Response:
    """Store several records in one transaction (group commit); each is answered on its own, as /record would.

    Writers send what queued for this node while their previous call was out, so under load one fsync
    covers many objects, and a lone write waits for nothing. A shard a record carries above the inline
    size is written to its shard file first (`Store.put_records`), and its row commits with the record.
    """
    node = request.app[NODE]
    recs: list[ObjectRecord | Exception] = []
    for packed in await _batch(request):
        try:
            recs.append(ObjectRecord.unpack(packed))
        except RecordError as e:
            recs.append(e)
    valid = [r for r in recs if isinstance(r, ObjectRecord)]
    if any(carries_shards(r) for r in valid):  # their shard files first, then the commit, in one disk job
        results = await node.run(node.store.put_records, valid, OLDER_VERSIONS_SHOWN + 1)
    else:
        results, freed = await node.sql(node.store.commit_records, valid, OLDER_VERSIONS_SHOWN + 1) if valid else ([], [])
        if freed:
            await node.run(node.store.unlink_shards, freed)
    done = iter(results)
    answers = []
    for r in recs:
        result = r if isinstance(r, Exception) else next(done)
        if isinstance(result, list):
            result = {"ok": True, **({"older": result} if len(result) <= OLDER_VERSIONS_SHOWN else {})}
        answers.append(_answer(result))
    return _packed(answers)


async def delete_records(request: web.Request) -> web.Response:
    """Several /record deletes ([bucket, key, version] each) in one transaction; answers [200, {"deleted"}] each."""
    node = request.app[NODE]
    versions = [(str(b), str(k), str(v)) for b, k, v in await _batch(request)]
    counts, freed = await node.sql(node.store.drop_records, versions)
    if freed:
        await node.run(node.store.unlink_shards, freed)
    return _packed([_answer({"deleted": n}) for n in counts])


async def get_records(request: web.Request) -> web.Response:
    """Several /record lookups ([bucket, key, version or None] each) in one call and one SQLite job.

    With `shard_max=N` each answer is {"records", "shards"}: beside each record, the verified bytes of its
    shard when the record has one blob part whose shard file holds at most N bytes (else nil), so a reader
    of a medium object needs no second call per holder. The shards are read in one disk job after the
    lookup; a damaged one is quarantined (as a shard GET would) and answered nil.
    """
    node = request.app[NODE]
    calls = [(str(b), str(k), None if v is None else str(v)) for b, k, v in await _batch(request)]
    shard_max = int(request.query.get("shard_max", "0"))

    def lookup() -> list[list[tuple[ObjectRecord, bytes]]]:
        return [node.store.get_record_packed(*call) for call in calls]

    found = await node.sql(lookup)  # each record beside its stored bytes, which the answer carries
    if shard_max <= 0:
        return _packed([_answer([packed for _, packed in recs]) for recs in found])
    records = [[rec for rec, _ in recs] for recs in found]
    if any(_blob_part(r) is not None for recs in records for r in recs):
        shards = await node.run(_small_shards, node, records, shard_max)
    else:  # small objects (shards inline), delete markers, nothing found: no disk job
        shards = [[None] * len(recs) for recs in records]
    return _packed([_answer({"records": [packed for _, packed in recs], "shards": data})
                    for recs, data in zip(found, shards, strict=True)])


SHARDS_PER_ANSWER = 16 << 20
"""Shard bytes one batched record lookup carries at most; records past it are answered without (the reader
opens a shard stream instead)."""


def _blob_part(rec: ObjectRecord) -> PartRef | None:
    """The one part of a single-part object whose shard is in a blob file here, else None."""
    if len(rec.parts) != 1 or rec.deleted:
        return None
    part = rec.parts[0]
    return part if part.inline is None and part.present else None


def _small_shards(node: Node, found: list[list[ObjectRecord]], shard_max: int) -> list[list[bytes | None]]:
    """The verified bytes of each record's shard if it has one blob part of at most `shard_max` bytes (a disk job)."""
    budget = SHARDS_PER_ANSWER
    out: list[list[bytes | None]] = []
    for recs in found:
        datas: list[bytes | None] = []
        for rec in recs:
            data = None
            part = _blob_part(rec)
            if part is not None and budget > 0:
                row = node.store.blob_for_read(part.blob, rec.shard)
                if row is not None and row.state != "corrupt" and row.size <= min(shard_max, budget):
                    try:
                        data = node.store.open_shard(row).read_blocks(0, row.blocks, close=True)
                    except CorruptShard as e:  # quarantined by the reader; the gateway reads another holder
                        log.warning("%s", e, extra={"blob": e.row.blob, "shard": e.row.shard})
                    except OSError as e:
                        log.warning("reading shard %s.%d: %s", part.blob, rec.shard, e)
                    if data is not None:
                        budget -= len(data)
            datas.append(data)
        out.append(datas)
    return out


async def get_versions(request: web.Request) -> web.Response:
    node = request.app[NODE]
    recs = await node.sql(node.store.versions, _q(request, "bucket"), _q(request, "key"))
    return _packed([r.pack() for r in recs])


async def delete_record(request: web.Request) -> web.Response:
    node = request.app[NODE]
    n = await node.run(node.store.delete_record, _q(request, "bucket"), _q(request, "key"), _q(request, "version"))
    return _packed({"deleted": n})


async def list_entries(request: web.Request) -> web.Response:
    node = request.app[NODE]
    q = request.query
    limit = int(q.get("limit", "1000"))
    if not 0 <= limit <= 10000:
        return _error(400, "bad_request", f"limit {limit} outside 0..10000")
    rows = await node.sql(node.store.list_rows, _q(request, "bucket"), q.get("prefix", ""),
                          q.get("start_after", ""), limit, q.get("versions") == "1")
    return _packed(rows)


async def partition_digest(request: web.Request) -> web.Response:
    node = request.app[NODE]
    digest, count, size, markers = await node.sql(node.store.partition_digest, int(request.match_info["p"]))
    return _packed({"digest": digest, "count": count, "bytes": size, "markers": markers})


PARTITIONS_JOB_SECONDS = 0.005
"""How long one SQL job of `partition_digests` or `partitions_records` runs before the node's other requests go on."""


async def partition_digests(request: web.Request) -> web.Response:
    """Every held partition's digest in one answer: a repair pass asks each node once, not once a partition.

    The digests of partitions written since the last ask are settled in SQL jobs of a few milliseconds.
    Every node's repair pass asks at about the same time; the askers take turns, so the second finds
    the digests the first settled, instead of each settling them all again."""
    node = request.app[NODE]
    async with node.digests_lock:
        kept, missing = await node.sql(node.store.kept_digests)
        while missing:
            done = await node.sql(node.store.each_partition, node.store.partition_digest, missing,
                                  PARTITIONS_JOB_SECONDS)
            kept.update(zip(missing, done))
            missing = missing[len(done):]
    return _packed({"empty": list(node.store.EMPTY_DIGEST), "held": [[p, *d] for p, d in sorted(kept.items())]})


async def partition_records(request: web.Request) -> web.Response:
    node = request.app[NODE]
    return _packed([list(s) for s in await node.sql(node.store.partition_summaries, int(request.match_info["p"]))])


async def partitions_records(request: web.Request) -> web.Response:
    """Several `/partition/{p}/records` ([p] each) in one call, read in SQL jobs of a few milliseconds;
    answers [200, rows] each. A repair pass drilling into many partitions (delete markers come due
    everywhere at once) asked every node one request a partition: 8 ms of cluster CPU per key collected."""
    node = request.app[NODE]
    partitions = [int(p) for p in await _batch(request)]
    found: list[list[tuple[str, str, str, int, bool, bool]]] = []
    while len(found) < len(partitions):
        found += await node.sql(node.store.each_partition, node.store.partition_summaries, partitions[len(found):],
                                PARTITIONS_JOB_SECONDS)
    return _packed([_answer([list(row) for row in rows]) for rows in found])


async def partitions_held(request: web.Request) -> web.Response:
    node = request.app[NODE]
    return _packed(await node.sql(node.store.partitions_held))


# -- KV, map, health ------------------------------------------------------------------------------


async def put_kv(request: web.Request) -> web.Response:
    node = request.app[NODE]
    rec = KVRecord.unpack(await request.read())
    return _packed({"stored": await node.sql(node.store.put_kv, rec)})


async def forget_kv(request: web.Request) -> web.Response:
    """Remove KV tombstones nobody needs any more ([ns, name, version] each, see kv.forgettable); one that is
    no longer that version, or no longer deleted, stays. Answers [200, {"forgotten"}] each."""
    node = request.app[NODE]
    tombstones = [(str(ns), str(name), str(v)) for ns, name, v in await _batch(request)]
    gone = await node.sql(node.store.forget_kv, tombstones)
    return _packed([_answer({"forgotten": g}) for g in gone])


async def get_kv(request: web.Request) -> web.Response:
    node = request.app[NODE]
    rec = await node.sql(node.store.get_kv, _q(request, "ns"), _q(request, "name"))
    if rec is None:
        return _error(404, "not_found", "no such document")
    return web.Response(body=rec.pack(), content_type="application/msgpack")


async def list_kv(request: web.Request) -> web.Response:
    node = request.app[NODE]
    recs = await node.sql(node.store.list_kv, _q(request, "ns"), request.query.get("prefix", ""))
    return _packed([r.pack() for r in recs])


async def get_map(request: web.Request) -> web.Response:
    return web.json_response(request.app[NODE].cmap.to_dict())


async def put_map(request: web.Request) -> web.Response:
    node = request.app[NODE]
    try:
        cmap = ClusterMap.from_dict(json.loads(await request.read()))
    except (ClusterMapError, ValueError, TypeError) as e:
        return _error(400, "bad_map", str(e))
    adopted = await node.run(node.adopt_map, cmap)
    return web.json_response({"adopted": adopted, "epoch": node.cmap.epoch})


async def health(request: web.Request) -> web.Response:
    """The node's state for operators; `?brief=1` (a heartbeat, a gateway's poll): id, map epoch and peer states
    alone, answered without a disk or SQL job."""
    node = request.app[NODE]
    peers = {n.id: node.peer_state(n.id) for n in node.cmap.nodes if n.state != "removed"}
    if request.query.get("brief") == "1":
        return web.json_response({"id": node.cfg.id, "epoch": node.cmap.epoch, "peers": peers})
    counts = await node.counts()
    usage = await node.run(shutil.disk_usage, node.cfg.data_dir)
    return web.json_response({
        "id": node.cfg.id, "epoch": node.cmap.epoch, "uptime": time.monotonic() - node.started,
        "disk_total": usage.total, "disk_free": usage.free, **counts, "peers": peers,
        **(node.loops.report() if node.loops else {}),
    })


async def pause(request: web.Request) -> web.Response:
    """Hold this node's repair, scrub and pending-shard collection for `seconds` (0: resume them); see Loops.pause."""
    node = request.app[NODE]
    try:
        seconds = float(request.query["seconds"])
        if seconds != seconds:  # NaN
            raise ValueError("not a number")
    except (KeyError, ValueError) as e:
        return _error(400, "bad_pause", f"seconds: {e}")
    if node.loops is None:
        return _error(409, "no_loops", "this node runs without background loops")
    try:
        left = node.loops.pause(seconds)
    except ValueError as e:
        return _error(400, "bad_pause", str(e))
    return web.json_response({"id": node.cfg.id, "paused_for": round(left, 1)})


async def stats(request: web.Request) -> web.Response:
    """Fresh counts (records, blobs and their bytes, pending and quarantined blobs, corrupt found)."""
    node = request.app[NODE]
    counts = await node.sql(node.store.counts)
    return web.json_response({"id": node.cfg.id, **counts, "swept_temp_files": node.store.swept,
                              "swept_orphan_shards": node.store.swept_orphans})


# -- the app and the process ----------------------------------------------------------------------


def initial_map(cfg: NodeConfig) -> ClusterMap | None:
    """The newer of the map this node saved and the configured one (None if neither exists)."""
    candidates = []
    for path in (Path(cfg.data_dir) / "cluster.json", Path(cfg.map) if cfg.map else None):
        if path is not None and path.exists():
            candidates.append(ClusterMap.load(path))
    return max(candidates, key=lambda m: m.epoch) if candidates else None


async def map_from_seeds(cfg: NodeConfig) -> ClusterMap:
    """The newest map any seed answers with (a node started with `seeds` and no map file)."""
    from objstore.client import NodeClient, NodeError

    async with NodeClient(cfg.secret, timeout=5.0) as client:
        seeds = [NodeInfo(id=f"seed:{s}", address=s, zone="?") for s in cfg.seeds]
        answers = await asyncio.gather(*(client.get_map(s) for s in seeds), return_exceptions=True)
    maps = [a for a in answers if isinstance(a, ClusterMap)]
    if not maps:
        errors = "; ".join(str(a) for a in answers if isinstance(a, (NodeError, ClusterMapError)))
        raise ClusterMapError(f"no cluster map: none in the config or data dir, and no seed answered ({errors})")
    return max(maps, key=lambda m: m.epoch)


def build_app(cfg: NodeConfig, cmap: ClusterMap | None = None, *, loops: bool = True,
              fail_after_bytes: int | None = None) -> web.Application:
    """The node's aiohttp app; `loops=False` serves the RPC without heartbeats, repair and scrub (tests)."""
    cmap = cmap or initial_map(cfg)
    if cmap is None:
        raise ClusterMapError("no cluster map: set 'map' in the node config")
    if fail_after_bytes is None and os.environ.get(FAULT_DISK_FULL_AFTER):
        fail_after_bytes = int(os.environ[FAULT_DISK_FULL_AFTER])
    store = Store(cfg.data_dir, cmap.partition_bits, cfg.fsync, fail_after_bytes)
    if store.swept:
        log.info("removed %d temp files left by an earlier run", store.swept, extra={"swept": store.swept})
    if store.swept_orphans:
        log.warning("removed %d shard files no record names, left by an earlier run", store.swept_orphans,
                    extra={"swept": store.swept_orphans})
    node = Node(cfg, store, cmap, ThreadPoolExecutor(max_workers=4, thread_name_prefix=f"disk-{cfg.id}"))
    app = web.Application(middlewares=[metrics.observe_middleware, auth_middleware, errors_middleware],
                          client_max_size=64 * 1024 * 1024)
    app[NODE] = node
    metrics.install(app, node)
    blob = r"/blob/{blob:[A-Za-z0-9][A-Za-z0-9_-]*}/{shard:\d+}"
    r = app.router
    r.add_put(blob, put_blob)
    r.add_get(blob, get_blob)
    r.add_delete(blob, delete_blob)
    r.add_put("/record", put_record)
    r.add_get("/record", get_record)
    r.add_post("/records", put_records)
    r.add_post("/records/get", get_records)
    r.add_post("/records/delete", delete_records)
    r.add_delete("/record", delete_record)
    r.add_get("/versions", get_versions)
    r.add_get("/list", list_entries)
    r.add_get(r"/partition/{p:\d+}/digest", partition_digest)
    r.add_get(r"/partition/{p:\d+}/records", partition_records)
    r.add_post("/partitions/records", partitions_records)
    r.add_get("/partitions", partitions_held)
    r.add_get("/partitions/digests", partition_digests)
    r.add_put("/kv", put_kv)
    r.add_get("/kv", get_kv)
    r.add_get("/kvlist", list_kv)
    r.add_post("/kv/forget", forget_kv)
    r.add_get("/map", get_map)
    r.add_put("/map", put_map)
    r.add_get("/health", health)
    r.add_get("/stats", stats)
    r.add_put("/pause", pause)

    async def lifecycle(app: web.Application) -> AsyncIterator[None]:
        tasks: list[asyncio.Task[Any]] = []
        if loops:
            from node.loops import Loops

            node.loops = Loops(node)
            tasks = node.loops.start()
        try:
            yield
        finally:
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            if node.loops is not None:
                await node.loops.close()
            def close() -> None:  # waits for disk jobs and the SQLite thread: off the event loop
                node.disk.shutdown(wait=True)
                store.close()

            await asyncio.get_running_loop().run_in_executor(None, close)

    app.cleanup_ctx.append(lifecycle)
    return app


STOP_GRACE = 15.0
"""Seconds a stopping node may take to finish its requests and close its store before it exits anyway."""


def _exit_after(seconds: float, node: Node) -> None:
    """Exit with the node's exit code if stopping takes longer than `seconds`.

    A stop must end: `objstore dev`, systemd and Kubernetes restart a node only once it has exited, and a
    node that stopped itself because its data dir was wiped holds nothing worth a longer wait. A thread,
    not a task: what hangs may be a blocking call on the event loop itself.
    """
    def expire() -> None:
        os.write(2, f"node {node.cfg.id}: stopping took over {seconds:g} s, exiting {node.exit_code}\n".encode())
        os._exit(node.exit_code)

    timer = threading.Timer(seconds, expire)
    timer.daemon = True
    timer.start()


def run(cfg: NodeConfig) -> int:
    """Serve the node RPC until SIGTERM or SIGINT (exit code 0) or until the node stops itself (its data dir
    was wiped: EXIT_RESTART), then stop the loops and close the store. Returns the exit code."""
    setup_logging(cfg.log_level, cfg.id)
    tune_gc()
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    host, _, port = cfg.listen.rpartition(":")

    async def main() -> int:
        cmap = initial_map(cfg) or await map_from_seeds(cfg)
        app = build_app(cfg, cmap)
        node = app[NODE]
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        try:
            await web.TCPSite(runner, host, int(port), reuse_address=True).start()
            log.info("node %s listening on %s (erasure code: %s)", cfg.id, cfg.listen, codec_summary(node.cmap),
                     extra={"listen": cfg.listen})
            loop = asyncio.get_running_loop()
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.add_signal_handler(sig, node.stopping.set)
            await node.stopping.wait()
            log.info("node %s stopping", cfg.id)
            _exit_after(STOP_GRACE, node)
        finally:
            await runner.cleanup()
        return node.exit_code

    return asyncio.run(main())
