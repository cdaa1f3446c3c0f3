"""Metrics: the per-second window, percentiles, and /metrics of a node app run in-process (two at once)."""

from __future__ import annotations

import logging
import random
import re
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
from aiohttp.test_utils import TestServer

from node.server import build_app
from objstore import auth
from objstore.client import REQUEST_ID, NodeClient
from objstore.cluster import ClusterMap, ECProfile, NodeInfo
from objstore.config import NodeConfig
from objstore.logs import RequestIdFilter
from objstore.metrics import ProcessMetrics, SecondWindow, percentile

SECRET = "unit-secret"


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def test_percentile_is_nearest_rank() -> None:
    values = [float(v) for v in range(1, 101)]
    assert percentile(values, 0.5) == 50.0
    assert percentile(values, 0.99) == 99.0
    assert percentile(values, 0.29) == 29.0  # 0.29 * 100 is 28.999... in floating point
    assert percentile([7.0], 0.99) == 7.0
    assert percentile([], 0.5) == 0.0


def test_window_sums_each_second_and_reports_idle_seconds_as_zeros() -> None:
    clock = Clock(1000.2)
    window = SecondWindow(seconds=10, clock=clock)
    for ms in (10, 20, 30, 40):
        window.add(ms / 1000, bytes_in=100, bytes_out=1)
    window.add(1.0, error=True)
    clock.now = 1002.5
    window.add(0.005, bytes_out=7)
    clock.now = 1004.0
    samples = window.samples()
    assert [s["t"] for s in samples] == list(range(995, 1004))  # complete seconds only, oldest first
    by_t = {s["t"]: s for s in samples}
    first = by_t[1000]
    assert (first["requests"], first["errors"], first["bytes_in"], first["bytes_out"]) == (5, 1, 400, 4)
    assert first["p50_ms"] == 30.0 and first["p99_ms"] == 1000.0
    assert by_t[1001] == {"t": 1001, "requests": 0, "errors": 0, "bytes_in": 0, "bytes_out": 0,
                          "p50_ms": None, "p99_ms": None}
    assert by_t[1002]["requests"] == 1 and by_t[1002]["bytes_out"] == 7
    assert [s["t"] for s in window.samples(last=3)] == [1001, 1002, 1003]


def test_window_forgets_what_is_older_than_it_and_bounds_its_sample() -> None:
    clock = Clock(50.0)
    window = SecondWindow(seconds=5, sample=8, clock=clock, rng=random.Random(1))
    for i in range(1000):
        window.add(i / 1000)
    slot = window._slots[50 % 5]
    assert slot is not None and slot.requests == 1000 and len(slot.latencies) == 8
    clock.now = 55.0  # the same slot, five seconds later: a new second
    window.add(0.5)
    clock.now = 56.0
    samples = window.samples()
    assert all(s["t"] > 51 for s in samples)
    assert sum(s["requests"] for s in samples) == 1


def test_two_process_metrics_have_their_own_registries() -> None:
    a, b = ProcessMetrics("node"), ProcessMetrics("node")  # the global registry would refuse the second
    a.observe("put_blob", 200, 0.01)
    assert a.registry.get_sample_value("objstore_node_requests_total", {"operation": "put_blob", "status": "200"}) == 1
    assert b.registry.get_sample_value("objstore_node_requests_total", {"operation": "put_blob", "status": "200"}) is None


# -- a node app in-process ---------------------------------------------------------------------------


def node_config(tmp_path: Path, node_id: str) -> NodeConfig:
    return NodeConfig(id=node_id, listen="127.0.0.1:0", data_dir=str(tmp_path / node_id), secret=SECRET,
                      fsync=False, heartbeat_interval=5.0, repair_interval=3600.0, scrub_interval=3600.0)


def two_node_map() -> ClusterMap:
    # n2 is never started: port 1 on loopback refuses at once
    return ClusterMap(epoch=3, ec=ECProfile(k=1, m=1, block_size=1024),
                      nodes=(NodeInfo("n1", "127.0.0.1:1", "z1"), NodeInfo("n2", "127.0.0.1:1", "z2")))


@pytest.fixture
async def nodes(tmp_path: Path) -> AsyncIterator[list[str]]:
    """Two node apps (n1 and a second n1 in another dir) served in this process; their base URLs."""
    servers = []
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
        server = TestServer(build_app(node_config(tmp_path / name, "n1"), two_node_map()), host="127.0.0.1")
        await server.start_server()
        servers.append(server)
    yield [f"http://127.0.0.1:{s.port}" for s in servers]
    for s in servers:
        await s.close()


def sample(text: str, name: str, **labels: str) -> float | None:
    """The value of one sample in Prometheus text, or None."""
    want = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    for line in text.splitlines():
        m = re.fullmatch(r"([a-zA-Z_:][\w:]*)(?:\{(.*)\})? (\S+)", line)
        if m and m.group(1) == name and ",".join(sorted((m.group(2) or "").split(","))).strip(",") == want:
            return float(m.group(3))
    return None


async def test_node_metrics_are_unsigned_and_count_shards_requests_and_peer_states(
        nodes: list[str], caplog: pytest.LogCaptureFixture) -> None:
    caplog.handler.addFilter(RequestIdFilter())
    caplog.set_level(logging.INFO, "objstore.node.rpc")
    url = nodes[0]

    async def body() -> AsyncIterator[bytes]:
        yield b"x" * 3000

    async with NodeClient(SECRET) as client:
        token = REQUEST_ID.set("REQ123")  # as the gateway's middleware does for a client request
        try:
            await client.put_blob(NodeInfo("n1", url.removeprefix("http://"), "z1"), "b1", 0, 7, 1024, body())
        finally:
            REQUEST_ID.reset(token)
    async with aiohttp.ClientSession() as http:
        async with http.get(url + "/health") as r:
            assert r.status == 401  # everything else stays signed
        async with http.get(url + "/metrics") as r:
            assert r.status == 200
            assert r.headers["Content-Type"].startswith("text/plain")
            text = await r.text()
        async with http.get(nodes[1] + "/metrics") as r:
            other = await r.text()

    assert sample(text, "objstore_node_requests_total", operation="health", status="401") == 1
    assert sample(text, "objstore_node_requests_total", operation="put_blob", status="200") == 1
    assert sample(text, "objstore_node_request_duration_seconds_count", operation="put_blob") == 1
    assert sample(text, "objstore_node_shards") == 1
    assert sample(text, "objstore_node_shard_bytes") == 3000
    assert sample(text, "objstore_node_disk_total_bytes") > 0
    assert sample(text, "objstore_node_corrupt_shards_found_total") == 0
    assert sample(text, "objstore_node_map_epoch") == 3
    for peer in ("n1", "n2"):
        states = [sample(text, "objstore_node_peer_state", peer=peer, state=s) for s in ("up", "suspect", "down")]
        assert sorted(states) == [0.0, 0.0, 1.0]
    assert sample(text, "objstore_node_peer_state", peer="n1", state="up") == 1  # a node sees itself up
    assert sum(sample(text, "objstore_node_peers", state=s) or 0 for s in ("up", "suspect", "down")) == 2
    assert sample(text, "objstore_node_repair_objects_remaining") is not None
    assert sample(text, "objstore_node_scrub_passes_total") is not None
    # the other app in this process counted nothing of this one's traffic
    assert sample(other, "objstore_node_requests_total", operation="put_blob", status="200") is None

    # the RPC that carried a request id was logged at info with it; the unsigned /health only at debug
    [line] = [r for r in caplog.records if r.name == "objstore.node.rpc" and r.levelno == logging.INFO]
    assert line.request_id == "REQ123" and line.operation == "put_blob" and line.status == 200


async def test_a_malformed_request_id_is_not_logged(nodes: list[str], caplog: pytest.LogCaptureFixture) -> None:
    caplog.handler.addFilter(RequestIdFilter())
    caplog.set_level(logging.DEBUG, "objstore.node.rpc")
    async with aiohttp.ClientSession() as http:
        headers = {**auth.sign(SECRET, "GET", "/health"), "X-Request-Id": "x\"}{" * 5}
        async with http.get(nodes[0] + "/health", headers=headers) as r:
            assert r.status == 200
    [line] = [r for r in caplog.records if r.name == "objstore.node.rpc"]
    assert line.levelno == logging.DEBUG and line.request_id is None


async def test_a_clients_metadata_calls_log_at_debug_unless_they_fail(nodes: list[str],
                                                                      caplog: pytest.LogCaptureFixture) -> None:
    caplog.handler.addFilter(RequestIdFilter())
    caplog.set_level(logging.DEBUG, "objstore.node.rpc")
    node = NodeInfo("n1", nodes[0].removeprefix("http://"), "z1")
    async with NodeClient(SECRET) as client:
        token = REQUEST_ID.set("REQ456")
        try:
            assert await client.get_record(node, "b", "k") == []
            assert await client.get_kv(node, "bucket", "nothing") is None  # a 404
        finally:
            REQUEST_ID.reset(token)
    got = {r.operation: r for r in caplog.records if r.name == "objstore.node.rpc"}
    assert got["get_records"].levelno == logging.DEBUG and got["get_records"].request_id == "REQ456"
    assert got["get_kv"].levelno == logging.INFO and got["get_kv"].status == 404
