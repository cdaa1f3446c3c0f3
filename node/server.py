"""The storage node process: the signed node RPC over the Store, heartbeats and map gossip, and `run`."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import shutil
import signal
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgpack
import xxhash
from aiohttp import web

from objstore import auth
from objstore.cluster import ClusterMap, ClusterMapError
from objstore.config import NodeConfig
from objstore.logs import setup_logging
from objstore.records import KVRecord, ObjectRecord, RecordError

from node import metrics
from node.store import BlobMissing, CorruptShard, DiskFull, Store

log = logging.getLogger("objstore.node")
READ_CHUNK = 1 << 20
FAULT_DELAY = float(os.environ.get("OBJSTORE_FAULT_DELAY", "0") or 0)
"""Fault hook: seconds every RPC but /health waits before it is served (tests of slow nodes)."""


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
    disk: ThreadPoolExecutor
    started: float = field(default_factory=time.monotonic)
    peers: dict[str, PeerState] = field(default_factory=dict)
    loops: Any = None  # node.loops.Loops once the app runs

    async def run(self, fn: Any, *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self.disk, fn, *args)

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
        if cmap.epoch <= self.cmap.epoch:
            return False
        self.cmap = cmap
        if self.loops is not None:
            self.loops.view.adopt(cmap)
        cmap.save(Path(self.cfg.data_dir) / "cluster.json")
        log.info("adopted cluster map epoch %d", cmap.epoch)
        return True


NODE = web.AppKey("node", Node)


def _packed(obj: Any, status: int = 200) -> web.Response:
    return web.Response(status=status, body=msgpack.packb(obj, use_bin_type=True), content_type="application/msgpack")


def _error(status: int, code: str, message: str) -> web.Response:
    return _packed({"code": code, "message": message}, status)


@web.middleware
async def auth_middleware(request: web.Request, handler: Any) -> web.StreamResponse:
    node = request.app[NODE]
    # /metrics alone is unsigned: Prometheus cannot sign, and it serves counters only (see node/metrics.py)
    if request.path != metrics.METRICS_PATH and not auth.verify(node.cfg.secret, request.method, request.raw_path,
                                                                 request.headers):
        return _error(401, "unauthorized", "missing, stale or invalid signature")
    if FAULT_DELAY and request.path != "/health":
        await asyncio.sleep(FAULT_DELAY)  # fault hook: a slow disk or link, for the hedged-read chaos test
    try:
        return await handler(request)
    except RecordError as e:
        return _error(400, "bad_record", str(e))
    except (KeyError, ValueError) as e:
        return _error(400, "bad_request", f"{type(e).__name__}: {e}")


def _q(request: web.Request, name: str) -> str:
    value = request.query.get(name)
    if value is None:
        raise KeyError(f"query parameter {name!r} is required")
    return value


async def put_blob(request: web.Request) -> web.Response:
    node = request.app[NODE]
    blob, shard = _q(request, "blob"), int(_q(request, "shard"))
    partition, block_size = int(_q(request, "partition")), int(_q(request, "block_size"))
    tmp, fd = await node.run(node.store.open_temp, partition, blob, shard)
    sums: list[int] = []
    hasher = xxhash.xxh3_64()
    filled = 0
    written = 0

    def write(data: bytes) -> None:
        nonlocal filled, hasher
        node.store.write_chunk(fd, data, written)
        view = memoryview(data)
        while view:
            take = min(block_size - filled, len(view))
            hasher.update(view[:take])
            filled += take
            view = view[take:]
            if filled == block_size:
                sums.append(hasher.intdigest())
                hasher, filled = xxhash.xxh3_64(), 0

    ok = False
    try:
        buf = bytearray()
        async for chunk in request.content.iter_chunked(READ_CHUNK):
            buf += chunk
            if len(buf) >= READ_CHUNK:
                await node.run(write, bytes(buf))
                written += len(buf)
                buf.clear()
        if buf:
            await node.run(write, bytes(buf))
            written += len(buf)
        if filled:
            sums.append(hasher.intdigest())
        await node.run(node.store.finish_blob, tmp, fd, partition, blob, shard, written, block_size, sums)
        ok = True
    except DiskFull as e:
        return _error(507, "disk_full", str(e))
    finally:
        if not ok:
            await node.run(node.store.abort_blob, tmp, fd)
    return _packed({"checksums": sums, "size": written})


async def get_blob(request: web.Request) -> web.StreamResponse:
    node = request.app[NODE]
    blob, shard = _q(request, "blob"), int(_q(request, "shard"))
    row = await node.run(node.store.blob, blob, shard)
    if row is None:
        return _error(404, "not_found", f"blob {blob}.{shard} not here")
    if row.state == "corrupt":
        return _error(409, "corrupt", f"blob {blob}.{shard} is quarantined")
    offset = int(request.query.get("offset", "0"))
    length = int(request.query.get("length", str(row.size - offset)))
    if offset % row.block_size or offset < 0 or length < 0 or offset + length > row.size:
        return _error(400, "bad_range", f"range {offset}+{length} of a {row.size}-byte shard")
    resp = web.StreamResponse(status=200)
    resp.content_length = length
    if length == 0:
        await resp.prepare(request)
        await resp.write_eof()
        return resp
    first, last = offset // row.block_size, (offset + length - 1) // row.block_size
    blocks = node.store.read_blob_blocks(row, first, last)
    sentinel = object()
    try:
        data = await node.run(next, blocks, sentinel)
    except (CorruptShard, FileNotFoundError) as e:
        return _error(409, "corrupt", str(e))
    await resp.prepare(request)
    remaining = length
    while data is not sentinel and remaining > 0:
        piece = data[:remaining]  # type: ignore[index]
        await resp.write(piece)
        remaining -= len(piece)
        if remaining <= 0:
            break
        try:
            data = await node.run(next, blocks, sentinel)
        except CorruptShard:
            # Headers are gone already: cut the body short so the reader sees a failed shard.
            request.transport.close() if request.transport else None
            return resp
    await resp.write_eof()
    return resp


async def delete_blob(request: web.Request) -> web.Response:
    node = request.app[NODE]
    found = await node.run(node.store.delete_blob, _q(request, "blob"), int(_q(request, "shard")))
    return _packed({"deleted": found})


async def put_record(request: web.Request) -> web.Response:
    node = request.app[NODE]
    rec = ObjectRecord.unpack(await request.read())
    try:
        await node.run(node.store.put_record, rec)
    except BlobMissing as e:
        return _error(409, "blob_missing", str(e))
    return _packed({"ok": True})


async def get_record(request: web.Request) -> web.Response:
    node = request.app[NODE]
    recs = await node.run(node.store.get_record, _q(request, "bucket"), _q(request, "key"),
                          request.query.get("version"))
    return _packed([r.pack() for r in recs])


async def get_versions(request: web.Request) -> web.Response:
    node = request.app[NODE]
    recs = await node.run(node.store.versions, _q(request, "bucket"), _q(request, "key"))
    return _packed([r.pack() for r in recs])


async def delete_record(request: web.Request) -> web.Response:
    node = request.app[NODE]
    n = await node.run(node.store.delete_record, _q(request, "bucket"), _q(request, "key"), _q(request, "version"))
    return _packed({"deleted": n})


async def list_entries(request: web.Request) -> web.Response:
    node = request.app[NODE]
    q = request.query
    entries = await node.run(node.store.list_entries, _q(request, "bucket"), q.get("prefix", ""),
                             q.get("start_after", ""), min(int(q.get("limit", "1000")), 10000),
                             q.get("versions") == "1")
    return _packed([e.to_wire() for e in entries])


async def partition_digest(request: web.Request) -> web.Response:
    node = request.app[NODE]
    digest, count = await node.run(node.store.partition_digest, int(request.match_info["p"]))
    return _packed({"digest": digest, "count": count})


async def partition_records(request: web.Request) -> web.Response:
    node = request.app[NODE]
    return _packed([list(s) for s in await node.run(node.store.partition_summaries, int(request.match_info["p"]))])


async def partitions_held(request: web.Request) -> web.Response:
    node = request.app[NODE]
    return _packed(await node.run(node.store.partitions_held))


async def put_kv(request: web.Request) -> web.Response:
    node = request.app[NODE]
    rec = KVRecord.unpack(await request.read())
    stored = await node.run(node.store.put_kv, rec)
    return _packed({"stored": stored})


async def get_kv(request: web.Request) -> web.Response:
    node = request.app[NODE]
    rec = await node.run(node.store.get_kv, _q(request, "ns"), _q(request, "name"))
    if rec is None:
        return _error(404, "not_found", "no such document")
    return web.Response(body=rec.pack(), content_type="application/msgpack")


async def list_kv(request: web.Request) -> web.Response:
    node = request.app[NODE]
    recs = await node.run(node.store.list_kv, _q(request, "ns"), request.query.get("prefix", ""))
    return _packed([r.pack() for r in recs])


async def get_map(request: web.Request) -> web.Response:
    return web.json_response(request.app[NODE].cmap.to_dict())


async def put_map(request: web.Request) -> web.Response:
    node = request.app[NODE]
    try:
        cmap = ClusterMap.from_dict(json.loads(await request.read()))
    except (ClusterMapError, ValueError) as e:
        return _error(400, "bad_map", str(e))
    adopted = await node.run(node.adopt_map, cmap)
    return web.json_response({"adopted": adopted, "epoch": node.cmap.epoch})


async def health(request: web.Request) -> web.Response:
    node = request.app[NODE]
    counts = await node.run(node.store.counts)
    usage = shutil.disk_usage(node.cfg.data_dir)
    return web.json_response({
        "id": node.cfg.id, "epoch": node.cmap.epoch, "uptime": time.monotonic() - node.started,
        "disk_total": usage.total, "disk_free": usage.free, **counts,
        "peers": {n.id: node.peer_state(n.id) for n in node.cmap.nodes if n.state != "removed"},
        **(node.loops.report() if node.loops else {}),
    })


def initial_map(cfg: NodeConfig) -> ClusterMap:
    """The newer of the map this node saved and the configured one."""
    candidates = []
    saved = Path(cfg.data_dir) / "cluster.json"
    for path in (saved, Path(cfg.map) if cfg.map else None):
        if path is not None and path.exists():
            candidates.append(ClusterMap.load(path))
    if not candidates:
        raise ClusterMapError("no cluster map: set 'map' in the node config")
    return max(candidates, key=lambda m: m.epoch)


def build_app(cfg: NodeConfig, cmap: ClusterMap | None = None) -> web.Application:
    cmap = cmap or initial_map(cfg)
    fail_after = os.environ.get("OBJSTORE_FAULT_DISK_FULL_AFTER")
    store = Store(cfg.data_dir, cmap.partition_bits, cfg.fsync, int(fail_after) if fail_after else None)
    node = Node(cfg, store, cmap, ThreadPoolExecutor(max_workers=4, thread_name_prefix=f"disk-{cfg.id}"))
    app = web.Application(middlewares=[metrics.observe_middleware, auth_middleware],
                          client_max_size=64 * 1024 * 1024)
    app[NODE] = node
    metrics.install(app, node)
    r = app.router
    r.add_put("/blob", put_blob)
    r.add_get("/blob", get_blob)
    r.add_delete("/blob", delete_blob)
    r.add_put("/record", put_record)
    r.add_get("/record", get_record)
    r.add_delete("/record", delete_record)
    r.add_get("/versions", get_versions)
    r.add_get("/list", list_entries)
    r.add_get("/partition/{p}/digest", partition_digest)
    r.add_get("/partition/{p}/records", partition_records)
    r.add_get("/partitions", partitions_held)
    r.add_put("/kv", put_kv)
    r.add_get("/kv", get_kv)
    r.add_get("/kvlist", list_kv)
    r.add_get("/map", get_map)
    r.add_put("/map", put_map)
    r.add_get("/health", health)

    async def lifecycle(app: web.Application):  # type: ignore[no-untyped-def]
        from node.loops import Loops

        loops = Loops(node)
        node.loops = loops
        tasks = loops.start()
        yield
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await loops.close()
        node.disk.shutdown(wait=True)

    app.cleanup_ctx.append(lifecycle)
    return app


def run(cfg: NodeConfig) -> None:
    """Serve the node RPC until SIGTERM or SIGINT."""
    setup_logging(cfg.log_level, cfg.id)
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    host, _, port = cfg.listen.rpartition(":")

    async def main() -> None:
        app = build_app(cfg)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        await web.TCPSite(runner, host, int(port), reuse_address=True).start()
        log.info("node %s listening on %s", cfg.id, cfg.listen)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await stop.wait()
        await runner.cleanup()

    asyncio.run(main())
