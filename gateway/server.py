"""The gateway process: aiohttp app, request ids, authentication, S3 operation dispatch, and `run`."""

from __future__ import annotations

import asyncio
import logging
import secrets
import signal
import time
from collections.abc import Awaitable, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from urllib.parse import unquote

from aiohttp import HttpVersion11, web
from aiohttp.http_exceptions import HttpProcessingError
from multidict import MultiDictProxy
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from objstore.client import REQUEST_ID, NodeClient
from objstore.codec import codec_summary
from objstore.cluster import ClusterMap
from objstore.config import GatewayConfig, User
from objstore.kv import ReplicatedKV
from objstore.logs import setup_logging
from objstore.objects import ObjectIO
from objstore.quorum import Background
from objstore.runtime import tune_gc
from objstore.users import REFRESH_INTERVAL, UserDirectory, UserStore
from objstore.view import ClusterView

from gateway import admin, metrics
from gateway.budget import Budget, keep_freed_buffers, malloc_trim
from gateway.buckets import Buckets
from gateway.errors import S3Error, error_response
from gateway.sigv4 import Authenticator, PayloadReader, access_key_of

log = logging.getLogger("objstore.gateway")

HEALTH_INTERVAL = 1.0
"""Seconds between two pulls of the cluster map and node states from the nodes."""


@dataclass
class Gateway:
    """Everything a handler needs: configuration, cluster view, node client, object I/O, buckets."""

    cfg: GatewayConfig
    view: ClusterView
    client: NodeClient
    io: ObjectIO
    kv: ReplicatedKV
    buckets: Buckets
    auth: Authenticator
    executor: ThreadPoolExecutor
    background: Background
    users: dict[str, User] = field(default_factory=dict)  # config and cluster users, kept by `directory`
    directory: UserDirectory | None = None
    budget: Budget = field(default_factory=lambda: Budget(64_000_000, 5.0))  # bytes writes may buffer
    read_budget: Budget = field(default_factory=lambda: Budget(64_000_000, 5.0, kind="read"))  # bytes GETs may buffer


@dataclass
class S3Request:
    """One parsed S3 request."""

    http: web.Request
    bucket: str
    key: str
    query: MultiDictProxy[str]
    user: User
    payload: PayloadReader
    request_id: str

    @property
    def headers(self):  # type: ignore[no-untyped-def]
        return self.http.headers

    def has(self, name: str) -> bool:
        return name in self.query


Handler = Callable[[Gateway, S3Request], Awaitable[web.StreamResponse]]
GATEWAY = web.AppKey("gateway", Gateway)
REQUEST_ID_KEY = web.RequestKey("request_id", str)


def split_path(raw_path: str) -> tuple[str, str]:
    """Bucket and key from a path-style request path, percent-decoded exactly once ('+' stays '+')."""
    path = raw_path.split("?", 1)[0]
    bucket, _, key = path.lstrip("/").partition("/")
    return unquote(bucket), unquote(key)


def bucket_from_host(host: str, domains: list[str]) -> str | None:
    """The bucket a virtual-hosted-style Host names (<bucket>.<domain>[:port]), or None for path style."""
    name = host.strip().lower()
    if not name.startswith("["):  # an IPv6 literal never names a bucket
        name = name.rsplit(":", 1)[0]
    name = name.rstrip(".")
    for domain in domains:
        domain = domain.strip().lower().rstrip(".")
        if domain and name.endswith("." + domain) and len(name) > len(domain) + 1:
            return name[: -len(domain) - 1]
    return None


def split_request(raw_path: str, host: str | None, domains: list[str]) -> tuple[str, str]:
    """Bucket and key of a request, virtual-hosted style if its Host is under one of `domains`, else path style."""
    bucket = bucket_from_host(host, domains) if host else None
    if bucket is None:
        return split_path(raw_path)
    return bucket, unquote(raw_path.split("?", 1)[0][1:])  # the whole path (less its first '/') is the key


def select_handler(method: str, bucket: str, key: str, q: MultiDictProxy[str],
                   headers: object) -> Handler:
    """Which S3 operation a request is, by method, path shape and sub-resource."""
    from gateway import s3buckets as b, s3listing as ls, s3multipart as mp, s3objects as o

    has_copy = "x-amz-copy-source" in headers  # type: ignore[operator]
    if not bucket:
        if method == "GET":
            return b.list_buckets
        raise S3Error("MethodNotAllowed")
    if not key:
        table: dict[str, list[tuple[str | None, Handler]]] = {
            "GET": [("location", b.get_location), ("versioning", b.get_versioning), ("versions", ls.list_versions),
                    ("uploads", mp.list_uploads), ("acl", b.get_acl), ("list-type", ls.list_objects_v2),
                    *((name, b.get_unset_configuration) for name in (*b.NOT_CONFIGURED, *b.EMPTY_CONFIGURATIONS)),
                    (None, ls.list_objects_v1)],
            "PUT": [("versioning", b.put_versioning), ("acl", b.put_acl), (None, b.create_bucket)],
            "HEAD": [(None, b.head_bucket)],
            "DELETE": [*((name, b.delete_unset_configuration) for name in b.NOT_CONFIGURED), (None, b.delete_bucket)],
            "POST": [("delete", o.delete_objects)],
        }
        unsupported = b.UNSUPPORTED_BUCKET_SUBRESOURCES
    else:
        table = {
            "GET": [("uploadId", mp.list_parts), ("acl", o.get_acl), ("tagging", o.get_tagging), (None, o.get_object)],
            "HEAD": [(None, o.head_object)],
            "PUT": [("partNumber", mp.upload_part_copy if has_copy else mp.upload_part),
                    ("tagging", o.put_tagging), ("acl", o.put_acl),
                    (None, o.copy_object if has_copy else o.put_object)],
            "DELETE": [("uploadId", mp.abort_upload), ("tagging", o.delete_tagging), (None, o.delete_object)],
            "POST": [("uploads", mp.create_upload), ("uploadId", mp.complete_upload)],
        }
        unsupported = o.UNSUPPORTED_OBJECT_SUBRESOURCES
    for sub, handler in table.get(method, []):
        if sub is not None and sub in q:
            return handler
    # A sub-resource no handler takes must never fall through to the plain operation (DELETE ?cors is
    # not DeleteBucket).
    for sub in unsupported:
        if sub in q:
            raise S3Error("NotImplemented", f"{method} ?{sub} is not implemented")
    for sub, handler in table.get(method, []):
        if sub is None:
            return handler
    if method in table:
        raise S3Error("NotImplemented", f"{method} with these parameters is not implemented")
    raise S3Error("MethodNotAllowed", f"{method} is not allowed on this resource")


@web.middleware
async def s3_middleware(request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
                        ) -> web.StreamResponse:
    request_id = secrets.token_hex(8).upper()
    request[REQUEST_ID_KEY] = request_id
    REQUEST_ID.set(request_id)  # NodeClient sends it to the nodes; log lines of this request carry it
    resource = request.path
    try:
        response = await handler(request)
    except S3Error as e:
        if e.code == "SlowDown":  # load shed on purpose (gateway/budget.py): counted, one line each
            log.info("request %s %s %s answered SlowDown", request_id, request.method, resource)
        elif e.status >= 500:
            log.warning("request %s %s %s failed: %s", request_id, request.method, resource, e)
        return error_response(e, request_id, resource, head=request.method == "HEAD")
    except web.HTTPException:
        raise
    except asyncio.CancelledError:
        raise
    except ConnectionError:
        transport = request.transport
        if transport is None or transport.is_closing():
            # The client went away mid-request: nobody to answer, nothing to log beyond a line.
            log.info("request %s %s %s: client closed the connection", request_id, request.method, resource)
            return web.Response(status=400, reason="Client Closed Request")
        log.exception("request %s %s %s failed", request_id, request.method, resource)
        return error_response(S3Error("ServiceUnavailable"), request_id, resource, head=request.method == "HEAD")
    except Exception:
        log.exception("request %s %s %s failed", request_id, request.method, resource)
        return error_response(S3Error("InternalError"), request_id, resource, head=request.method == "HEAD")
    response.headers.setdefault("x-amz-request-id", request_id)
    response.headers.setdefault("Server", "objstore")
    return response


async def handle_s3(request: web.Request) -> web.StreamResponse:
    gw = request.app[GATEWAY]
    bucket, key = split_request(request.raw_path, request.headers.get("Host"), gw.cfg.domains)
    handler = select_handler(request.method, bucket, key, request.query, request.headers)
    request[metrics.OPERATION] = handler.__name__
    if gw.directory is not None:
        await gw.directory.ensure(access_key_of(request))
    result = gw.auth.authenticate(request)
    s3req = S3Request(request, bucket, key, request.query, result.user, result.payload, request[REQUEST_ID_KEY])
    if len(key.encode("utf-8", "surrogatepass")) > 1024:
        raise S3Error("KeyTooLongError")
    return await handler(gw, s3req)


async def expect_continue(request: web.Request) -> web.StreamResponse | None:
    """`Expect: 100-continue`: refuse before the body is sent if the request is unroutable or unauthenticated.

    S3 answers the final error instead of 100 Continue, so a client does not upload a body only to be
    told its signature is wrong; an Expect value other than 100-continue is ignored, as S3 does.
    """
    if request.version != HttpVersion11 or request.headers.get("Expect", "").lower() != "100-continue":
        return None
    gw = request.app[GATEWAY]
    try:
        bucket, key = split_request(request.raw_path, request.headers.get("Host"), gw.cfg.domains)
        select_handler(request.method, bucket, key, request.query, request.headers)
        if gw.directory is not None:
            await gw.directory.ensure(access_key_of(request))
        gw.auth.authenticate(request)
    except S3Error as e:
        response = error_response(e, secrets.token_hex(8).upper(), request.path, head=request.method == "HEAD")
        response.force_close()  # the client holds its body back: this connection cannot carry another request
        return response
    await request.writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
    request.writer.output_size = 0
    return None


async def handle_health(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok", "epoch": request.app[GATEWAY].view.map.epoch})


async def _refresh_map(gw: Gateway) -> None:
    """Every interval, learn the node states of the nodes' failure detector and their map epoch from a few
    nodes (a brief /health each); pull the map only when one of them holds a newer one."""
    while True:
        await asyncio.sleep(HEALTH_INTERVAL)
        try:
            nodes = gw.view.live_nodes()[:3]
            answers = await asyncio.gather(*(asyncio.wait_for(gw.client.health(n, brief=True), HEALTH_INTERVAL)
                                             for n in nodes), return_exceptions=True)
            healths = [a for a in answers if isinstance(a, dict)]
            for health in healths[:2]:
                gw.view.learn_states(health.get("peers", {}), hold=3 * HEALTH_INTERVAL)
            if not healths or any(int(h.get("epoch", 0)) > gw.view.map.epoch for h in healths):
                await gw.view.refresh(gw.client)
        except Exception as e:  # a failed refresh is retried at the next interval
            log.debug("map refresh failed: %s", e)


async def _refresh_users(directory: UserDirectory) -> None:
    """Read the cluster's users now and every REFRESH_INTERVAL: new ones appear, deleted ones stop working."""
    failing = False
    while True:
        try:
            await directory.refresh()
            if failing:
                log.info("cluster users readable again (%d users)", directory.cluster_users)
            failing = False
        except Exception as e:  # noqa: BLE001 - the last users read keep working; retried at the next interval
            if not failing:
                log.warning("reading the cluster's users failed, keeping the last ones read: %s", e)
            failing = True
        await asyncio.sleep(REFRESH_INTERVAL)


class UsersCollector(Collector):
    """How many users the gateway knows, by where they come from, and how old its copy of the cluster's is."""

    def __init__(self, directory: UserDirectory) -> None:
        self.directory = directory

    def collect(self) -> Iterator[Metric]:
        d = self.directory
        users = GaugeMetricFamily("objstore_gateway_users", "S3 users this gateway accepts, by source.",
                                  labels=["source"])
        users.add_metric(["config"], len(d.users) - d.cluster_users)
        users.add_metric(["cluster"], d.cluster_users)
        yield users
        age = -1.0 if d.refreshed_at is None else time.monotonic() - d.refreshed_at
        yield GaugeMetricFamily("objstore_gateway_users_age_seconds",
                                "Seconds since the cluster's users were last read (-1: never).", value=age)
        yield CounterMetricFamily("objstore_gateway_user_lookups",
                                  "Cluster reads made for access keys the gateway did not know.", value=d.lookups)


async def _map_from_seeds(cfg: GatewayConfig, client: NodeClient) -> ClusterMap:
    from objstore.cluster import NodeInfo

    for seed in cfg.seeds:
        try:
            return await client.get_map(NodeInfo(id=f"seed:{seed}", address=seed, zone="?"))
        except Exception as e:
            log.warning("seed %s unreachable: %s", seed, e)
    raise RuntimeError("no seed answered with a cluster map")


TRIM_AFTER_IDLE = 1.0
"""Seconds the gateway's reads and writes must both stay idle before malloc_trim gives freed buffers back."""


async def build_app(cfg: GatewayConfig) -> web.Application:
    client = NodeClient(cfg.secret, timeout=cfg.node_timeout)
    cmap = ClusterMap.load(cfg.map) if cfg.map else await _map_from_seeds(cfg, client)
    view = ClusterView(cmap)
    executor = ThreadPoolExecutor(max_workers=4, thread_name_prefix="gw-cpu")
    background = Background()
    kv = ReplicatedKV(client, background)
    directory = UserDirectory(cfg.users, UserStore(kv, lambda: view.by_availability(view.all_nodes())))
    users = directory.users
    gw = Gateway(cfg, view, client, ObjectIO(view, client, executor, background), kv, Buckets(view, kv), Authenticator(users, cfg.region), executor, background, users, directory)
    loop = asyncio.get_running_loop()

    trimming = False

    async def trim() -> None:
        # Trim once reads and writes have both stayed idle for TRIM_AFTER_IDLE: under load the budgets touch
        # zero every few requests, and a trim each time handed back the pages the next requests faulted in
        # again (about 100 page faults per 1 MiB GET at concurrency 8).
        nonlocal trimming
        try:
            while True:
                await asyncio.sleep(TRIM_AFTER_IDLE)
                if not gw.budget.in_use and not gw.read_budget.in_use:
                    break
            await loop.run_in_executor(executor, malloc_trim)
        finally:
            trimming = False

    def idle() -> None:
        nonlocal trimming
        if not trimming:
            trimming = True
            background.spawn(trim())

    # Once writes and GETs have gone idle, what glibc kept of their stripes goes back to the kernel.
    gw.budget = Budget(int(cfg.write_buffer_mb * 1_000_000), cfg.write_wait, on_idle=idle)
    gw.read_budget = Budget(int(cfg.read_buffer_mb * 1_000_000), cfg.read_wait, on_idle=idle, kind="read")
    app = web.Application(middlewares=[metrics.observe_middleware, s3_middleware], client_max_size=1024**2 * 8, handler_args={"max_field_size": 65536, "auto_decompress": False})
    app[GATEWAY] = gw
    app.router.add_get("/_objstore/health", handle_health)
    gw_metrics = admin.install(app, users, view, cfg.secret)
    gw_metrics.register(UsersCollector(directory))
    gw_metrics.register(metrics.BudgetCollector(gw.budget))
    gw_metrics.register(metrics.BudgetCollector(gw.read_budget))
    app.router.add_route("*", "/{tail:.*}", handle_s3, expect_handler=expect_continue)

    async def lifecycle(app: web.Application):  # type: ignore[no-untyped-def]
        refresher = asyncio.create_task(_refresh_map(gw))
        user_refresher = asyncio.create_task(_refresh_users(directory))
        await gw.view.refresh(gw.client)
        yield
        refresher.cancel()
        user_refresher.cancel()
        await asyncio.gather(refresher, user_refresher, return_exceptions=True)
        await directory.close()
        await background.close()
        await client.close()
        executor.shutdown(wait=False, cancel_futures=True)

    app.cleanup_ctx.append(lifecycle)
    return app


class MalformedRequestFilter(logging.Filter):
    """aiohttp answers a request it cannot parse with a 400 and logs a traceback; for a client's fault one line does."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if isinstance(exc, HttpProcessingError) and 400 <= (exc.code or 0) < 500:
            record.msg, record.args = "malformed HTTP request refused with %s: %s", (exc.code, exc.message)
            record.exc_info, record.exc_text = None, None
            record.levelno, record.levelname = logging.INFO, "INFO"
        return True


def run(cfg: GatewayConfig) -> None:
    """Serve S3 until SIGTERM or SIGINT."""
    setup_logging(cfg.log_level, "gateway")
    tune_gc()
    keep_freed_buffers()
    logging.getLogger("aiohttp.server").addFilter(MalformedRequestFilter())
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    host, _, port = cfg.listen.rpartition(":")

    async def main() -> None:
        app = await build_app(cfg)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, host, int(port), reuse_address=True)
        await site.start()
        log.info("gateway listening on %s (erasure code: %s)", cfg.listen, codec_summary(app[GATEWAY].view.map))
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await stop.wait()
        await runner.cleanup()

    asyncio.run(main())
