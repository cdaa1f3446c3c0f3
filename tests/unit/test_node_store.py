"""The node's Store and shard files, used directly: SQLite on its own thread, safe writes, verified reads."""

from __future__ import annotations

import random
import sqlite3
import threading
from pathlib import Path

import msgpack
import pytest
import xxhash

import node.shards
import node.store
from node.shards import BlobWriter, CorruptShard, DiskFull, ShardUpload
from node.store import BlobMissing, BlobReferenced, Store
from objstore.cluster import ECProfile
from objstore.codec import block_checksum
from objstore.records import KVRecord, ObjectRecord, PartRef, RecordError

BS = 1024
EC = ECProfile(2, 1, BS)


@pytest.fixture
def store(tmp_path: Path) -> Store:
    s = Store(tmp_path / "node", partition_bits=8, fsync=False)
    yield s
    s.close()


def write_blob(store: Store, blob: str, data: bytes, shard: int = 0, partition: int = 5,
               pieces: list[int] | None = None) -> list[int]:
    w = store.begin_blob(partition, blob, shard, BS)
    pos = 0
    for size in pieces or [len(data)]:
        w.write(data[pos:pos + size])
        pos += size
    w.write(data[pos:])
    return store.finish_blob(w, partition, blob, shard).checksums


def rec(key: str, version: str, parts: list[PartRef], shard: int = 0, bucket: str = "b") -> ObjectRecord:
    return ObjectRecord(bucket=bucket, key=key, version=version, shard=shard, ec=EC, parts=parts,
                        size=sum(p.size for p in parts))


def blob_part(blob: str, data: bytes) -> PartRef:
    return PartRef(1, len(data), "etag", blob, checksums=[block_checksum(data[i:i + BS])
                                                          for i in range(0, len(data), BS)])


def test_sqlite_is_wal_on_one_dedicated_thread(tmp_path: Path) -> None:
    for fsync, level in ((True, 2), (False, 1)):  # FULL, NORMAL
        s = Store(tmp_path / f"n{fsync}", partition_bits=8, fsync=fsync)
        try:
            mode = s.sql_executor.submit(lambda s=s: s._db.execute("PRAGMA journal_mode").fetchone()[0]).result()
            sync = s.sql_executor.submit(lambda s=s: s._db.execute("PRAGMA synchronous").fetchone()[0]).result()
            assert (mode, sync) == ("wal", level)
            assert s.sql_executor._max_workers == 1
            threads: set[str] = set()
            s.sql_executor.submit(lambda t=threads: t.add(threading.current_thread().name)).result()
            assert threads and all(t.startswith("sqlite") for t in threads)
            with pytest.raises(sqlite3.ProgrammingError):  # the connection refuses any other thread
                s._db.execute("SELECT 1")
            assert s.counts()["records"] == 0  # callable from any thread all the same
        finally:
            s.close()


@pytest.mark.parametrize("pieces", [[1], [BS - 1, 1, 1], [3 * BS], [700, 700, 700, 5000]])
def test_block_checksums_do_not_depend_on_how_the_bytes_arrive(store: Store, pieces: list[int]) -> None:
    data = random.Random(1).randbytes(5 * BS + 321)
    got = write_blob(store, "b1", data, pieces=pieces)
    assert got == [xxhash.xxh3_64_intdigest(data[i:i + BS]) for i in range(0, len(data), BS)]
    row = store.blob("b1", 0)
    assert row is not None and (row.state, row.size, row.blocks) == ("pending", len(data), 6)
    assert (store.root / row.path).read_bytes() == data


def test_blob_ids_cannot_escape_the_data_dir(store: Store) -> None:
    for bad in ["../x", "a/b", ".hidden", "x.tmp", "", "a" * 300]:
        with pytest.raises(ValueError):
            store.begin_blob(1, bad, 0, BS)


def test_failed_write_leaves_neither_file_nor_row(store: Store) -> None:
    store.fail_after_bytes = 2 * BS
    w = store.begin_blob(5, "full", 0, BS)
    w.write(b"x" * BS)
    with pytest.raises(DiskFull):
        w.write(b"x" * (2 * BS))
    w.abort()
    w.abort()  # twice is harmless
    assert list(store.data.rglob("*")) == [store.data / "00005"]
    assert store.blob("full", 0) is None


def test_verified_reads_and_quarantine(store: Store) -> None:
    data = random.Random(2).randbytes(4 * BS)
    write_blob(store, "v", data)
    row = store.blob("v", 0)
    assert row is not None
    with store.open_shard(row) as r:
        assert r.read_blocks(1, 2) == data[BS:3 * BS]
        assert r.read_blocks(3, 10) == data[3 * BS:]  # clipped to the shard
    path = store.root / row.path
    raw = bytearray(path.read_bytes())
    raw[BS + 5] ^= 4
    path.write_bytes(bytes(raw))
    assert b"".join(store.read_blob_blocks(row, 0, 0)) == data[:BS]
    with pytest.raises(CorruptShard, match="block 1"):
        list(store.read_blob_blocks(row, 0, 3))
    assert not path.exists() and path.with_name(path.name + ".corrupted").exists()
    assert store.blob("v", 0).state == "corrupt"  # type: ignore[union-attr]
    with pytest.raises(CorruptShard, match="file missing"):
        store.open_shard(row)
    assert store.corrupt_found == 1  # the same shard is counted once
    assert store.blobs() == []


def test_record_commit_and_blob_references(store: Store) -> None:
    data = random.Random(3).randbytes(3 * BS)
    part = blob_part("p1", data)
    with pytest.raises(BlobMissing):
        store.put_record(rec("k", "v1", [part]))
    write_blob(store, "p1", data)
    store.put_record(rec("k", "v1", [part]))
    store.put_record(rec("k2", "v1", [part]))
    assert store.blob("p1", 0).state == "committed"  # type: ignore[union-attr]
    with pytest.raises(BlobReferenced):
        store.delete_blob("p1", 0)
    assert store.delete_record("b", "k", "v1") == 1
    assert store.blob("p1", 0) is not None
    assert store.delete_record("b", "k2", "v1") == 1
    assert store.blob("p1", 0) is None and list(store.data.rglob("p1.*")) == []


def test_a_partitions_first_shard_makes_its_directory_durable_too(tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """A shard file's rename is made durable by an fsync of its directory; a directory made for it needs
    its own entry made durable in its parent, or a crash can lose the directory and the shard with it."""
    synced: list[Path] = []
    real = node.shards.fsync_dir
    monkeypatch.setattr(node.shards, "fsync_dir", lambda path: synced.append(path) or real(path))
    s = Store(tmp_path / "node", partition_bits=8, fsync=True)
    try:
        write_blob(s, "first", b"x" * BS, partition=7)
        pdir = s.data / "00007"
        assert synced == [s.data, pdir]  # the new directory's entry, then the file's
        synced.clear()
        write_blob(s, "second", b"y" * BS, partition=7)
        assert synced == [pdir]
    finally:
        s.close()


def carried(blob: str, data: bytes) -> PartRef:
    part = blob_part(blob, data)
    part.inline = data
    return part


def test_a_carried_shard_over_the_inline_size_is_kept_as_a_shard_file(store: Store,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """The record is stored naming a committed shard file of the same bytes, as if the shard had been
    uploaded first; a shard within the inline size stays in the record. Sent again, nothing changes."""
    monkeypatch.setattr(node.store, "INLINE_MAX_SHARD", BS)
    big, small = random.Random(5).randbytes(2 * BS + 7), b"s" * BS
    store.put_records([rec("big", "v1", [carried("pb", big)]), rec("small", "v1", [carried("ps", small)])], 0)
    (stored,) = store.get_record("b", "big")
    assert stored.parts[0].inline is None and stored.parts[0].present
    row = store.blob("pb", 0)
    assert row is not None and row.state == "committed" and row.checksums == stored.parts[0].checksums
    assert b"".join(store.read_blob_blocks(row, 0, row.blocks - 1)) == big
    assert store.get_record("b", "small")[0].parts[0].inline == small and store.blob("ps", 0) is None
    assert store.put_records([rec("big", "v1", [carried("pb", big)])], 0) == [[]]
    assert len(list(store.data.rglob("pb.*"))) == 1
    assert store.delete_record("b", "big", "v1") == 1
    assert store.blob("pb", 0) is None and list(store.data.rglob("pb.*")) == []


def test_a_refused_carried_record_leaves_no_shard_file(store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    """Bytes that do not match their checksums are refused before any is written; a record refused in its
    transaction (here: parts short of its size) takes its new shard file with it. The batch's others commit."""
    monkeypatch.setattr(node.store, "INLINE_MAX_SHARD", BS)
    data = random.Random(6).randbytes(3 * BS)
    damaged = carried("bad", data)
    damaged.inline = bytes([data[0] ^ 1]) + data[1:]
    short = rec("short", "v1", [carried("short", data)])
    short.size += 1
    results = store.put_records([rec("bad", "v1", [damaged]), short, rec("ok", "v1", [carried("ok", data)])], 0)
    assert isinstance(results[0], RecordError) and "does not match" in str(results[0])
    assert isinstance(results[1], RecordError) and "parts of" in str(results[1])
    assert results[2] == []
    assert store.get_record("b", "bad") == [] and store.get_record("b", "short") == []
    assert store.blob("bad", 0) is None and store.blob("short", 0) is None
    assert [p.name for p in store.data.rglob("*") if p.is_file()] == ["ok.0"]


def test_shard_files_a_crash_left_without_a_row_go_at_the_next_start(tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """A shard file is renamed into place before its row commits, and a removed shard's row goes before its
    file: a crash in between leaves a file nothing names. The next start removes it, and nothing else."""
    monkeypatch.setattr(node.store, "INLINE_MAX_SHARD", BS)
    data = random.Random(8).randbytes(2 * BS)
    s = Store(tmp_path / "node", partition_bits=8, fsync=False)
    s.put_records([rec("kept", "v1", [carried("kept", data)])], 0)
    write_blob(s, "upload", data, partition=9)  # pending: its upload's record may still come
    stored, rows = s.carry_in(rec("crashed", "v1", [carried("crashed", data)]))
    assert rows and s.data.joinpath(rows[0].path.split("/", 1)[1]).exists()  # the crash: no commit follows
    s.put_records([rec("gone", "v1", [carried("gone", data)])], 0)
    s.sql_executor.submit(lambda: s._db.execute("DELETE FROM blobs WHERE blob='gone'")).result()  # then a crash
    pdir = next(s.data.glob("*/kept.0")).parent
    (pdir / "other.0.corrupted").write_bytes(b"quarantined")
    (pdir / "notes.txt").write_bytes(b"not a shard")
    (pdir / "kept.1").write_bytes(b"no row names this shard of kept")
    s.close()
    again = Store(tmp_path / "node", partition_bits=8, fsync=False)
    try:
        assert again.swept_orphans == 3
        names = sorted(p.name for p in again.data.rglob("*") if p.is_file())
        assert names == ["kept.0", "notes.txt", "other.0.corrupted", "upload.0"]
        (row,) = [again.blob("kept", 0)]
        assert row is not None and b"".join(again.read_blob_blocks(row, 0, row.blocks - 1)) == data
    finally:
        again.close()


def test_shard_files_stay_when_records_db_holds_no_shard_row(tmp_path: Path) -> None:
    """records.db lost or replaced is for an operator to look at: the start sweeps nothing."""
    s = Store(tmp_path / "node", partition_bits=8, fsync=False)
    write_blob(s, "a", b"x" * BS)
    s.close()
    (tmp_path / "node" / "records.db").unlink()
    for suffix in ("-wal", "-shm"):
        (tmp_path / "node" / f"records.db{suffix}").unlink(missing_ok=True)
    again = Store(tmp_path / "node", partition_bits=8, fsync=False)
    try:
        assert again.swept_orphans == 0 and [p.name for p in again.data.rglob("a.*")] == ["a.0"]
    finally:
        again.close()


def test_a_record_must_list_every_part(store: Store) -> None:
    data = b"d" * BS
    write_blob(store, "p", data)
    whole = rec("k", "v1", [blob_part("p", data), PartRef(2, 10, "e", "other", present=False)])
    store.put_record(whole)
    with pytest.raises(RecordError, match="parts of 1024 bytes"):
        store.put_record(ObjectRecord(bucket="b", key="k", version="v1", shard=1, ec=EC, size=BS + 10,
                                      parts=[blob_part("p", data)]))
    store.put_record(ObjectRecord(bucket="b", key="k", version="v2", shard=0, ec=EC, deleted=True))


def test_rewriting_a_record_drops_the_blob_it_no_longer_names(store: Store) -> None:
    a, b = b"a" * BS, b"b" * BS
    write_blob(store, "old", a)
    write_blob(store, "new", b)
    store.put_record(rec("k", "v1", [blob_part("old", a)]))
    store.put_record(rec("k", "v1", [blob_part("new", b)]))
    assert store.blob("old", 0) is None and store.blob("new", 0) is not None
    # A handoff-style record (part not present here) needs no blob.
    store.put_record(rec("h", "v1", [PartRef(1, 10, "e", "elsewhere", present=False)]))
    assert [r.key for r in store.get_record("b", "h")] == ["h"]


def test_get_record_picks_the_newest_version_and_every_shard_held(store: Store) -> None:
    inline = PartRef(1, 3, "e", "i", inline=b"abc")
    for version, shard in [("v1", 0), ("v3", 1), ("v3", 0), ("v2", 2)]:
        store.put_record(rec("k", version, [inline], shard=shard))
    assert [(r.version, r.shard) for r in store.get_record("b", "k")] == [("v3", 0), ("v3", 1)]
    assert [(r.version, r.shard) for r in store.get_record("b", "k", "v2")] == [("v2", 2)]
    assert [(r.version, r.shard) for r in store.versions("b", "k")] == [("v3", 0), ("v3", 1), ("v2", 2), ("v1", 0)]


def test_unreadable_record_is_skipped_counted_once_and_unhealthy(store: Store) -> None:
    inline = PartRef(1, 3, "e", "i", inline=b"abc")
    store.put_record(rec("k", "v1", [inline]))
    store.put_record(rec("k", "v2", [inline]))
    store.sql_executor.submit(lambda: store._db.execute(
        "UPDATE objects SET record = substr(record, 1, 20) WHERE version='v2'")).result()
    assert [r.version for r in store.versions("b", "k")] == ["v1"]
    assert store.get_record("b", "k") == []
    p = store.partitions_held()[0]
    rows = store.partition_summaries(p)
    assert [(r[2], r[5]) for r in rows] == [("v1", True), ("v2", False)]
    assert store.corrupt_found == 1


def test_list_prefix_bounds_with_the_highest_code_point(store: Store) -> None:
    inline = PartRef(1, 1, "e", "i", inline=b"x")
    keys = ["a", "a\U0010ffff", "a\U0010ffffz", "ab", "b", "\U0010ffff"]
    for k in keys:
        store.put_record(rec(k, "v1", [inline]))
    # code point order (= UTF-8 byte order): "ab" sorts before "a" + U+10FFFF
    assert [e.key for e in store.list_entries("b", "a", "", 100, False)] == ["a", "ab", "a\U0010ffff", "a\U0010ffffz"]
    assert [e.key for e in store.list_entries("b", "a\U0010ffff", "", 100, False)] == ["a\U0010ffff", "a\U0010ffffz"]
    assert [e.key for e in store.list_entries("b", "", "ab", 100, False)] == [
        "a\U0010ffff", "a\U0010ffffz", "b", "\U0010ffff"]
    assert store.list_entries("b", "", "", 0, False) == []


def test_kv_last_writer_wins_and_equal_versions_are_ignored(store: Store) -> None:
    assert store.put_kv(KVRecord("ns", "x", "0005", {"n": 5}))
    assert not store.put_kv(KVRecord("ns", "x", "0004", {"n": 4}))
    assert not store.put_kv(KVRecord("ns", "x", "0005", {"n": 99}))
    assert store.get_kv("ns", "x").value == {"n": 5}  # type: ignore[union-attr]
    assert store.put_kv(KVRecord("ns", "x", "0006", {}, deleted=True))
    assert store.get_kv("ns", "x").deleted  # type: ignore[union-attr]


def test_corrupt_counter_survives_a_restart(tmp_path: Path) -> None:
    s = Store(tmp_path / "n", partition_bits=8, fsync=False)
    write_blob(s, "c", b"z" * BS)
    row = s.blob("c", 0)
    assert row is not None
    (s.root / row.path).write_bytes(b"y" * BS)
    with pytest.raises(CorruptShard):
        s.open_shard(row).read_blocks(0, 1)
    s.close()
    again = Store(tmp_path / "n", partition_bits=8, fsync=False)
    try:
        assert again.corrupt_found == 1 and again.counts()["quarantined_blobs"] == 1
    finally:
        again.close()


def test_a_version_1_database_is_migrated(tmp_path: Path) -> None:
    root = tmp_path / "old"
    root.mkdir()
    db = sqlite3.connect(root / "records.db")
    db.executescript("""
        CREATE TABLE objects (bucket TEXT, key TEXT, version TEXT, shard INTEGER, partition INTEGER,
            deleted INTEGER, size INTEGER, etag TEXT, created INTEGER, record BLOB,
            PRIMARY KEY (bucket, key, version, shard)) WITHOUT ROWID;
        CREATE TABLE blobs (blob TEXT, shard INTEGER, partition INTEGER, path TEXT, size INTEGER,
            block_size INTEGER, checksums BLOB, state TEXT, created INTEGER, PRIMARY KEY (blob, shard)) WITHOUT ROWID;
        CREATE TABLE kv (ns TEXT, name TEXT, version TEXT, record BLOB, PRIMARY KEY (ns, name)) WITHOUT ROWID;
    """)
    data = b"q" * BS
    part = blob_part("m1", data)
    (root / "data" / "00001").mkdir(parents=True)
    (root / "data" / "00001" / "m1.0").write_bytes(data)
    r = rec("k", "v1", [part])
    db.execute("INSERT INTO objects VALUES (?,?,?,?,?,?,?,?,?,?)", ("b", "k", "v1", 0, 1, 0, BS, "", 0, r.pack()))
    db.execute("INSERT INTO blobs VALUES (?,?,?,?,?,?,?,?,?)",
               ("m1", 0, 1, "data/00001/m1.0", BS, BS, msgpack.packb(part.checksums), "committed", 0))
    db.execute("INSERT INTO kv VALUES (?,?,?,?)", ("bucket", "gone", "0002",
                                                   KVRecord("bucket", "gone", "0002", deleted=True).pack()))
    db.commit()
    db.close()
    s = Store(root, partition_bits=8, fsync=False)
    try:
        with pytest.raises(BlobReferenced):  # the reference was rebuilt from the stored record
            s.delete_blob("m1", 0)
        assert s.get_kv("bucket", "gone").deleted  # type: ignore[union-attr]
        assert s.put_kv(KVRecord("bucket", "gone", "0003", {"x": 1}))
        assert s.get_kv("bucket", "gone").value == {"x": 1}  # type: ignore[union-attr]
    finally:
        s.close()


def test_writer_lock_orders_abort_after_a_running_write(tmp_path: Path) -> None:
    w = BlobWriter(tmp_path / "d" / "x.0", BS, fsync=False)
    started, release = threading.Event(), threading.Event()
    real = w._write

    def slow_write(data: bytes | bytearray) -> None:
        started.set()
        release.wait(5)
        real(data)

    w._write = slow_write  # type: ignore[method-assign]
    t = threading.Thread(target=w.write, args=(b"a" * 10,))
    t.start()
    started.wait(5)
    aborter = threading.Thread(target=w.abort)
    aborter.start()
    aborter.join(0.1)
    assert aborter.is_alive()  # waits for the write instead of closing the file under it
    release.set()
    t.join(5)
    aborter.join(5)
    assert not w.tmp.exists() and w.size == 10


def test_the_shard_rows_of_a_partition_are_found_through_an_index(tmp_path: Path) -> None:
    """Partition digests and repair read a partition's shard rows; a scan of every row was 11 ms a
    partition at 100,000 shards (45 s a node for the digests of 4096 partitions), an index 0.1 ms.
    A database made before the index gets it when opened."""
    s = Store(tmp_path / "node", partition_bits=8, fsync=False)
    s.sql_executor.submit(lambda: s._db.execute("DROP INDEX blobs_by_partition")).result()
    s.close()
    s = Store(tmp_path / "node", partition_bits=8, fsync=False)
    try:
        plan = s.sql_executor.submit(lambda: s._db.execute(
            "EXPLAIN QUERY PLAN SELECT blob, shard, state FROM blobs WHERE partition=?", (5,)).fetchall()).result()
        assert any("USING INDEX blobs_by_partition" in str(row[-1]) for row in plan), plan
    finally:
        s.close()


def test_a_version_2_database_moves_its_records_into_a_rowid_table(tmp_path: Path) -> None:
    root = tmp_path / "v2"
    first = Store(root, partition_bits=8, fsync=False)
    first.close()
    db = sqlite3.connect(root / "records.db")  # turn the fresh database back into schema 2's layout
    db.executescript("""
        DROP TABLE objects;
        CREATE TABLE objects (bucket TEXT NOT NULL, key TEXT NOT NULL, version TEXT NOT NULL, shard INTEGER NOT NULL,
            partition INTEGER NOT NULL, deleted INTEGER NOT NULL, size INTEGER NOT NULL, etag TEXT NOT NULL,
            created INTEGER NOT NULL, record BLOB NOT NULL, PRIMARY KEY (bucket, key, version, shard)) WITHOUT ROWID;
        CREATE INDEX objects_by_partition ON objects (partition, bucket, key, version);
        PRAGMA user_version=2;
    """)
    records = [rec(f"k{i}", f"v{j}", [PartRef(1, 4, "e", f"i{i}", inline=b"data")], shard=j % 2)
               for i in range(5) for j in range(3)]
    for r in records:
        db.execute("INSERT INTO objects VALUES (?,?,?,?,?,?,?,?,?,?)",
                   (r.bucket, r.key, r.version, r.shard, 1, 0, r.size, r.etag, r.created, r.pack()))
    db.commit()
    db.close()
    s = Store(root, partition_bits=8, fsync=False)
    try:
        assert [x.version for x in s.get_record("b", "k3")] == ["v2"]
        assert len(s.list_entries("b", "", "", 100, True)) == 15
        s.put_record(records[0])  # the same record again replaces it: the unique index keeps one row per shard
        assert s.counts()["records"] == 15
        sql, = s.sql_executor.submit(lambda: s._db.execute(
            "SELECT sql FROM sqlite_master WHERE name='objects'").fetchone()).result()
        assert "WITHOUT ROWID" not in sql.upper()
        assert s.sql_executor.submit(lambda: s._db.execute("PRAGMA user_version").fetchone()[0]).result() == 3
    finally:
        s.close()


def test_writer_takes_many_pieces_in_one_call(tmp_path: Path) -> None:
    """A batch of received chunks is written as it came (writev, no joined copy): same file, same checksums."""
    data = random.Random(7).randbytes(5 * BS + 300)
    cuts = [0, 1, 700, BS, 3 * BS + 5, len(data)]
    w = BlobWriter(tmp_path / "d" / "x.0", BS, fsync=False)
    w.write([data[a:b] for a, b in zip(cuts, cuts[1:])] + [b""])
    w.write([])
    w.finish()
    assert (tmp_path / "d" / "x.0").read_bytes() == data
    assert w.checksums == [block_checksum(data[i:i + BS]) for i in range(0, len(data), BS)]


def test_shard_upload_makes_its_file_in_the_first_job_and_an_abort_stops_later_jobs(store: Store) -> None:
    data = random.Random(8).randbytes(3 * BS)
    temps = lambda: list(store.data.rglob("*.tmp"))  # noqa: E731
    upload = ShardUpload(lambda: store.begin_blob(5, "up", 0, BS), lambda w: store.finish_blob(w, 5, "up", 0))
    assert temps() == []  # nothing on disk before the first write
    upload.write([data[:BS]])
    assert len(temps()) == 1
    row = upload.write([data[BS:]], finish=True)
    assert row is not None and row.size == len(data) and temps() == []
    with store.open_shard(row) as r:
        assert r.read_blocks(0, 3, close=True) == data and r.closed

    cut = ShardUpload(lambda: store.begin_blob(5, "cut", 0, BS), lambda w: store.finish_blob(w, 5, "cut", 0))
    cut.write([data])
    cut.abort()
    assert temps() == []
    with pytest.raises(ValueError):
        cut.write([data], finish=True)  # a job that starts after the abort makes nothing
    assert temps() == [] and store.blob("cut", 0) is None


def test_blob_for_read_sees_every_committed_row_from_any_thread(store: Store) -> None:
    """GETs look rows up on their own thread's read-only connection: same rows as the SQLite thread sees."""
    from concurrent.futures import ThreadPoolExecutor

    data = random.Random(9).randbytes(2 * BS)
    with ThreadPoolExecutor(2) as pool:
        assert pool.submit(store.blob_for_read, "seen", 0).result() is None
        write_blob(store, "seen", data)
        rows = [pool.submit(store.blob_for_read, "seen", 0).result() for _ in range(4)]
        assert all(r == store.blob("seen", 0) for r in rows)
        with store.open_shard(rows[0]) as r:
            assert r.read_blocks(0, 2) == data
        store.quarantine(rows[0], "test")
        assert pool.submit(store.blob_for_read, "seen", 0).result().state == "corrupt"  # type: ignore[union-attr]
