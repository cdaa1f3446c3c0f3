"""Chaos: real processes really broken — wiped disks, damaged shards and records, killed nodes, removed nodes."""

from __future__ import annotations

import json
import random
import shutil
import threading
import time
import urllib.request

import botocore.exceptions
import pytest

from tests.chaos.chaos import (FAST_REPAIR, append_garbage, damage_record, flip_byte, kv_names, md5, payload,
                               shard_files, status, truncate, wait_full_redundancy, wait_status_clean)
from tests.cluster import wait_until

pytestmark = [pytest.mark.integration, pytest.mark.chaos, pytest.mark.timeout(240)]

SIZES = [0, 1, 4096, 100_000, 300_000, 1_200_000]


def fill(s3, bucket: str, n: int, seed: int = 0) -> dict[str, str]:
    s3.create_bucket(Bucket=bucket)
    model = {}
    for i in range(n):
        size = SIZES[i % len(SIZES)]
        data = payload(seed * 1000 + i, size)
        s3.put_object(Bucket=bucket, Key=f"obj/{i:03d}", Body=data)
        model[f"obj/{i:03d}"] = md5(data)
    return model


def remove_node(cluster, node_id: str) -> int:
    """What `objstore cluster remove-node` does: a new map epoch with the node removed, pushed to every node.
    Returns how many nodes took it."""
    from dataclasses import replace

    from objstore.ops import _publish, open_cluster

    cmap, secret, map_path = open_cluster(str(cluster.data_dir / "cluster.json"))
    new = cmap.with_changes(nodes=tuple(replace(n, state="removed") if n.id == node_id else n for n in cmap.nodes))
    return _publish(new, secret, map_path)


def gateway_epoch(cluster) -> int:
    with urllib.request.urlopen(f"{cluster.endpoint}/_objstore/health", timeout=5) as r:
        return int(json.loads(r.read())["epoch"])


def check_all(s3, bucket: str, model: dict[str, str]) -> None:
    for key, digest in model.items():
        assert md5(s3.get_object(Bucket=bucket, Key=key)["Body"].read()) == digest, key


def test_wiped_node_is_rebuilt_to_full_redundancy(dev_cluster_factory):
    cluster = dev_cluster_factory(down_after=2.0, node_settings=FAST_REPAIR)
    s3 = cluster.s3()
    model = fill(s3, "wipe", 24)
    s3.create_bucket(Bucket="wipe-empty")
    wait_full_redundancy(cluster, "wipe", list(model), timeout=30)
    assert kv_names(cluster, "n2", "bucket") >= {"wipe", "wipe-empty"}
    cluster.kill_node("n2")
    shutil.rmtree(cluster.node("n2").data_dir)
    cluster.node("n2").data_dir.mkdir()
    check_all(s3, "wipe", model)  # degraded reads while the node is gone
    cluster.start_node("n2")
    took = wait_full_redundancy(cluster, "wipe", list(model), timeout=90)
    print(f"\nfull redundancy {took:.1f}s after restarting a wiped node ({len(model)} objects)")
    check_all(s3, "wipe", model)
    clean = wait_status_clean(cluster, timeout=30, min_objects=len(model))
    assert clean["objects_degraded"] == 0 and clean["objects_unreadable"] == 0
    # The bucket records come back too: a disk wiped one after another must not erode them.
    wait_until(lambda: kv_names(cluster, "n2", "bucket") >= {"wipe", "wipe-empty"}, timeout=30,
               what="bucket records copied back to the wiped node", interval=0.5)


def test_data_dir_wiped_under_a_running_node(dev_cluster_factory):
    """No kill: the node notices its records database is gone, stops with EXIT_RESTART, `objstore dev` starts
    it again on an empty dir, and repair refills it; it never goes on claiming shards it lost."""
    cluster = dev_cluster_factory(down_after=2.0, node_settings=FAST_REPAIR)
    s3 = cluster.s3()
    model = fill(s3, "live-wipe", 18, seed=5)
    wait_full_redundancy(cluster, "live-wipe", list(model), timeout=30)
    before = cluster.node("n3").pid
    shutil.rmtree(cluster.node("n3").data_dir)
    check_all(s3, "live-wipe", model)
    wait_until(lambda: cluster.refresh() and cluster.node("n3").pid != before and cluster.node_ready("n3"),
               timeout=30, what="n3 started again by objstore dev", interval=0.5)
    took = wait_full_redundancy(cluster, "live-wipe", list(model), timeout=90)
    print(f"\nfull redundancy {took:.1f}s after n3's data dir was wiped under it")
    check_all(s3, "live-wipe", model)
    clean = wait_status_clean(cluster, timeout=60, min_objects=len(model))
    assert clean["objects_degraded"] == 0 and clean["objects_unreadable"] == 0


def test_damaged_shards_and_records_never_served_and_healed(dev_cluster_factory):
    cluster = dev_cluster_factory(down_after=2.0, node_settings=FAST_REPAIR)
    s3 = cluster.s3()
    model = fill(s3, "rot", 18, seed=1)
    wait_full_redundancy(cluster, "rot", list(model), timeout=30)
    damage = [flip_byte, truncate, append_garbage]
    damaged, used, used_paths = 0, set(), []
    # One damaged shard per object (at most m may go): each kind of damage on several nodes.
    for node_id in ["n1", "n3", "n5", "n2", "n6"]:
        path = next(p for p in shard_files(cluster, node_id) if p.stem not in used)
        used.add(path.stem)
        used_paths.append(path)
        damage[damaged % 3](path)
        damaged += 1
    assert damage_record(cluster, "n4", "rot", "obj/002") == 1
    started = time.monotonic()
    for _ in range(2):  # every read right, before and after the damage is found
        check_all(s3, "rot", model)
    # Reads find damaged data shards; damaged parity shards only the scrub finds (every 2 s here).
    found = wait_corrupt_found(cluster, damaged + 1, timeout=60)
    wait_full_redundancy(cluster, "rot", list(model), timeout=60)
    wait_status_clean(cluster, timeout=30, min_objects=len(model))
    print(f"\n{damaged} damaged shards and 1 damaged record found ({found}) and healed in "
          f"{time.monotonic() - started:.1f}s")
    for path in used_paths:  # a copy rebuilt in place of each quarantined shard
        assert path.exists(), path
    check_all(s3, "rot", model)


def wait_corrupt_found(cluster, wanted: int, timeout: float) -> int:
    deadline = time.monotonic() + timeout
    found = 0
    while time.monotonic() < deadline:
        found = sum(n["corrupt_found"] or 0 for n in status(cluster)["nodes"])
        if found >= wanted:
            return found
        time.sleep(0.5)
    raise AssertionError(f"{found} of {wanted} damaged shards and records found after {timeout}s")


def test_kill_nodes_during_writes(dev_cluster_factory):
    """SIGKILL up to m nodes during PUTs and overwrites: acknowledged writes survive, failed ones are absent or whole."""
    cluster = dev_cluster_factory(down_after=2.0, node_settings=FAST_REPAIR)
    s3 = cluster.s3(retries={"max_attempts": 1}, read_timeout=15)
    s3.create_bucket(Bucket="kill")
    rng = random.Random(7)
    acked: dict[str, str] = {}
    attempted: dict[str, set[str]] = {}
    stop = threading.Event()

    def writer() -> None:
        i = 0
        deadline = time.monotonic() + 25
        while not stop.is_set() and time.monotonic() < deadline and i < 400:
            key = f"k{rng.randrange(30)}"
            data = payload(i, rng.choice(SIZES))
            attempted.setdefault(key, set()).add(md5(data))
            try:
                s3.put_object(Bucket="kill", Key=key, Body=data)
                acked[key] = md5(data)
            except (botocore.exceptions.ClientError, botocore.exceptions.BotoCoreError):
                pass
            i += 1

    t = threading.Thread(target=writer)
    t.start()
    victims = ["n1", "n4"]  # m = 2
    time.sleep(2)
    for v in victims:
        cluster.kill_node(v)
        time.sleep(rng.uniform(0.5, 2))
    time.sleep(3)
    for v in victims:
        cluster.start_node(v)
    stop.set()
    t.join(60)
    assert acked, "no write was acknowledged"
    for key, digest in acked.items():
        got = md5(s3.get_object(Bucket="kill", Key=key)["Body"].read())
        # A later attempt that failed may still have become visible whole: never a partial object.
        assert got == digest or got in attempted[key], key
    wait_full_redundancy(cluster, "kill", list(acked), timeout=90)


def test_removed_dead_node_is_rebuilt_elsewhere(dev_cluster_factory):
    cluster = dev_cluster_factory(nodes=7, zones=3, down_after=2.0, node_settings=FAST_REPAIR)
    s3 = cluster.s3()
    model = fill(s3, "gone", 18, seed=3)
    wait_full_redundancy(cluster, "gone", list(model), timeout=30)
    cluster.kill_node("n7")
    assert remove_node(cluster, "n7") == 6
    took = wait_full_redundancy(cluster, "gone", list(model), timeout=90)
    print(f"\nshards of a removed node rebuilt in {took:.1f}s")
    check_all(s3, "gone", model)


def test_removing_a_node_of_six_keeps_objects_whole(dev_cluster_factory):
    """Five nodes left for 4+2: one owner per partition takes a second shard, and every object, old or new,
    gets back to k+m healthy shards; status reaches zero objects at risk."""
    cluster = dev_cluster_factory(down_after=2.0, node_settings=FAST_REPAIR)
    s3 = cluster.s3()
    model = fill(s3, "five", 18, seed=4)
    wait_full_redundancy(cluster, "five", list(model), timeout=30)
    cluster.kill_node("n6")
    assert remove_node(cluster, "n6") == 5
    # The gateway pulls the map when a node's brief health shows a newer epoch than its own.
    from objstore.ops import open_cluster

    epoch = open_cluster(str(cluster.data_dir / "cluster.json"))[0].epoch
    wait_until(lambda: gateway_epoch(cluster) == epoch, timeout=10, what="the gateway on the new map", interval=0.2)
    for i, size in enumerate((10, 300_000, 2_000_000)):  # inline, one stripe, streamed
        data = payload(900 + i, size)
        s3.put_object(Bucket="five", Key=f"after/{i}", Body=data)
        model[f"after/{i}"] = md5(data)
    took = wait_full_redundancy(cluster, "five", list(model), timeout=90)
    print(f"\nfive nodes: every object whole again {took:.1f}s after the removal")
    check_all(s3, "five", model)
    clean = wait_status_clean(cluster, timeout=60, min_objects=len(model))
    assert clean["objects_degraded"] == 0 and clean["objects_unreadable"] == 0


def test_writes_go_to_handoffs_and_move_home(dev_cluster_factory):
    """With an owner down, shards land on a handoff (recorded as such); when it returns, they move home."""
    import asyncio

    from objstore.ring import Ring

    cluster = dev_cluster_factory(nodes=7, zones=3, down_after=2.0, node_settings=FAST_REPAIR)
    s3 = cluster.s3()
    s3.create_bucket(Bucket="handoff")
    cluster.kill_node("n1")
    model = {}
    for i in range(12):
        data = payload(500 + i, SIZES[i % len(SIZES)])
        s3.put_object(Bucket="handoff", Key=f"h/{i}", Body=data)
        model[f"h/{i}"] = md5(data)
    check_all(s3, "handoff", model)
    ring = Ring(cluster.cluster_map())

    async def copies() -> tuple[int, int]:
        """(handoff records on non-owners, records on non-owners) over the model's keys."""
        handoffs = stray = 0
        async with cluster.node_client(timeout=5.0) as client:
            for key in model:
                owners = {n.id for n in ring.owners(ring.partition_of("handoff", key))}
                for n in ring.nodes:
                    if n.id in owners or n.id == "n1":
                        continue
                    recs = await client.get_versions(n, "handoff", key)
                    stray += len(recs)
                    handoffs += sum(r.handoff for r in recs)
        return handoffs, stray

    handoffs, stray = asyncio.run(copies())
    assert handoffs > 0 and handoffs == stray, (handoffs, stray)
    cluster.start_node("n1")
    wait_full_redundancy(cluster, "handoff", list(model), timeout=90)
    deadline = time.monotonic() + 30
    while asyncio.run(copies())[1] and time.monotonic() < deadline:
        time.sleep(0.5)
    assert asyncio.run(copies()) == (0, 0)
    check_all(s3, "handoff", model)


def test_disk_full_node(dev_cluster_factory):
    """A node whose disk fills up: writes go on (handoffs / k+1), reads stay right, no partial file remains."""
    import subprocess

    cluster = dev_cluster_factory(nodes=7, zones=3, down_after=2.0, node_settings=FAST_REPAIR)
    s3 = cluster.s3()
    s3.create_bucket(Bucket="full")
    cluster.kill_node("n2")
    data_dir = cluster.node("n2").data_dir / "data"
    data_dir.mkdir(parents=True, exist_ok=True)
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1500k", "tmpfs", str(data_dir)],
                             capture_output=True, text=True, timeout=10)
    if mounted.returncode != 0:
        cluster.start_node("n2")
        pytest.skip(f"cannot mount a small filesystem here: {mounted.stderr.strip()}")
    try:
        cluster.start_node("n2")
        model = {}
        for i in range(16):
            data = payload(900 + i, 1_200_000)
            s3.put_object(Bucket="full", Key=f"f/{i}", Body=data)  # every PUT is acknowledged
            model[f"f/{i}"] = md5(data)
        check_all(s3, "full", model)
        leftovers = [p for p in data_dir.rglob("*") if p.is_file() and p.name.endswith(".tmp")]
        assert leftovers == []
        usage = subprocess.run(["df", "--output=avail", str(data_dir)], capture_output=True, text=True).stdout
        assert int(usage.split()[-1]) < 400, usage  # the node's disk really filled up
    finally:
        cluster.kill_node("n2")
        subprocess.run(["umount", str(data_dir)], capture_output=True, timeout=10)


def test_add_and_remove_node_while_clients_write_and_read(dev_cluster_factory, tmp_path):
    from dataclasses import replace

    from objstore.cluster import NodeInfo
    from objstore.ops import _publish, open_cluster
    from tests.chaos.chaos import spawn_extra_node
    from tests.cluster import free_port_range

    cluster = dev_cluster_factory(nodes=6, zones=3, down_after=2.0, node_settings=FAST_REPAIR)
    s3 = cluster.s3(retries={"max_attempts": 4, "mode": "standard"})
    model = fill(s3, "move", 12, seed=9)
    errors: list[str] = []
    stop = threading.Event()

    def client() -> None:
        i = 0
        while not stop.is_set() and i < 300:
            key = f"live/{i % 15}"
            data = payload(2000 + i, SIZES[i % len(SIZES)])
            try:
                s3.put_object(Bucket="move", Key=key, Body=data)
                model[key] = md5(data)
                got = md5(s3.get_object(Bucket="move", Key=key)["Body"].read())
                if got != model[key]:
                    errors.append(f"{key}: read {got}, wrote {model[key]}")
            except (botocore.exceptions.ClientError, botocore.exceptions.BotoCoreError) as e:
                errors.append(f"{key}: {e}")
            i += 1

    t = threading.Thread(target=client)
    t.start()
    try:
        cmap, secret, map_path = open_cluster(str(cluster.data_dir / "cluster.json"))
        port = free_port_range(1)
        grown = cmap.with_changes(nodes=cmap.nodes + (NodeInfo("n7", f"127.0.0.1:{port}", "z1"),))
        _publish(grown, secret, map_path)  # the new node starts from this map
        extra = spawn_extra_node(cluster, "n7", port, tmp_path)
        _publish(grown, secret, map_path)
        time.sleep(3)
        shrunk = grown.with_changes(nodes=tuple(replace(n, state="removed") if n.id == "n3" else n
                                                for n in grown.nodes))
        _publish(shrunk, secret, map_path)
        time.sleep(3)
    finally:
        stop.set()
        t.join(120)
    try:
        assert not errors, errors[:5]
        check_all(s3, "move", model)
        took = wait_full_redundancy(cluster, "move", list(model), timeout=120)
        print(f"\nafter adding n7 and removing n3, every shard on its owner {took:.1f}s later")
        check_all(s3, "move", model)
    finally:
        extra.terminate()
        extra.wait(20)
