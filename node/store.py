"""A node's disk: object records, blob rows and KV documents in SQLite (WAL, one thread), shard files under data/."""

from __future__ import annotations

import errno
import functools
import logging
import os
import sqlite3
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Concatenate, ParamSpec, TypeVar

import msgpack
import xxhash

from node.shards import (
    CORRUPT_SUFFIX,
    TEMP_SUFFIX,
    BlobRow,
    BLOB_ID,
    BlobWriter,
    CorruptShard,
    DiskFull,
    ShardReader,
    check_blob_id,
    is_disk_full,
    unlink_shard,
)
from objstore import codec
from objstore.records import INLINE_MAX_SHARD, KVRecord, ListEntry, ObjectRecord, RecordError, evolve
from objstore.ring import partition_of
from objstore.versions import NULL_MARK, is_null

__all__ = ["BlobMissing", "BlobReferenced", "BlobRow", "CorruptShard", "DiskFull", "Store", "carries_shards"]

SCHEMA = """
CREATE TABLE IF NOT EXISTS objects (
    bucket TEXT NOT NULL, key TEXT NOT NULL, version TEXT NOT NULL, shard INTEGER NOT NULL,
    partition INTEGER NOT NULL, deleted INTEGER NOT NULL, size INTEGER NOT NULL, etag TEXT NOT NULL,
    created INTEGER NOT NULL, record BLOB NOT NULL
);
CREATE UNIQUE INDEX IF NOT EXISTS objects_key ON objects (bucket, key, version, shard);
CREATE INDEX IF NOT EXISTS objects_by_partition ON objects (partition, bucket, key, version);
CREATE TABLE IF NOT EXISTS blobs (
    blob TEXT NOT NULL, shard INTEGER NOT NULL, partition INTEGER NOT NULL, path TEXT NOT NULL,
    size INTEGER NOT NULL, block_size INTEGER NOT NULL, checksums BLOB NOT NULL,
    state TEXT NOT NULL, created INTEGER NOT NULL,
    PRIMARY KEY (blob, shard)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS blobs_by_partition ON blobs (partition);
CREATE TABLE IF NOT EXISTS blob_refs (
    blob TEXT NOT NULL, shard INTEGER NOT NULL, bucket TEXT NOT NULL, key TEXT NOT NULL, version TEXT NOT NULL,
    PRIMARY KEY (blob, shard, bucket, key, version)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS kv (
    ns TEXT NOT NULL, name TEXT NOT NULL, version TEXT NOT NULL, deleted INTEGER NOT NULL DEFAULT 0,
    record BLOB NOT NULL,
    PRIMARY KEY (ns, name)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS counters (name TEXT PRIMARY KEY, value INTEGER NOT NULL) WITHOUT ROWID;
"""
SCHEMA_VERSION = 3  # PRAGMA user_version; 1 had no blob_refs table and no kv.deleted column
# 2 kept objects WITHOUT ROWID: a row holding an inline shard (about 1.3 KB for a 4 KiB object) is far
# above the 1/20 of a page such tables are made for, so each row spilled into an overflow page of its
# own (4.75 KB on disk per record) and the b-tree, full rows even in its interior pages, grew deep.
# A rowid table keeps whole rows in its leaves, with a small unique index on the key.

log = logging.getLogger("objstore.node.store")

P = ParamSpec("P")
R = TypeVar("R")


class BlobMissing(Exception):
    """A record names a blob this node does not hold (or holds with other checksums)."""


class BlobReferenced(Exception):
    """A blob some record still needs cannot be deleted on its own."""


def on_sql_thread(fn: Callable[Concatenate[Store, P], R]) -> Callable[Concatenate[Store, P], R]:
    """Run a Store method on the store's one SQLite thread (inline when already there), so any thread may call it."""

    def wrapper(self: Store, /, *args: P.args, **kwargs: P.kwargs) -> R:
        if getattr(self._local, "sql", False):
            return fn(self, *args, **kwargs)
        return self.sql_executor.submit(fn, self, *args, **kwargs).result()

    functools.update_wrapper(wrapper, fn)
    return wrapper


_MASK64 = (1 << 64) - 1


def _term(bucket: str, key: str, version: str, deleted: bool) -> int:
    """One healthy version's term in its partition's digest."""
    return xxhash.xxh3_64_intdigest(msgpack.packb((bucket, key, version, deleted)))


def carries_shards(rec: ObjectRecord) -> bool:
    """The record carries a shard too large to stay inline: storing it writes a shard file (`Store.carry_in`)."""
    return any(p.inline is not None and len(p.inline) > INLINE_MAX_SHARD for p in rec.parts)


def _healthy(rec: ObjectRecord, blob_state: Callable[[str], str | None]) -> bool:
    """Every part of a record is here intact: inline, or a present shard whose blob row (of the record's
    partition, by `blob_state`) is not quarantined. What a partition digest counts."""
    return all(p.inline is not None or (p.present and blob_state(p.blob) not in (None, "corrupt"))
               for p in rec.parts)


def _null_marker(version: str, deleted: bool) -> int:
    """1 for a delete marker that is a null version (its bucket was not versioned when it was written), else 0:
    the markers a digest counts, those repair may find nothing needs. Enabled buckets' markers are versions."""
    if not deleted or len(version) <= NULL_MARK:
        return 0
    try:
        return int(is_null(version))
    except ValueError:  # not a version id minted by a gateway
        return 0


def _digest(kept: list[int]) -> tuple[str, int, int, int]:
    return f"{kept[0]:016x}", kept[1], kept[2], kept[3]


def _object_row(rec: ObjectRecord, partition: int) -> tuple[Any, ...]:
    """A record as a row of the objects table."""
    return (rec.bucket, rec.key, rec.version, rec.shard, partition, int(rec.deleted), rec.size, rec.etag,
            rec.created, rec.pack())


def _blob_values(row: BlobRow) -> tuple[Any, ...]:
    """A BlobRow as the values of a row of the blobs table (`_blob_row` reads one back)."""
    return (row.blob, row.shard, row.partition, row.path, row.size, row.block_size, msgpack.packb(row.checksums),
            row.state, row.created)


def _blob_row(r: tuple[Any, ...]) -> BlobRow:
    return BlobRow(r[0], r[1], r[2], r[3], r[4], r[5], list(msgpack.unpackb(r[6])), r[7], r[8])


class Store:
    """All of one node's persistent state.

    SQLite is used from one dedicated thread (`sql_executor`): methods marked on_sql_thread hop there.
    The one exception is `blob_for_read`, a lookup any thread makes on its own read-only connection.
    Every method blocks, so the server calls them through an executor, never on the event loop.
    """

    def __init__(self, data_dir: str | os.PathLike[str], partition_bits: int, fsync: bool = True,
                 fail_after_bytes: int | None = None) -> None:
        self.root = Path(data_dir)
        self.data = self.root / "data"
        self.data.mkdir(parents=True, exist_ok=True)
        self.partition_bits = partition_bits
        self.fsync = fsync
        self.fail_after_bytes = fail_after_bytes
        """Fault hook: a shard upload fails with ENOSPC once it would pass this many bytes."""
        self._local = threading.local()
        self._readers: list[sqlite3.Connection] = []  # blob_for_read's connections, one per thread, closed by close()
        self._readers_lock = threading.Lock()
        self.sql_executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sqlite",
                                               initializer=self._mark_sql_thread)
        self._db: sqlite3.Connection = self.sql_executor.submit(self._open_db).result()
        self._unreadable: set[tuple[str, str, str, int]] = set()
        # Repair asks every node for the digest of every partition on every pass. Recomputing a partition
        # reads all its records, so under steady writes (every partition changes between two passes) a
        # pass would cost the whole bucket. So both the digests and the set of partitions held are kept
        # here (SQL thread only), and a digest follows its partition by parts: a digest is a sum of one
        # term per healthy version, and each write to a record or a blob row first notes the terms of the
        # versions it may change (`_version_changing`); the next ask recomputes just those (`_settle`).
        self._digests: dict[int, list[int]] = {}  # partition -> [sum of terms mod 2^64, count, bytes, markers]
        self._before: dict[int, dict[tuple[str, str, str], tuple[int, int, int, int]]] = {}  # noted terms
        self._held: set[int] | None = None
        self.corrupt_found = self._counter("corrupt_found")
        self.swept, self.swept_orphans = self.sweep()

    def _mark_sql_thread(self) -> None:
        self._local.sql = True

    def _open_db(self) -> sqlite3.Connection:
        db = sqlite3.connect(self.root / "records.db", isolation_level=None, check_same_thread=True)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute(f"PRAGMA synchronous={'FULL' if self.fsync else 'NORMAL'}")
        db.execute("PRAGMA busy_timeout=10000")
        version = db.execute("PRAGMA user_version").fetchone()[0]
        row = db.execute("SELECT sql FROM sqlite_master WHERE type='table' AND name='objects'").fetchone()
        had_objects = row is not None
        without_rowid = had_objects and "WITHOUT ROWID" in str(row[0]).upper()
        with _transaction(db):
            if without_rowid:  # schema 1 or 2: the rows move into a rowid table
                db.execute("ALTER TABLE objects RENAME TO objects_without_rowid")
                db.execute("DROP INDEX IF EXISTS objects_by_partition")
            for statement in SCHEMA.split(";"):
                if statement.strip():
                    db.execute(statement)
            if without_rowid:
                db.execute("INSERT INTO objects SELECT bucket, key, version, shard, partition, deleted, size, etag, "
                           "created, record FROM objects_without_rowid")
                db.execute("DROP TABLE objects_without_rowid")
        if had_objects and version < 2:
            _migrate_v1(db)
        db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
        return db

    def close(self) -> None:
        def shut() -> None:
            self._db.close()

        self.sql_executor.submit(shut).result()
        self.sql_executor.shutdown(wait=True)
        with self._readers_lock:
            readers, self._readers = self._readers, []
        for db in readers:
            db.close()

    def sweep(self) -> tuple[int, int]:
        """Remove what a crash left in the partition directories, in one walk of them; returns how many temp
        files and how many orphan shard files went. Run before the node serves.

        Temp files were never committed. Orphan shard files are those no blob row names: a shard file is
        renamed into place before its row commits (an upload, a shard carried in a record), and a removed
        shard's row goes before its file. Nothing reads such a file, and nothing else would ever remove
        it. Only names of shard files (`<blob>.<shard>`) are looked at; quarantined copies stay with their
        rows. A store with no blob row at all keeps its shard files: records.db lost or replaced is for an
        operator to look at, not a reason to empty the disk."""
        temps = 0
        found: list[tuple[str, str, int]] = []  # (path relative to the store's root, blob, shard)
        with os.scandir(self.data) as pdirs:
            partitions = sorted(d.name for d in pdirs if d.name.isdigit() and d.is_dir(follow_symlinks=False))
        for pdir in partitions:
            with os.scandir(self.data / pdir) as entries:
                for entry in entries:
                    if entry.name.endswith(TEMP_SUFFIX):
                        os.unlink(entry.path)
                        temps += 1
                        continue
                    blob, dot, shard = entry.name.rpartition(".")
                    if dot and shard.isdigit() and BLOB_ID.fullmatch(blob) and entry.is_file(follow_symlinks=False):
                        found.append((f"{self.data.name}/{pdir}/{entry.name}", blob, int(shard)))
        if not found:
            return temps, 0
        named = self._rows_naming(found)
        if named is None:
            log.error("records.db holds no shard rows but %d shard files are on disk: left in place", len(found))
            return temps, 0
        orphans = [path for (path, _, _), ok in zip(found, named, strict=True) if not ok]
        for path in orphans:
            (self.root / path).unlink(missing_ok=True)
        return temps, len(orphans)

    @on_sql_thread
    def _rows_naming(self, files: list[tuple[str, str, int]]) -> list[bool] | None:
        """For each (path, blob, shard), whether the blob row of that shard names that file; None if
        there is no blob row at all."""
        db = self._db
        if db.execute("SELECT 1 FROM blobs LIMIT 1").fetchone() is None:
            return None
        out = []
        for path, blob, shard in files:
            row = db.execute("SELECT path FROM blobs WHERE blob=? AND shard=?", (blob, shard)).fetchone()
            out.append(row is not None and row[0] == path)
        return out

    # -- shard files ----------------------------------------------------------------------------

    def blob_path(self, partition: int, blob: str, shard: int) -> Path:
        return self.data / f"{partition:05d}" / f"{check_blob_id(blob)}.{int(shard)}"

    def begin_blob(self, partition: int, blob: str, shard: int, block_size: int) -> BlobWriter:
        return BlobWriter(self.blob_path(partition, blob, shard), block_size, self.fsync, self.fail_after_bytes)

    def finish_blob(self, w: BlobWriter, partition: int, blob: str, shard: int) -> BlobRow:
        """Make an upload durable (fsync, rename, fsync dir), THEN add its row as pending; undone on failure."""
        try:
            w.finish()
            row = BlobRow(blob, shard, partition, str(w.final.relative_to(self.root)), w.size, w.block_size,
                          w.checksums, "pending", time.time_ns())
            return self._add_blob(row)
        except BaseException as e:
            if w.renamed:  # durable on disk but not recorded: no row may point at it, so it goes
                w.final.unlink(missing_ok=True)
            if is_disk_full(e) and not isinstance(e, DiskFull):
                raise DiskFull(errno.ENOSPC, f"No space left: {e}") from None
            raise

    @on_sql_thread
    def _add_blob(self, row: BlobRow) -> BlobRow:
        # A blob re-sent for a record that already names it (repair) stays committed.
        if self._db.execute("SELECT 1 FROM blob_refs WHERE blob=? AND shard=? LIMIT 1",
                            (row.blob, row.shard)).fetchone():
            row.state = "committed"
        self._blob_changing(row.blob, row.shard)  # a record's shard may be back, or moved
        self._db.execute("INSERT OR REPLACE INTO blobs VALUES (?,?,?,?,?,?,?,?,?)", _blob_values(row))
        return row

    @on_sql_thread
    def blob(self, blob: str, shard: int) -> BlobRow | None:
        row = self._db.execute("SELECT * FROM blobs WHERE blob=? AND shard=?", (blob, shard)).fetchone()
        return _blob_row(row) if row else None

    def blob_for_read(self, blob: str, shard: int) -> BlobRow | None:
        """`blob` on the calling thread's own read-only connection, for shard reads.

        A GET looks its row up in the same disk job that opens and reads the file (no hop to the SQLite
        thread and back), and never queues behind a write transaction there: WAL readers see every
        committed row and do not wait for the writer.
        """
        db: sqlite3.Connection | None = getattr(self._local, "reader", None)
        if db is None:
            uri = (self.root / "records.db").resolve().as_uri() + "?mode=ro"
            db = sqlite3.connect(uri, uri=True, isolation_level=None, check_same_thread=False)
            db.execute("PRAGMA busy_timeout=10000")
            self._local.reader = db
            with self._readers_lock:
                self._readers.append(db)
        row = db.execute("SELECT * FROM blobs WHERE blob=? AND shard=?", (blob, shard)).fetchone()
        return _blob_row(row) if row else None

    @on_sql_thread
    def blobs(self) -> list[BlobRow]:
        """Every blob not quarantined (what scrub re-reads)."""
        return [_blob_row(r) for r in self._db.execute("SELECT * FROM blobs WHERE state != 'corrupt'")]

    def open_shard(self, row: BlobRow) -> ShardReader:
        """A verified reader of a shard; damage found quarantines the file and raises CorruptShard."""
        return ShardReader(self.root / row.path, row, self.quarantine)

    def read_blob_blocks(self, row: BlobRow, first_block: int, last_block: int) -> Iterator[bytes]:
        """Blocks [first, last] of a shard, each verified; a mismatch quarantines the file and raises."""
        with self.open_shard(row) as reader:
            for b in range(first_block, last_block + 1):
                yield reader.read_blocks(b, 1)

    def quarantine(self, row: BlobRow, why: str) -> None:
        """Move a damaged shard aside (never served again) and count it; repair rebuilds it."""
        path = self.root / row.path
        try:
            os.replace(path, path.with_name(path.name + CORRUPT_SUFFIX))
        except FileNotFoundError:
            pass
        self._mark_corrupt(row.blob, row.shard)

    @on_sql_thread
    def _mark_corrupt(self, blob: str, shard: int) -> None:
        self._blob_changing(blob, shard)
        marked = self._db.execute("UPDATE blobs SET state='corrupt' WHERE blob=? AND shard=? AND state!='corrupt' "
                                  "RETURNING partition", (blob, shard)).fetchall()
        if marked:
            self._bump("corrupt_found")

    def delete_blob(self, blob: str, shard: int, force: bool = False) -> bool:
        """Remove a shard file and its row; a blob a record still references is kept unless `force`."""
        path = self._forget_blob(blob, shard, force)
        if path is None:
            return False
        unlink_shard(self.root / path)
        return True

    @on_sql_thread
    def _forget_blob(self, blob: str, shard: int, force: bool) -> str | None:
        row = self._db.execute("SELECT path, partition FROM blobs WHERE blob=? AND shard=?", (blob, shard)).fetchone()
        if row is None:
            return None
        if not force and self._db.execute("SELECT 1 FROM blob_refs WHERE blob=? AND shard=? LIMIT 1",
                                          (blob, shard)).fetchone():
            raise BlobReferenced(f"blob {blob}.{shard} is referenced by a record")
        self._blob_changing(blob, shard)
        self._db.execute("DELETE FROM blobs WHERE blob=? AND shard=?", (blob, shard))
        return str(row[0])

    # -- garbage: uploads never committed --------------------------------------------------------

    @on_sql_thread
    def pending_blobs(self) -> list[BlobRow]:
        """Every shard no record names yet: an upload in progress, a multipart part, or a write that died."""
        return [_blob_row(r) for r in self._db.execute("SELECT * FROM blobs WHERE state = 'pending'")]

    def drop_pending_blob(self, blob: str, shard: int, made_before_ns: int) -> bool:
        """Remove a shard that is still pending and was made before `made_before_ns` (wall clock, ns).

        Nothing goes if a record named the shard meanwhile (it is committed then), or if its file is
        newer than the row that was judged (the same shard uploaded again since).
        """
        path = self._forget_pending(blob, shard, made_before_ns)
        if path is None:
            return False
        unlink_shard(self.root / path)
        return True

    @on_sql_thread
    def _forget_pending(self, blob: str, shard: int, made_before_ns: int) -> str | None:
        db = self._db
        row = db.execute("SELECT path, partition FROM blobs WHERE blob=? AND shard=? AND state='pending' AND created < ?",
                         (blob, shard, made_before_ns)).fetchone()
        if row is None or db.execute("SELECT 1 FROM blob_refs WHERE blob=? AND shard=? LIMIT 1",
                                     (blob, shard)).fetchone():
            return None
        try:
            # A re-upload renames its file into place before its row replaces this one.
            if os.stat(self.root / row[0]).st_mtime_ns >= made_before_ns:
                return None
        except FileNotFoundError:
            pass
        db.execute("DELETE FROM blobs WHERE blob=? AND shard=?", (blob, shard))  # no record names it: no digest changes
        return str(row[0])

    # -- object records -------------------------------------------------------------------------

    def put_record(self, rec: ObjectRecord) -> None:
        """Commit a record once every present, non-inline part's blob is here with the same checksums.

        Blobs the previous copy of this record referenced and nothing references any more are removed.
        """
        result = self.put_records([rec], 0)[0]
        if isinstance(result, Exception):
            raise result

    def put_records(self, recs: list[ObjectRecord], older_limit: int) -> list[list[str] | Exception]:
        """Commit several records in one transaction (one fsync): group commit for concurrent writers.

        Each record stands alone: one that is refused (RecordError, BlobMissing) is undone to its
        savepoint and answered with its exception, the others commit. For each committed record, up to
        `older_limit` older versions of its key held here, newest first. A failed COMMIT (disk full, I/O
        error) raises: nothing of the batch was kept.
        """
        carried: list[ObjectRecord | Exception] = []
        rows: list[list[BlobRow]] = []
        try:
            for rec in recs:
                try:
                    stored, written = self.carry_in(rec)
                except RecordError as e:
                    carried.append(e)
                    continue
                carried.append(stored)
                rows.append(written)
            valid = [r for r in carried if isinstance(r, ObjectRecord)]
            results, paths = self.commit_records(valid, older_limit, rows) if valid else ([], [])
        except BaseException:
            self.unlink_shards([row.path for written in rows for row in written])
            raise
        self.unlink_shards(paths)
        done = iter(results)
        return [r if isinstance(r, Exception) else next(done) for r in carried]

    def carry_in(self, rec: ObjectRecord) -> tuple[ObjectRecord, list[BlobRow]]:
        """The record as this node stores it, and the rows of the shard files it writes for it (disk I/O).

        A shard a record carries inline above INLINE_MAX_SHARD bytes is written to its blob's shard file,
        as an upload would have written it (fsynced, renamed, directory fsynced), and the record names it
        as a present blob part. Its row is for `commit_records` to add in the record's own transaction, so
        the file becomes the record's in the commit that makes the record visible, and a record that is
        refused leaves nothing behind (its files are removed). A shard already here with the same
        checksums (the record sent again) is not written twice. Bytes that do not match the part's
        checksums are refused (RecordError) before anything is written.
        """
        if not carries_shards(rec):
            return rec, []
        partition = partition_of(rec.bucket, rec.key, self.partition_bits)
        block_size = rec.ec.block_size
        parts, rows = [], []
        try:
            for p in rec.parts:
                if p.inline is None or len(p.inline) <= INLINE_MAX_SHARD:
                    parts.append(p)
                    continue
                if codec.shard_checksums(p.inline, block_size) != p.checksums:
                    raise RecordError(f"the shard {p.blob}.{rec.shard} a record carries does not match its checksums")
                held = self.blob_for_read(p.blob, rec.shard)
                if held is None or held.state == "corrupt" or held.checksums != p.checksums:
                    w = self.begin_blob(partition, p.blob, rec.shard, block_size)
                    try:
                        w.write(p.inline)
                        w.finish()
                    except BaseException as e:
                        if w.renamed:
                            w.final.unlink(missing_ok=True)
                        else:
                            w.abort()
                        if is_disk_full(e) and not isinstance(e, DiskFull):
                            raise DiskFull(errno.ENOSPC, f"No space left: {e}") from None
                        raise
                    rows.append(BlobRow(p.blob, rec.shard, partition, str(w.final.relative_to(self.root)), w.size,
                                        block_size, w.checksums, "pending", time.time_ns()))
                parts.append(evolve(p, inline=None, present=True))
        except BaseException:
            self.unlink_shards([row.path for row in rows])
            raise
        return evolve(rec, parts=parts), rows

    def unlink_shards(self, paths: list[str]) -> None:
        """Remove shard files no record references any more (paths as `commit_records` returns them)."""
        for path in paths:
            unlink_shard(self.root / path)

    @on_sql_thread
    def commit_records(self, recs: list[ObjectRecord], older_limit: int,
                       rows: list[list[BlobRow]] | None = None) -> tuple[list[list[str] | Exception], list[str]]:
        """`put_records` without removing the freed shard files: their paths are returned (SQL thread only).

        `rows`, one list per record, are the shard files `carry_in` wrote for it: added with the record,
        in its savepoint; the files of a record that is refused are among the paths returned.
        """
        db = self._db
        results: list[list[str] | Exception] = []
        paths: list[str] = []
        terms: list[tuple[int, int, int, int]] = []  # (partition, term, size, null marker) written the short way
        fast: set[int] = set()  # indexes of the records written so
        with _transaction(db):
            for i, rec in enumerate(recs):
                carried = rows[i] if rows else []
                older = self._write_new(rec, older_limit, terms, carried)
                if older is not None:
                    results.append(older)
                    fast.add(i)
                    continue
                db.execute("SAVEPOINT rec")
                try:
                    for row in carried:
                        self._add_blob(row)
                    paths += self._write_record(rec)
                except (RecordError, BlobMissing) as e:
                    db.execute("ROLLBACK TO rec")
                    paths += [row.path for row in carried]
                    results.append(e)
                else:
                    results.append([])
                db.execute("RELEASE rec")
        for p, term, size, marker in terms:  # committed: their partitions' kept digests gain them
            kept = self._digests.get(p)
            if kept is not None:
                kept[0] = (kept[0] + term) & _MASK64
                kept[1] += 1
                kept[2] += size
                kept[3] += marker
        keys = Counter((rec.bucket, rec.key) for rec in recs) if len(recs) > 1 else None
        for i, rec in enumerate(recs):
            if isinstance(results[i], Exception):
                continue
            ident = (rec.bucket, rec.key, rec.version)
            if self._held is not None:
                self._held.add(partition_of(rec.bucket, rec.key, self.partition_bits))
            self._unreadable.discard((*ident, rec.shard))
            # A record written the short way knows its older versions already, unless the batch wrote
            # another version of its key after it.
            if older_limit and (i not in fast or (keys is not None and keys[(rec.bucket, rec.key)] > 1)):
                results[i] = self.older_versions(rec.bucket, rec.key, rec.version, older_limit)
        return results, paths

    def _write_new(self, rec: ObjectRecord, older_limit: int, terms: list[tuple[int, int, int, int]],
                   carried: list[BlobRow]) -> list[str] | None:
        """Write a record the short way if it is the first of its version here and each of its parts is
        inline (a small object's shard, a delete marker) or a shard file `carry_in` just wrote for it
        (`carried`, which no record here names yet): nothing to check against other rows, no shard file to
        free, nothing to undo, and its digest term is known without reading it back (noted in `terms`,
        added once the transaction commits). A record with one carried shard takes five statements
        this way, a dozen through `_write_record`.

        Returns up to `older_limit` older versions of its key held here, or None (nothing written) when
        the record needs the full path of `_write_record`.
        """
        if not rec.deleted and sum(p.size for p in rec.parts) != rec.size:
            return None
        by_blob = {row.blob: row for row in carried}
        for p in rec.parts:
            if p.inline is None and (p.blob not in by_blob or by_blob[p.blob].checksums != p.checksums):
                return None
        db = self._db
        newest = [v for (v,) in db.execute(
            "SELECT DISTINCT version FROM objects WHERE bucket=? AND key=? AND version<=? ORDER BY version DESC "
            "LIMIT ?", (rec.bucket, rec.key, rec.version, older_limit + 1))]
        if newest and newest[0] == rec.version:
            return None  # a record of this version is here (another shard, or this one again)
        for row in carried:
            if db.execute("SELECT 1 FROM blob_refs WHERE blob=? AND shard=? LIMIT 1", (row.blob, row.shard)).fetchone():
                return None  # a shard file other records name (their terms change with it)
        partition = partition_of(rec.bucket, rec.key, self.partition_bits)
        for row in carried:
            row.state = "committed"
            db.execute("INSERT OR REPLACE INTO blobs VALUES (?,?,?,?,?,?,?,?,?)", _blob_values(row))
        db.execute("INSERT INTO objects VALUES (?,?,?,?,?,?,?,?,?,?)", _object_row(rec, partition))
        for row in carried:
            db.execute("INSERT OR IGNORE INTO blob_refs VALUES (?,?,?,?,?)",
                       (row.blob, rec.shard, rec.bucket, rec.key, rec.version))
        if partition in self._digests and (rec.bucket, rec.key, rec.version) not in self._before.get(partition, ()):
            # (A noted version, one removed since the digest was last asked, gets its term when it settles.)
            terms.append((partition, _term(rec.bucket, rec.key, rec.version, rec.deleted), rec.size,
                          _null_marker(rec.version, rec.deleted)))
        return newest[:older_limit]

    def _write_record(self, rec: ObjectRecord) -> list[str]:
        """Check and write one record inside the caller's transaction; the shard files it frees."""
        db = self._db
        covered = sum(p.size for p in rec.parts)
        if not rec.deleted and covered != rec.size:
            # Every part is listed, present here or not: a record missing one would read as a shorter
            # object, or count as whole while a shard is lost.
            raise RecordError(f"record of {rec.size} bytes lists parts of {covered} bytes")
        needed = [p.blob for p in rec.parts if p.inline is None and p.present]
        for part in rec.parts:
            if part.inline is not None or not part.present:
                continue
            row = self.blob(part.blob, rec.shard)
            if row is None or row.state == "corrupt":
                raise BlobMissing(f"blob {part.blob}.{rec.shard} is not on this node")
            if row.checksums != part.checksums:
                raise BlobMissing(f"blob {part.blob}.{rec.shard} has other checksums than the record")
        ident = (rec.bucket, rec.key, rec.version)
        old = {b for (b,) in db.execute("SELECT blob FROM blob_refs WHERE bucket=? AND key=? AND version=? "
                                        "AND shard=?", (*ident, rec.shard))}
        partition = partition_of(rec.bucket, rec.key, self.partition_bits)
        self._version_changing(partition, *ident)
        db.execute("INSERT OR REPLACE INTO objects VALUES (?,?,?,?,?,?,?,?,?,?)", _object_row(rec, partition))
        db.execute("DELETE FROM blob_refs WHERE bucket=? AND key=? AND version=? AND shard=?", (*ident, rec.shard))
        for blob in needed:
            db.execute("INSERT OR IGNORE INTO blob_refs VALUES (?,?,?,?,?)", (blob, rec.shard, *ident))
            db.execute("UPDATE blobs SET state='committed' WHERE blob=? AND shard=? AND state='pending'",
                       (blob, rec.shard))
        return self._drop_unreferenced(old - set(needed), rec.shard)

    def _drop_unreferenced(self, blobs: set[str], shard: int) -> list[str]:
        paths = []
        for blob in blobs:
            if self._db.execute("SELECT 1 FROM blob_refs WHERE blob=? AND shard=? LIMIT 1", (blob, shard)).fetchone():
                continue
            row = self._db.execute("SELECT path, partition FROM blobs WHERE blob=? AND shard=?", (blob, shard)).fetchone()
            if row is not None:  # no record names it: no digest changes
                self._db.execute("DELETE FROM blobs WHERE blob=? AND shard=?", (blob, shard))
                paths.append(str(row[0]))
        return paths

    def _readable(self, rows: list[tuple[Any, ...]]) -> list[ObjectRecord]:
        """Unpack stored records; one that no longer reads back is skipped and counted once (repair rewrites it)."""
        return [rec for rec, _ in self._readable_packed(rows)]

    def _readable_packed(self, rows: list[tuple[Any, ...]]) -> list[tuple[ObjectRecord, bytes]]:
        """`_readable`, each record beside its bytes as stored (what `ObjectRecord.pack` made of it)."""
        out = []
        for bucket, key, version, shard, packed in rows:
            try:
                out.append((ObjectRecord.unpack(packed), packed))
            except RecordError:
                if (bucket, key, version, shard) not in self._unreadable:
                    self._unreadable.add((bucket, key, version, shard))
                    self._bump("corrupt_found")
        return out

    @on_sql_thread
    def get_record(self, bucket: str, key: str, version: str | None = None) -> list[ObjectRecord]:
        """The records (one per shard held) of the newest version of a key, or of the given version."""
        return [rec for rec, _ in self.get_record_packed(bucket, key, version)]

    @on_sql_thread
    def get_record_packed(self, bucket: str, key: str, version: str | None = None) -> list[tuple[ObjectRecord, bytes]]:
        """`get_record`, each record beside its stored bytes: an RPC answers with those, not packed again."""
        if version is None:  # one statement: the newest version's rows
            return self._readable_packed(self._db.execute(
                "SELECT bucket, key, version, shard, record FROM objects WHERE bucket=?1 AND key=?2 AND "
                "version=(SELECT max(version) FROM objects WHERE bucket=?1 AND key=?2) ORDER BY shard",
                (bucket, key)).fetchall())
        return self._readable_packed(self._db.execute(
            "SELECT bucket, key, version, shard, record FROM objects WHERE bucket=? AND key=? AND version=? "
            "ORDER BY shard", (bucket, key, version)).fetchall())

    @on_sql_thread
    def older_versions(self, bucket: str, key: str, version: str, limit: int) -> list[str]:
        """Up to `limit` versions of a key held here that are older than `version`, newest first."""
        return [v for (v,) in self._db.execute(
            "SELECT DISTINCT version FROM objects WHERE bucket=? AND key=? AND version<? ORDER BY version DESC "
            "LIMIT ?", (bucket, key, version, limit))]

    @on_sql_thread
    def versions(self, bucket: str, key: str) -> list[ObjectRecord]:
        """Every record of a key, newest version first."""
        return self._readable(self._db.execute(
            "SELECT bucket, key, version, shard, record FROM objects WHERE bucket=? AND key=? "
            "ORDER BY version DESC, shard", (bucket, key)).fetchall())

    def delete_record(self, bucket: str, key: str, version: str) -> int:
        """Remove a version's records, and the blobs no other record references. Returns the records removed."""
        (n,), paths = self.drop_records([(bucket, key, version)])
        self.unlink_shards(paths)
        return n

    @on_sql_thread
    def drop_records(self, versions: list[tuple[str, str, str]]) -> tuple[list[int], list[str]]:
        """`delete_record` of several versions in one transaction, without removing the freed shard files:
        the records removed per version, and the paths of the files to remove (SQL thread only)."""
        db = self._db
        counts, paths, touched = [], [], set()
        with _transaction(db):
            for bucket, key, version in versions:
                refs = db.execute("SELECT blob, shard FROM blob_refs WHERE bucket=? AND key=? AND version=?",
                                  (bucket, key, version)).fetchall()
                partition = partition_of(bucket, key, self.partition_bits)
                self._version_changing(partition, bucket, key, version)
                n = db.execute("DELETE FROM objects WHERE bucket=? AND key=? AND version=?",
                               (bucket, key, version)).rowcount
                db.execute("DELETE FROM blob_refs WHERE bucket=? AND key=? AND version=?", (bucket, key, version))
                paths += [p for blob, shard in refs for p in self._drop_unreferenced({blob}, shard)]
                counts.append(n)
                if n:
                    touched.add(partition)
        for partition in touched:
            if self._held is not None and not db.execute("SELECT 1 FROM objects WHERE partition=? LIMIT 1",
                                                         (partition,)).fetchone():
                self._held.discard(partition)
        return counts, paths

    def list_entries(self, bucket: str, prefix: str, start_after: str, limit: int, versions: bool) -> list[ListEntry]:
        """Sorted (key asc, version desc, shard) summaries; without `versions`, only each key's newest version.

        start_after is exclusive on the key: every version of that key is skipped.
        """
        return [ListEntry(k, v, bool(d), s, e, c, sh) for k, v, d, s, e, c, sh in
                self.list_rows(bucket, prefix, start_after, limit, versions)]

    @on_sql_thread
    def list_rows(self, bucket: str, prefix: str, start_after: str, limit: int, versions: bool
                  ) -> list[tuple[str, str, int, int, str, int, int]]:
        """list_entries as the wire rows (key, version, deleted 0/1, size, etag, created, shard): no object per row."""
        if start_after and start_after >= prefix:
            cond, lo = "key > ?", start_after
        else:
            cond, lo = "key >= ?", prefix
        # The range ends in SQL, not after a scan: keys under the prefix sort before its successor.
        end = _successor(prefix)
        args: tuple[object, ...] = (bucket, lo) if end is None else (bucket, lo, end)
        sql = ("SELECT key, version, deleted, size, etag, created, shard FROM objects "
               f"WHERE bucket=? AND {cond}{'' if end is None else ' AND key < ?'} ORDER BY key, version DESC, shard")
        if versions:
            return self._db.execute(sql + " LIMIT ?", (*args, limit)).fetchall()
        out: list[tuple[str, str, int, int, str, int, int]] = []
        newest: tuple[str, str] | None = None
        for row in self._db.execute(sql, args):
            key, version = row[0], row[1]
            if newest is not None and newest[0] == key and newest[1] != version:
                continue
            newest = (key, version)
            if len(out) >= limit:
                break
            out.append(row)
        return out

    @on_sql_thread
    def partition_summaries(self, partition: int) -> list[tuple[str, str, str, int, bool, bool]]:
        """(bucket, key, version, shard, deleted, healthy) of every record in a partition, sorted.

        healthy: the record reads back and every shard file it names is here and not quarantined.
        """
        return [row[:6] for row in self._summaries(partition)]  # type: ignore[misc]

    def _summaries(self, partition: int) -> list[tuple[str, str, str, int, bool, bool, int]]:
        """partition_summaries with each record's object size (0 when it does not read back); SQL thread."""
        db = self._db
        state = {(b, s): st for b, s, st in db.execute("SELECT blob, shard, state FROM blobs WHERE partition=?",
                                                       (partition,))}
        out = []
        for b, k, v, shard, d, packed in db.execute(
                "SELECT bucket, key, version, shard, deleted, record FROM objects WHERE partition=? "
                "ORDER BY bucket, key, version, shard", (partition,)).fetchall():
            recs = self._readable([(b, k, v, shard, packed)])
            healthy = bool(recs) and _healthy(recs[0], lambda blob, shard=shard: state.get((blob, shard)))
            out.append((b, k, v, shard, bool(d), healthy, recs[0].size if recs else 0))
        return out

    @on_sql_thread
    def partition_digest(self, partition: int) -> tuple[str, int, int, int]:
        """The partition's healthy versions summed up: a 64-bit sum of one xxh3 term per healthy version
        (of its bucket, key, version and deleted flag), their count, the sum of their object sizes (what a
        repair pass reports as bytes scanned), and how many of them are null delete markers (repair looks
        into a partition holding some now and then, to remove those nothing needs).

        Shard indexes are left out on purpose: owners hold different indexes of the same versions,
        so equal digests mean the owners agree on which versions they hold intact. A sum does not
        depend on the order of its terms, so a write changes it by the terms of the versions it
        touched: after the first ask, a digest costs the versions written since the last one.
        """
        kept = self._digests.get(partition)
        if kept is None:
            kept = self._digests[partition] = self._fresh_sum(partition)
        else:
            self._settle(partition, kept)
        return _digest(kept)

    @on_sql_thread
    def each_partition(self, fn: Callable[[int], R], partitions: Sequence[int], budget: float) -> list[R]:
        """`fn(p)` (a partition's digest, its summaries) for the first of `partitions`, as many as `budget`
        seconds allow, one at least: one SQL job for many partitions, and the node's record reads and writes
        go on between such jobs. Settling the digest of a partition written since the last ask costs its
        changed versions, so a job settles many; a partition read whole may take the budget alone."""
        deadline = time.perf_counter() + budget
        out = []
        for p in partitions:
            out.append(fn(p))
            if time.perf_counter() >= deadline:
                break
        return out

    PENDING_MAX = 4096
    """Versions noted as changing in one partition past which its kept digest is dropped (recomputed
    whole on the next ask): a partition rewritten wholesale reads no faster term by term."""

    def _version_changing(self, partition: int, bucket: str, key: str, version: str) -> None:
        """Note a version's term before its records change, if its partition's digest is kept (SQL thread)."""
        if partition not in self._digests:
            return
        noted = self._before.setdefault(partition, {})
        ident = (bucket, key, version)
        if ident in noted:
            return
        if len(noted) >= self.PENDING_MAX:
            self._changed(partition)
        else:
            noted[ident] = self._term(partition, bucket, key, version)

    def _blob_changing(self, blob: str, shard: int) -> None:
        """Note the terms of the versions whose records name a blob row about to change (SQL thread)."""
        for b, k, v in self._db.execute("SELECT bucket, key, version FROM blob_refs WHERE blob=? AND shard=?",
                                        (blob, shard)).fetchall():
            self._version_changing(partition_of(b, k, self.partition_bits), b, k, v)

    def _changed(self, *partitions: int) -> None:
        """Drop the kept digests of partitions changed in ways not noted term by term (SQL thread)."""
        for p in partitions:
            self._digests.pop(p, None)
            self._before.pop(p, None)

    def _settle(self, partition: int, kept: list[int]) -> None:
        """Replace the noted terms of a kept digest with the terms of those versions now (SQL thread)."""
        noted = self._before.pop(partition, None)
        for (b, k, v), (h0, n0, s0, d0) in (noted or {}).items():
            h1, n1, s1, d1 = self._term(partition, b, k, v)
            kept[0] = (kept[0] + h1 - h0) & _MASK64
            kept[1] += n1 - n0
            kept[2] += s1 - s0
            kept[3] += d1 - d0

    def _term(self, partition: int, bucket: str, key: str, version: str) -> tuple[int, int, int, int]:
        """A version's part of its partition's digest: (xxh3 term, 1, size, `_null_marker`) if this node
        holds any healthy record of it, else zeros: what `_fresh_sum` adds for it (SQL thread)."""
        rows = self._db.execute("SELECT shard, deleted, record FROM objects WHERE bucket=? AND key=? AND version=? "
                                "AND partition=? ORDER BY shard", (bucket, key, version, partition)).fetchall()
        for shard, deleted, packed in rows:
            recs = self._readable([(bucket, key, version, shard, packed)])
            if recs and _healthy(recs[0], lambda blob, shard=shard: self._blob_state(blob, shard, partition)):
                return _term(bucket, key, version, bool(deleted)), 1, recs[0].size, _null_marker(version, bool(deleted))
        return 0, 0, 0, 0

    def _blob_state(self, blob: str, shard: int, partition: int) -> str | None:
        row = self._db.execute("SELECT state FROM blobs WHERE blob=? AND shard=? AND partition=?",
                               (blob, shard, partition)).fetchone()
        return row[0] if row else None

    @on_sql_thread
    def scrub_records(self, partition: int) -> bool:
        """Read a partition's records again: True if its kept digest was not theirs any more.

        Damage in records.db (bit rot, a hand edit) changes no row through this store, so no kept digest
        follows it: scrub finds it here, as it finds damaged shards, and repair rewrites the record.
        """
        fresh = self._fresh_sum(partition)
        kept = self._digests.get(partition)
        if kept is not None:
            self._settle(partition, kept)
        self._digests[partition] = fresh
        return kept is not None and kept != fresh

    EMPTY_DIGEST = (f"{0:016x}", 0, 0, 0)
    """The digest of a partition without records (one with none healthy has it too)."""

    @on_sql_thread
    def fresh_digest(self, partition: int) -> tuple[str, int, int, int]:
        """partition_digest computed from the rows, kept digest left alone."""
        return _digest(self._fresh_sum(partition))

    def _fresh_sum(self, partition: int) -> list[int]:
        total = n = size = markers = 0
        last = None
        for b, k, v, _, d, healthy, nbytes in self._summaries(partition):
            if not healthy or (b, k, v) == last:
                continue
            last = (b, k, v)
            total += _term(b, k, v, d)
            n += 1
            size += nbytes
            markers += _null_marker(v, bool(d))
        return [total & _MASK64, n, size, markers]

    @on_sql_thread
    def kept_digests(self) -> tuple[dict[int, tuple[str, int, int, int]], list[int]]:
        """The digests kept of the partitions held and unchanged since last asked, and the other held
        partitions (each then asked alone, so writes go on between them)."""
        held = self.partitions_held()
        kept = {p: _digest(self._digests[p]) for p in held if p in self._digests and not self._before.get(p)}
        return kept, [p for p in held if p not in kept]

    @on_sql_thread
    def partitions_held(self) -> list[int]:
        """Partitions holding a record: read once (a scan of the partition index), then kept up to date."""
        if self._held is None:
            self._held = {p for (p,) in self._db.execute("SELECT DISTINCT partition FROM objects")}
        return sorted(self._held)

    @on_sql_thread
    def counts(self) -> dict[str, int]:
        db = self._db
        records = db.execute("SELECT count(*) FROM objects").fetchone()[0]
        blobs, blob_bytes = db.execute("SELECT count(*), coalesce(sum(size), 0) FROM blobs WHERE state != 'corrupt'"
                                       ).fetchone()
        pending = db.execute("SELECT count(*) FROM blobs WHERE state = 'pending'").fetchone()[0]
        quarantined = db.execute("SELECT count(*) FROM blobs WHERE state = 'corrupt'").fetchone()[0]
        return {"records": records, "blobs": blobs, "blob_bytes": blob_bytes, "pending_blobs": pending,
                "quarantined_blobs": quarantined, "corrupt_found": self.corrupt_found}

    # -- counters -------------------------------------------------------------------------------

    @on_sql_thread
    def _counter(self, name: str) -> int:
        row = self._db.execute("SELECT value FROM counters WHERE name=?", (name,)).fetchone()
        return int(row[0]) if row else 0

    def _bump(self, name: str) -> None:
        """+1 on a persistent counter (SQL thread only)."""
        self._db.execute("INSERT INTO counters VALUES (?, 1) ON CONFLICT(name) DO UPDATE SET value = value + 1",
                         (name,))
        if name == "corrupt_found":
            self.corrupt_found += 1

    # -- KV -------------------------------------------------------------------------------------

    @on_sql_thread
    def put_kv(self, rec: KVRecord) -> bool:
        """Store unless a record with a higher or equal version is already here (last writer wins)."""
        db = self._db
        row = db.execute("SELECT version FROM kv WHERE ns=? AND name=?", (rec.ns, rec.name)).fetchone()
        if row is not None and row[0] >= rec.version:
            return False
        db.execute("INSERT OR REPLACE INTO kv (ns, name, version, deleted, record) VALUES (?,?,?,?,?)",
                   (rec.ns, rec.name, rec.version, int(rec.deleted), rec.pack()))
        return True

    @on_sql_thread
    def forget_kv(self, tombstones: list[tuple[str, str, str]]) -> list[bool]:
        """Remove tombstones ([ns, name, version] each) in one transaction, each only while it is still that
        version and deleted: a document written again since stays. Whether each one went."""
        db = self._db
        with _transaction(db):
            return [db.execute("DELETE FROM kv WHERE ns=? AND name=? AND version=? AND deleted=1",
                               (ns, name, version)).rowcount > 0 for ns, name, version in tombstones]

    @on_sql_thread
    def get_kv(self, ns: str, name: str) -> KVRecord | None:
        """The document, a tombstone included."""
        row = self._db.execute("SELECT record FROM kv WHERE ns=? AND name=?", (ns, name)).fetchone()
        return KVRecord.unpack(row[0]) if row else None

    @on_sql_thread
    def list_kv(self, ns: str, prefix: str) -> list[KVRecord]:
        """Documents of a namespace whose name starts with `prefix` (tombstones included), by name."""
        out = []
        for name, packed in self._db.execute("SELECT name, record FROM kv WHERE ns=? AND name >= ? ORDER BY name",
                                             (ns, prefix)):
            if not name.startswith(prefix):
                break
            out.append(KVRecord.unpack(packed))
        return out


def _successor(prefix: str) -> str | None:
    """The least string above every string starting with `prefix` (None: no such bound, or no prefix).

    SQLite compares keys as UTF-8 bytes, which sort as code points do.
    """
    while prefix:
        last = ord(prefix[-1])
        if last < 0x10FFFF:
            following = 0xE000 if 0xD800 <= last + 1 <= 0xDFFF else last + 1  # surrogates have no UTF-8
            return prefix[:-1] + chr(following)
        prefix = prefix[:-1]
    return None


class _transaction:
    """BEGIN IMMEDIATE … COMMIT, rolled back on any exception."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self.db = db

    def __enter__(self) -> None:
        self.db.execute("BEGIN IMMEDIATE")

    def __exit__(self, exc_type: object, *_: object) -> None:
        self.db.execute("ROLLBACK" if exc_type else "COMMIT")


def _migrate_v1(db: sqlite3.Connection) -> None:
    """Bring a version-1 database up to date: blob references and KV tombstone flags from the stored records."""
    cols = {r[1] for r in db.execute("PRAGMA table_info(kv)")}
    with _transaction(db):
        if "deleted" not in cols:
            db.execute("ALTER TABLE kv ADD COLUMN deleted INTEGER NOT NULL DEFAULT 0")
            for ns, name, packed in db.execute("SELECT ns, name, record FROM kv").fetchall():
                try:
                    deleted = KVRecord.unpack(packed).deleted
                except RecordError:
                    continue
                db.execute("UPDATE kv SET deleted=? WHERE ns=? AND name=?", (int(deleted), ns, name))
        for packed, in db.execute("SELECT record FROM objects").fetchall():
            try:
                rec = ObjectRecord.unpack(packed)
            except RecordError:
                continue
            for p in rec.parts:
                if p.inline is None and p.present:
                    db.execute("INSERT OR IGNORE INTO blob_refs VALUES (?,?,?,?,?)",
                               (p.blob, rec.shard, rec.bucket, rec.key, rec.version))
