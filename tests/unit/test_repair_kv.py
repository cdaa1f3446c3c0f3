"""Repair and the replicated KV: documents copied back to nodes that lost them, bucket settings read from enough
nodes, and the versions a bucket's versioning state keeps never retired."""

from __future__ import annotations

import asyncio
from dataclasses import replace
from pathlib import Path

from objstore.kv import BUCKETS, PARTS, SEP, UPLOADS, USERS
from objstore.records import KVRecord
from objstore.repair import Repairer
from objstore.versions import NULL_MARK, new_version
from tests.unit.objects_harness import BUCKET, MiniCluster, payload, put, read, start_cluster


def versioned_id(null: bool) -> str:
    """A version id as gateway/versioning.py makes them: the top bit of the random half marks a null version."""
    v = new_version()
    digit = int(v[NULL_MARK], 16)
    digit = digit | 8 if null else digit & 7
    return f"{v[:NULL_MARK]}{digit:x}{v[NULL_MARK + 1:]}"


def bucket_record(versioning: str | None) -> KVRecord:
    return KVRecord(BUCKETS, BUCKET, new_version(), {"owner": "AK", "versioning": versioning, "pool": None})


def put_kv(c: MiniCluster, rec: KVRecord, node_ids: list[str]) -> None:
    for nid in node_ids:
        c.store(nid).put_kv(rec)


def holders(c: MiniCluster, ns: str, name: str) -> dict[str, str | None]:
    out = {}
    for n in c.nodes:
        rec = c.store(n.id).get_kv(ns, name)
        out[n.id] = rec.version if rec else None
    return out


async def test_documents_are_copied_back_to_the_nodes_that_lost_them(tmp_path: Path) -> None:
    c = await start_cluster(tmp_path)
    try:
        ids = [n.id for n in c.nodes]
        bucket = bucket_record(None)
        put_kv(c, bucket, ids[:4])  # a majority write; n5 and n6 were down, or wiped since
        user = KVRecord(USERS, "AKUSER", new_version(), {"secret": "s"})
        put_kv(c, user, ids)
        gone = KVRecord(USERS, "AKUSER", new_version(), {}, deleted=True)  # deleted while n1 was away
        put_kv(c, gone, ids[1:5])

        key, upload_id = "big", "ab" * 16
        upload = KVRecord(UPLOADS, f"{BUCKET}{SEP}{upload_id}", upload_id, {"key": key})
        part = KVRecord(PARTS, f"{upload_id}{SEP}1", new_version(), {"blob": "x"})
        owners = [n.id for n in c.owners(key)]
        put_kv(c, upload, owners[:4])
        put_kv(c, part, owners[2:])
        orphan = KVRecord(PARTS, f"{'cd' * 16}{SEP}1", new_version(), {"blob": "y"})  # its upload is unknown
        put_kv(c, orphan, ids[:1])

        stats = await Repairer(c.view, c.client, c.io, gc_grace=3600).run_pass()

        assert set(holders(c, BUCKETS, BUCKET).values()) == {bucket.version}
        assert set(holders(c, USERS, "AKUSER").values()) == {gone.version}
        assert all(c.store(n).get_kv(USERS, "AKUSER").deleted for n in ids)
        assert {n for n, v in holders(c, UPLOADS, upload.name).items() if v == upload.version} == set(owners)
        assert {n for n, v in holders(c, PARTS, part.name).items() if v == part.version} == set(owners)
        assert holders(c, PARTS, orphan.name) == {n: orphan.version if n == ids[0] else None for n in ids}
        copied = 2 + 2 + (len(owners) - 4) + (len(owners) - (len(owners) - 2))
        assert stats.kv_copied == copied

        again = await Repairer(c.view, c.client, c.io, gc_grace=3600).run_pass()
        assert again.kv_copied == 0
    finally:
        await c.close()


async def test_only_the_first_live_node_copies_documents(tmp_path: Path) -> None:
    c = await start_cluster(tmp_path)
    try:
        ids = [n.id for n in c.nodes]
        put_kv(c, bucket_record(None), ids[:4])
        follower = await Repairer(c.view, c.client, c.io, me=ids[1], gc_grace=3600).run_pass()
        assert follower.kv_copied == 0
        leader = await Repairer(c.view, c.client, c.io, me=min(ids), gc_grace=3600).run_pass()
        assert leader.kv_copied == 2
    finally:
        await c.close()


async def test_a_pass_without_enough_bucket_records_changes_nothing(tmp_path: Path) -> None:
    """Four of six nodes unheard: the bucket records seen may be old, so nothing is planned or removed."""
    c = await start_cluster(tmp_path)
    try:
        put_kv(c, bucket_record(None), [n.id for n in c.nodes])
        data = payload(50_000, seed=1)
        await put(c, "k", data)
        unheard = {n.id for n in c.nodes[2:]}
        repairer = Repairer(c.view, c.client, c.io, alive=lambda n: n.id not in unheard, gc_grace=0)
        stats = await repairer.run_pass()
        assert stats.failures == 1 and stats.partitions_scanned == 0 and stats.kv_copied == 0
        assert await read(c, "k") == data
    finally:
        await c.close()


def failed_write(c: MiniCluster, key: str) -> None:
    """A newer version of `key` on one owner only: the partition is out of sync until repair removes it, so
    repair looks at every version in it (an in-sync partition is skipped)."""
    store = c.store(c.owners(key)[0].id)
    store.put_record(replace(store.versions(BUCKET, key)[0], version=versioned_id(null=True)))


async def retire_pass(c: MiniCluster) -> None:
    """Two passes with no grace period: the first sees each version, the second may act on it."""
    repairer = Repairer(c.view, c.client, c.io, gc_grace=0.01)
    for _ in range(2):
        await repairer.run_pass()
        await asyncio.sleep(0.05)


def versions_held(c: MiniCluster, key: str) -> set[str]:
    return {r.version for n in c.nodes for r in c.store(n.id).versions(BUCKET, key)}


async def test_repair_retires_what_a_write_replaces_and_nothing_else(tmp_path: Path) -> None:
    c = await start_cluster(tmp_path)
    try:
        ids = [n.id for n in c.nodes]
        for state, kept in ((None, set()), ("Suspended", {1}), ("Enabled", {0, 1, 2})):
            put_kv(c, bucket_record(state), ids)
            key = f"key-{state}"
            # Null versions and, once versioning was ever Enabled, a version from then; then the newest write.
            older = [versioned_id(null=True), versioned_id(null=state is None), versioned_id(null=True)]
            newest = versioned_id(null=state != "Enabled")
            for i, v in enumerate(older + [newest]):
                await put(c, key, payload(10_000, seed=i), version=v)
            failed_write(c, key)
            await retire_pass(c)
            assert versions_held(c, key) == {newest} | {older[i] for i in kept}, state
    finally:
        await c.close()


async def test_objects_of_a_bucket_without_a_record_keep_every_version(tmp_path: Path) -> None:
    c = await start_cluster(tmp_path)
    try:
        first, second = versioned_id(null=True), versioned_id(null=True)
        await put(c, "k", payload(10_000, seed=1), version=first)
        await put(c, "k", payload(10_000, seed=2), version=second)
        failed_write(c, "k")
        await retire_pass(c)
        assert versions_held(c, "k") == {first, second}
    finally:
        await c.close()
