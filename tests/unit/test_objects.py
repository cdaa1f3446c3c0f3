"""ObjectIO on six in-process nodes: how few calls a write and a read make, and that they stay correct when
owners lag, lose a shard, miss a write or move with a map change."""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

import node.server
import node.store
import objstore.objects
import objstore.reader
from objstore.cluster import NodeInfo
from objstore.objects import WriteFailed
from objstore.records import ObjectRecord
from objstore.versions import new_version
from tests.unit.objects_harness import BS, BUCKET, EC, CountingClient, MiniCluster, payload, put, read, start_cluster

SMALL = 5000  # inline: the shards travel in the records
LARGE = 300_000  # shards in blob files


@pytest.fixture
async def cluster(tmp_path: Path) -> AsyncIterator[MiniCluster]:
    c = await start_cluster(tmp_path)
    yield c
    await c.close()


def held_versions(c: MiniCluster, key: str) -> dict[str, set[str]]:
    return {n.id: {r.version for r in c.store(n.id).versions(BUCKET, key)} for n in c.nodes}


# -- writing and retiring old versions ------------------------------------------------------------


async def test_a_new_key_costs_one_record_per_shard_and_nothing_to_prune(cluster: MiniCluster) -> None:
    done = await put(cluster, "new", payload(SMALL))
    assert cluster.client.count("PUT /record") == 6 and len(cluster.client.calls) == 1
    assert set(done.older) == {n.id for n in cluster.nodes}
    assert all(older == [] for _, older in done.older.values())
    await cluster.io.prune(cluster.ring, BUCKET, "new", keep=done.record.version, seen=done)
    assert len(cluster.client.calls) == 1  # no node holds an older version: no call at all


async def test_an_overwrite_prunes_what_the_commit_saw(cluster: MiniCluster) -> None:
    first = await put(cluster, "k", payload(SMALL, 1))
    second = await put(cluster, "k", payload(SMALL, 2))
    assert all(older == [first.record.version] for _, older in second.older.values())
    cluster.client.calls.clear()
    await cluster.io.prune(cluster.ring, BUCKET, "k", keep=second.record.version, seen=second)
    assert dict(cluster.client.calls) == {"DELETE /record": 6}
    assert held_versions(cluster, "k") == {n.id: {second.record.version} for n in cluster.nodes}
    assert await read(cluster, "k") == payload(SMALL, 2)


async def test_prune_keeps_what_only_refuses(cluster: MiniCluster) -> None:
    versions = [(await put(cluster, "s", payload(SMALL, i))).record.version for i in range(2)]
    last = await put(cluster, "s", payload(SMALL, 9))
    await cluster.io.prune(cluster.ring, BUCKET, "s", keep=last.record.version, only=lambda v: v == versions[0],
                           seen=last)
    assert held_versions(cluster, "s") == {n.id: {versions[1], last.record.version} for n in cluster.nodes}


async def test_a_node_that_names_too_many_versions_is_asked_for_them(cluster: MiniCluster,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(node.server, "OLDER_VERSIONS_SHOWN", 2)
    for i in range(3):
        await put(cluster, "many", payload(SMALL, i))
    last = await put(cluster, "many", payload(SMALL, 7))
    assert all(older is None for _, older in last.older.values())  # three older versions: more than shown
    cluster.client.calls.clear()
    await cluster.io.prune(cluster.ring, BUCKET, "many", keep=last.record.version, seen=last)
    assert cluster.client.count("GET /versions") == 6 and cluster.client.count("DELETE /record") == 18
    assert held_versions(cluster, "many") == {n.id: {last.record.version} for n in cluster.nodes}


@pytest.mark.parametrize("size", [SMALL, LARGE])
async def test_owners_out_of_rotation_are_still_asked_when_a_write_needs_them(cluster: MiniCluster,
                                                                               size: int) -> None:
    """Six nodes at 4+2 have no spare: with two owners set aside by the error limiter (up, only slow a
    moment ago) a write that skipped them would fail. It asks them last, lands all six shards, and they
    are back in rotation; with two owners set aside and really gone, the write still fails."""
    data = payload(size, 11)
    aside = cluster.owners("aside")[:2]
    cluster.push_back(*aside)
    assert not any(cluster.view.available(n) for n in aside)
    committed = await put(cluster, "aside", data)
    assert len({index for index in range(EC.width)
                if cluster.store(cluster.owners("aside")[index].id).get_record(BUCKET, "aside")}) == EC.width
    assert all(cluster.view.available(n) for n in aside)
    assert await read(cluster, "aside") == data and committed.record.version

    one = cluster.owners("one")[:1]  # one set aside: five in rotation are enough, the sixth is not asked
    cluster.push_back(*one)
    await put(cluster, "one", data)
    assert not cluster.store(one[0].id).get_record(BUCKET, "one") and not cluster.view.available(one[0])

    gone = cluster.owners("gone")[:2]
    cluster.push_back(*gone)
    for n in gone:
        await next(s for s in cluster.servers if s.port == int(n.address.rsplit(":", 1)[1])).close()
    with pytest.raises(WriteFailed):
        await put(cluster, "gone", data)
    assert await read(cluster, "gone") is None


async def test_an_object_of_one_stripe_sends_each_shard_whole(cluster: MiniCluster,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """A blob not carried (a multipart part's) past the inline size and within one stripe sends each shard
    as one sized body; above a stripe, streamed."""
    monkeypatch.setattr(objstore.objects, "INLINE_MAX_SHARD", 1024)  # inline up to 4 KiB; a stripe is 16 KiB
    for size, form in ((EC.stripe_size, "PUT /blob"), (EC.k * 1024 + 1, "PUT /blob"),
                       (EC.stripe_size + 1, "PUT /blob (streamed)")):
        cluster.client.calls.clear()
        data = payload(size, size)
        await put(cluster, f"s{size}", data, carry=False)
        assert dict(cluster.client.calls) == {form: 6, "PUT /record": 6}, size
        assert await read(cluster, f"s{size}") == data


async def test_an_object_of_one_stripe_rides_in_its_records_and_lands_in_shard_files(
        cluster: MiniCluster, monkeypatch: pytest.MonkeyPatch) -> None:
    """One call a node: each record carries its shard, and a node writes one above the inline size to a shard
    file, named by the record it stores as an uploaded shard would be. Above a stripe, shards stream first."""
    monkeypatch.setattr(objstore.objects, "INLINE_MAX_SHARD", 1024)  # a stripe (16 KiB) is above k of them
    monkeypatch.setattr(node.store, "INLINE_MAX_SHARD", 1024)  # and the nodes keep up to 1 KiB inline
    for size, calls in ((EC.stripe_size, {"PUT /record": 6}), (EC.k * 1024 + 1, {"PUT /record": 6}),
                        (EC.stripe_size + 1, {"PUT /blob (streamed)": 6, "PUT /record": 6})):
        cluster.client.calls.clear()
        data = payload(size, size)
        await put(cluster, f"c{size}", data)
        assert dict(cluster.client.calls) == calls, size
        for n in cluster.nodes:
            store = cluster.store(n.id)
            (rec,) = store.get_record(BUCKET, f"c{size}")
            part = rec.parts[0]
            assert part.inline is None and part.present, (size, n.id)
            row = store.blob_for_read(part.blob, rec.shard)
            assert row is not None and row.state == "committed" and row.checksums == part.checksums
            assert (store.root / row.path).stat().st_size == row.size
        assert await read(cluster, f"c{size}") == data
        assert await read(cluster, f"c{size}", prefetch=True) == data
    small = payload(EC.k * 1024, 3)  # shards of 1 KiB: inline on the nodes too
    await put(cluster, "inline", small)
    assert all(cluster.store(n.id).get_record(BUCKET, "inline")[0].parts[0].inline is not None for n in cluster.nodes)


async def test_a_whole_shard_whose_owner_fails_goes_to_a_spare(tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(objstore.objects, "INLINE_MAX_SHARD", 1024)
    cluster = await start_cluster(tmp_path, count=8)  # two nodes past the six owners
    try:
        data = payload(EC.stripe_size - 7, 9)
        down = cluster.owners("spare")[1]
        await next(s for s in cluster.servers if s.port == int(down.address.rsplit(":", 1)[1])).close()
        await put(cluster, "spare", data, carry=False)
        held = [recs[0] for n in cluster.nodes if n.id != down.id
                for recs in [cluster.store(n.id).get_record(BUCKET, "spare")] if recs]
        assert sorted(r.shard for r in held) == list(range(6))
        assert [r.shard for r in held if r.handoff] == [1]
        assert await read(cluster, "spare") == data
    finally:
        await cluster.close()


async def test_a_shard_the_node_stored_otherwise_fails_the_write(cluster: MiniCluster,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """The node's checksums of a whole shard are checked against the gateway's, as a streamed one's are."""
    monkeypatch.setattr(objstore.objects, "INLINE_MAX_SHARD", 1024)
    real = CountingClient.put_blob

    async def corrupting(self: CountingClient, node: NodeInfo, blob: str, shard: int, partition: int,
                         block_size: int, body: object) -> list[int]:
        if isinstance(body, bytes) and shard < 2:
            body = bytes([body[0] ^ 1]) + body[1:]
        return await real(self, node, blob, shard, partition, block_size, body)  # type: ignore[arg-type]

    monkeypatch.setattr(CountingClient, "put_blob", corrupting)
    with pytest.raises(WriteFailed, match="4 of 6 shards durable"):
        await put(cluster, "bad", payload(EC.stripe_size, 4), carry=False)
    assert await read(cluster, "bad") is None


# -- finding and reading --------------------------------------------------------------------------


@pytest.mark.parametrize("size", [0, SMALL, LARGE])
async def test_a_healthy_read_asks_k_owners_once(cluster: MiniCluster, size: int) -> None:
    data = payload(size, 3)
    await put(cluster, "h", data)
    cluster.client.calls.clear()
    obj = await cluster.io.find(cluster.ring, BUCKET, "h")
    assert obj is not None and cluster.client.count("GET /record") == 4 and len(cluster.client.calls) == 1
    assert b"".join([c async for c in cluster.io.read(obj)]) == data
    assert cluster.client.count("GET /record") == 4 and cluster.client.count("GET /versions") == 0


async def test_ranges_read_the_same_bytes_healthy_or_decoded(cluster: MiniCluster) -> None:
    """Any byte range, cut mid-block, on block and stripe edges or in the short last stripe, reads the
    payload's bytes, whether the stripes are read from the data blocks or a lost one is decoded."""
    data = payload(LARGE, 4)
    await put(cluster, "rng", data)
    stripe = EC.stripe_size
    ranges = [(0, LARGE), (1, 10), (BS - 1, 2), (BS, BS), (stripe - 5, stripe + 10), (3 * stripe, stripe),
              (LARGE - 7, 7), (LARGE - stripe - 3, stripe + 3), (5 * BS + 17, 9 * BS + 1)]
    obj = await cluster.io.find(cluster.ring, BUCKET, "rng")
    assert obj is not None
    assert b"".join([c async for c in cluster.io.read(obj)]) == data
    for offset, length in ranges:
        assert b"".join([c async for c in cluster.io.read(obj, offset, length)]) == data[offset:offset + length]
    holder = cluster.owners("rng")[1]  # holds data shard 1: every stripe now decodes from a parity block
    blob = obj.record.parts[0].blob
    assert cluster.store(holder.id).delete_blob(blob, 1, force=True)
    obj = await cluster.io.find(cluster.ring, BUCKET, "rng")
    assert obj is not None
    for offset, length in ranges:
        assert b"".join([c async for c in cluster.io.read(obj, offset, length)]) == data[offset:offset + length]


async def test_a_missing_key_costs_k_calls(cluster: MiniCluster) -> None:
    assert await cluster.io.find(cluster.ring, BUCKET, "nothing") is None
    assert dict(cluster.client.calls) == {"GET /record": 4}


async def test_an_acknowledged_write_is_seen_whichever_k_owners_answer(cluster: MiniCluster) -> None:
    """v2 committed on k+1 = 5 owners (the sixth kept v1): any 4 answers include it."""
    await put(cluster, "raw", payload(SMALL, 1))
    v2 = await put(cluster, "raw", payload(SMALL, 2))
    stale = cluster.owners("raw")[0]
    cluster.store(stale.id).delete_record(BUCKET, "raw", v2.record.version)
    for last in itertools.combinations(cluster.nodes, 2):
        cluster.restore()
        cluster.push_back(*last)
        obj = await cluster.io.find(cluster.ring, BUCKET, "raw")
        assert obj is not None and obj.record.version == v2.record.version, [n.id for n in last]
        assert b"".join([c async for c in cluster.io.read(obj)]) == payload(SMALL, 2)


async def test_answers_without_a_readable_newest_version_ask_every_node(cluster: MiniCluster) -> None:
    await put(cluster, "half", payload(SMALL, 1))
    v2 = await put(cluster, "half", payload(SMALL, 2))
    owners = cluster.owners("half")
    for stale in owners[:2]:  # v2 left on exactly k nodes, and the first k asked include the stale ones
        cluster.store(stale.id).delete_record(BUCKET, "half", v2.record.version)
    cluster.client.calls.clear()
    obj = await cluster.io.find(cluster.ring, BUCKET, "half")
    assert obj is not None and obj.record.version == v2.record.version
    assert cluster.client.count("GET /record") == 4 and cluster.client.count("GET /versions") == 6


@pytest.mark.parametrize("size", [SMALL, LARGE])
async def test_a_lost_shard_widens_the_read_to_every_holder(cluster: MiniCluster, size: int) -> None:
    data = payload(size, 4)
    await put(cluster, "lost", data)
    first = cluster.owners("lost")[0]  # asked first, and its shard 0 is read first
    rec = cluster.store(first.id).get_record(BUCKET, "lost")[0]
    if rec.parts[0].inline is not None:
        bad = bytearray(rec.parts[0].inline)
        bad[0] ^= 1
        rec.parts[0].inline = bytes(bad)
        cluster.store(first.id).put_record(rec)  # a record whose inline shard no longer matches its checksum
    else:
        cluster.store(first.id).delete_blob(rec.parts[0].blob, rec.shard, force=True)
    cluster.client.calls.clear()
    assert await read(cluster, "lost") == data
    assert cluster.client.count("GET /record") == 4 + 6  # the find, then every node once for more holders


async def test_a_lagging_owner_is_hedged(cluster: MiniCluster) -> None:
    await put(cluster, "lag", payload(SMALL, 5))
    cluster.client.delays[cluster.owners("lag")[0].id] = 3.0
    started = time.monotonic()
    assert await asyncio.wait_for(read(cluster, "lag"), 2.5) == payload(SMALL, 5)
    assert time.monotonic() - started < 1.5
    assert cluster.client.count("GET /record") == 6  # the laggard's peers were asked after the hedge delay


async def test_a_get_brings_small_blob_shards_with_the_records(cluster: MiniCluster) -> None:
    """One call per holder: the k owners asked send their shards beside the records, no shard stream is opened."""
    data = payload(LARGE, 6)
    await put(cluster, "med", data)
    cluster.client.calls.clear()
    obj = await cluster.io.find(cluster.ring, BUCKET, "med", prefetch=True)
    assert obj is not None and len(obj.shards) == 4
    assert b"".join([c async for c in cluster.io.read(obj)]) == data
    assert b"".join([c async for c in cluster.io.read(obj, 70_001, 100_000)]) == data[70_001:170_001]
    assert dict(cluster.client.calls) == {"GET /record+shards": 4}


async def test_a_head_or_a_large_shard_reads_as_before(cluster: MiniCluster, monkeypatch: pytest.MonkeyPatch) -> None:
    data = payload(LARGE, 7)
    await put(cluster, "big", data)
    cluster.client.calls.clear()
    assert await read(cluster, "big") == data  # no prefetch asked (a HEAD, repair)
    assert dict(cluster.client.calls) == {"GET /record": 4, "GET /blob": 4}
    monkeypatch.setattr(objstore.reader, "PREFETCH_SHARD_MAX", LARGE // 8)  # shards of LARGE/4 are over it
    cluster.client.calls.clear()
    assert await read(cluster, "big", prefetch=True) == data
    assert dict(cluster.client.calls) == {"GET /record+shards": 4, "GET /blob": 4}
    monkeypatch.setattr(node.server, "SHARDS_PER_ANSWER", 0)  # a node that sends no shard bytes at all
    monkeypatch.setattr(objstore.reader, "PREFETCH_SHARD_MAX", 1 << 20)
    cluster.client.calls.clear()
    assert await read(cluster, "big", prefetch=True) == data
    assert dict(cluster.client.calls) == {"GET /record+shards": 4, "GET /blob": 4}


async def test_a_damaged_shard_is_not_sent_with_the_record_and_the_read_goes_on(cluster: MiniCluster) -> None:
    data = payload(LARGE, 8)
    await put(cluster, "rot", data)
    first = cluster.owners("rot")[0]
    store = cluster.store(first.id)
    rec = store.get_record(BUCKET, "rot")[0]
    path = store.root / store.blob_for_read(rec.parts[0].blob, rec.shard).path
    raw = bytearray(path.read_bytes())
    raw[5000] ^= 1
    path.write_bytes(bytes(raw))
    cluster.client.calls.clear()
    assert await read(cluster, "rot", prefetch=True) == data
    assert store.corrupt_found == 1 and not path.exists()  # quarantined, as a shard GET would
    # shard 0 came from nowhere: a parity shard stood in, once every node was asked for more holders
    assert cluster.client.count("GET /record+shards") == 4 and cluster.client.count("GET /record") == 6


async def test_prefetched_bytes_that_fail_the_records_checksums_are_never_returned(
        cluster: MiniCluster, monkeypatch: pytest.MonkeyPatch) -> None:
    data = payload(LARGE, 9)
    await put(cluster, "flip", data)
    send = CountingClient.get_record_and_shards

    async def damaging(self: CountingClient, n: NodeInfo, *args: object) -> list[tuple[ObjectRecord, bytes | None]]:
        pairs = await send(self, n, *args)  # type: ignore[arg-type]
        return [(r, None if d is None else (d[:100] + bytes([d[100] ^ 1]) + d[101:]) if r.shard == 1 else d)
                for r, d in pairs]

    monkeypatch.setattr(CountingClient, "get_record_and_shards", damaging)
    assert await read(cluster, "flip", prefetch=True) == data


async def test_a_one_stripe_object_held_whole_is_joined_without_a_stream(cluster: MiniCluster,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """`held_payload`: the k data shards that came with the records, verified and joined; ranges cut from them.
    Objects of several stripes, and empty ranges, are left to `read`."""
    small = payload(SMALL, 10)
    await put(cluster, "one", small)
    monkeypatch.setattr(objstore.objects, "INLINE_MAX_SHARD", 1000)  # shards of 1250 bytes go to blob files
    await put(cluster, "blobbed", small, carry=False)
    await put(cluster, "several", payload(LARGE, 11))
    cluster.client.calls.clear()
    one = await cluster.io.find(cluster.ring, BUCKET, "one", prefetch=True)
    blobbed = await cluster.io.find(cluster.ring, BUCKET, "blobbed", prefetch=True)
    several = await cluster.io.find(cluster.ring, BUCKET, "several", prefetch=True)
    assert one is not None and blobbed is not None and several is not None
    assert one.record.parts[0].inline is not None and blobbed.record.parts[0].inline is None
    for obj in (one, blobbed):
        assert cluster.io.held_payload(obj, 0, SMALL) == small
        assert cluster.io.held_payload(obj, 17, 100) == small[17:117]
        assert cluster.io.held_payload(obj, SMALL - 1, 1) == small[-1:]
        assert cluster.io.held_payload(obj, 0, 0) is None
    assert cluster.io.held_payload(several, 0, LARGE) is None
    assert dict(cluster.client.calls) == {"GET /record+shards": 12}  # no shard stream was opened


async def test_a_held_shard_that_fails_its_checksum_leaves_the_read_to_decode(
        cluster: MiniCluster, monkeypatch: pytest.MonkeyPatch) -> None:
    data = payload(SMALL, 12)
    await put(cluster, "bad", data)
    send = CountingClient.get_record_and_shards

    async def damaging(self: CountingClient, n: NodeInfo, *args: object) -> list[tuple[ObjectRecord, bytes | None]]:
        pairs = await send(self, n, *args)  # type: ignore[arg-type]
        for rec, _ in pairs:
            part = rec.parts[0]
            if rec.shard == 2 and part.inline is not None:
                rec.parts[0] = dataclasses.replace(part, inline=bytes([part.inline[0] ^ 1]) + part.inline[1:])
        return pairs

    monkeypatch.setattr(CountingClient, "get_record_and_shards", damaging)
    obj = await cluster.io.find(cluster.ring, BUCKET, "bad", prefetch=True)
    assert obj is not None
    assert cluster.io.held_payload(obj, 0, SMALL) is None
    assert b"".join([c async for c in cluster.io.read(obj)]) == data  # shard 2 decoded from a parity shard


async def test_a_partition_moved_by_a_map_change_is_read_from_every_node(cluster: MiniCluster) -> None:
    keys = [f"m{i}" for i in range(40)]
    for key in keys:
        await put(cluster, key, payload(100, len(key)))
    before = {key: [n.id for n in cluster.owners(key)] for key in keys}
    grown = cluster.cmap.with_changes(nodes=cluster.cmap.nodes + (NodeInfo("n7", "127.0.0.1:9", "z1"),))
    assert cluster.view.adopt(grown)
    moved = [key for key in keys if [n.id for n in cluster.owners(key)] != before[key]]
    kept = [key for key in keys if key not in moved]
    assert moved and kept
    for key in moved[:3]:
        cluster.client.calls.clear()
        assert await read(cluster, key) == payload(100, len(key))
        assert cluster.client.count("GET /versions") == 7  # the new node too, though it cannot answer
    cluster.client.calls.clear()
    assert await read(cluster, kept[0]) == payload(100, len(kept[0]))
    assert cluster.client.count("GET /versions") == 0


async def test_a_delete_marker_hides_the_key_and_its_commit_names_the_older_version(cluster: MiniCluster) -> None:
    first = await put(cluster, "gone", payload(SMALL))
    ring = cluster.ring
    version = new_version()
    marker = ObjectRecord(bucket=BUCKET, key="gone", version=version, shard=0, ec=ring.ec, deleted=True)
    done = await cluster.io.commit(ring, ring.partition_of(BUCKET, "gone"), marker, [])
    assert all(older == [first.record.version] for _, older in done.older.values())
    obj = await cluster.io.find(ring, BUCKET, "gone")
    assert obj is not None and obj.deleted
