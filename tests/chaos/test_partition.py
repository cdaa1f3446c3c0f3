"""Chaos: a node cut off from the other nodes and the gateway by the network, while its process runs on."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

from objstore.cluster import NodeInfo
from tests.chaos.chaos import FAST_REPAIR, md5, payload, status, wait_full_redundancy, wait_status_clean
from tests.chaos.netproxy import LoopbackNet
from tests.cluster import DevCluster

pytestmark = [pytest.mark.integration, pytest.mark.chaos, pytest.mark.timeout(180)]

SIZES = [0, 1, 4096, 100_000, 300_000, 1_200_000]
VICTIM = "n5"


def direct(cluster: DevCluster, node_id: str) -> NodeInfo:
    """The node at the address it listens on: the test's own way around the proxies."""
    node = cluster.node(node_id)
    return NodeInfo(node_id, node.listen, node.zone)


def health(cluster: DevCluster, node: NodeInfo, timeout: float = 3.0, rpc: str = "health") -> dict[str, Any]:
    """The node's /health (its view of its peers), or with rpc="stats" its fresh record and blob counts."""
    async def ask() -> dict[str, Any]:
        async with cluster.node_client(timeout=timeout, connect_timeout=timeout) as client:
            result: dict[str, Any] = await getattr(client, rpc)(node)
            return result

    return asyncio.run(ask())


def wait_for(predicate: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout}s: {what}")
        time.sleep(0.2)


@pytest.mark.parametrize("mode", ["blackhole", "refuse"])
def test_node_cut_off_then_healed(proxied_cluster: Any, mode: str) -> None:
    """The cluster keeps serving while one node's packets go nowhere; after healing nothing is lost,
    read-after-write holds, and the cut node agrees with the others again."""
    cluster, net = proxied_cluster(down_after=2.0, node_settings=FAST_REPAIR)
    net: LoopbackNet
    s3 = cluster.s3(retries={"max_attempts": 3}, read_timeout=40)
    s3.create_bucket(Bucket="cut")
    model: dict[str, str] = {}
    for i in range(12):
        data = payload(600 + i, SIZES[i % len(SIZES)])
        s3.put_object(Bucket="cut", Key=f"obj/{i:03d}", Body=data)
        model[f"obj/{i:03d}"] = md5(data)
    wait_full_redundancy(cluster, "cut", list(model), timeout=30)
    victim = direct(cluster, VICTIM)
    records_before = health(cluster, victim, rpc="stats")["records"]

    net.cut_off(VICTIM, mode)
    try:
        started = time.monotonic()
        slowest = 0.0
        for i in range(12):
            key = f"obj/{i:03d}" if i % 2 else f"new/{i}"
            data = payload(700 + i, SIZES[i % len(SIZES)])
            put_started = time.monotonic()
            s3.put_object(Bucket="cut", Key=key, Body=data)
            slowest = max(slowest, time.monotonic() - put_started)
            model[key] = md5(data)
            assert md5(s3.get_object(Bucket="cut", Key=key)["Body"].read()) == model[key], key
        listed = [o["Key"] for o in s3.list_objects_v2(Bucket="cut")["Contents"]]
        assert sorted(listed) == sorted(model)
        for key, digest in model.items():
            assert md5(s3.get_object(Bucket="cut", Key=key)["Body"].read()) == digest, key
        took = time.monotonic() - started
        # A write waits for a silent owner about a second once k+1 shards are durable, never the 10 s
        # node timeout (the bound leaves room for a loaded machine).
        print(f"\nslowest PUT during the cut: {slowest:.2f}s")
        assert slowest < 7.5, slowest
        # The process ran on, alone: it sees every peer gone, they see it down, and nothing reached it.
        wait_for(lambda: all(s == "down" for p, s in health(cluster, victim)["peers"].items() if p != VICTIM),
                 timeout=15, what=f"{VICTIM} to see every peer down")
        wait_for(lambda: all(health(cluster, direct(cluster, n.id))["peers"][VICTIM] == "down"
                             for n in cluster.nodes if n.id != VICTIM),
                 timeout=15, what=f"every other node to see {VICTIM} down")
        assert cluster.node(VICTIM).alive
        assert health(cluster, victim, rpc="stats")["records"] == records_before
        print(f"\n{mode}: 12 writes and reads, a listing and {len(model)} reads with {VICTIM} cut off "
              f"took {took:.1f}s")
    finally:
        net.heal()
    healed = time.monotonic()
    wait_full_redundancy(cluster, "cut", list(model), timeout=60)
    for key, digest in model.items():
        assert md5(s3.get_object(Bucket="cut", Key=key)["Body"].read()) == digest, key
    wait_status_clean(cluster, timeout=30, min_objects=len(model))
    wait_for(lambda: all(set(n["seen_by"].values()) == {"up"} for n in status(cluster)["nodes"]),
             timeout=15, what="every node to see every node up")
    assert health(cluster, victim, rpc="stats")["records"] > records_before  # its shards of the writes it missed
    print(f"healed: full redundancy and a clean status {time.monotonic() - healed:.1f}s later")
