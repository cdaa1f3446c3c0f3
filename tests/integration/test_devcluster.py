"""`objstore dev` as a real process: cluster.json, signed node RPC, stopping without orphans, restarts."""

from __future__ import annotations

import asyncio
import http.client
import json
import os
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from objstore.auth import sign
from objstore.cluster import ClusterMap
from objstore.devcluster import probe_gateway, probe_node
from tests.cluster import DevCluster, DevClusterFactory, pid_gone, wait_pids_gone, wait_until

pytestmark = pytest.mark.integration

SMALL = {"nodes": 3, "zones": 3, "k": 2, "m": 1}  # the smallest cluster that still spreads a stripe over zones


def get(address: str, path: str, headers: dict[str, str] | None = None) -> tuple[int, bytes]:
    host, _, port = address.rpartition(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=5)
    try:
        conn.request("GET", path, headers=headers or {})
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


def test_cluster_file_describes_the_running_cluster(dev_cluster: DevCluster) -> None:
    info = dev_cluster.info
    cmap = ClusterMap.load(info["map"])
    assert (info["k"], info["m"]) == (cmap.ec.k, cmap.ec.m) == (4, 2)
    assert info["region"] == "us-east-1" and info["dev_pid"] == dev_cluster.dev_pid
    assert [n.id for n in dev_cluster.nodes] == [f"n{i}" for i in range(1, 7)]
    assert stat.S_IMODE(os.stat(info["secret_file"]).st_mode) == 0o600
    gateway_port = int(info["endpoint"].rpartition(":")[2])
    for i, node in enumerate(dev_cluster.nodes, start=1):
        assert node.zone == f"z{(i - 1) % 3 + 1}" == cmap.node(node.id).zone
        assert node.port == gateway_port + i and node.address == cmap.node(node.id).address
        assert node.alive, f"{node.id} pid {node.pid} is not running"
        assert node.data_dir.is_dir() and node.config.is_file() and node.log.is_file()
        assert probe_node(node.address, dev_cluster.secret), f"{node.id} does not answer a signed /health"


def test_gateway_is_listed_and_answers(dev_cluster: DevCluster) -> None:
    gw = dev_cluster.require_gateway()
    assert gw["url"] == dev_cluster.endpoint and not pid_gone(int(gw["pid"]))
    assert probe_gateway("127.0.0.1", int(gw["port"]))


def test_credentials_work_with_boto3(dev_cluster: DevCluster) -> None:
    s3 = dev_cluster.s3()
    s3.create_bucket(Bucket="devcluster-creds")
    s3.put_object(Bucket="devcluster-creds", Key="k", Body=b"hello")
    assert s3.get_object(Bucket="devcluster-creds", Key="k")["Body"].read() == b"hello"


def test_node_rpc_needs_a_valid_signature(dev_cluster: DevCluster) -> None:
    node = dev_cluster.nodes[0]
    status, _ = get(node.address, "/health")
    assert status == 401
    assert get(node.address, "/health", sign("not-the-secret", "GET", "/health"))[0] == 401
    assert get(node.address, "/health", sign(dev_cluster.secret, "GET", "/health", now=time.time() - 3600))[0] == 401
    assert get(node.address, "/map", sign(dev_cluster.secret, "GET", "/health"))[0] == 401  # signed for another path
    status, body = get(node.address, "/health", sign(dev_cluster.secret, "GET", "/health"))
    assert status == 200 and json.loads(body)["id"] == node.id


async def test_node_client_reaches_every_node(dev_cluster: DevCluster) -> None:
    cmap = dev_cluster.cluster_map()
    async with dev_cluster.node_client() as client:
        answers = await asyncio.gather(*(client.health(n) for n in cmap.nodes))
    assert [a["id"] for a in answers] == [n.id for n in cmap.nodes]


def test_kill_and_start_a_node(dev_cluster: DevCluster) -> None:
    node = dev_cluster.node("n2")
    old_pid = node.pid
    dev_cluster.kill_node("n2")
    assert pid_gone(old_pid) and not dev_cluster.node_ready("n2")
    wait_until(lambda: f"n2 (pid {old_pid}) died" in dev_cluster.log_tail(), 10, "objstore dev to report the death")
    dev_cluster.start_node("n2")
    assert node.pid != old_pid and node.alive and dev_cluster.node_ready("n2")
    assert dev_cluster.proc.poll() is None  # the supervisor carries on without its child


def test_a_second_supervisor_on_the_same_data_dir_is_refused(dev_cluster: DevCluster) -> None:
    before = (dev_cluster.data_dir / "cluster.json").read_bytes()
    result = subprocess.run(
        [sys.executable, "-m", "objstore.cli", "dev", "--data", str(dev_cluster.data_dir)],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 1
    assert result.stderr.strip() == f"Error: another `objstore dev` is running on {dev_cluster.data_dir.resolve()}"
    assert (dev_cluster.data_dir / "cluster.json").read_bytes() == before


def test_sigterm_stops_every_child_and_keeps_the_data(dev_cluster_factory: DevClusterFactory) -> None:
    cluster = dev_cluster_factory(**SMALL)
    pids = cluster.all_pids()
    assert len(pids) == 3 + (cluster.gateway is not None)
    assert cluster.stop() == 0
    wait_pids_gone(pids, 10)
    for node in cluster.nodes:
        assert node.data_dir.is_dir() and node.config.is_file()
    for name in ("map.json", "secret", "credentials.json", "cluster.json"):
        assert (cluster.data_dir / name).is_file()
    assert "stopping" in cluster.log_tail()


def test_sigkill_of_the_supervisor_leaves_no_orphans(dev_cluster_factory: DevClusterFactory) -> None:
    cluster = dev_cluster_factory(**SMALL)
    pids = cluster.all_pids()
    os.kill(cluster.dev_pid, signal.SIGKILL)
    cluster.proc.wait(10)
    wait_pids_gone(pids, 15)  # PR_SET_PDEATHSIG: the kernel sent them SIGTERM


def test_sighup_restarts_dead_children(dev_cluster_factory: DevClusterFactory) -> None:
    cluster = dev_cluster_factory(**SMALL)
    old_pid = cluster.node("n3").pid
    cluster.kill_node("n3")
    os.kill(cluster.dev_pid, signal.SIGHUP)

    def restarted() -> bool:
        try:
            info = json.loads((cluster.data_dir / "cluster.json").read_text())
        except ValueError:  # cannot happen with atomic writes; tolerate it rather than flake
            return False
        n3 = next(n for n in info["nodes"] if n["id"] == "n3")
        return n3["pid"] != old_pid and n3["running"]

    wait_until(restarted, 60, "objstore dev to restart n3 and rewrite cluster.json")
    assert probe_node(cluster.node("n3").address, cluster.secret)


def test_restart_reuses_data_dir_and_credentials(dev_cluster_factory: DevClusterFactory) -> None:
    first = dev_cluster_factory(**SMALL)
    has_gateway = first.gateway is not None
    if has_gateway:
        s3 = first.s3()
        s3.create_bucket(Bucket="survives")
        s3.put_object(Bucket="survives", Key="k", Body=b"still here" * 1000)
    identity = (first.endpoint, first.access_key, first.secret_key, first.secret, first.cluster_map())
    dirs = [(n.id, n.data_dir, n.port) for n in first.nodes]
    pids = first.all_pids()
    assert first.stop() == 0
    wait_pids_gone(pids, 10)  # the ports must be free again

    second = dev_cluster_factory(data_dir=first.data_dir)
    assert (second.endpoint, second.access_key, second.secret_key, second.secret, second.cluster_map()) == identity
    assert [(n.id, n.data_dir, n.port) for n in second.nodes] == dirs
    assert all(n.pid not in pids and n.alive for n in second.nodes)
    if not has_gateway:
        pytest.skip(f"data check needs the S3 gateway: {second.info.get('gateway_missing')}")
    got = second.s3().get_object(Bucket="survives", Key="k")["Body"].read()
    assert got == b"still here" * 1000


def test_contradicting_flag_fails_before_any_child_starts(tmp_path: Path) -> None:
    """Flags that contradict the data dir: one line on stderr, exit 1, nothing started."""
    from objstore.devsetup import DevOptions, prepare

    prepare(DevOptions(data=tmp_path, **SMALL, port=21000))  # type: ignore[arg-type]
    result = subprocess.run(
        [sys.executable, "-m", "objstore.cli", "dev", "--data", str(tmp_path), "--nodes", "4"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert "nodes 3, but --nodes 4 was given" in result.stderr


def test_without_a_gateway_the_nodes_still_start(dev_cluster_factory: DevClusterFactory, tmp_path: Path) -> None:
    """A gateway package that cannot be imported (shadowed here by a broken one) leaves a nodes-only cluster."""
    (tmp_path / "gateway").mkdir()
    (tmp_path / "gateway" / "__init__.py").write_text('raise ImportError("gateway disabled by the test")\n')
    cluster = dev_cluster_factory(**SMALL, env={"PYTHONPATH": str(tmp_path)})
    assert cluster.gateway is None
    assert "gateway disabled by the test" in cluster.info["gateway_missing"]
    assert "No S3 gateway" in cluster.log_tail()
    assert all(probe_node(n.address, cluster.secret) for n in cluster.nodes)
    with pytest.raises(pytest.skip.Exception, match="without an S3 gateway"):
        cluster.s3()
