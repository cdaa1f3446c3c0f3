"""The gateway's observability: per-operation request metrics, bytes in and out, one access log line per request,
and the per-second window the dashboard draws."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

from aiohttp import web
from prometheus_client import Counter, Gauge
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from objstore.metrics import ProcessMetrics, SecondWindow
from objstore.view import ClusterView

from gateway.budget import Budget

log = logging.getLogger("objstore.gateway.access")

ADMIN_PREFIX = "/_objstore/"
"""Paths under it are the gateway's own endpoints, not S3 (no bucket name may start with '_')."""

OPERATION = web.RequestKey("operation", str)
"""request[OPERATION]: the S3 handler's function name, set once `select_handler` has chosen it."""


class ViewCollector(Collector):
    """The gateway's own view of the cluster, read at scrape time: map epoch, nodes in rotation."""

    def __init__(self, view: ClusterView) -> None:
        self.view = view

    def collect(self) -> Iterator[Metric]:
        yield GaugeMetricFamily("objstore_gateway_map_epoch", "Epoch of the cluster map this gateway holds.",
                                value=self.view.map.epoch)
        available = GaugeMetricFamily("objstore_gateway_node_available",
                                      "1 if the gateway sends requests to the node, 0 while it is out of rotation.",
                                      labels=["node"])
        for node in self.view.all_nodes():
            available.add_metric([node.id], 1.0 if self.view.available(node) else 0.0)
        yield available


class BudgetCollector(Collector):
    """A budget (gateway/budget.py), read at scrape time: its bytes, bytes reserved, requests waiting, refused."""

    # kind -> (requests, the same at the start of a sentence, its size setting, its wait setting)
    WHAT = {"write": ("writes", "Writes", "write_buffer_mb", "write_wait"),
            "read": ("GETs", "GETs", "read_buffer_mb", "read_wait")}

    def __init__(self, budget: Budget) -> None:
        self.budget = budget

    def collect(self) -> Iterator[Metric]:
        b = self.budget
        who, Who, size, wait = self.WHAT[b.kind]
        name = f"objstore_gateway_{b.kind}_budget"
        yield GaugeMetricFamily(f"{name}_bytes", f"Bytes the {who} in flight may buffer ({size}).", value=b.capacity)
        yield GaugeMetricFamily(f"{name}_in_use_bytes", f"Bytes of the {b.kind} budget reserved by {who} in flight.",
                                value=b.in_use)
        yield GaugeMetricFamily(f"{name}_waiting", f"{Who} queued for their share of the {b.kind} budget.",
                                value=b.waiting)
        yield CounterMetricFamily(f"{name}_refused", f"{Who} answered 503 SlowDown after {wait} seconds in the queue.",
                                  value=b.refused)


class GatewayMetrics(ProcessMetrics):
    """Request counters and latency by S3 operation, bytes by operation, and the dashboard's per-second window."""

    def __init__(self, view: ClusterView) -> None:
        super().__init__("gateway")
        self.received = Counter("objstore_gateway_received_bytes", "Request body bytes received, by operation.",
                                ["operation"], registry=self.registry)
        self.sent = Counter("objstore_gateway_sent_bytes", "Response body bytes sent, by operation.",
                            ["operation"], registry=self.registry)
        self.in_flight = Gauge("objstore_gateway_requests_in_flight", "Requests being served now.",
                               registry=self.registry)
        self.register(ViewCollector(view))
        self.window = SecondWindow()
        self._bytes: dict[str, tuple[Any, Any]] = {}  # operation -> its received and sent counters (as _series)

    def record(self, operation: str, status: int, seconds: float, bytes_in: int, bytes_out: int,
               s3: bool) -> None:
        self.observe(operation, status, seconds)
        counters = self._bytes.get(operation)
        if counters is None:
            counters = self._bytes[operation] = (self.received.labels(operation), self.sent.labels(operation))
        counters[0].inc(bytes_in)
        counters[1].inc(bytes_out)
        if s3:  # the dashboard's own polls would otherwise show up as client traffic
            self.window.add(seconds, bytes_in, bytes_out, error=status >= 500)


GATEWAY_METRICS = web.AppKey("gateway_metrics", GatewayMetrics)


def _bytes_sent(request: web.Request, response: web.StreamResponse | None) -> int:
    if response is None or request.method == "HEAD":
        return 0
    if response.prepared:  # streamed: the handler has written it all by now
        return response.body_length
    body = getattr(response, "body", None)
    if isinstance(body, (bytes, bytearray)):
        return len(body)
    return response.content_length or 0


def _operation(request: web.Request, s3: bool) -> str:
    if s3:
        return str(request.get(OPERATION, "unrouted"))
    info = request.match_info
    return "unmatched" if info.http_exception is not None else str(getattr(info.handler, "__name__", "unmatched"))


@web.middleware
async def observe_middleware(request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
                             ) -> web.StreamResponse:
    """Outermost: sees the final status (S3 errors included), times the request, logs it, counts it."""
    metrics = request.app[GATEWAY_METRICS]
    s3 = not request.path.startswith(ADMIN_PREFIX)
    start = time.monotonic()
    status, response = 500, None
    metrics.in_flight.inc()
    try:
        response = await handler(request)
        status = response.status
        return response
    except web.HTTPException as e:
        status = e.status
        raise
    except asyncio.CancelledError:
        status = 499  # the client hung up before the answer was complete
        raise
    finally:
        metrics.in_flight.dec()
        elapsed = time.monotonic() - start
        operation = _operation(request, s3)
        bytes_in, bytes_out = request.content.total_bytes, _bytes_sent(request, response)
        metrics.record(operation, status, elapsed, bytes_in, bytes_out, s3)
        # The path, never the query string: a presigned URL carries its signature there.
        log.log(logging.INFO if s3 else logging.DEBUG, "%s %s %s", request.method, request.path, status,
                extra={"request_id": request.get("request_id"), "operation": operation, "method": request.method,
                       "path": request.path, "status": status, "duration_ms": round(elapsed * 1000, 3),
                       "bytes_in": bytes_in, "bytes_out": bytes_out, "remote": request.remote})
