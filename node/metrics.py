"""The node's observability: request ids and request metrics of every RPC, and `/metrics` (shards, disk, repair,
scrub, peer states).

`/metrics` is served without the cluster-secret signature, because Prometheus cannot sign HMAC. It is safe to:
it holds counters and gauges only (no bucket, key or object data, no secret), its labels are fixed operation
names, status codes and node ids of the map; and the node port is not meant to be reachable from S3 clients.
"""

from __future__ import annotations

import asyncio
import logging
import re
import shutil
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator
from typing import TYPE_CHECKING, Any

from aiohttp import web
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from objstore.client import REQUEST_ID
from objstore.metrics import ProcessMetrics

if TYPE_CHECKING:
    from node.server import Node

log = logging.getLogger("objstore.node.rpc")

METRICS_PATH = "/metrics"
NODE_METRICS = web.AppKey("node_metrics", ProcessMetrics)
PEER_STATES = ("up", "suspect", "down")
_REQUEST_ID = re.compile(r"[A-Za-z0-9._-]{1,64}")
QUIET_OPERATIONS = frozenset({"get_record", "put_record", "delete_record", "get_records", "put_records",
                              "delete_records", "get_versions", "list_entries", "get_kv", "put_kv", "list_kv"})
"""Metadata RPCs logged at debug when they succeed, even for a client request (a small PUT makes six)."""

REPAIR_GAUGES = {
    "partitions_total": "Partitions this node leads, in the current (or last) anti-entropy pass.",
    "partitions_scanned": "Partitions compared so far in the current (or last) pass.",
    "partitions_in_sync": "Partitions whose owners' digests agreed in the current (or last) pass.",
    "objects_total": "Objects seen in the partitions this node leads (current or last pass).",
    "objects_degraded": "Objects below full redundancy but readable (current or last pass).",
    "objects_unreadable": "Objects with fewer than k healthy shards (current or last pass).",
    "objects_scanned": "Objects drilled into in the current (or last) pass.",
    "bytes_scanned": "Object bytes of the partitions compared in the current (or last) pass.",
    "objects_rebuilt": "Objects brought back to full redundancy in the current (or last) pass.",
    "objects_remaining": "Objects still to rebuild in the current pass (left over, for the last one).",
    "shards_rebuilt": "Shards rebuilt and written in the current (or last) pass.",
    "bytes_rebuilt": "Shard bytes rebuilt and written in the current (or last) pass.",
    "bytes_remaining": "Object bytes still to rebuild in the current pass (left over, for the last one).",
    "handoffs_removed": "Handoff copies dropped once their owners were whole (current or last pass).",
    "garbage_removed": "Leftover versions removed after the grace period (current or last pass).",
    "kv_copied": "Bucket, user and upload records copied to nodes that lacked them (current or last pass).",
    "kv_forgotten": "Tombstones of buckets, users and uploads removed from every node (current or last pass).",
    "failures": "Objects whose rebuild failed, or passes skipped for want of bucket records (current or last pass).",
}


class NodeCollector(Collector):
    """Reads the node's state at scrape time; shard counts and disk space come from `refresh` (they need the disk)."""

    def __init__(self, node: Node) -> None:
        self.node = node
        self.counts: dict[str, int] = {}
        self.disk_total = self.disk_free = 0

    async def refresh(self) -> None:
        node = self.node
        self.counts = await node.counts()
        usage = await node.run(shutil.disk_usage, node.cfg.data_dir)
        self.disk_total, self.disk_free = usage.total, usage.free

    def collect(self) -> Iterator[Metric]:
        c = self.counts
        yield GaugeMetricFamily("objstore_node_records", "Object records held (one per shard of a version).",
                                value=c.get("records", 0))
        yield GaugeMetricFamily("objstore_node_shards", "Shard files held (quarantined ones excluded).",
                                value=c.get("blobs", 0))
        yield GaugeMetricFamily("objstore_node_shard_bytes", "Bytes in the shard files held.",
                                value=c.get("blob_bytes", 0))
        yield CounterMetricFamily("objstore_node_corrupt_shards_found",
                                  "Shards found corrupt on a read or a scrub since start (quarantined for repair).",
                                  value=c.get("corrupt_found", 0))
        yield GaugeMetricFamily("objstore_node_disk_total_bytes", "Size of the data dir's file system.",
                                value=self.disk_total)
        yield GaugeMetricFamily("objstore_node_disk_free_bytes", "Free bytes on the data dir's file system.",
                                value=self.disk_free)
        yield from self._peers()
        if self.node.loops is not None:
            yield from self._loops(self.node.loops.report())

    def _peers(self) -> Iterator[Metric]:
        node = self.node
        states = {n.id: node.peer_state(n.id) for n in node.cmap.nodes if n.state != "removed"}
        per_peer = GaugeMetricFamily("objstore_node_peer_state",
                                     "1 for the state each cluster node is in, as this node's failure detector sees "
                                     "it (itself included).", labels=["peer", "state"])
        for peer, state in sorted(states.items()):
            for s in PEER_STATES:
                per_peer.add_metric([peer, s], 1.0 if state == s else 0.0)
        yield per_peer
        by_state = GaugeMetricFamily("objstore_node_peers", "Cluster nodes in each state, as this node sees them.",
                                     labels=["state"])
        tally = Counter(states.values())
        for s in PEER_STATES:
            by_state.add_metric([s], tally.get(s, 0))
        yield by_state
        yield GaugeMetricFamily("objstore_node_map_epoch", "Epoch of the cluster map this node holds.",
                                value=node.cmap.epoch)

    def _loops(self, report: dict[str, Any]) -> Iterator[Metric]:
        repair = report.get("repair", {})
        for name, doc in REPAIR_GAUGES.items():
            yield GaugeMetricFamily(f"objstore_node_repair_{name}", doc, value=repair.get(name, 0))
        yield GaugeMetricFamily("objstore_node_repair_running", "1 while an anti-entropy pass is running.",
                                value=1.0 if repair.get("running") else 0.0)
        yield CounterMetricFamily("objstore_node_repair_passes", "Anti-entropy passes finished since start.",
                                  value=repair.get("passes", 0))
        yield GaugeMetricFamily("objstore_node_repair_pass_started_timestamp_seconds",
                                "Unix time the current (or last) pass started; 0 before the first.",
                                value=repair.get("started", 0.0))
        yield GaugeMetricFamily("objstore_node_repair_pass_finished_timestamp_seconds",
                                "Unix time the last finished pass ended; 0 before the first.",
                                value=repair.get("finished", 0.0))
        yield GaugeMetricFamily("objstore_node_background_paused_seconds",
                                "Seconds left of an operator's pause of repair, scrub and pending-shard collection.",
                                value=report.get("paused_for", 0.0))
        scrub = report.get("scrub", {})
        yield GaugeMetricFamily("objstore_node_scrub_running", "1 while a scrub pass is re-reading shards.",
                                value=1.0 if scrub.get("running") else 0.0)
        yield CounterMetricFamily("objstore_node_scrub_passes", "Scrub passes finished since start.",
                                  value=scrub.get("passes", 0))
        yield CounterMetricFamily("objstore_node_scrub_shards", "Shards the scrub re-read since start.",
                                  value=scrub.get("shards", 0))
        yield CounterMetricFamily("objstore_node_scrub_bytes", "Bytes the scrub re-read and verified since start.",
                                  value=scrub.get("bytes", 0))
        yield CounterMetricFamily("objstore_node_scrub_corrupt_shards", "Corrupt shards the scrub found since start.",
                                  value=scrub.get("corrupt", 0))


def _operation(request: web.Request) -> str:
    """The RPC's handler function name; 'unmatched' for a path or method no route takes."""
    info = request.match_info
    if info.http_exception is not None:
        return "unmatched"
    return str(getattr(info.handler, "__name__", "unmatched"))


def request_id_of(request: web.Request) -> str | None:
    """The X-Request-Id a gateway sent, if it is a plausible id (it goes into log lines as is)."""
    rid = request.headers.get("X-Request-Id")
    return rid if rid is not None and _REQUEST_ID.fullmatch(rid) else None


@web.middleware
async def observe_middleware(request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
                             ) -> web.StreamResponse:
    """Outermost: the gateway's request id into this request's context (and log lines), then metrics and a log line.

    RPCs made for a client request (they carry a request id) are logged at info when they move shard data or
    fail; the small metadata calls a request makes several of (QUIET_OPERATIONS) only at debug when they
    succeed, and so is background traffic (heartbeats, anti-entropy, scrapes), or the lines would cost more
    than the calls.
    """
    rid = request_id_of(request)
    token = REQUEST_ID.set(rid)
    start = time.monotonic()
    status = 500
    try:
        response = await handler(request)
        status = response.status
        return response
    except web.HTTPException as e:
        status = e.status
        raise
    except asyncio.CancelledError:
        status = 499  # the caller hung up (a hedged read that lost, a stalled upload that was dropped)
        raise
    finally:
        elapsed = time.monotonic() - start
        operation = _operation(request)
        request.app[NODE_METRICS].observe(operation, status, elapsed)
        level = logging.INFO if rid and (status >= 400 or operation not in QUIET_OPERATIONS) else logging.DEBUG
        if log.isEnabledFor(level):
            log.log(level, "%s %s", operation, status,
                    extra={"operation": operation, "status": status, "duration_ms": round(elapsed * 1000, 3)})
        REQUEST_ID.reset(token)


async def handle_metrics(request: web.Request) -> web.Response:
    body, content_type = await request.app[NODE_METRICS].render(request.headers.get("Accept", ""))
    return web.Response(body=body, headers={"Content-Type": content_type})


def install(app: web.Application, node: Node) -> ProcessMetrics:
    """Give the app its registry (needed by observe_middleware) and, if the config says so, the /metrics route."""
    metrics = ProcessMetrics("node")
    collector = NodeCollector(node)
    metrics.register(collector)
    metrics.before_scrape(collector.refresh)
    app[NODE_METRICS] = metrics
    if node.cfg.metrics:
        app.router.add_get(METRICS_PATH, handle_metrics)
    return metrics
