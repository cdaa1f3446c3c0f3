"""The gateway's operator endpoints in-process: dashboard auth, static files, status API, /_objstore/metrics."""

from __future__ import annotations

import base64
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
from aiohttp.test_utils import TestServer

from gateway.admin import STATIC_FILES, admin_user
from gateway.server import build_app
from objstore.cluster import ClusterMap, ECProfile, NodeInfo
from objstore.config import GatewayConfig, User

ADMIN = User("ADMINKEY", "admin-secret", "admin", True)
PLAIN = User("PLAINKEY", "plain-secret", "plain", False)
USERS = {u.access_key: u for u in (ADMIN, PLAIN)}


def basic(access_key: str, secret_key: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{access_key}:{secret_key}".encode()).decode()}


def test_admin_user_takes_only_the_right_secret_of_a_known_key() -> None:
    assert admin_user(USERS, basic("ADMINKEY", "admin-secret")["Authorization"]) is ADMIN
    assert admin_user(USERS, basic("PLAINKEY", "plain-secret")["Authorization"]) is PLAIN  # caller checks .admin
    for header in (basic("ADMINKEY", "admin-secreT")["Authorization"], basic("ADMINKEY", "")["Authorization"],
                   basic("NOSUCHKEY", "admin-secret")["Authorization"], basic("", "")["Authorization"],
                   "Basic " + base64.b64encode(b"ADMINKEY").decode(),  # no colon
                   "Basic !!notbase64", "Bearer abc", "", "Basic " + base64.b64encode(b"\xff:\xfe").decode()):
        assert admin_user(USERS, header) is None, header


@pytest.fixture
async def gateway(tmp_path: Path) -> AsyncIterator[str]:
    """A gateway app served in this process, over a map whose nodes all refuse connections."""
    cmap = ClusterMap(epoch=2, ec=ECProfile(k=2, m=1, block_size=1024),
                      nodes=tuple(NodeInfo(f"n{i}", "127.0.0.1:1", f"z{i}") for i in range(1, 4)))
    cmap.save(tmp_path / "map.json")
    cfg = GatewayConfig(listen="127.0.0.1:0", secret="s", map=str(tmp_path / "map.json"), users=[ADMIN, PLAIN],
                        node_timeout=1.0)
    server = TestServer(await build_app(cfg), host="127.0.0.1")
    await server.start_server()
    yield f"http://127.0.0.1:{server.port}"
    await server.close()


async def test_dashboard_wants_an_admin(gateway: str) -> None:
    async with aiohttp.ClientSession() as http:
        for headers, status in (({}, 401), (basic("ADMINKEY", "wrong"), 401), (basic("PLAINKEY", "plain-secret"), 403)):
            for path in ("/_objstore/", "/_objstore/api/status", "/_objstore/static/dashboard.js"):
                async with http.get(gateway + path, headers=headers) as r:
                    assert r.status == status, (path, headers)
                    if status == 401:
                        assert r.headers["WWW-Authenticate"].startswith("Basic realm=")
        async with http.get(gateway + "/_objstore", allow_redirects=False) as r:
            assert r.status == 302 and r.headers["Location"] == "/_objstore/"


async def test_dashboard_page_and_files_come_from_the_gateway_only(gateway: str) -> None:
    assert {"index.html", "dashboard.js", "dashboard.css"} <= STATIC_FILES
    async with aiohttp.ClientSession(headers=basic("ADMINKEY", "admin-secret")) as http:
        async with http.get(gateway + "/_objstore/") as r:
            assert r.status == 200 and r.content_type == "text/html"
            page = await r.text()
            csp = r.headers["Content-Security-Policy"]
            assert r.headers["Cache-Control"] == "no-store" and r.headers["X-Frame-Options"] == "DENY"
        assert "script-src 'self'" in csp and "default-src 'none'" in csp
        assert "static/dashboard.js" in page and "http://" not in page and "https://" not in page
        for name, kind in (("dashboard.js", "text/javascript"), ("dashboard.css", "text/css")):
            async with http.get(f"{gateway}/_objstore/static/{name}") as r:
                assert r.status == 200 and r.content_type == kind
                assert "http://" not in await r.text()  # nothing loaded from outside at run time
        for name in ("nope.js", "admin.py", "%2e%2e%2fadmin.py", "..%2fserver.py"):
            async with http.get(f"{gateway}/_objstore/static/{name}") as r:
                assert r.status in (404, 400), name  # never a file outside gateway/static


async def test_status_api_reports_nodes_and_gateway_samples(gateway: str) -> None:
    async with aiohttp.ClientSession(headers=basic("ADMINKEY", "admin-secret")) as http, \
            http.get(gateway + "/_objstore/api/status") as r:
        assert r.status == 200
        status = await r.json()
    assert status["epoch"] == 2 and (status["k"], status["m"]) == (2, 1)
    assert [n["id"] for n in status["nodes"]] == ["n1", "n2", "n3"]
    assert {n["state"] for n in status["nodes"]} == {"down"}  # no node answers
    gw = status["gateway"]
    assert gw["window_seconds"] == 300 and len(gw["samples"]) == 299
    assert set(gw["samples"][0]) == {"t", "requests", "errors", "bytes_in", "bytes_out", "p50_ms", "p99_ms"}


async def test_gateway_metrics_count_s3_operations_not_dashboard_polls(gateway: str) -> None:
    async with aiohttp.ClientSession() as http:
        async with http.get(gateway + "/") as r:  # unsigned ListBuckets: refused, still counted
            assert r.status == 403
        async with http.put(gateway + "/bucket/key", data=b"z" * 100) as r:
            assert r.status == 403
        async with http.get(gateway + "/_objstore/api/status", headers=basic("ADMINKEY", "admin-secret")) as r:
            assert r.status == 200
        async with http.get(gateway + "/_objstore/metrics") as r:  # no credentials: scrapers cannot sign
            assert r.status == 200
            text = await r.text()
        async with http.get(gateway + "/_objstore/api/status", headers=basic("ADMINKEY", "admin-secret")) as r:
            samples = (await r.json())["gateway"]["samples"]
    assert 'objstore_gateway_requests_total{operation="list_buckets",status="403"} 1.0' in text
    assert 'objstore_gateway_requests_total{operation="put_object",status="403"} 1.0' in text
    assert 'objstore_gateway_requests_total{operation="dashboard_status",status="200"} 1.0' in text
    assert 'objstore_gateway_received_bytes_total{operation="put_object"} 100.0' in text
    assert 'objstore_gateway_request_duration_seconds_bucket{le="0.005",operation="list_buckets"}' in text
    assert "objstore_gateway_map_epoch 2.0" in text
    assert 'objstore_gateway_node_available{node="n1"}' in text
    # the window holds the two S3 requests (if the second has ended), never the dashboard's own polls
    assert sum(s["requests"] for s in samples) <= 2
