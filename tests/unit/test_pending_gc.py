"""Removal of shards never committed: the Store's checks, and how a node tells a multipart part in use."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from node.loops import PART_BLOB
from node.store import BlobMissing, Store
from tests.unit.test_node_store import blob_part, rec, write_blob


@pytest.fixture
def store(tmp_path: Path) -> Store:
    s = Store(tmp_path / "node", partition_bits=8, fsync=False)
    yield s
    s.close()


def later() -> int:
    return time.time_ns() + 10**9


def test_only_old_pending_shards_go(store: Store) -> None:
    write_blob(store, "orphan", b"x" * 3000)
    data = b"y" * 3000
    write_blob(store, "kept", data)
    store.put_record(rec("k", "v1", [blob_part("kept", data)]))
    assert [r.blob for r in store.pending_blobs()] == ["orphan"]
    assert not store.drop_pending_blob("orphan", 0, time.time_ns() - 60 * 10**9)  # younger than the grace
    assert not store.drop_pending_blob("kept", 0, later())  # committed: a record names it
    path = store.root / store.blob("orphan", 0).path
    assert store.drop_pending_blob("orphan", 0, later())
    assert not path.exists() and store.blob("orphan", 0) is None and store.pending_blobs() == []
    assert store.blob("kept", 0).state == "committed"
    assert not store.drop_pending_blob("orphan", 0, later())  # gone already


def test_a_shard_uploaded_again_since_it_was_judged_stays(store: Store) -> None:
    write_blob(store, "again", b"z" * 2000)
    cutoff = later()
    path = store.root / store.blob("again", 0).path
    os.utime(path, ns=(cutoff, cutoff))  # the file now is newer than the row that was judged
    assert not store.drop_pending_blob("again", 0, cutoff)
    assert store.blob("again", 0) is not None and path.exists()


def test_a_record_naming_the_shard_after_removal_is_refused(store: Store) -> None:
    data = b"w" * 2000
    write_blob(store, "late", data)
    assert store.drop_pending_blob("late", 0, later())
    with pytest.raises(BlobMissing):
        store.put_record(rec("k", "v1", [blob_part("late", data)]))


@pytest.mark.parametrize("blob, part", [
    ("0000018c2f5e4a1b9f3e2d1c0b0a0908-00001-1a2b3c4d", ("0000018c2f5e4a1b9f3e2d1c0b0a0908", "00001")),
    ("0000018c2f5e4a1b9f3e2d1c0b0a0908-10000-00ff", ("0000018c2f5e4a1b9f3e2d1c0b0a0908", "10000")),
    ("0000018c2f5e4a1b9f3e2d1c0b0a0908", None),  # a single-part PUT's blob
    ("0000018c2f5e4a1b9f3e2d1c0b0a0908-1-1a2b", None),
    ("upload-00001-1a2b3c4d", None),
])
def test_part_blob_names(blob: str, part: tuple[str, str] | None) -> None:
    m = PART_BLOB.fullmatch(blob)
    assert (None if m is None else (m["upload"], m["number"])) == part
