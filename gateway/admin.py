"""The gateway's operator endpoints under /_objstore/: Prometheus metrics, and the dashboard with its status API.

The dashboard and its API take HTTP Basic auth with an admin user's access key and secret key. It is read-only
(GET only), so a browser's cached credentials cannot be used to change anything from another site. The page
loads only its own files: no CDN, no inline script, and a Content-Security-Policy that says so.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import hmac
import logging
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from aiohttp import web

from objstore.config import User
from objstore.ops import collect_status
from objstore.view import ClusterView

from gateway.metrics import GATEWAY_METRICS, GatewayMetrics

log = logging.getLogger("objstore.gateway.admin")

STATIC_DIR = Path(__file__).parent / "static"
STATIC_TYPES = {".html": "text/html", ".js": "text/javascript", ".css": "text/css", ".svg": "image/svg+xml",
                ".png": "image/png"}
STATIC_FILES = frozenset(p.name for p in STATIC_DIR.iterdir() if p.suffix in STATIC_TYPES) if STATIC_DIR.is_dir() \
    else frozenset()
"""The only files the dashboard serves (listed once at import: a request never names a path of its own)."""
STATUS_MAX_AGE = 1.0
"""Seconds a collected status is served again: many open dashboards cost the nodes one poll, not one each."""

REALM = 'Basic realm="objstore dashboard", charset="UTF-8"'
SECURITY_HEADERS = {
    "Cache-Control": "no-store",
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Content-Security-Policy": "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
                               "connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'",
}
# Compared against when the access key is unknown, so a wrong key costs the same time as a wrong secret.
_NO_SECRET = hashlib.sha256(b"objstore: no such admin").digest()


def admin_user(users: dict[str, User], authorization: str) -> User | None:
    """The admin user an `Authorization: Basic` header names with its right secret key, else None.

    Secrets are compared as SHA-256 digests with hmac.compare_digest: constant time, and no length leak.
    """
    scheme, _, param = authorization.strip().partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        decoded = base64.b64decode(param.strip(), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        return None
    access_key, sep, secret_key = decoded.partition(":")
    user = users.get(access_key)
    expected = hashlib.sha256(user.secret_key.encode()).digest() if user is not None else _NO_SECRET
    matches = hmac.compare_digest(hashlib.sha256(secret_key.encode()).digest(), expected)
    if not (matches and sep and user is not None):
        return None
    return user


class Admin:
    """State of the operator endpoints: users, the status cache, static files read once."""

    def __init__(self, users: dict[str, User], view: ClusterView, secret: str, metrics: GatewayMetrics) -> None:
        self.users, self.view, self.secret, self.metrics = users, view, secret, metrics
        self.started = time.time()
        self._status: dict[str, Any] | None = None
        self._status_at = 0.0
        self._status_lock = asyncio.Lock()
        self._files: dict[str, bytes] = {}

    def authorize(self, request: web.Request) -> User:
        user = admin_user(self.users, request.headers.get("Authorization", ""))
        if user is None:
            raise web.HTTPUnauthorized(text="admin credentials required\n", headers={"WWW-Authenticate": REALM,
                                                                                    **SECURITY_HEADERS})
        if not user.admin:
            raise web.HTTPForbidden(text=f"user {user.name} is not an admin\n", headers=SECURITY_HEADERS)
        return user

    async def cluster_status(self) -> dict[str, Any]:
        """collect_status of the newest map this gateway knows, shared by callers within STATUS_MAX_AGE."""
        async with self._status_lock:
            if self._status is None or time.monotonic() - self._status_at > STATUS_MAX_AGE:
                self._status = await collect_status(self.view.map, self.secret)
                self._status_at = time.monotonic()
            return self._status

    async def static_file(self, name: str) -> bytes:
        """A file of STATIC_FILES, read in a thread the first time and kept (they are a few kilobytes)."""
        if name not in self._files:
            path = STATIC_DIR / name
            self._files[name] = await asyncio.get_running_loop().run_in_executor(None, path.read_bytes)
        return self._files[name]


ADMIN = web.AppKey("admin", Admin)
AdminHandler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _admin_only(handler: AdminHandler) -> AdminHandler:
    async def guarded(request: web.Request) -> web.StreamResponse:
        request.app[ADMIN].authorize(request)
        response = await handler(request)
        response.headers.update(SECURITY_HEADERS)
        return response

    guarded.__name__ = handler.__name__  # the operation name in metrics and logs
    return guarded


async def metrics_endpoint(request: web.Request) -> web.Response:
    """Prometheus text, unauthenticated (scrapers cannot sign SigV4): counters and gauges, never object data."""
    body, content_type = await request.app[ADMIN].metrics.render(request.headers.get("Accept", ""))
    return web.Response(body=body, headers={"Content-Type": content_type})


async def dashboard_redirect(request: web.Request) -> web.Response:
    raise web.HTTPFound("/_objstore/")


async def dashboard_page(request: web.Request) -> web.Response:
    return web.Response(body=await request.app[ADMIN].static_file("index.html"), content_type="text/html",
                        charset="utf-8")


async def dashboard_asset(request: web.Request) -> web.Response:
    name = request.match_info["name"]
    if name not in STATIC_FILES:
        raise web.HTTPNotFound(headers=SECURITY_HEADERS)
    content_type = STATIC_TYPES[Path(name).suffix]
    return web.Response(body=await request.app[ADMIN].static_file(name), content_type=content_type,
                        charset="utf-8" if content_type.startswith("text/") else None)


async def dashboard_status(request: web.Request) -> web.Response:
    """collect_status of the cluster plus this gateway's per-second throughput and latency."""
    admin = request.app[ADMIN]
    try:
        status: dict[str, Any] = dict(await admin.cluster_status())
    except Exception as e:  # noqa: BLE001 - the page keeps drawing the gateway's side and says what failed
        log.warning("collecting cluster status failed: %s", e)
        status = {"error": f"{type(e).__name__}: {e}", "nodes": []}
    status["gateway"] = {"epoch": admin.view.map.epoch, "uptime": time.time() - admin.started,
                         "window_seconds": admin.metrics.window.seconds,
                         "samples": admin.metrics.window.samples()}
    status["generated"] = time.time()
    return web.json_response(status)


def install(app: web.Application, users: dict[str, User], view: ClusterView, secret: str) -> GatewayMetrics:
    """Add the operator routes (before the S3 catch-all route) and the app's metrics registry."""
    metrics = GatewayMetrics(view)
    app[GATEWAY_METRICS] = metrics
    app[ADMIN] = Admin(users, view, secret, metrics)
    r = app.router
    r.add_get("/_objstore/metrics", metrics_endpoint)
    r.add_get("/_objstore", dashboard_redirect)
    r.add_get("/_objstore/", _admin_only(dashboard_page))
    r.add_get("/_objstore/static/{name:[A-Za-z0-9._-]+}", _admin_only(dashboard_asset))
    r.add_get("/_objstore/api/status", _admin_only(dashboard_status))
    return metrics
