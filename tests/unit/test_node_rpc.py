"""The node RPC in-process (aiohttp TestServer on 127.0.0.1) through the real NodeClient."""

from __future__ import annotations

import asyncio
import logging
import os
import random
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import aiohttp
import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
import xxhash
from aiohttp import web
from aiohttp.test_utils import TestServer

from node.server import NODE, WRITE_BATCH, build_app
from node.store import Store
import objstore.client
from objstore import auth
from objstore.client import (
    DiskFull,
    NodeClient,
    NodeError,
    NodeUnavailable,
    NotFound,
    ShardCorrupt,
)
from objstore.cluster import ClusterMap, ECProfile, NodeInfo
from objstore.config import NodeConfig
from objstore.records import KVRecord, ObjectRecord, PartRef
from objstore.ring import partition_of

SECRET = "test-secret"
BS = 4096
EC = ECProfile(2, 1, BS)


@dataclass
class Harness:
    app: web.Application
    server: TestServer
    info: NodeInfo
    client: NodeClient

    @property
    def store(self) -> Store:
        return self.app[NODE].store

    @property
    def data(self) -> Path:
        return self.store.data


def make_cfg(data_dir: Path, fsync: bool = False) -> NodeConfig:
    return NodeConfig(id="n1", listen="127.0.0.1:0", data_dir=str(data_dir), secret=SECRET, map="", fsync=fsync)


def make_map(epoch: int = 1) -> ClusterMap:
    return ClusterMap(epoch=epoch, ec=EC, nodes=(NodeInfo("n1", "127.0.0.1:1", "z1"),), partition_bits=8)


async def start(data_dir: Path, fsync: bool = False) -> Harness:
    app = build_app(make_cfg(data_dir, fsync), make_map(), loops=False)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    return Harness(app, server, NodeInfo("n1", f"127.0.0.1:{server.port}", "z1"), NodeClient(SECRET, timeout=5.0))


@pytest.fixture
async def node(tmp_path: Path) -> AsyncIterator[Harness]:
    h = await start(tmp_path / "n1")
    yield h
    await h.client.close()
    await h.server.close()


def payload(n: int, seed: int = 0) -> bytes:
    return random.Random(seed).randbytes(n)


async def chunks(data: bytes, size: int = 7000) -> AsyncIterator[bytes]:
    for i in range(0, len(data), size):
        yield data[i:i + size]


def sums(data: bytes, bs: int = BS) -> list[int]:
    return [xxhash.xxh3_64_intdigest(data[i:i + bs]) for i in range(0, len(data), bs)]


async def read_all(h: Harness, blob: str, shard: int, offset: int = 0, length: int | None = None) -> bytes:
    async with h.client.open_blob(h.info, blob, shard, offset, length) as r:
        return b"".join([c async for c in r.iter_chunks()])


def shard_path(h: Harness, blob: str, shard: int, partition: int = 3) -> Path:
    return h.data / f"{partition:05d}" / f"{blob}.{shard}"


def temp_files(root: Path) -> list[Path]:
    return [p for p in root.rglob("*.tmp")]


def record(key: str, version: str, parts: list[PartRef], bucket: str = "b", shard: int = 0,
           deleted: bool = False) -> ObjectRecord:
    size = sum(p.size for p in parts)
    return ObjectRecord(bucket=bucket, key=key, version=version, shard=shard, ec=EC, deleted=deleted, size=size,
                        etag=f"e-{version}", parts=parts, created=int(version, 16) if version.isalnum() else 0)


def inline_part(data: bytes = b"tiny") -> PartRef:
    return PartRef(1, len(data), "etag", "inline0", inline=data)


# -- shards ---------------------------------------------------------------------------------------


async def test_blob_round_trip_checksums_and_ranges(node: Harness) -> None:
    data = payload(3 * BS + 1234)
    got = await node.client.put_blob(node.info, "blob1", 2, 3, BS, chunks(data))
    assert got == sums(data)
    assert shard_path(node, "blob1", 2).read_bytes() == data
    assert await read_all(node, "blob1", 2) == data
    for offset, length in [(0, 1), (BS, BS), (BS - 3, 10), (100, 3 * BS), (len(data) - 5, 5), (7, 0)]:
        assert await read_all(node, "blob1", 2, offset, length) == data[offset:offset + length]
    async with node.client.open_blob(node.info, "blob1", 2, BS, 2 * BS) as r:
        assert await r.read_exactly(BS) == data[BS:2 * BS]
        assert await r.read_exactly(BS) == data[2 * BS:3 * BS]
    assert (await node.client.stats(node.info))["blobs"] == 1


async def test_blob_errors_missing_and_bad_range(node: Harness) -> None:
    with pytest.raises(NotFound):
        await read_all(node, "nothere", 0)
    await node.client.put_blob(node.info, "blob1", 0, 3, BS, chunks(payload(100)))
    with pytest.raises(NodeError) as e:
        await read_all(node, "blob1", 0, 50, 51)
    assert e.value.status == 416
    with pytest.raises(NodeError) as e:
        await node.client.put_blob(node.info, "../../etc", 0, 3, BS, chunks(b"x"))
    assert e.value.status == 404  # the route only takes plain blob ids: no path tricks


@pytest.mark.parametrize("damage", ["flip", "truncate", "append"])
async def test_damaged_shard_is_quarantined_and_never_served(node: Harness, damage: str) -> None:
    data = payload(4 * BS + 10)
    await node.client.put_blob(node.info, "dmg", 1, 3, BS, chunks(data))
    path = shard_path(node, "dmg", 1)
    raw = bytearray(path.read_bytes())
    if damage == "flip":
        raw[2 * BS + 17] ^= 0x01
    elif damage == "truncate":
        raw = raw[:3 * BS]
    else:
        raw += b"garbage"
    path.write_bytes(bytes(raw))
    if damage == "flip":  # blocks the range does not touch are still served, verified
        assert await read_all(node, "dmg", 1, 0, BS) == data[:BS]
    with pytest.raises(ShardCorrupt) as e:
        await read_all(node, "dmg", 1)
    assert "dmg" in e.value.message
    assert not path.exists() and path.with_name(path.name + ".corrupted").exists()
    with pytest.raises(ShardCorrupt):
        await read_all(node, "dmg", 1, 0, BS)
    stats = await node.client.stats(node.info)
    assert stats["corrupt_found"] == 1 and stats["quarantined_blobs"] == 1 and stats["blobs"] == 0


async def test_corruption_after_the_first_batch_cuts_the_stream(node: Harness) -> None:
    bs = 64 * 1024
    data = payload(40 * bs)  # several read batches
    await node.client.put_blob(node.info, "late", 0, 3, bs, chunks(data, 100_000))
    path = shard_path(node, "late", 0)
    raw = bytearray(path.read_bytes())
    raw[38 * bs] ^= 0x80
    path.write_bytes(bytes(raw))
    received = bytearray()
    with pytest.raises(NodeUnavailable):
        async with node.client.open_blob(node.info, "late", 0) as r:
            async for chunk in r.iter_chunks():
                received += chunk
    assert len(received) < 38 * bs and data.startswith(bytes(received))  # never a wrong byte
    assert (await node.client.stats(node.info))["corrupt_found"] == 1
    with pytest.raises(ShardCorrupt):
        await read_all(node, "late", 0)


async def test_aborted_upload_leaves_no_temp_file(node: Harness) -> None:
    async def broken() -> AsyncIterator[bytes]:
        yield payload(200_000)
        await asyncio.sleep(0.05)
        raise RuntimeError("the sender died")

    with pytest.raises((NodeError, RuntimeError)):
        await node.client.put_blob(node.info, "gone", 0, 3, BS, broken())
    deadline = time.monotonic() + 3
    while temp_files(node.data) and time.monotonic() < deadline:
        await asyncio.sleep(0.02)
    assert temp_files(node.data) == []
    assert (await node.client.stats(node.info))["blobs"] == 0


async def test_disk_full_fault_hook_gives_507_and_keeps_nothing(node: Harness) -> None:
    node.store.fail_after_bytes = 3 * WRITE_CHUNK
    with pytest.raises(DiskFull) as e:
        await node.client.put_blob(node.info, "full", 0, 3, BS, chunks(payload(8 * WRITE_CHUNK), 256 * 1024))
    assert e.value.status == 507
    assert temp_files(node.data) == [] and not shard_path(node, "full", 0).exists()
    with pytest.raises(NotFound):
        await read_all(node, "full", 0)
    node.store.fail_after_bytes = None
    await node.client.put_blob(node.info, "full", 0, 3, BS, chunks(payload(1000)))  # space again: works


WRITE_CHUNK = 1 << 20


async def test_disk_full_on_a_real_tiny_filesystem(tmp_path: Path) -> None:
    mnt = tmp_path / "small"
    mnt.mkdir()
    code, err = await sh("mount", "-t", "tmpfs", "-o", "size=1M", "tmpfs", str(mnt))
    if code != 0:
        pytest.skip(f"cannot mount a tmpfs here: {err.strip()}")
    try:
        h = await start(mnt / "n1", fsync=True)
        try:
            await h.client.put_blob(h.info, "fits", 0, 3, BS, chunks(payload(100_000)))
            with pytest.raises(DiskFull):
                await h.client.put_blob(h.info, "big", 0, 3, BS, chunks(payload(3 * WRITE_CHUNK), 65536))
            assert temp_files(mnt) == [] and not shard_path(h, "big", 0).exists()
            stats = await h.client.stats(h.info)
            assert stats["blobs"] == 1
            assert await read_all(h, "fits", 0) == payload(100_000)
        finally:
            await h.client.close()
            await h.server.close()
    finally:
        await sh("umount", "-l", str(mnt))


async def sh(*argv: str) -> tuple[int, str]:
    """Run a command (bounded in time); its exit code and stderr."""
    try:
        proc = await asyncio.create_subprocess_exec(*argv, stdout=asyncio.subprocess.DEVNULL,
                                                    stderr=asyncio.subprocess.PIPE)
    except OSError as e:
        return 127, str(e)
    _, err = await asyncio.wait_for(proc.communicate(), timeout=10)
    return proc.returncode or 0, err.decode(errors="replace")


async def test_temp_files_are_swept_at_start(tmp_path: Path) -> None:
    leftover = tmp_path / "n1" / "data" / "00007" / "b1.0.abcdef.tmp"
    leftover.parent.mkdir(parents=True)
    leftover.write_bytes(b"half a shard")
    kept = leftover.with_name("b2.0")
    kept.write_bytes(b"x")
    h = await start(tmp_path / "n1")
    try:
        assert not leftover.exists() and kept.exists()
        assert (await h.client.stats(h.info))["swept_temp_files"] == 1
    finally:
        await h.client.close()
        await h.server.close()


# -- records --------------------------------------------------------------------------------------


async def test_record_commit_needs_the_blob_with_the_same_checksums(node: Harness) -> None:
    data = payload(2 * BS)
    part = PartRef(1, len(data), "etag", "blobA", checksums=sums(data))
    rec = record("k", "0000000000000001aa", [part])
    with pytest.raises(NodeError) as e:
        await node.client.put_record(node.info, rec)
    assert (e.value.status, e.value.code) == (409, "blob_missing")
    await node.client.put_blob(node.info, "blobA", 0, 3, BS, chunks(data))
    bad = record("k", "0000000000000001aa", [PartRef(1, len(data), "etag", "blobA", checksums=[1, 2])])
    with pytest.raises(NodeError) as e:
        await node.client.put_record(node.info, bad)
    assert e.value.status == 409
    assert (await node.client.stats(node.info))["pending_blobs"] == 1
    await node.client.put_record(node.info, rec)
    assert (await node.client.stats(node.info))["pending_blobs"] == 0
    assert await node.client.get_record(node.info, "b", "k") == [rec]
    with pytest.raises(NodeError) as e:  # a committed blob is not deleted from under its record
        await node.client.delete_blob(node.info, "blobA", 0)
    assert (e.value.status, e.value.code) == (409, "referenced")


async def test_a_record_lookup_can_bring_its_small_shard(node: Harness) -> None:
    data = payload(3 * BS + 100)
    await node.client.put_blob(node.info, "medium", 2, 3, BS, chunks(data))
    rec = record("k", "0000000000000001aa", [PartRef(1, len(data), "etag", "medium", checksums=sums(data))], shard=2)
    await node.client.put_record(node.info, rec)
    await node.client.put_record(node.info, record("tiny", "0000000000000001ab", [inline_part()]))
    assert await node.client.get_record_and_shards(node.info, "b", "k", None, 1 << 20) == [(rec, data)]
    assert await node.client.get_record_and_shards(node.info, "b", "k", None, len(data) - 1) == [(rec, None)]
    # shard_max=0 is answered in the plain form, as by a node that predates shard_max: records alone
    assert await node.client.get_record_and_shards(node.info, "b", "k", None, 0) == [(rec, None)]
    assert [d for _, d in await node.client.get_record_and_shards(node.info, "b", "tiny", None, 1 << 20)] == [None]
    assert await node.client.get_record_and_shards(node.info, "b", "nothing", None, 1 << 20) == []
    assert await node.client.get_record(node.info, "b", "k") == [rec]  # the plain lookup answers as before
    path = shard_path(node, "medium", 2)
    raw = bytearray(path.read_bytes())
    raw[2 * BS + 5] ^= 0x01
    path.write_bytes(bytes(raw))
    assert await node.client.get_record_and_shards(node.info, "b", "k", None, 1 << 20) == [(rec, None)]
    assert not path.exists() and path.with_name(path.name + ".corrupted").exists()
    assert (await node.client.stats(node.info))["corrupt_found"] == 1
    with pytest.raises(ShardCorrupt):
        await read_all(node, "medium", 2)


def batches_sent(monkeypatch: pytest.MonkeyPatch) -> list[bytes]:
    """The bodies of the batched record writes (`POST /records`) the NodeClient sends from now on."""
    bodies: list[bytes] = []
    send = NodeClient._post

    async def recording(self: NodeClient, n: NodeInfo, path: str, body: bytes | list[bytes]) -> object:
        if path == "/records":
            bodies.append(body if isinstance(body, bytes) else b"".join(body))
        return await send(self, n, path, body)

    monkeypatch.setattr(NodeClient, "_post", recording)
    return bodies


async def test_concurrent_record_calls_travel_in_batches_each_answered_on_its_own(node: Harness,
                                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """Calls made while a batch is out go together in the next: fewer RPCs and node transactions than
    calls, and each caller gets its own answer, its own error, as if it had called alone."""
    data = payload(BS)
    await node.client.put_blob(node.info, "blobB", 0, 3, BS, chunks(data))
    good = [record(f"k{i}", "0000000000000001aa", [inline_part(f"v{i}".encode())]) for i in range(40)]
    missing = record("m", "0000000000000001aa", [PartRef(1, BS, "etag", "nope", checksums=sums(data))])
    short = replace(good[0], key="short", size=99)  # lists parts of fewer bytes than the record says
    older = record("k3", "0000000000000000aa", [inline_part(b"old")])
    await node.client.put_record(node.info, older)
    bodies = batches_sent(monkeypatch)
    calls = [*good[:20], missing, *good[20:], short]
    results = await asyncio.gather(*(node.client.put_record(node.info, r) for r in calls), return_exceptions=True)
    rpcs = [len(msgpack.unpackb(b)) for b in bodies]
    assert sum(rpcs) == len(calls) and len(rpcs) < len(calls) // 4, rpcs
    by_key = dict(zip([r.key for r in calls], results, strict=True))
    assert isinstance(by_key["m"], NodeError) and (by_key["m"].status, by_key["m"].code) == (409, "blob_missing")
    assert isinstance(by_key["short"], NodeError) and (by_key["short"].status, by_key["short"].code) == (400, "bad_record")
    assert by_key["k3"] == ["0000000000000000aa"] and all(by_key[r.key] == [] for r in good if r.key != "k3")
    found = await asyncio.gather(*(node.client.get_record(node.info, "b", r.key) for r in calls))
    assert [f[0].parts[0].inline for f in found[:20]] == [f"v{i}".encode() for i in range(20)]
    assert found[20] == [] and found[-1] == []
    assert node.store.blob("blobB", 0).state == "pending"  # nothing of the refused record was kept
    await asyncio.gather(*(node.client.delete_record(node.info, "b", r.key, r.version) for r in good[::2]))
    left = await asyncio.gather(*(node.client.get_record(node.info, "b", r.key) for r in good))
    assert [bool(f) for f in left] == [i % 2 == 1 or r.key == "k3" for i, r in enumerate(good)]  # k3's older one


@given(st.lists(st.one_of(st.binary(max_size=300), st.integers(0, 70_000).map(bytes)), min_size=1, max_size=40))
@settings(max_examples=60, deadline=None)
def test_a_batch_of_packed_records_is_the_msgpack_array_of_them(calls: list[bytes]) -> None:
    """The records of a batch go as pieces (headers between them, no copy into one body): the same bytes."""
    pieces = objstore.client._packed_list(calls)
    assert b"".join(pieces) == msgpack.packb(calls, use_bin_type=True)
    assert any(p is calls[0] for p in pieces)
    assert objstore.client._packed_list([["b", "k", None]]) == msgpack.packb([["b", "k", None]])


async def test_a_batch_closes_at_its_byte_limit(node: Harness, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(objstore.client, "MAX_BATCH_BYTES", 1000)
    bodies = batches_sent(monkeypatch)
    recs = [record(f"big{i}", "0000000000000001aa", [inline_part(payload(400, i))]) for i in range(12)]
    await asyncio.gather(*(node.client.put_record(node.info, r) for r in recs))
    sizes = [len(b) for b in bodies]
    assert len(sizes) >= 12 * 400 // 1500 and max(sizes) < 1000 + 2 * 600, sizes
    assert all(await asyncio.gather(*(node.client.get_record(node.info, "b", r.key) for r in recs)))


def test_a_batch_commits_what_it_can_in_one_transaction(tmp_path: Path) -> None:
    store = Store(tmp_path / "s", partition_bits=8)
    try:
        bad = record("bad", "0000000000000001aa", [PartRef(1, 10, "etag", "nope", checksums=[1])])
        ok = [record(f"k{i}", "0000000000000001aa", [inline_part()]) for i in range(3)]
        commits = []
        store.sql_executor.submit(store._db.set_trace_callback,
                                  lambda sql: commits.append(sql) if sql == "COMMIT" else None).result()
        results = store.put_records([ok[0], bad, ok[1], ok[2]], older_limit=5)
        assert len(commits) == 1
        assert [type(r).__name__ for r in results] == ["list", "BlobMissing", "list", "list"]
        assert [len(store.get_record("b", k)) for k in ("k0", "bad", "k1", "k2")] == [1, 0, 1, 1]
    finally:
        store.close()


async def test_calls_queued_behind_an_unreachable_node_fail_with_it(monkeypatch: pytest.MonkeyPatch) -> None:
    """A node that does not answer costs each queued call one timeout, not one timeout per batch before it."""
    monkeypatch.setattr(objstore.client, "MAX_BATCH_CALLS", 4)  # 30 calls: 2 batches out, 7 more to go
    server = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)  # accepts, never answers
    port = server.sockets[0].getsockname()[1]
    silent = NodeInfo("n9", f"127.0.0.1:{port}", "z1")
    client = NodeClient(SECRET, timeout=1.0)
    try:
        started = time.monotonic()
        results = await asyncio.gather(*(client.get_record(silent, "b", f"k{i}") for i in range(30)),
                                       return_exceptions=True)
        assert all(isinstance(r, NodeUnavailable) for r in results)
        assert time.monotonic() - started < 3.0  # one timeout; batch after batch would take 5
    finally:
        await client.close()
        server.close()


UNICODE_KEYS = ["a/b/c", "100%", "a+b c", "emoji 🚀/ünï", "../up", "a//b/", "x?y&z=1#f", "%2F", " lead", "k" * 1024,
                "日本語/" + "é" * 300]


async def test_record_round_trip_with_awkward_keys(node: Harness) -> None:
    for i, key in enumerate(UNICODE_KEYS):
        await node.client.put_record(node.info, record(key, f"{i + 1:016x}00", [inline_part(key.encode()[:10])]))
    for i, key in enumerate(UNICODE_KEYS):
        got = await node.client.get_record(node.info, "b", key)
        assert [r.key for r in got] == [key] and got[0].parts[0].inline == key.encode()[:10]
        assert [r.version for r in await node.client.get_versions(node.info, "b", key)] == [f"{i + 1:016x}00"]
    listed = await node.client.list_entries(node.info, "b")
    assert [e.key for e in listed] == sorted(UNICODE_KEYS)
    assert [e.key for e in await node.client.list_entries(node.info, "b", prefix="a")] == ["a+b c", "a//b/", "a/b/c"]
    assert await node.client.get_record(node.info, "b", "a/b") == []
    assert await node.client.get_record(node.info, "other", "a/b/c") == []


async def test_list_order_versions_and_pagination(node: Harness) -> None:
    for key, versions in {"k1": ["01", "03"], "k2": ["02"], "k3": ["01", "02", "04"], "z": ["05"]}.items():
        for v in versions:
            await node.client.put_record(node.info, record(key, f"{int(v):016x}", [inline_part()],
                                                           deleted=(key, v) == ("k3", "04")))
    newest = await node.client.list_entries(node.info, "b")
    assert [(e.key, int(e.version, 16)) for e in newest] == [("k1", 3), ("k2", 2), ("k3", 4), ("z", 5)]
    assert [e.deleted for e in newest] == [False, False, True, False]
    every = await node.client.list_entries(node.info, "b", versions=True)
    assert [(e.key, int(e.version, 16)) for e in every] == [
        ("k1", 3), ("k1", 1), ("k2", 2), ("k3", 4), ("k3", 2), ("k3", 1), ("z", 5)]
    pages, after = [], ""
    for _ in range(10):
        page = await node.client.list_entries(node.info, "b", start_after=after, limit=2)
        if not page:
            break
        pages.append([e.key for e in page])
        after = page[-1].key
    assert pages == [["k1", "k2"], ["k3", "z"]]
    assert [e.key for e in await node.client.list_entries(node.info, "b", prefix="k", start_after="k1")] == ["k2", "k3"]
    assert [e.key for e in await node.client.list_entries(node.info, "b", prefix="k", start_after="a")] == [
        "k1", "k2", "k3"]
    entry = every[0]
    assert (entry.size, entry.etag, entry.shard) == (4, f"e-{entry.version}", 0)


async def test_delete_record_removes_blobs_no_other_record_needs(node: Harness) -> None:
    data = payload(BS + 1)
    await node.client.put_blob(node.info, "shared", 0, 3, BS, chunks(data))
    part = PartRef(1, len(data), "e", "shared", checksums=sums(data))
    await node.client.put_record(node.info, record("one", "0000000000000001", [part]))
    await node.client.put_record(node.info, record("two", "0000000000000002", [part]))
    path = shard_path(node, "shared", 0)
    await node.client.delete_record(node.info, "b", "one", "0000000000000001")
    assert path.exists() and await node.client.get_record(node.info, "b", "one") == []
    await node.client.delete_record(node.info, "b", "two", "0000000000000002")
    assert not path.exists()
    assert (await node.client.stats(node.info))["blobs"] == 0
    await node.client.put_blob(node.info, "loose", 0, 3, BS, chunks(data))
    assert await node.client.delete_blob(node.info, "loose", 0) is True
    assert await node.client.delete_blob(node.info, "loose", 0) is False


async def test_partition_digest_and_records(node: Harness) -> None:
    keys = [f"key{i}" for i in range(30)]
    for i, key in enumerate(keys):
        await node.client.put_record(node.info, record(key, f"{i + 1:016x}", [inline_part()]))
    p = partition_of("b", "key3", 8)
    rows = await node.client.partition_records(node.info, p)
    expect = sorted((("b", k, f"{i + 1:016x}", 0, False, True) for i, k in enumerate(keys)
                     if partition_of("b", k, 8) == p))
    assert rows == expect
    digest, count, size, markers = await node.client.partition_digest(node.info, p)
    assert markers == 0
    assert count == len(expect) and size == count * len(b"tiny")  # the object bytes of the versions held
    other = await start_twin_digest(node, p)
    assert other == digest
    assert p in await node.client.partitions_held(node.info)


async def test_partition_records_asked_together_go_as_one_request(node: Harness,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """A repair pass drills into many partitions at once: their record listings go to a node as one
    batch, each answered as the single call answers it; a node without the batch call is asked one
    partition a call."""
    for i in range(60):
        await node.client.put_record(node.info, record(f"key{i}", f"{i + 1:016x}", [inline_part()]))
    held = await node.client.partitions_held(node.info)
    assert len(held) > 20
    single = [await node.client._unpack(node.info, "GET", f"/partition/{p}/records") for p in held]
    posts: list[str] = []
    post = NodeClient._post

    async def counted(self: NodeClient, n: NodeInfo, path: str, body: Any) -> Any:
        posts.append(path)
        return await post(self, n, path, body)

    monkeypatch.setattr(NodeClient, "_post", counted)
    together = await asyncio.gather(*(node.client.partition_records(node.info, p) for p in held))
    assert [[list(r) for r in rows] for rows in together] == single
    assert 1 <= posts.count("/partitions/records") <= 2  # the first call alone, then the rest together
    old = NodeClient._coalescer
    monkeypatch.setattr(NodeClient, "_coalescer",
                        lambda self, n, path: old(self, n, path.replace("/partitions/records", "/gone")))
    other = NodeClient(SECRET, timeout=5.0)
    try:
        assert await asyncio.gather(*(other.partition_records(node.info, p) for p in held)) == together
        assert node.info.id in other._one_partition_a_call
        monkeypatch.setattr(NodeClient, "_coalescer", old)  # the node upgraded
        posts.clear()
        assert await other.partition_records(node.info, held[0]) == together[0]
        assert posts == []  # not asked again before the recheck is due
        monkeypatch.setattr(objstore.client, "OLD_NODE_RECHECK", 0.0)
        assert await other.partition_records(node.info, held[0]) == together[0]
        assert posts == ["/partitions/records"]
    finally:
        await other.close()


async def start_twin_digest(node: Harness, p: int) -> str:
    """The digest recomputed on the same store: a pure function of the records."""
    digest, *_ = await asyncio.get_running_loop().run_in_executor(None, node.store.partition_digest, p)
    return digest


# -- KV, map, health, auth ------------------------------------------------------------------------


async def test_kv_last_writer_wins(node: Harness) -> None:
    await node.client.put_kv(node.info, KVRecord("bucket", "photos", "0002", {"owner": "new"}))
    await node.client.put_kv(node.info, KVRecord("bucket", "photos", "0001", {"owner": "old"}))
    got = await node.client.get_kv(node.info, "bucket", "photos")
    assert got is not None and got.value == {"owner": "new"}
    await node.client.put_kv(node.info, KVRecord("bucket", "photos", "0003", {}, deleted=True))
    await node.client.put_kv(node.info, KVRecord("bucket", "music", "0001", {"owner": "x"}))
    await node.client.put_kv(node.info, KVRecord("upload", "photos", "0001", {}))
    tomb = await node.client.get_kv(node.info, "bucket", "photos")
    assert tomb is not None and tomb.deleted
    assert [r.name for r in await node.client.list_kv(node.info, "bucket")] == ["music", "photos"]
    assert [r.name for r in await node.client.list_kv(node.info, "bucket", "ph")] == ["photos"]
    assert await node.client.get_kv(node.info, "bucket", "nope") is None


async def test_map_only_moves_to_newer_epochs(node: Harness) -> None:
    assert (await node.client.get_map(node.info)).epoch == 1
    assert await node.client.put_map(node.info, make_map(3)) == {"adopted": True, "epoch": 3}
    assert await node.client.put_map(node.info, make_map(3)) == {"adopted": False, "epoch": 3}
    assert await node.client.put_map(node.info, make_map(2)) == {"adopted": False, "epoch": 3}
    assert (await node.client.get_map(node.info)).epoch == 3
    assert ClusterMap.load(node.store.root / "cluster.json").epoch == 3


async def test_health_reports_counts(node: Harness) -> None:
    await node.client.put_record(node.info, record("k", "0000000000000001", [inline_part()]))
    h = await node.client.health(node.info)
    assert h["id"] == "n1" and h["epoch"] == 1 and h["peers"] == {"n1": "up"} and h["disk_free"] > 0
    assert {"records", "blobs", "blob_bytes", "corrupt_found"} <= set(h)
    assert (await node.client.stats(node.info))["records"] == 1


async def test_a_brief_health_is_the_epoch_and_peers_without_a_disk_or_sql_job(node: Harness,
                                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """Heartbeats (every peer, every second) and gateway polls ask the brief form: it must cost the node no
    job on its threads."""
    n = node.app[NODE]

    def no_job(*args: Any) -> Any:
        raise AssertionError("a brief health ran a job")

    monkeypatch.setattr(n, "run", no_job)
    monkeypatch.setattr(n, "sql", no_job)
    assert await node.client.health(node.info, brief=True) == {"id": "n1", "epoch": 1, "peers": {"n1": "up"}}
    with pytest.raises(NodeError):  # the whole document does need them
        await node.client.health(node.info)


async def test_unsigned_forged_tampered_and_stale_calls_are_refused(node: Harness) -> None:
    base = f"http://{node.info.address}"
    path = "/record?bucket=b&key=k"
    async with aiohttp.ClientSession() as s:
        async def status(url_path: str, headers: dict[str, str]) -> int:
            async with s.get(base + url_path, headers=headers) as resp:
                return resp.status

        assert await status(path, auth.sign(SECRET, "GET", path)) == 200
        assert await status(path, {}) == 401
        assert await status(path, auth.sign("wrong", "GET", path)) == 401
        assert await status("/record?bucket=b&key=other", auth.sign(SECRET, "GET", path)) == 401
        assert await status(path, auth.sign(SECRET, "PUT", path)) == 401
        assert await status(path, auth.sign(SECRET, "GET", path, now=time.time() - 3600)) == 401
        assert await status("/health", {}) == 401
    assert os.listdir(node.data) == []  # nothing refused touched the disk


async def test_client_gone_mid_blob_is_one_line_and_leaves_no_temp_file(node: Harness,
                                                                        caplog: pytest.LogCaptureFixture) -> None:
    """A gateway that hangs up mid-shard (its client went away, a stalled upload dropped) is routine: one
    line (the RPC's, status 499) and no traceback, and the temp file is removed."""
    path = "/blob/cut/0?partition=3&block_size=" + str(BS)
    headers = {**auth.sign(SECRET, "PUT", path), "X-Request-Id": "CUT1"}
    host, port = node.info.address.split(":")
    caplog.set_level(logging.DEBUG)
    for cut in ("close", "abort"):
        caplog.clear()
        _, writer = await asyncio.open_connection(host, int(port))
        head = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
        # More than one write batch: its disk job makes the temp file while the rest is awaited.
        writer.write(f"PUT {path} HTTP/1.1\r\nHost: {host}\r\nContent-Length: {3 * WRITE_BATCH}\r\n{head}\r\n".encode())
        writer.write(payload(WRITE_BATCH + 300_000))
        await writer.drain()
        deadline = time.monotonic() + 3
        while not temp_files(node.data) and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        assert temp_files(node.data), "the upload had started"
        writer.close() if cut == "close" else writer.transport.abort()

        def gone() -> list[logging.LogRecord]:
            return [r for r in caplog.records if r.getMessage() == "put_blob 499"]
        deadline = time.monotonic() + 3
        while (temp_files(node.data) or not gone()) and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        assert temp_files(node.data) == [], cut
        assert not [r for r in caplog.records if r.exc_info or r.levelno >= logging.ERROR], cut
        assert len(gone()) == 1 and gone()[0].levelno == logging.INFO, [r.getMessage() for r in caplog.records]
    assert (await node.client.stats(node.info))["blobs"] == 0


def test_a_stop_that_hangs_still_exits_with_the_nodes_code() -> None:
    """Whatever blocks a stopping node (even a call blocking its event loop), it exits within the grace."""
    script = ("import time, types; from node.server import _exit_after; "
              "_exit_after(0.3, types.SimpleNamespace(cfg=types.SimpleNamespace(id='n9'), exit_code=75)); "
              "time.sleep(30)")
    started = time.monotonic()
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, timeout=20)
    assert done.returncode == 75 and time.monotonic() - started < 10
    assert b"stopping took over 0.3 s, exiting 75" in done.stderr
