"""`objstore pause` holds repair and scrub on real nodes while failures are still detected; `resume` lets go."""

from __future__ import annotations

import shutil
import time

import pytest

from tests.chaos.chaos import FAST_REPAIR, flip_byte, owner_health, shard_files, status, wait_full_redundancy
from tests.chaos.test_failures import check_all, fill
from tests.cluster import wait_until
from tests.integration.test_users_cli import objstore

pytestmark = [pytest.mark.integration, pytest.mark.chaos, pytest.mark.timeout(240)]

HELD = 6.0
"""Seconds the paused cluster is watched: six repair intervals and three scrub intervals of FAST_REPAIR."""


def test_a_paused_cluster_rebuilds_nothing_until_resumed(dev_cluster_factory):
    cluster = dev_cluster_factory(down_after=2.0, node_settings=FAST_REPAIR)
    s3 = cluster.s3()
    model = fill(s3, "held", 12, seed=7)
    keys = list(model)
    wait_full_redundancy(cluster, "held", keys, timeout=30)
    cluster_file = str(cluster.data_dir / "cluster.json")

    paused = objstore("pause", "--cluster", cluster_file, "--for", "10m")
    assert paused.returncode == 0, paused.stdout + paused.stderr
    assert paused.stdout.count("background work paused") == len(cluster.cluster_map().nodes)
    assert all(59 < n["paused_for"] <= 600 for n in status(cluster)["nodes"])
    shown = objstore("status", "--cluster", cluster_file)
    assert "background work paused" in shown.stdout, shown.stdout

    # A wiped node and a damaged shard on another: nothing rebuilds them, and the scrub does not look.
    cluster.kill_node("n2")
    shutil.rmtree(cluster.node("n2").data_dir)
    cluster.node("n2").data_dir.mkdir()
    cluster.start_node("n2")
    flip_byte(shard_files(cluster, "n4")[0])
    # The failure detector goes on: n2 is seen up again by every peer while the pause holds.
    wait_until(lambda: all(n["state"] == "up" and set(n["seen_by"].values()) == {"up"}
                           for n in status(cluster)["nodes"]), timeout=30, what="n2 up again", interval=0.5)
    time.sleep(HELD)
    short = {k: v for k, v in owner_health(cluster, "held", keys).items() if v < cluster.k + cluster.m}
    assert short, "repair rebuilt the wiped node during the pause"
    assert sum(n["corrupt_found"] or 0 for n in status(cluster)["nodes"]) == 0, "the scrub ran during the pause"
    # n2 started again after the pause: its own background work runs (a pause lives in one process).
    assert next(n for n in status(cluster)["nodes"] if n["id"] == "n2")["paused_for"] == 0

    resumed = objstore("resume", "--cluster", cluster_file)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert all(n["paused_for"] == 0 for n in status(cluster)["nodes"])
    took = wait_full_redundancy(cluster, "held", keys, timeout=60)
    wait_until(lambda: sum(n["corrupt_found"] or 0 for n in status(cluster)["nodes"]) >= 1, timeout=30,
               what="the damaged shard found by the scrub", interval=0.5)
    print(f"\n{len(short)} objects short during a {HELD:.0f} s pause; full redundancy {took:.1f} s after resume")
    check_all(s3, "held", model)
