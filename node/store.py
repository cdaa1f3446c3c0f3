"""A node's disk: object records, KV documents and blob rows in SQLite (WAL), shard files under data/."""

from __future__ import annotations

import errno
import os
import sqlite3
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import msgpack
import xxhash

from objstore.records import KVRecord, ListEntry, ObjectRecord, RecordError
from objstore.ring import partition_of

SCHEMA = """
CREATE TABLE IF NOT EXISTS objects (
    bucket TEXT NOT NULL, key TEXT NOT NULL, version TEXT NOT NULL, shard INTEGER NOT NULL,
    partition INTEGER NOT NULL, deleted INTEGER NOT NULL, size INTEGER NOT NULL, etag TEXT NOT NULL,
    created INTEGER NOT NULL, record BLOB NOT NULL,
    PRIMARY KEY (bucket, key, version, shard)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS objects_by_partition ON objects (partition, bucket, key, version);
CREATE TABLE IF NOT EXISTS blobs (
    blob TEXT NOT NULL, shard INTEGER NOT NULL, partition INTEGER NOT NULL, path TEXT NOT NULL,
    size INTEGER NOT NULL, block_size INTEGER NOT NULL, checksums BLOB NOT NULL,
    state TEXT NOT NULL, created INTEGER NOT NULL,
    PRIMARY KEY (blob, shard)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS kv (
    ns TEXT NOT NULL, name TEXT NOT NULL, version TEXT NOT NULL, record BLOB NOT NULL,
    PRIMARY KEY (ns, name)
) WITHOUT ROWID;
"""

TEMP_SUFFIX = ".tmp"
CORRUPT_SUFFIX = ".corrupted"


class DiskFull(OSError):
    """No space left: nothing half-written was kept."""


class BlobMissing(Exception):
    """A record names a blob this node does not hold (or holds with other checksums)."""


@dataclass
class BlobRow:
    blob: str
    shard: int
    partition: int
    path: str
    size: int
    block_size: int
    checksums: list[int]
    state: str  # pending, committed or corrupt
    created: int


class Store:
    """All of one node's persistent state. Methods block: call them from the node's disk executor."""

    def __init__(self, data_dir: str | os.PathLike[str], partition_bits: int, fsync: bool = True,
                 fail_after_bytes: int | None = None) -> None:
        self.root = Path(data_dir)
        self.data = self.root / "data"
        self.data.mkdir(parents=True, exist_ok=True)
        self.partition_bits = partition_bits
        self.fsync = fsync
        self.fail_after_bytes = fail_after_bytes  # fault hook: ENOSPC after this many shard bytes
        self._local = threading.local()
        self.corrupt_found = 0
        db = self._db()
        db.executescript(SCHEMA)
        db.commit()
        self.swept = self.sweep_temp_files()

    def _db(self) -> sqlite3.Connection:
        db = getattr(self._local, "db", None)
        if db is None:
            db = sqlite3.connect(self.root / "records.db", isolation_level=None, check_same_thread=True)
            db.execute("PRAGMA journal_mode=WAL")
            db.execute(f"PRAGMA synchronous={'FULL' if self.fsync else 'NORMAL'}")
            db.execute("PRAGMA busy_timeout=10000")
            self._local.db = db
        return db

    def close(self) -> None:
        db = getattr(self._local, "db", None)
        if db is not None:
            db.close()
            self._local.db = None

    def sweep_temp_files(self) -> int:
        """Remove temp files a crash left behind (they were never committed)."""
        n = 0
        for path in self.data.rglob(f"*{TEMP_SUFFIX}"):
            path.unlink(missing_ok=True)
            n += 1
        return n

    # -- shard files ----------------------------------------------------------------------------

    def blob_path(self, partition: int, blob: str, shard: int) -> Path:
        return self.data / f"{partition:05d}" / f"{blob}.{shard}"

    def open_temp(self, partition: int, blob: str, shard: int) -> tuple[Path, int]:
        final = self.blob_path(partition, blob, shard)
        final.parent.mkdir(parents=True, exist_ok=True)
        tmp = final.with_name(f"{final.name}.{os.getpid()}.{time.monotonic_ns()}{TEMP_SUFFIX}")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        return tmp, fd

    def write_chunk(self, fd: int, data: bytes, written: int) -> None:
        if self.fail_after_bytes is not None and written + len(data) > self.fail_after_bytes:
            raise DiskFull(errno.ENOSPC, "No space left on device (fault hook)")
        try:
            view = memoryview(data)
            while view:
                n = os.write(fd, view)
                view = view[n:]
        except OSError as e:
            if e.errno in (errno.ENOSPC, errno.EDQUOT):
                raise DiskFull(e.errno, e.strerror) from None
            raise

    def finish_blob(self, tmp: Path, fd: int, partition: int, blob: str, shard: int, size: int,
                    block_size: int, checksums: list[int]) -> None:
        """fsync, rename, fsync the directory, then record the blob as pending."""
        try:
            if self.fsync:
                os.fsync(fd)
        except OSError as e:
            os.close(fd)
            if e.errno in (errno.ENOSPC, errno.EDQUOT):
                raise DiskFull(e.errno, e.strerror) from None
            raise
        os.close(fd)
        final = self.blob_path(partition, blob, shard)
        os.replace(tmp, final)
        if self.fsync:
            dfd = os.open(final.parent, os.O_RDONLY)
            try:
                os.fsync(dfd)
            finally:
                os.close(dfd)
        self._db().execute(
            "INSERT OR REPLACE INTO blobs VALUES (?,?,?,?,?,?,?,?,?)",
            (blob, shard, partition, str(final.relative_to(self.root)), size, block_size,
             msgpack.packb(checksums), "pending", time.time_ns()))

    def abort_blob(self, tmp: Path, fd: int | None) -> None:
        if fd is not None:
            try:
                os.close(fd)
            except OSError:
                pass
        tmp.unlink(missing_ok=True)

    def blob(self, blob: str, shard: int) -> BlobRow | None:
        row = self._db().execute("SELECT * FROM blobs WHERE blob=? AND shard=?", (blob, shard)).fetchone()
        if row is None:
            return None
        return BlobRow(row[0], row[1], row[2], row[3], row[4], row[5], msgpack.unpackb(row[6]), row[7], row[8])

    def read_blob_blocks(self, row: BlobRow, first_block: int, last_block: int) -> Iterator[bytes]:
        """Blocks [first, last] of a shard, each verified; a mismatch quarantines the file and raises."""
        path = self.root / row.path
        try:
            actual = path.stat().st_size
        except FileNotFoundError:
            self.quarantine(row, "file missing")
            raise
        if actual != row.size:
            self.quarantine(row, f"size {actual}, expected {row.size}")
            raise CorruptShard(row, f"size {actual}, expected {row.size}")
        with open(path, "rb") as f:
            f.seek(first_block * row.block_size)
            for b in range(first_block, last_block + 1):
                data = f.read(row.block_size)
                if b >= len(row.checksums) or xxhash.xxh3_64_intdigest(data) != row.checksums[b]:
                    self.quarantine(row, f"block {b} checksum mismatch")
                    raise CorruptShard(row, f"block {b} checksum mismatch")
                yield data

    def quarantine(self, row: BlobRow, why: str) -> None:
        """Move a damaged shard aside (never served again) and count it; repair rebuilds it."""
        path = self.root / row.path
        if path.exists():
            os.replace(path, path.with_name(path.name + CORRUPT_SUFFIX))
        self._db().execute("UPDATE blobs SET state='corrupt' WHERE blob=? AND shard=?", (row.blob, row.shard))
        self.corrupt_found += 1

    def delete_blob(self, blob: str, shard: int) -> bool:
        row = self.blob(blob, shard)
        if row is None:
            return False
        for p in (self.root / row.path, self.root / (row.path + CORRUPT_SUFFIX)):
            p.unlink(missing_ok=True)
        self._db().execute("DELETE FROM blobs WHERE blob=? AND shard=?", (blob, shard))
        return True

    def blobs(self) -> list[BlobRow]:
        rows = self._db().execute("SELECT * FROM blobs WHERE state != 'corrupt'").fetchall()
        return [BlobRow(r[0], r[1], r[2], r[3], r[4], r[5], msgpack.unpackb(r[6]), r[7], r[8]) for r in rows]

    # -- object records -------------------------------------------------------------------------

    def put_record(self, rec: ObjectRecord) -> None:
        """Commit a record once every present, non-inline part's blob is here with the same checksums."""
        db = self._db()
        for part in rec.parts:
            if part.inline is not None or not part.present:
                continue
            row = self.blob(part.blob, rec.shard)
            if row is None or row.state == "corrupt":
                raise BlobMissing(f"blob {part.blob}.{rec.shard} is not on this node")
            if row.checksums != part.checksums:
                raise BlobMissing(f"blob {part.blob}.{rec.shard} has other checksums than the record")
        partition = partition_of(rec.bucket, rec.key, self.partition_bits)
        db.execute("BEGIN IMMEDIATE")
        try:
            db.execute("INSERT OR REPLACE INTO objects VALUES (?,?,?,?,?,?,?,?,?,?)",
                       (rec.bucket, rec.key, rec.version, rec.shard, partition, int(rec.deleted), rec.size,
                        rec.etag, rec.created, rec.pack()))
            for part in rec.parts:
                if part.inline is None and part.present:
                    db.execute("UPDATE blobs SET state='committed' WHERE blob=? AND shard=?", (part.blob, rec.shard))
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise

    def get_record(self, bucket: str, key: str, version: str | None = None) -> list[ObjectRecord]:
        """The records (one per shard held) of the newest version of a key, or of the given version."""
        db = self._db()
        if version is None:
            row = db.execute("SELECT max(version) FROM objects WHERE bucket=? AND key=?", (bucket, key)).fetchone()
            version = row[0] if row else None
            if version is None:
                return []
        rows = db.execute("SELECT record FROM objects WHERE bucket=? AND key=? AND version=? ORDER BY shard",
                          (bucket, key, version)).fetchall()
        return [ObjectRecord.unpack(r[0]) for r in rows]

    def versions(self, bucket: str, key: str) -> list[ObjectRecord]:
        rows = self._db().execute("SELECT record FROM objects WHERE bucket=? AND key=? ORDER BY version DESC, shard",
                                  (bucket, key)).fetchall()
        return [ObjectRecord.unpack(r[0]) for r in rows]

    def delete_record(self, bucket: str, key: str, version: str) -> int:
        """Remove a version's records and the blobs no other record references."""
        db = self._db()
        recs = [ObjectRecord.unpack(r[0]) for r in db.execute(
            "SELECT record FROM objects WHERE bucket=? AND key=? AND version=?", (bucket, key, version))]
        db.execute("DELETE FROM objects WHERE bucket=? AND key=? AND version=?", (bucket, key, version))
        for rec in recs:
            for part in rec.parts:
                if part.inline is None and part.present and not self._blob_referenced(rec, part.blob):
                    self.delete_blob(part.blob, rec.shard)
        return len(recs)

    def _blob_referenced(self, rec: ObjectRecord, blob: str) -> bool:
        for (packed,) in self._db().execute("SELECT record FROM objects WHERE bucket=? AND key=? AND shard=?",
                                            (rec.bucket, rec.key, rec.shard)):
            if any(p.blob == blob and p.present for p in ObjectRecord.unpack(packed).parts):
                return True
        return False

    def list_entries(self, bucket: str, prefix: str, start_after: str, limit: int, versions: bool) -> list[ListEntry]:
        """Sorted (key asc, version desc) summaries; without `versions`, only each key's newest version."""
        hi = prefix + "\U0010ffff"
        if start_after and start_after >= prefix:
            cond, lo = "key > ?", start_after
        else:
            cond, lo = "key >= ?", prefix
        sql = ("SELECT key, version, deleted, size, etag, created, shard FROM objects "
               f"WHERE bucket=? AND {cond} AND key < ? ORDER BY key, version DESC, shard")
        out: list[ListEntry] = []
        newest: tuple[str, str] | None = None
        for key, version, deleted, size, etag, created, shard in self._db().execute(sql, (bucket, lo, hi)):
            if not versions:
                if newest is not None and newest[0] == key and newest[1] != version:
                    continue
                newest = (key, version)
            if len(out) >= limit:
                break
            out.append(ListEntry(key, version, bool(deleted), size, etag, created, shard))
        return out

    def partition_summaries(self, partition: int) -> list[tuple[str, str, str, int, bool, bool]]:
        """(bucket, key, version, shard, deleted, healthy) of every record in a partition, sorted.

        healthy: the record reads back and every shard file it names is here and not quarantined.
        """
        db = self._db()
        bad = {(b, s) for b, s in db.execute("SELECT blob, shard FROM blobs WHERE partition=? AND state='corrupt'",
                                              (partition,))}
        have = {(b, s) for b, s in db.execute("SELECT blob, shard FROM blobs WHERE partition=? AND state!='corrupt'",
                                               (partition,))}
        out = []
        for b, k, v, shard, d, packed in db.execute(
                "SELECT bucket, key, version, shard, deleted, record FROM objects WHERE partition=? "
                "ORDER BY bucket, key, version, shard", (partition,)):
            try:
                rec = ObjectRecord.unpack(packed)
                healthy = all(p.inline is not None or not p.present or
                              ((p.blob, shard) in have and (p.blob, shard) not in bad) for p in rec.parts)
                healthy = healthy and all(p.present for p in rec.parts)
            except RecordError:
                self.corrupt_found += 1
                healthy = False
            out.append((b, k, v, shard, bool(d), healthy))
        return out

    def partition_digest(self, partition: int) -> tuple[str, int]:
        """xxh3 over the sorted (bucket, key, version, deleted) of the healthy records, and their count.

        Shard indexes are left out on purpose: owners hold different indexes of the same versions,
        so equal digests mean the owners agree on which versions they hold intact.
        """
        h = xxhash.xxh3_64()
        n = 0
        last = None
        for b, k, v, _, d, healthy in self.partition_summaries(partition):
            if not healthy or (b, k, v) == last:
                continue
            last = (b, k, v)
            h.update(msgpack.packb((b, k, v, d)))
            n += 1
        return h.hexdigest(), n

    def partitions_held(self) -> list[int]:
        return [p for (p,) in self._db().execute("SELECT DISTINCT partition FROM objects ORDER BY partition")]

    def counts(self) -> dict[str, int]:
        db = self._db()
        records = db.execute("SELECT count(*) FROM objects").fetchone()[0]
        blobs, blob_bytes = db.execute("SELECT count(*), coalesce(sum(size), 0) FROM blobs WHERE state != 'corrupt'"
                                       ).fetchone()
        return {"records": records, "blobs": blobs, "blob_bytes": blob_bytes, "corrupt_found": self.corrupt_found}

    # -- KV -------------------------------------------------------------------------------------

    def put_kv(self, rec: KVRecord) -> bool:
        """Store unless a record with a higher or equal version is already here (last writer wins)."""
        db = self._db()
        db.execute("BEGIN IMMEDIATE")
        try:
            row = db.execute("SELECT version FROM kv WHERE ns=? AND name=?", (rec.ns, rec.name)).fetchone()
            if row is not None and row[0] >= rec.version:
                db.execute("COMMIT")
                return False
            db.execute("INSERT OR REPLACE INTO kv VALUES (?,?,?,?)", (rec.ns, rec.name, rec.version, rec.pack()))
            db.execute("COMMIT")
            return True
        except BaseException:
            db.execute("ROLLBACK")
            raise

    def get_kv(self, ns: str, name: str) -> KVRecord | None:
        row = self._db().execute("SELECT record FROM kv WHERE ns=? AND name=?", (ns, name)).fetchone()
        return KVRecord.unpack(row[0]) if row else None

    def list_kv(self, ns: str, prefix: str) -> list[KVRecord]:
        rows = self._db().execute("SELECT record FROM kv WHERE ns=? AND name >= ? AND name < ? ORDER BY name",
                                  (ns, prefix, prefix + "\U0010ffff")).fetchall()
        return [KVRecord.unpack(r[0]) for r in rows]


class CorruptShard(Exception):
    def __init__(self, row: BlobRow, why: str) -> None:
        self.row = row
        super().__init__(f"shard {row.blob}.{row.shard} is corrupt: {why}")
