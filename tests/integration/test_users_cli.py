"""`objstore user` and `objstore bench` against a running dev cluster: keys usable at once, refused soon after delete."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from typing import Any

import boto3
import pytest
from botocore.config import Config
from botocore.exceptions import ClientError

from tests.cluster import DevCluster

REFUSED_WITHIN = 10.0  # seconds: the gateway rereads the users every 2 s


def objstore(*args: str, timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "OBJSTORE_SECRET"}
    env["COLUMNS"] = "200"
    return subprocess.run([sys.executable, "-m", "objstore.cli", *args], check=False, capture_output=True, text=True,
                          timeout=timeout, env=env, stdin=subprocess.DEVNULL)


def s3_as(cluster: DevCluster, access_key: str, secret_key: str) -> Any:
    cluster.require_gateway()
    return boto3.client("s3", endpoint_url=cluster.endpoint, aws_access_key_id=access_key,
                        aws_secret_access_key=secret_key, region_name=cluster.region,
                        config=Config(s3={"addressing_style": "path"}, retries={"max_attempts": 1},
                                      connect_timeout=5, read_timeout=30))


def error_code(action: Any) -> str:
    with pytest.raises(ClientError) as info:
        action()
    return str(info.value.response["Error"]["Code"])


def test_a_created_user_works_at_once_and_stops_working_after_delete(dev_cluster: DevCluster) -> None:
    cluster_file = str(dev_cluster.data_dir / "cluster.json")
    made = objstore("user", "create", "alice", "--json", "--cluster", cluster_file)
    assert made.returncode == 0, made.stderr
    alice = json.loads(made.stdout)
    assert alice["name"] == "alice" and not alice["admin"]

    s3 = s3_as(dev_cluster, alice["access_key"], alice["secret_key"])
    s3.create_bucket(Bucket="alice-bucket")  # no wait: the gateway asks the cluster about the new key
    s3.put_object(Bucket="alice-bucket", Key="hello", Body=b"hello alice")
    assert s3.get_object(Bucket="alice-bucket", Key="hello")["Body"].read() == b"hello alice"
    owner = s3.list_buckets()["Owner"]
    assert owner["DisplayName"] == "alice"
    # the bucket is alice's: the dev cluster's own user may not read it
    assert error_code(lambda: dev_cluster.s3().get_object(Bucket="alice-bucket", Key="hello")) == "AccessDenied"

    listed = objstore("user", "list", "--json", "--cluster", cluster_file)
    assert listed.returncode == 0, listed.stderr
    rows = json.loads(listed.stdout)
    assert [r["access_key"] for r in rows if r["name"] == "alice"] == [alice["access_key"]]
    assert alice["secret_key"] not in listed.stdout

    again = objstore("user", "create", "alice", "--cluster", cluster_file)
    assert again.returncode == 1 and again.stderr.strip().startswith("Error: a user named alice exists")

    gone = objstore("user", "delete", "alice", "--cluster", cluster_file)
    assert gone.returncode == 0, gone.stderr
    assert "alice-bucket" in gone.stdout  # the operator is told what the user leaves behind
    deadline = time.monotonic() + REFUSED_WITHIN
    while True:
        try:
            s3.list_buckets()
        except ClientError as e:
            assert e.response["Error"]["Code"] == "InvalidAccessKeyId"
            break
        assert time.monotonic() < deadline, f"alice's key still works {REFUSED_WITHIN:g}s after delete"
        time.sleep(0.2)
    assert "alice" not in [r["name"] for r in json.loads(objstore("user", "list", "--json", "--cluster",
                                                                  cluster_file).stdout)]


def test_create_prints_the_keys_and_list_never_the_secret(dev_cluster: DevCluster) -> None:
    cluster_file = str(dev_cluster.data_dir / "cluster.json")
    made = objstore("user", "create", "bob", "--admin", "--access-key", "BOBTESTKEY01", "--cluster", cluster_file)
    assert made.returncode == 0, made.stderr
    secret_line = next(line for line in made.stdout.splitlines() if "secret key" in line)
    secret = secret_line.split()[-1]
    assert len(secret) == 40 and "not shown again" in made.stdout
    listed = objstore("user", "list", "--cluster", cluster_file)
    assert listed.returncode == 0 and "BOBTESTKEY01" in listed.stdout and "bob" in listed.stdout
    assert secret not in listed.stdout

    # an admin made on the command line signs in to the dashboard once the gateway has reread its users
    gateway = dev_cluster.require_gateway()
    request = urllib.request.Request(f"{gateway['url']}/_objstore/api/status", headers={
        "Authorization": "Basic " + base64.b64encode(f"BOBTESTKEY01:{secret}".encode()).decode()})
    deadline = time.monotonic() + REFUSED_WITHIN
    while True:
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                assert response.status == 200
                break
        except urllib.error.HTTPError as e:
            assert e.code == 401 and time.monotonic() < deadline
            time.sleep(0.2)
    assert objstore("user", "delete", "BOBTESTKEY01", "--cluster", cluster_file).returncode == 0


def test_user_commands_fail_in_one_line_on_a_wrong_argument(dev_cluster: DevCluster) -> None:
    cluster_file = str(dev_cluster.data_dir / "cluster.json")
    for args, message in ((["delete", "nobody"], "no user with access key or name 'nobody'"),
                          (["create", "carol", "--access-key", "a b"], "access key 'a b'")):
        result = objstore("user", *args, "--cluster", cluster_file)
        assert result.returncode == 1, result
        assert result.stderr.strip().splitlines() == [f"Error: {result.stderr.strip()[7:]}"]
        assert message in result.stderr and "Traceback" not in result.stderr


def test_bench_runs_against_the_cluster_and_counts_no_errors(dev_cluster: DevCluster) -> None:
    dev_cluster.require_gateway()
    result = objstore("bench", "--cluster", str(dev_cluster.data_dir / "cluster.json"), "--workloads", "put,get",
                      "--sizes", "1KiB", "--concurrency", "2", "--duration", "2", "--max-ops", "200",
                      "--objects", "20", "--bucket", "bench", timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "ops/s" in result.stdout
    cells = [line for line in result.stdout.splitlines() if line.startswith(("put 1 KiB", "get 1 KiB"))]
    assert len(cells) == 2 and all(line.endswith(", 0 errors") for line in cells), result.stdout
