"""Chaos: shards whose upload was never committed are removed after `pending_grace`, multipart parts in use never."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from typing import Any

import pytest

from objstore.client import NotFound
from objstore.cluster import NodeInfo
from objstore.ring import Ring
from objstore.versions import new_version
from tests.chaos.chaos import FAST_REPAIR, md5, payload
from tests.cluster import DevCluster, wait_until
from tests.integration.s3raw import open_put

pytestmark = [pytest.mark.integration, pytest.mark.chaos, pytest.mark.timeout(120)]

GRACE = 3.0
PART = 5 * 1024 * 1024


async def _orphans(cluster: DevCluster, ring: Ring, partition: int, blobs: list[str], size: int) -> None:
    """Upload every shard of `blobs` to the partition's owners, as a gateway does, and commit nothing."""
    data = payload(1, size)
    async with cluster.node_client(timeout=10.0) as client:
        for blob in blobs:
            await asyncio.gather(*(client.put_blob(node, blob, i, partition, ring.ec.block_size, data)
                                   for i, node in enumerate(ring.owners(partition))))


async def _held(cluster: DevCluster, blob: str) -> list[str]:
    """Ids of the nodes that still hold a shard of `blob` (any index)."""
    held = []
    async with cluster.node_client(timeout=5.0) as client:
        for node in cluster.cluster_map().nodes:
            for shard in range(cluster.k + cluster.m):
                try:
                    async with client.open_blob(node, blob, shard, 0, 1):
                        held.append(f"{node.id}.{shard}")
                except NotFound:
                    pass
    return held


def held(cluster: DevCluster, blob: str) -> list[str]:
    return asyncio.run(_held(cluster, blob))


def node_stats(cluster: DevCluster) -> dict[str, dict[str, Any]]:
    async def ask() -> dict[str, dict[str, Any]]:
        async with cluster.node_client(timeout=5.0) as client:
            nodes = cluster.cluster_map().nodes
            return dict(zip((n.id for n in nodes), await asyncio.gather(*(client.stats(n) for n in nodes))))

    return asyncio.run(ask())


def temp_files(cluster: DevCluster) -> int:
    return sum(1 for n in cluster.nodes for p in (n.data_dir / "data").rglob("*.tmp"))


def part_blobs(cluster: DevCluster, upload_id: str) -> set[str]:
    """Blob ids of the upload's parts, as the nodes' pending shard files name them."""
    found = set()
    for node in cluster.nodes:
        for path in (node.data_dir / "data").rglob(f"{upload_id}-*"):
            found.add(path.name.rpartition(".")[0])
    return found


def test_uncommitted_shards_go_after_the_grace_and_parts_in_use_stay(dev_cluster_factory: Any) -> None:
    cluster = dev_cluster_factory(down_after=2.0, node_settings={**FAST_REPAIR, "pending_grace": GRACE})
    s3 = cluster.s3(read_timeout=30)
    s3.create_bucket(Bucket="gcb")

    # A multipart upload in progress: part 2 is uploaded twice, so its first blob is no part's any more.
    upload_id = s3.create_multipart_upload(Bucket="gcb", Key="big")["UploadId"]
    part1, part2_old, part2 = payload(11, PART), payload(12, 300_000), payload(13, 400_000)
    etag1 = s3.upload_part(Bucket="gcb", Key="big", UploadId=upload_id, PartNumber=1, Body=part1)["ETag"]
    s3.upload_part(Bucket="gcb", Key="big", UploadId=upload_id, PartNumber=2, Body=part2_old)
    first_part2 = part_blobs(cluster, upload_id)
    etag2 = s3.upload_part(Bucket="gcb", Key="big", UploadId=upload_id, PartNumber=2, Body=part2)["ETag"]
    in_use = part_blobs(cluster, upload_id) - {b for b in first_part2 if b.split("-")[1] == "00002"}
    superseded = first_part2 - in_use
    assert len(in_use) == 2 and len(superseded) == 1, (in_use, superseded)

    # Writes whose gateway died between the shards and the commit: one PUT-like blob, one part-like blob
    # of an upload that does not exist.
    ring = Ring(cluster.cluster_map())
    partition = ring.partition_of("gcb", "orphan")
    orphans = [new_version(), f"{new_version()}-00001-0badc0de"]
    asyncio.run(_orphans(cluster, ring, partition, orphans, 600_000))
    assert all(len(held(cluster, b)) == cluster.k + cluster.m for b in orphans)

    # A gateway killed in the middle of a large PUT leaves neither temp files nor anything else.
    gateway_pid = int(cluster.require_gateway()["pid"])
    body = payload(14, 24 * 1024 * 1024)
    with open_put(cluster, "gcb", "cut-short", body) as sock:
        sock.sendall(body[: len(body) // 2])
        wait_until(lambda: temp_files(cluster) > 0, 15, "the gateway to stream shards to the nodes")
        os.kill(gateway_pid, signal.SIGKILL)
    wait_until(lambda: temp_files(cluster) == 0, 15, "no temp file left on any node")

    started = time.monotonic()
    wait_until(lambda: not any(held(cluster, b) for b in orphans + sorted(superseded)), GRACE + 20,
               "shards never committed to be removed", interval=0.5)
    took = time.monotonic() - started
    for blob in in_use:
        assert len(held(cluster, blob)) == cluster.k + cluster.m, blob
    removed = sum(n["gc"]["pending_removed"] for n in _healths(cluster))
    assert removed >= 3 * (cluster.k + cluster.m), removed  # the two orphans and the superseded part
    print(f"\n{removed} uncommitted shards removed {took:.1f}s after a grace of {GRACE:g}s; "
          f"{len(in_use)} parts of an upload in progress kept")

    # The parts outlived the grace; the upload completes with them (the gateway restarted).
    os.kill(cluster.dev_pid, signal.SIGHUP)
    wait_until(cluster.gateway_ready, 30, "the gateway to be restarted")
    s3.complete_multipart_upload(Bucket="gcb", Key="big", UploadId=upload_id, MultipartUpload={"Parts": [
        {"PartNumber": 1, "ETag": etag1}, {"PartNumber": 2, "ETag": etag2}]})
    assert md5(s3.get_object(Bucket="gcb", Key="big")["Body"].read()) == md5(part1 + part2)
    wait_until(lambda: all(n["pending_blobs"] == 0 for n in node_stats(cluster).values()), GRACE + 20,
               "no pending shard left once the upload completed", interval=0.5)
    assert md5(s3.get_object(Bucket="gcb", Key="big")["Body"].read()) == md5(part1 + part2)

    # The upload's and its parts' tombstones go too, past gc_grace, from every node: nothing of it is left.
    assert kv_documents(cluster, "upload") + kv_documents(cluster, "part") > 0
    wait_until(lambda: kv_documents(cluster, "upload") + kv_documents(cluster, "part") == 0,
               FAST_REPAIR["gc_grace"] + 20, "the upload's tombstones removed from every node", interval=0.5)
    assert md5(s3.get_object(Bucket="gcb", Key="big")["Body"].read()) == md5(part1 + part2)
    assert s3.list_multipart_uploads(Bucket="gcb").get("Uploads", []) == []


def kv_documents(cluster: DevCluster, ns: str) -> int:
    """Documents of a namespace held over all nodes, tombstones included."""
    async def count() -> int:
        async with cluster.node_client(timeout=5.0) as client:
            held = await asyncio.gather(*(client.list_kv(n, ns) for n in cluster.cluster_map().nodes))
            return sum(len(docs) for docs in held)

    return asyncio.run(count())


def _healths(cluster: DevCluster) -> list[dict[str, Any]]:
    async def ask() -> list[dict[str, Any]]:
        async with cluster.node_client(timeout=5.0) as client:
            nodes: list[NodeInfo] = list(cluster.cluster_map().nodes)
            return list(await asyncio.gather(*(client.health(n) for n in nodes)))

    return asyncio.run(ask())


def test_deleted_keys_leave_no_record_behind(dev_cluster_factory: Any) -> None:
    """A bucket never versioned: its deleted keys' delete markers go after gc_grace, from every node, and the
    listing never shows them meanwhile; a versioned bucket keeps its markers."""
    cluster = dev_cluster_factory(down_after=2.0, node_settings=FAST_REPAIR)
    s3 = cluster.s3()
    s3.create_bucket(Bucket="churn")
    s3.create_bucket(Bucket="history")
    s3.put_bucket_versioning(Bucket="history", VersioningConfiguration={"Status": "Enabled"})
    for bucket in ("churn", "history"):
        for i in range(12):
            s3.put_object(Bucket=bucket, Key=f"tmp/{i}", Body=payload(i, 5000 if i % 2 else 300_000))
        for i in range(12):
            s3.delete_object(Bucket=bucket, Key=f"tmp/{i}")
    s3.put_object(Bucket="churn", Key="kept", Body=b"still here")
    assert [o["Key"] for o in s3.list_objects_v2(Bucket="churn").get("Contents", [])] == ["kept"]
    started = time.monotonic()
    wait_until(lambda: records_of(cluster, "churn") == {"kept"}, FAST_REPAIR["gc_grace"] * 3 + 30,
               "the delete markers of the deleted keys removed from every node", interval=0.5)
    took = time.monotonic() - started
    assert records_of(cluster, "history") == {f"tmp/{i}" for i in range(12)}  # versions: they stay
    assert s3.get_object(Bucket="churn", Key="kept")["Body"].read() == b"still here"
    markers = s3.list_object_versions(Bucket="history").get("DeleteMarkers", [])
    assert len(markers) == 12
    print(f"\n12 delete markers gone from every node {took:.1f}s after the deletes (gc_grace "
          f"{FAST_REPAIR['gc_grace']:g}s); the versioned bucket's 12 kept")


def records_of(cluster: DevCluster, bucket: str) -> set[str]:
    """Keys of `bucket` any node holds a record of (delete markers included)."""
    async def keys() -> set[str]:
        async with cluster.node_client(timeout=5.0) as client:
            nodes = list(cluster.cluster_map().nodes)
            partitions = await asyncio.gather(*(client.partitions_held(n) for n in nodes))
            rows = await asyncio.gather(*(client.partition_records(n, p) for n, held in zip(nodes, partitions)
                                          for p in held))
            return {key for r in rows for b, key, *_ in r if b == bucket}

    return asyncio.run(keys())
