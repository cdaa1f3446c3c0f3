"""Chaos about time: a slow node (hedged reads keep GETs fast) and a node whose clock is an hour off."""

from __future__ import annotations

import statistics
import time

import botocore.exceptions
import pytest

from tests.chaos.chaos import FAST_REPAIR, md5, payload, wait_full_redundancy

pytestmark = [pytest.mark.integration, pytest.mark.chaos, pytest.mark.timeout(240)]

DELAY = 1.0


def test_slow_node_does_not_slow_gets(dev_cluster_factory):
    cluster = dev_cluster_factory(down_after=5.0, node_settings=FAST_REPAIR)
    s3 = cluster.s3(read_timeout=30)
    s3.create_bucket(Bucket="slow")
    sizes = [5000, 300_000, 1_200_000]
    model = {}
    for i in range(15):
        data = payload(3000 + i, sizes[i % 3])
        s3.put_object(Bucket="slow", Key=f"s/{i}", Body=data)
        model[f"s/{i}"] = md5(data)
    cluster.kill_node("n3")
    cluster.start_node("n3", env={"OBJSTORE_FAULT_DELAY": str(DELAY)})
    latencies = []
    for _ in range(3):
        for key, digest in model.items():
            started = time.monotonic()
            assert md5(s3.get_object(Bucket="slow", Key=key)["Body"].read()) == digest
            latencies.append(time.monotonic() - started)
    latencies.sort()
    p99 = latencies[int(0.99 * (len(latencies) - 1))]
    print(f"\nGET with one node delayed {DELAY}s: median {statistics.median(latencies) * 1000:.0f} ms, "
          f"p99 {p99 * 1000:.0f} ms over {len(latencies)} reads")
    assert p99 < DELAY * 0.75, latencies[-5:]


@pytest.mark.parametrize("offset", [3600, -3600])
def test_node_with_a_skewed_clock(dev_cluster_factory, offset):
    """PUT v1, PUT v2, GET returns v2; a deleted object never comes back, whatever one node's clock says."""
    cluster = dev_cluster_factory(down_after=2.0, node_settings={**FAST_REPAIR, "gc_grace": 2.0})
    s3 = cluster.s3()
    s3.create_bucket(Bucket="skew")
    cluster.kill_node("n4")
    cluster.start_node("n4", env={"OBJSTORE_CLOCK_OFFSET": str(offset)})
    for i in range(6):
        s3.put_object(Bucket="skew", Key=f"x{i}", Body=b"v1" * (i * 40_000 + 1))
        s3.put_object(Bucket="skew", Key=f"x{i}", Body=b"v2" * (i * 40_000 + 1))
        assert s3.get_object(Bucket="skew", Key=f"x{i}")["Body"].read() == b"v2" * (i * 40_000 + 1)
    s3.delete_object(Bucket="skew", Key="x0")
    s3.delete_object(Bucket="skew", Key="x3")
    time.sleep(6)  # several repair passes on every node, the skewed one included, past gc_grace
    for i in range(6):
        if i in (0, 3):
            with pytest.raises(botocore.exceptions.ClientError) as e:
                s3.get_object(Bucket="skew", Key=f"x{i}")
            assert e.value.response["Error"]["Code"] == "NoSuchKey"
        else:
            assert s3.get_object(Bucket="skew", Key=f"x{i}")["Body"].read() == b"v2" * (i * 40_000 + 1)
    wait_full_redundancy(cluster, "skew", [f"x{i}" for i in (1, 2, 4, 5)], timeout=60)
    listed = [o["Key"] for o in s3.list_objects_v2(Bucket="skew").get("Contents", [])]
    assert listed == ["x1", "x2", "x4", "x5"]
