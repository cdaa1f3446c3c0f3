"""Shard files on a node's disk: the one safe way to write them and verified, block-aligned reads."""

from __future__ import annotations

import errno
import os
import re
import secrets
import sqlite3
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Generic, Self, TypeVar

import xxhash

TEMP_SUFFIX = ".tmp"
CORRUPT_SUFFIX = ".corrupted"
BLOB_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,199}")
"""Blob ids become file names: no dots (so no '..' and no clash with .tmp/.corrupted), no slashes."""

SQLITE_FULL = 13
IOV_MAX = 1024
"""Buffers one writev call may take (Linux's IOV_MAX)."""
R = TypeVar("R")


class DiskFull(OSError):
    """No space left (ENOSPC, EDQUOT or SQLITE_FULL): nothing half-written was kept."""


@dataclass
class BlobRow:
    """What the node knows of one shard file it holds."""

    blob: str
    shard: int
    partition: int
    path: str  # relative to the data dir
    size: int
    block_size: int
    checksums: list[int]
    state: str  # pending, committed or corrupt
    created: int  # ns since the epoch, when the file was made durable

    @property
    def blocks(self) -> int:
        return -(-self.size // self.block_size)


class CorruptShard(Exception):
    """A shard file failed verification; it was quarantined and must not be served."""

    def __init__(self, row: BlobRow, why: str) -> None:
        self.row, self.why = row, why
        super().__init__(f"shard {row.blob}.{row.shard} is corrupt: {why}")


def check_blob_id(blob: str) -> str:
    if not BLOB_ID.fullmatch(blob):
        raise ValueError(f"bad blob id {blob[:60]!r}")
    return blob


def is_disk_full(e: BaseException) -> bool:
    if isinstance(e, OSError):
        return e.errno in (errno.ENOSPC, errno.EDQUOT)
    return isinstance(e, sqlite3.Error) and getattr(e, "sqlite_errorcode", None) == SQLITE_FULL


def fsync_dir(path: Path) -> None:
    dfd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)


def make_dir(path: Path, fsync: bool = True) -> None:
    """Create a directory (and missing parents), each new one's entry made durable in its parent."""
    if path.is_dir():
        return
    make_dir(path.parent, fsync)
    try:
        path.mkdir()
    except FileExistsError:  # made meanwhile by another writer, whose fsync may not have run yet
        pass
    if fsync:
        fsync_dir(path.parent)


def unlink_shard(path: Path) -> None:
    """Remove a shard file and its quarantined copy, if any."""
    for p in (path, path.with_name(path.name + CORRUPT_SUFFIX)):
        p.unlink(missing_ok=True)


class BlobWriter:
    """One shard upload in progress: a temp file beside its final name and the block checksums so far.

    Methods block (disk I/O and hashing): call them from worker threads. A lock orders them, so an
    abort waits for a write still running instead of closing the file under it.
    """

    def __init__(self, final: Path, block_size: int, fsync: bool = True, fail_after_bytes: int | None = None) -> None:
        if block_size <= 0:
            raise ValueError("block_size must be > 0")
        self.final, self.block_size, self.fsync = final, block_size, fsync
        self.fail_after_bytes = fail_after_bytes  # fault hook: ENOSPC once the file would pass this size
        self.tmp = final.with_name(f"{final.name}.{secrets.token_hex(6)}{TEMP_SUFFIX}")
        try:
            self.fd: int | None = os.open(self.tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except FileNotFoundError:  # the partition's first shard here: its directory comes first
            make_dir(final.parent, fsync)
            self.fd = os.open(self.tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        self.size = 0
        self.checksums: list[int] = []
        self._hasher = xxhash.xxh3_64()
        self._filled = 0
        self._lock = threading.Lock()
        self.renamed = False

    def write(self, data: bytes | bytearray | Sequence[bytes]) -> None:
        """Append bytes (one buffer, or several written with one writev: no joining copy) and extend the
        block checksums (xxh3 releases the GIL on large buffers)."""
        with self._lock:
            self._write([data] if isinstance(data, (bytes, bytearray, memoryview)) else data)

    def _write(self, pieces: Sequence[bytes | bytearray | memoryview]) -> None:
        if self.fd is None:
            raise ValueError("shard upload already finished or aborted")
        views = [memoryview(p).cast("B") for p in pieces if len(p)]
        total = sum(len(v) for v in views)
        if self.fail_after_bytes is not None and self.size + total > self.fail_after_bytes:
            raise DiskFull(errno.ENOSPC, "No space left on device (fault hook)")
        try:
            pending, i = list(views), 0
            while i < len(pending):
                written = os.writev(self.fd, pending[i:i + IOV_MAX])
                while i < len(pending) and written >= len(pending[i]):
                    written -= len(pending[i])
                    i += 1
                if written:
                    pending[i] = pending[i][written:]
        except OSError as e:
            if is_disk_full(e):
                raise DiskFull(e.errno, e.strerror) from None
            raise
        for view in views:
            while view:
                take = min(self.block_size - self._filled, len(view))
                self._hasher.update(view[:take])
                self._filled += take
                view = view[take:]
                if self._filled == self.block_size:
                    self.checksums.append(self._hasher.intdigest())
                    self._hasher, self._filled = xxhash.xxh3_64(), 0
        self.size += total

    def finish(self) -> None:
        """fsync the file, rename it to its final name, fsync the directory."""
        with self._lock:
            self._finish()

    def _finish(self) -> None:
        if self.fd is None:
            raise ValueError("shard upload already finished or aborted")
        if self._filled:
            self.checksums.append(self._hasher.intdigest())
            self._filled = 0
        fd, self.fd = self.fd, None
        try:
            if self.fsync:
                os.fsync(fd)
        except OSError as e:
            if is_disk_full(e):
                raise DiskFull(e.errno, e.strerror) from None
            raise
        finally:
            os.close(fd)
        os.replace(self.tmp, self.final)
        self.renamed = True
        if self.fsync:
            fsync_dir(self.final.parent)

    def abort(self) -> None:
        """Close and remove the temp file (safe to call more than once)."""
        with self._lock:
            if self.fd is not None:
                fd, self.fd = self.fd, None
                try:
                    os.close(fd)
                except OSError:
                    pass
            self.tmp.unlink(missing_ok=True)


class ShardUpload(Generic[R]):
    """A shard upload whose disk work is done in few thread-pool jobs: the first write makes the temp file
    (no job of its own) and the last write also makes it durable, so a shard that fits one batch costs one job.

    `begin` makes the BlobWriter, `finish` makes it durable and records it (both called in the job). Jobs
    run one at a time under a lock; `abort` waits for a job that is running, removes the temp file and
    refuses the jobs that come after it (one that the event loop could not cancel in time).
    """

    def __init__(self, begin: Callable[[], BlobWriter], finish: Callable[[BlobWriter], R]) -> None:
        self._begin, self._finish = begin, finish
        self._writer: BlobWriter | None = None
        self._aborted = False
        self._lock = threading.Lock()

    def write(self, pieces: Sequence[bytes], finish: bool = False) -> R | None:
        """Append `pieces`; with `finish`, then make the shard durable and return what `finish` returns."""
        with self._lock:
            if self._aborted:
                raise ValueError("shard upload aborted")
            try:
                if self._writer is None:
                    self._writer = self._begin()
                self._writer.write(pieces)
                return self._finish(self._writer) if finish else None
            except BaseException:
                if self._writer is not None:
                    self._writer.abort()
                raise

    def abort(self) -> None:
        """Close and remove the temp file (safe to call more than once, and after `finish`)."""
        with self._lock:
            self._aborted = True
            if self._writer is not None:
                self._writer.abort()


class ShardReader:
    """An open shard file whose blocks are verified against the stored checksums before they are returned.

    Opening checks the size (a truncated file or appended garbage is corrupt). Any failure calls
    `on_corrupt(row, why)` (which quarantines the file) and raises CorruptShard. Methods block; a lock
    keeps a close from racing a read still running on another thread.
    """

    def __init__(self, path: Path, row: BlobRow, on_corrupt: Callable[[BlobRow, str], None]) -> None:
        self.row, self.on_corrupt = row, on_corrupt
        self._lock = threading.Lock()
        self.fd = -1
        try:
            self.fd = os.open(path, os.O_RDONLY)
        except FileNotFoundError:
            self._bad("file missing")
        actual = os.fstat(self.fd).st_size
        if actual != row.size or len(row.checksums) != row.blocks:
            self._bad(f"size {actual}, expected {row.size} in {len(row.checksums)} blocks")

    def read_blocks(self, first: int, count: int, close: bool = False) -> bytes:
        """Blocks first..first+count-1 (clipped to the shard), concatenated, every one verified.

        `close`: the last read of this reader closes the file in the same call (one thread-pool job less).
        """
        with self._lock:
            if self.fd < 0:
                raise ValueError("shard reader is closed")
            try:
                return self._read_blocks(first, count)
            finally:
                if close:
                    self._close()

    @property
    def closed(self) -> bool:
        return self.fd < 0

    def _read_blocks(self, first: int, count: int) -> bytes:
        bs = self.row.block_size
        count = max(0, min(count, self.row.blocks - first))
        want = min(count * bs, self.row.size - first * bs) if count else 0
        data = os.pread(self.fd, want, first * bs) if want > 0 else b""
        if len(data) != want:
            self._bad(f"read {len(data)} of {want} bytes at block {first}")
        view = memoryview(data)
        for i in range(count):
            if xxhash.xxh3_64_intdigest(view[i * bs:(i + 1) * bs]) != self.row.checksums[first + i]:
                self._bad(f"block {first + i} checksum mismatch")
        return data

    def _bad(self, why: str) -> None:
        self._close()
        self.on_corrupt(self.row, why)
        raise CorruptShard(self.row, why)

    def close(self) -> None:
        with self._lock:
            self._close()

    def _close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
