"""Repair and the replicated KV: documents copied back to nodes that lost them, bucket settings read from enough
nodes, and the versions a bucket's versioning state keeps never retired."""

from __future__ import annotations

import asyncio
from collections import Counter
from dataclasses import replace
from pathlib import Path
from typing import Any

from objstore.cluster import NodeInfo
from objstore.kv import BUCKETS, PARTS, SEP, UPLOADS, USERS
from objstore.records import KVRecord, ObjectRecord
from objstore.repair import Repairer
from objstore.versions import NULL_MARK, new_version, version_time_ns
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


def tombstone(ns: str, name: str, age: float = 0.0) -> KVRecord:
    """A tombstone whose version is `age` seconds old."""
    v = new_version()
    stamp = int(v[:16], 16) - int(age * 1e9)
    return KVRecord(ns, name, f"{stamp:016x}{v[16:]}", {}, deleted=True)


async def forget_passes(c: MiniCluster, repairer: Repairer, passes: int = 2) -> list[int]:
    """Passes of one repairer a moment apart (a tombstone must be seen a grace period before it goes)."""
    out = []
    for _ in range(passes):
        out.append((await repairer.run_pass()).kv_forgotten)
        await asyncio.sleep(0.05)
    return out


async def test_tombstones_everyone_holds_are_forgotten_after_the_grace(tmp_path: Path) -> None:
    """A finished multipart upload leaves a tombstone per part and one for the upload, a deleted bucket or user
    one each: once every node holds them (or lacks the name) and the grace is over, they go everywhere."""
    c = await start_cluster(tmp_path)
    try:
        ids = [n.id for n in c.nodes]
        put_kv(c, bucket_record(None), ids)
        upload_id = "ef" * 16
        owners = [n.id for n in c.owners("big")]
        gone = [tombstone(UPLOADS, f"{BUCKET}{SEP}{upload_id}", age=1),
                *(tombstone(PARTS, f"{upload_id}{SEP}{i:05d}", age=1) for i in range(1, 4))]
        for rec in gone:
            put_kv(c, rec, owners)
        old_bucket = tombstone(BUCKETS, "dropped", age=1)
        put_kv(c, old_bucket, ids)
        user = tombstone(USERS, "AKGONE", age=1)
        put_kv(c, user, ids[:5])  # n6 never had the user: nothing there to come back
        repairer = Repairer(c.view, c.client, c.io, gc_grace=0.5)
        assert await forget_passes(c, repairer, 1) == [0]  # first seen: the grace starts
        await asyncio.sleep(0.6)
        fresh = tombstone(BUCKETS, "just-dropped", age=0)
        put_kv(c, fresh, ids)
        assert await forget_passes(c, repairer, 1) == [len(gone) + 2]
        for rec in (*gone, old_bucket, user):
            assert set(holders(c, rec.ns, rec.name).values()) == {None}, rec.name
        assert set(holders(c, BUCKETS, "just-dropped").values()) == {fresh.version}  # inside its grace
        assert set(holders(c, BUCKETS, BUCKET).values()) != {None}  # live documents stay
    finally:
        await c.close()


async def test_a_tombstone_stays_while_an_older_copy_may_come_back(tmp_path: Path) -> None:
    """An older copy somewhere (a node down during the delete), a node of the map unheard, or a document
    written again since: the tombstone, or the new document, stays."""
    c = await start_cluster(tmp_path)
    try:
        ids = [n.id for n in c.nodes]
        put_kv(c, bucket_record(None), ids)
        live = KVRecord(USERS, "AKBACK", new_version(), {"secret": "s"})
        put_kv(c, live, ids)
        dead = tombstone(USERS, "AKBACK")
        put_kv(c, dead, ids[:5])  # n6 still holds the live user
        # copy_back brings n6 the tombstone in the first pass; after that it may go
        repairer = Repairer(c.view, c.client, c.io, gc_grace=0)
        await forget_passes(c, repairer, 1)
        assert set(holders(c, USERS, "AKBACK").values()) == {dead.version}
        assert sum(await forget_passes(c, repairer, 2)) == 1
        assert set(holders(c, USERS, "AKBACK").values()) == {None}

        other = tombstone(USERS, "AKQUIET")
        put_kv(c, other, ids)
        unheard = Repairer(c.view, c.client, c.io, alive=lambda n: n.id != ids[3], gc_grace=0)
        assert await forget_passes(c, unheard) == [0, 0]  # n4 could hold an older copy nobody heard of
        assert set(holders(c, USERS, "AKQUIET").values()) == {other.version}

        # Written again between the snapshot and the removal: the node keeps the newer document.
        again = KVRecord(USERS, "AKQUIET", new_version(), {"secret": "new"})
        c.store(ids[0]).put_kv(again)
        assert await c.client.forget_kv(c.nodes[0], USERS, "AKQUIET", other.version) is False
        assert await c.client.forget_kv(c.nodes[1], USERS, "AKQUIET", other.version) is True
        assert c.store(ids[0]).get_kv(USERS, "AKQUIET") == again
        # a live document is never removed, even named with its own version
        assert await c.client.forget_kv(c.nodes[0], USERS, "AKQUIET", again.version) is False
    finally:
        await c.close()


async def delete(c: MiniCluster, key: str, version: str) -> None:
    """What a gateway DELETE does in a bucket not versioned: a delete marker, then the older versions retired."""
    ring = c.ring
    template = ObjectRecord(bucket=BUCKET, key=key, version=version, shard=0, ec=ring.ec, deleted=True,
                            created=version_time_ns(version))
    done = await c.io.commit(ring, ring.partition_of(BUCKET, key), template, [])
    await c.io.prune(ring, BUCKET, key, keep=version, seen=done)


def markers_held(c: MiniCluster) -> int:
    """Delete markers counted in the partition digests of every node."""
    return sum(c.store(n.id).partition_digest(p)[3] for n in c.nodes for p in c.store(n.id).partitions_held())


async def test_delete_markers_nothing_needs_go_after_the_grace(tmp_path: Path) -> None:
    """Deleted keys of a bucket never versioned leave no record behind, once the grace is over; a versioned
    or suspended bucket keeps its markers (they are versions), and a key with an older version somewhere
    keeps its marker."""
    c = await start_cluster(tmp_path)
    try:
        ids = [n.id for n in c.nodes]
        put_kv(c, bucket_record(None), ids)
        for state, name in (("Enabled", "kept"), ("Suspended", "paused")):
            put_kv(c, KVRecord(BUCKETS, name, new_version(), {"owner": "AK", "versioning": state, "pool": None}),
                   ids)
        keys = [f"gone/{i}" for i in range(8)]
        for key in keys:
            await put(c, key, payload(3000, seed=len(key)))
            await delete(c, key, versioned_id(null=True))
        assert markers_held(c) == len(keys) * (c.ring.ec.width)
        await put(c, "stays", payload(100))
        # The same in the versioned and the suspended buckets (other bucket names, same harness).
        for name in ("kept", "paused"):
            ring = c.ring
            v = versioned_id(null=name == "paused")
            template = ObjectRecord(bucket=name, key="k", version=v, shard=0, ec=ring.ec, deleted=True,
                                    created=version_time_ns(v))
            await c.io.commit(ring, ring.partition_of(name, "k"), template, [])

        repairer = Repairer(c.view, c.client, c.io, gc_grace=0.3)
        await repairer.run_pass()  # the partitions with markers are noted
        assert all(versions_held(c, key) for key in keys)  # inside the grace: nothing goes
        await asyncio.sleep(0.4)
        post, batches = c.client._post, Counter()

        async def counting(node: NodeInfo, path: str, body: bytes) -> Any:
            batches[path] += path.startswith("/records/delete")
            return await post(node, path, body)

        c.client._post = counting  # type: ignore[method-assign]
        stats = await repairer.run_pass()
        assert stats.garbage_removed >= len(keys)
        assert not any(versions_held(c, key) for key in keys)
        # The markers of a pass go together, batched: a removal call per key and node would be 8 * 6.
        assert sum(batches.values()) <= 2 * c.ring.ec.width
        assert await read(c, "stays") == payload(100)
        for name in ("kept", "paused"):
            assert any(c.store(n).versions(name, "k") for n in ids), name
        # The suspended bucket's null marker is counted (looked at now and then, kept); a versioned bucket's
        # marker is a version like any other, and not counted: its partitions are not looked into for it.
        assert markers_held(c) == c.ring.ec.width
    finally:
        await c.close()


async def test_a_delete_marker_stays_while_a_node_is_unheard_or_an_older_version_is_left(tmp_path: Path) -> None:
    c = await start_cluster(tmp_path)
    try:
        ids = [n.id for n in c.nodes]
        put_kv(c, bucket_record(None), ids)
        await put(c, "lone", payload(2000, seed=3), version=versioned_id(null=True))
        missed = c.store(ids[2]).versions(BUCKET, "lone")
        marker = versioned_id(null=True)
        await delete(c, "lone", marker)
        # n3 was down during the delete: it holds the older version and no marker.
        c.store(ids[2]).drop_records([(BUCKET, "lone", marker)])
        for rec in missed:
            c.store(ids[2]).put_record(rec)
        await put(c, "older", payload(2000, seed=4), version=versioned_id(null=True))
        old = versions_held(c, "older")
        # A delete whose prune of the older version never ran (its gateway died): that version is still there.
        ring = c.ring
        v = versioned_id(null=True)
        template = ObjectRecord(bucket=BUCKET, key="older", version=v, shard=0, ec=ring.ec, deleted=True,
                                created=version_time_ns(v))
        await c.io.commit(ring, ring.partition_of(BUCKET, "older"), template, [])

        unheard = Repairer(c.view, c.client, c.io, alive=lambda n: n.id != ids[2], gc_grace=0)
        for _ in range(2):
            await unheard.run_pass()
            await asyncio.sleep(0.05)
        # n3 unheard: the marker stays, it may hide an older version there (it does)
        assert all(marker in {r.version for r in c.store(n).versions(BUCKET, "lone")} for n in ids if n != ids[2])

        repairer = Repairer(c.view, c.client, c.io, gc_grace=0)
        for _ in range(5):  # the marker rebuilt on n3, the older version retired, then the marker
            await repairer.run_pass()
            await asyncio.sleep(0.05)
        assert not versions_held(c, "lone")
        # The older version goes first (superseded), the marker on a later pass: never the marker alone.
        assert not versions_held(c, "older") & old
        assert await read(c, "older") is None
    finally:
        await c.close()


async def test_only_versions_that_may_go_are_timed(tmp_path: Path) -> None:
    """The grace clock of a pass is kept for garbage candidates only, not for every healthy version it looks
    at (with a few hundred thousand of those it overflowed, and emptied, and nothing was ever old enough)."""
    c = await start_cluster(tmp_path)
    try:
        put_kv(c, bucket_record(None), [n.id for n in c.nodes])
        keys = [f"k{i}" for i in range(20)]
        for key in keys:
            await put(c, key, payload(1000, seed=len(key)), version=versioned_id(null=True))
            failed_write(c, key)  # every partition out of sync: each is looked into, key by key
        repairer = Repairer(c.view, c.client, c.io, gc_grace=3600)
        stats = await repairer.run_pass()
        assert stats.objects_scanned >= len(keys)
        timed = {key for _, key, _ in repairer._first_seen}
        assert timed == set(keys) and len(repairer._first_seen) == len(keys)  # the failed writes alone
    finally:
        await c.close()


async def test_an_older_null_version_a_newer_one_replaced_is_not_counted_unreadable(tmp_path: Path) -> None:
    """A key overwritten (or deleted) while a node was down leaves that node the old version's record alone:
    fewer than k shards of a version no read can reach any more. It waits out its grace as garbage; an
    operator's status must not call it an unreadable object."""
    c = await start_cluster(tmp_path)
    try:
        put_kv(c, bucket_record(None), [n.id for n in c.nodes])
        old, new = versioned_id(null=True), versioned_id(null=True)
        await put(c, "k", payload(5_000, seed=1), version=old)
        await put(c, "k", payload(5_000, seed=2), version=new)
        for n in c.owners("k")[1:]:
            c.store(n.id).delete_record(BUCKET, "k", old)
        stats = await Repairer(c.view, c.client, c.io, gc_grace=3600).run_pass()
        assert stats.objects_unreadable == 0 and old in versions_held(c, "k")
        await retire_pass(c)  # past its grace it goes
        assert versions_held(c, "k") == {new}
    finally:
        await c.close()
