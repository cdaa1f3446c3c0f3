"""Observability of a real dev cluster: one request id across gateway and node logs, /metrics everywhere,
and the dashboard's status API behind admin credentials."""

from __future__ import annotations

import base64
import json
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from tests.cluster import DevCluster, wait_until

TIMEOUT = 10.0


def get(url: str, headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
    req = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=TIMEOUT) as resp:
            return resp.status, dict(resp.headers), resp.read()
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers), e.read()


def log_lines(path: Path) -> list[dict[str, Any]]:
    """The JSON lines of a process log (banner lines of the supervisor are not JSON and are skipped)."""
    out = []
    for line in path.read_text(errors="replace").splitlines():
        if line.startswith("{"):
            try:
                out.append(json.loads(line))
            except ValueError:
                pass
    return out


def with_request_id(cluster: DevCluster, name: str, request_id: str) -> list[dict[str, Any]]:
    return [d for d in log_lines(cluster.data_dir / "logs" / f"{name}.log") if d.get("request_id") == request_id]


def admin_headers(cluster: DevCluster) -> dict[str, str]:
    token = base64.b64encode(f"{cluster.access_key}:{cluster.secret_key}".encode()).decode()
    return {"Authorization": f"Basic {token}"}


def test_one_request_id_joins_gateway_and_node_log_lines(dev_cluster: DevCluster) -> None:
    s3 = dev_cluster.s3()
    s3.create_bucket(Bucket="obs-logs")
    # Above one stripe (k * 256 KiB): shards stream to the nodes as blobs, whose RPCs are logged at info.
    # The records' RPCs, which carry the shards of a smaller object, are logged at debug only
    # (docs/observability.md).
    put = s3.put_object(Bucket="obs-logs", Key="traced", Body=b"t" * 1_500_000)
    request_id = put["ResponseMetadata"]["RequestId"]
    node_ids = [n.id for n in dev_cluster.nodes]

    # every process writes its own log file: wait (bounded) until the lines of this request are in
    wait_until(lambda: bool(with_request_id(dev_cluster, "gateway", request_id)), TIMEOUT, "the gateway's line")
    wait_until(lambda: sum(bool(with_request_id(dev_cluster, n, request_id)) for n in node_ids) >= dev_cluster.k,
               TIMEOUT, "node lines of the PUT")
    [access] = [d for d in with_request_id(dev_cluster, "gateway", request_id) if d.get("operation")]
    assert access["operation"] == "put_object" and access["status"] == 200 and access["process"] == "gateway"
    assert access["bytes_in"] >= 1_500_000 and access["level"] == "info"
    node_lines = [d for n in node_ids for d in with_request_id(dev_cluster, n, request_id)]
    assert {d["process"] for d in node_lines} <= set(node_ids)
    assert "put_blob" in {d.get("operation") for d in node_lines}
    assert all(d["status"] < 300 for d in node_lines if d.get("operation") == "put_blob")
    assert "put_record" not in {d.get("operation") for d in node_lines}  # succeeded: at debug


def test_nodes_serve_unsigned_metrics_and_nothing_else_unsigned(dev_cluster: DevCluster) -> None:
    for node in dev_cluster.nodes:
        status, headers, body = get(f"http://{node.address}/metrics")
        assert status == 200 and headers["Content-Type"].startswith("text/plain")
        text = body.decode()
        for name in ("objstore_node_requests_total", "objstore_node_request_duration_seconds_bucket",
                     "objstore_node_shards ", "objstore_node_shard_bytes ", "objstore_node_corrupt_shards_found_total",
                     "objstore_node_repair_objects_remaining", "objstore_node_scrub_bytes_total",
                     f'objstore_node_peer_state{{peer="{node.id}",state="up"}} 1.0'):
            assert name in text, (node.id, name)
        assert get(f"http://{node.address}/health")[0] == 401


def test_gateway_metrics_count_operations_and_bytes(dev_cluster: DevCluster) -> None:
    s3 = dev_cluster.s3()
    s3.create_bucket(Bucket="obs-metrics")
    s3.put_object(Bucket="obs-metrics", Key="k", Body=b"m" * 5000)
    assert s3.get_object(Bucket="obs-metrics", Key="k")["Body"].read() == b"m" * 5000
    status, _, body = get(dev_cluster.endpoint + "/_objstore/metrics")
    assert status == 200
    values = {}
    for line in body.decode().splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            values[name] = float(value)
    assert values['objstore_gateway_requests_total{operation="get_object",status="200"}'] >= 1
    assert values['objstore_gateway_sent_bytes_total{operation="get_object"}'] >= 5000
    assert values['objstore_gateway_received_bytes_total{operation="put_object"}'] >= 5000
    assert values['objstore_gateway_request_duration_seconds_count{operation="put_object"}'] >= 1


def test_status_api_needs_admin_and_reports_the_cluster(dev_cluster: DevCluster) -> None:
    url = dev_cluster.endpoint + "/_objstore/api/status"
    status, headers, _ = get(url)
    assert status == 401 and headers["WWW-Authenticate"].startswith("Basic")
    wrong = base64.b64encode(f"{dev_cluster.access_key}:not-the-secret".encode()).decode()
    assert get(url, {"Authorization": f"Basic {wrong}"})[0] == 401

    def all_up() -> bool:
        doc = json.loads(get(url, admin_headers(dev_cluster))[2])
        return [n["state"] for n in doc["nodes"]] == ["up"] * len(dev_cluster.nodes)

    wait_until(all_up, TIMEOUT, "every node up in the status API", interval=0.5)
    doc = json.loads(get(url, admin_headers(dev_cluster))[2])
    assert {n["zone"] for n in doc["nodes"]} == {n.zone for n in dev_cluster.nodes}
    assert all(n["disk_total"] and n["disk_free"] is not None for n in doc["nodes"])
    assert doc["gateway"]["window_seconds"] == 300
    now = time.time()
    assert all(now - 301 <= s["t"] <= now for s in doc["gateway"]["samples"])


@pytest.mark.parametrize("path", ["/_objstore/", "/_objstore/static/dashboard.js"])
def test_dashboard_files_need_admin(dev_cluster: DevCluster, path: str) -> None:
    assert get(dev_cluster.endpoint + path)[0] == 401
    status, headers, body = get(dev_cluster.endpoint + path, admin_headers(dev_cluster))
    assert status == 200 and body
    assert "default-src 'none'" in headers["Content-Security-Policy"]
