"""The write budget on a real gateway: more concurrent PUTs than it allows are answered 503 SlowDown, boto3's
default retries get every one of them in, every object reads back identical, and no share is leaked by a
client that hangs up or a PUT refused for a bad digest."""

from __future__ import annotations

import base64
import hashlib
import os
import re
import subprocess
import sys
import time
import tomllib
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest

from objstore.devcluster import child_env, die_with_parent, probe_gateway
from objstore.devsetup import to_toml
from objstore.objects import write_buffer_bytes
from tests.cluster import LOOPBACK, DevCluster, free_port_range, wait_until
from tests.integration.s3raw import open_put

BODY = 4 * 1024 * 1024  # streamed (above k x 64 KiB): a write's share is the streamed bound or its size
PUTS = 8
WAIT = 0.5  # write_wait of the small gateway


@dataclass
class SmallGateway:
    """A second gateway on the shared cluster's nodes whose write budget holds two PUTs of BODY bytes."""

    endpoint: str
    access_key: str
    secret_key: str
    region: str
    share: int
    capacity: int

    def metrics(self) -> dict[str, float]:
        with urllib.request.urlopen(self.endpoint + "/_objstore/metrics", timeout=10) as resp:
            text = resp.read().decode()
        return {m.group(1): float(m.group(2))
                for m in re.finditer(r"^(objstore_gateway_write_budget\w*) (\S+)$", text, re.MULTILINE)}

    def s3(self):  # type: ignore[no-untyped-def]
        """boto3 as an application uses it: default retries (SlowDown is retried with backoff)."""
        import boto3
        from botocore.config import Config

        return boto3.client("s3", endpoint_url=self.endpoint, aws_access_key_id=self.access_key,
                            aws_secret_access_key=self.secret_key, region_name=self.region,
                            config=Config(s3={"addressing_style": "path"}, max_pool_connections=PUTS + 2))


@pytest.fixture(scope="module")
def small_gateway(dev_cluster: DevCluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[SmallGateway]:
    gw = dev_cluster.require_gateway()
    doc = tomllib.loads(Path(gw["config"]).read_text())
    share = write_buffer_bytes(dev_cluster.cluster_map().ec, BODY)
    port = free_port_range(1)
    doc.update(listen=f"{LOOPBACK}:{port}", write_buffer_mb=2 * share / 1e6, write_wait=WAIT)
    work = tmp_path_factory.mktemp("small-gateway")
    config = work / "gateway.toml"
    config.write_text(to_toml(doc))
    with open(work / "gateway.log", "ab") as log:
        proc = subprocess.Popen([sys.executable, "-m", "objstore.cli", "gateway", "--config", str(config)],
                                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, env=child_env(),
                                preexec_fn=die_with_parent(), cwd=work)
    try:
        wait_until(lambda: proc.poll() is not None or probe_gateway(LOOPBACK, port), 60, "the small gateway")
        assert proc.poll() is None, (work / "gateway.log").read_text()[-3000:]
        yield SmallGateway(f"http://{LOOPBACK}:{port}", dev_cluster.access_key, dev_cluster.secret_key,
                           dev_cluster.region, share, int(2 * share / 1e6 * 1e6))
    finally:
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


def test_more_puts_than_the_budget_allows_get_slowdown_and_boto3_retries_them_all_in(
        small_gateway: SmallGateway) -> None:
    gw = small_gateway
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


def test_a_put_refused_for_its_digest_or_cut_off_gives_its_share_back(small_gateway: SmallGateway) -> None:
    gw = small_gateway
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
