"""A seeded random mix of faults against a model of what must be stored; a failing seed replays.

Replay one scenario: OBJSTORE_CHAOS_SEED=1234 pytest tests/chaos/test_random.py
"""

from __future__ import annotations

import os
import random
import shutil
import signal
import time

import botocore.exceptions
import pytest

from tests.chaos.chaos import FAST_REPAIR, flip_byte, md5, payload, shard_files, wait_full_redundancy

pytestmark = [pytest.mark.integration, pytest.mark.chaos, pytest.mark.timeout(300)]

SEEDS = [int(os.environ["OBJSTORE_CHAOS_SEED"])] if os.environ.get("OBJSTORE_CHAOS_SEED") else [20261128]
SIZES = [0, 7, 5000, 70_000, 400_000, 1_100_000]


@pytest.mark.parametrize("seed", SEEDS)
def test_random_faults_against_a_model(dev_cluster_factory, seed):
    print(f"\nchaos seed {seed} (replay: OBJSTORE_CHAOS_SEED={seed})")
    rng = random.Random(seed)
    cluster = dev_cluster_factory(down_after=2.0, node_settings=FAST_REPAIR)
    s3 = cluster.s3(retries={"max_attempts": 3, "mode": "standard"}, read_timeout=30)
    s3.create_bucket(Bucket="model")
    model: dict[str, str | None] = {}  # key -> md5 of the acknowledged content, None once deleted
    maybe: dict[str, set[str | None]] = {}  # outcomes of writes that failed: absent or whole, never partial
    down: set[str] = set()
    stopped: set[str] = set()
    m = cluster.m
    faults: list[str] = []
    for step in range(60):
        action = rng.choice(["put", "put", "put", "delete", "get", "fault"])
        key = f"k{rng.randrange(20)}"
        if action == "put":
            data = payload(seed + step, rng.choice(SIZES))
            try:
                s3.put_object(Bucket="model", Key=key, Body=data)
                model[key] = md5(data)
                maybe.pop(key, None)
            except (botocore.exceptions.ClientError, botocore.exceptions.BotoCoreError):
                maybe.setdefault(key, set()).add(md5(data))
        elif action == "delete":
            try:
                s3.delete_object(Bucket="model", Key=key)
                model[key] = None
                maybe.pop(key, None)
            except (botocore.exceptions.ClientError, botocore.exceptions.BotoCoreError):
                maybe.setdefault(key, set()).add(None)
        elif action == "get" and key in model:
            _check(s3, key, model, maybe)
        elif action == "fault":
            unhealthy = down | stopped
            healthy = [n.id for n in cluster.nodes if n.id not in unhealthy]
            fault = rng.choice(["kill", "wipe", "stop", "corrupt", "heal"])
            faults.append(fault)
            if fault == "heal" or len(unhealthy) >= m:
                for nid in sorted(stopped):
                    os.kill(cluster.node(nid).pid, signal.SIGCONT)
                for nid in sorted(down):
                    cluster.start_node(nid)
                down.clear()
                stopped.clear()
            elif fault in ("kill", "wipe"):
                nid = rng.choice(healthy)
                cluster.kill_node(nid)
                if fault == "wipe":
                    shutil.rmtree(cluster.node(nid).data_dir)
                    cluster.node(nid).data_dir.mkdir()
                down.add(nid)
            elif fault == "stop":
                nid = rng.choice(healthy)
                os.kill(cluster.node(nid).pid, signal.SIGSTOP)
                stopped.add(nid)
            elif fault == "corrupt" and not unhealthy:
                files = shard_files(cluster, rng.choice(healthy))
                if files:
                    flip_byte(rng.choice(files), rng.randrange(1, 5000))
    for nid in sorted(stopped):
        os.kill(cluster.node(nid).pid, signal.SIGCONT)
    for nid in sorted(down):
        cluster.start_node(nid)
    print(f"faults: {faults}")
    live = [k for k, v in model.items() if v is not None and k not in maybe]
    wait_full_redundancy(cluster, "model", live, timeout=120)
    for key in model:
        _check(s3, key, model, maybe)


def _check(s3, key: str, model: dict[str, str | None], maybe: dict[str, set[str | None]]) -> None:
    try:
        got: str | None = md5(s3.get_object(Bucket="model", Key=key)["Body"].read())
    except botocore.exceptions.ClientError as e:
        assert e.response["Error"]["Code"] == "NoSuchKey", e
        got = None
    allowed = {model[key]} | maybe.get(key, set())
    assert got in allowed, f"{key}: got {got}, allowed {allowed}"
