"""The read budget on a real gateway: while stalled downloads hold it, other GETs are answered 503 SlowDown,
boto3's default retries get every one of them once the stalled clients hang up, the bytes are identical, and
no share is leaked by a client that hangs up mid-body, a ranged or partNumber GET, or a HEAD."""

from __future__ import annotations

import hashlib
import os
import socket
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from urllib.parse import quote, urlsplit

import pytest
from botocore.auth import S3SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

from objstore.reader import read_buffer_bytes
from objstore.records import ObjectRecord, PartRef
from tests.cluster import DevCluster, wait_until
from tests.integration.small_gateway import SmallGateway, small_gateway

BODY = 4 * 1024 * 1024  # streamed: a GET's share is the streamed bound
STALLED = 32 * 1024 * 1024  # more than loopback socket buffers take: a reader that stops reading holds its share
GETS = 8
WAIT = 0.5  # read_wait of the small gateway





@pytest.fixture(scope="module")
def gateway(dev_cluster: DevCluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[SmallGateway]:
    ec = dev_cluster.cluster_map().ec
    share = read_buffer_bytes(ObjectRecord(bucket="b", key="k", version="v", shard=0, ec=ec, size=BODY, etag="",
                                           parts=[PartRef(1, BODY, "", "blob")]), 0, BODY)
    with small_gateway(dev_cluster, tmp_path_factory.mktemp("small-read-gateway"), "read", share, WAIT, GETS) as gw:
        yield gw


def open_get(gw: SmallGateway, bucket: str, key: str, headers: dict[str, str] | None = None) -> socket.socket:
    """A signed GET sent on a socket with a small receive buffer; the caller reads (or does not read) the answer."""
    host = urlsplit(gw.endpoint).netloc
    req = AWSRequest("GET", f"{gw.endpoint}/{bucket}/{quote(key)}", headers={"Host": host, **(headers or {})})
    S3SigV4Auth(Credentials(gw.access_key, gw.secret_key), "s3", gw.region).add_auth(req)
    hostname, port = host.split(":")
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
    sock.settimeout(30)
    sock.connect((hostname, int(port)))
    head = f"GET /{bucket}/{quote(key)} HTTP/1.1\r\n" + "".join(f"{k}: {v}\r\n" for k, v in req.headers.items())
    sock.sendall((head + "\r\n").encode())
    return sock


def _in_use(gw: SmallGateway) -> float:
    return gw.metrics()["objstore_gateway_read_budget_in_use_bytes"]


def test_gets_over_the_budget_get_slowdown_and_boto3_retries_them_once_stalled_readers_hang_up(
        gateway: SmallGateway) -> None:
    gw = gateway
    s3 = gw.s3()
    bucket = "budget-gets"
    s3.create_bucket(Bucket=bucket)
    m = gw.metrics()
    assert m["objstore_gateway_read_budget_bytes"] == gw.capacity
    assert m["objstore_gateway_read_budget_in_use_bytes"] == 0
    refused_before = m["objstore_gateway_read_budget_refused_total"]
    bodies = {f"obj-{i}": os.urandom(BODY) for i in range(GETS)}
    for key, body in bodies.items():
        s3.put_object(Bucket=bucket, Key=key, Body=body)
    s3.put_object(Bucket=bucket, Key="big", Body=os.urandom(STALLED))

    # Two clients that ask for the big object and read nothing: they hold the whole budget.
    stalled = [open_get(gw, bucket, "big") for _ in range(2)]
    wait_until(lambda: _in_use(gw) == gw.capacity, 10, "the stalled GETs to hold the budget")
    s3.head_object(Bucket=bucket, Key="obj-0")  # HEAD takes no share: answered at once
    s3.list_objects_v2(Bucket=bucket)

    def get(key: str) -> bytes:
        return bytes(s3.get_object(Bucket=bucket, Key=key)["Body"].read())

    with ThreadPoolExecutor(GETS) as pool:
        futures = {key: pool.submit(get, key) for key in bodies}
        # Every first attempt waits WAIT seconds in the queue and is answered SlowDown ...
        wait_until(lambda: gw.metrics()["objstore_gateway_read_budget_refused_total"] >= refused_before + 1, 20,
                   "a SlowDown")
        # ... then the stalled clients hang up mid-body, their shares come back, and the retries get in.
        for sock in stalled:
            sock.close()
        got = {key: f.result(timeout=120) for key, f in futures.items()}

    assert gw.metrics()["objstore_gateway_read_budget_refused_total"] >= refused_before + 1
    for key, body in bodies.items():
        assert hashlib.md5(got[key]).digest() == hashlib.md5(body).digest(), key
    wait_until(lambda: _in_use(gw) == 0, 10, "every share back")
    assert gw.metrics()["objstore_gateway_read_budget_waiting"] == 0
    for key in [*bodies, "big"]:
        s3.delete_object(Bucket=bucket, Key=key)
    s3.delete_bucket(Bucket=bucket)


def test_ranged_part_and_cut_off_gets_give_their_share_back(gateway: SmallGateway) -> None:
    gw = gateway
    s3 = gw.s3()
    bucket = "budget-get-ends"
    s3.create_bucket(Bucket=bucket)
    body = os.urandom(BODY)
    s3.put_object(Bucket=bucket, Key="obj", Body=body)
    s3.put_object(Bucket=bucket, Key="small", Body=b"x" * 4096)
    s3.put_object(Bucket=bucket, Key="big", Body=os.urandom(STALLED))
    for _ in range(3):  # more than the budget holds: a leaked share would block the third
        assert s3.get_object(Bucket=bucket, Key="obj", Range="bytes=1000-1999999")["Body"].read() == body[1000:2000000]
        assert s3.get_object(Bucket=bucket, Key="obj", PartNumber=1)["Body"].read() == body
        assert s3.get_object(Bucket=bucket, Key="small")["Body"].read() == b"x" * 4096
    for _ in range(3):  # a client that hangs up after part of the body
        sock = open_get(gw, bucket, "big")
        assert len(sock.recv(65536)) > 0
        time.sleep(0.2)
        sock.close()
    for _ in range(3):  # a client that hangs up before its answer started
        open_get(gw, bucket, "big").close()
    wait_until(lambda: _in_use(gw) == 0, 10, "every share back")
    assert gw.metrics()["objstore_gateway_read_budget_waiting"] == 0
    assert s3.get_object(Bucket=bucket, Key="big")["ContentLength"] == STALLED
    for key in ("obj", "small", "big"):
        s3.delete_object(Bucket=bucket, Key=key)
    s3.delete_bucket(Bucket=bucket)
