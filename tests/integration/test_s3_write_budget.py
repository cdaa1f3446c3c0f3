"""The write budget on a real gateway: more concurrent PUTs than it allows are answered 503 SlowDown, boto3's
default retries get every one of them in, every object reads back identical, and no share is leaked by a
client that hangs up or a PUT refused for a bad digest."""

from __future__ import annotations

import base64
import hashlib
import os
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest

from objstore.objects import write_buffer_bytes
from tests.cluster import DevCluster, wait_until
from tests.integration.small_gateway import SmallGateway, small_gateway
from tests.integration.s3raw import open_put

BODY = 4 * 1024 * 1024  # streamed (above k x 64 KiB): a write's share is the streamed bound or its size
PUTS = 8
WAIT = 0.5  # write_wait of the small gateway


@pytest.fixture(scope="module")
def gateway(dev_cluster: DevCluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[SmallGateway]:
    share = write_buffer_bytes(dev_cluster.cluster_map().ec, BODY)
    with small_gateway(dev_cluster, tmp_path_factory.mktemp("small-gateway"), "write", share, WAIT, PUTS) as gw:
        yield gw


def test_more_puts_than_the_budget_allows_get_slowdown_and_boto3_retries_them_all_in(
        gateway: SmallGateway) -> None:
    gw = gateway
    s3 = gw.s3()
    bucket = "budget-puts"
    s3.create_bucket(Bucket=bucket)
    m = gw.metrics()
    assert m["objstore_gateway_write_budget_bytes"] == gw.capacity
    assert m["objstore_gateway_write_budget_in_use_bytes"] == 0
    refused_before = m["objstore_gateway_write_budget_refused_total"]
    bodies = {f"obj-{i}": os.urandom(BODY) for i in range(PUTS)}

    # Two clients that send their headers and part of a body, then stall: they hold the whole budget.
    stalled = []
    for i in range(2):
        body = os.urandom(BODY)
        sock = open_put(gw, bucket, f"stalled-{i}", body)  # type: ignore[arg-type]
        sock.sendall(body[:BODY // 4])
        stalled.append(sock)
    wait_until(lambda: gw.metrics()["objstore_gateway_write_budget_in_use_bytes"] == gw.capacity, 10,
               "the stalled PUTs to hold the budget")

    def put(key: str) -> str:
        return str(s3.put_object(Bucket=bucket, Key=key, Body=bodies[key])["ETag"])

    with ThreadPoolExecutor(PUTS) as pool:
        futures = {key: pool.submit(put, key) for key in bodies}
        # Every first attempt waits WAIT seconds in the queue and is answered SlowDown ...
        wait_until(lambda: gw.metrics()["objstore_gateway_write_budget_refused_total"] >= refused_before + 1, 20,
                   "a SlowDown")
        # ... then the stalled clients hang up, their shares come back, and the retries get in.
        for sock in stalled:
            sock.close()
        etags = {key: f.result(timeout=120) for key, f in futures.items()}

    m = gw.metrics()
    assert m["objstore_gateway_write_budget_refused_total"] >= refused_before + 1
    for key, body in bodies.items():
        assert etags[key] == f'"{hashlib.md5(body).hexdigest()}"'
        assert s3.get_object(Bucket=bucket, Key=key)["Body"].read() == body, key
    names = {o["Key"] for o in s3.list_objects_v2(Bucket=bucket).get("Contents", [])}
    assert names == set(bodies), "the stalled PUTs that hung up left nothing visible"
    wait_until(lambda: gw.metrics()["objstore_gateway_write_budget_in_use_bytes"] == 0, 10, "every share back")
    assert gw.metrics()["objstore_gateway_write_budget_waiting"] == 0
    for key in bodies:
        s3.delete_object(Bucket=bucket, Key=key)
    s3.delete_bucket(Bucket=bucket)


def test_a_put_refused_for_its_digest_or_cut_off_gives_its_share_back(gateway: SmallGateway) -> None:
    gw = gateway
    s3 = gw.s3()
    bucket = "budget-errors"
    s3.create_bucket(Bucket=bucket)
    body = os.urandom(BODY)
    wrong = base64.b64encode(hashlib.md5(b"something else").digest()).decode()
    for _ in range(3):  # more than the budget holds: a leaked share would block the third
        with pytest.raises(Exception) as e:
            s3.put_object(Bucket=bucket, Key="bad", Body=body, ContentMD5=wrong)
        assert "BadDigest" in str(e.value)
    for _ in range(3):  # a client that hangs up mid-body
        sock = open_put(gw, bucket, "cut", body)  # type: ignore[arg-type]
        sock.sendall(body[:BODY // 2])
        time.sleep(0.2)
        sock.close()
    wait_until(lambda: gw.metrics()["objstore_gateway_write_budget_in_use_bytes"] == 0, 10, "every share back")
    s3.put_object(Bucket=bucket, Key="good", Body=body)
    assert s3.get_object(Bucket=bucket, Key="good")["Body"].read() == body
    assert {o["Key"] for o in s3.list_objects_v2(Bucket=bucket)["Contents"]} == {"good"}
    s3.delete_object(Bucket=bucket, Key="good")
    s3.delete_bucket(Bucket=bucket)
