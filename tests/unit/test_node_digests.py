"""The node store's kept partition digests and held partitions: always what the rows say, whatever changed them."""

from __future__ import annotations

import asyncio
import shutil
import sqlite3
import tempfile
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

import node.store
from node.store import BlobMissing, BlobReferenced, Store
from objstore.cluster import ECProfile
from objstore.codec import block_checksum
from objstore.records import ObjectRecord, PartRef
from objstore.ring import partition_of

BS = 512
EC = ECProfile(2, 1, BS)
BITS = 2  # four partitions: keys, blobs and records of different partitions meet often
KEYS = ["a", "b", "c", "d", "e", "f"]
BLOBS = ["x", "y", "z"]
SHARDS = st.integers(0, 1)


def blob_data(blob: str) -> bytes:
    return (blob * 3 * BS).encode()[:3 * BS]


def blob_part(blob: str, number: int = 1) -> PartRef:
    data = blob_data(blob)
    return PartRef(number, len(data), "etag", blob,
                   checksums=[block_checksum(data[i:i + BS]) for i in range(0, len(data), BS)])


def carried_part(blob: str) -> PartRef:
    """The shard as a gateway sends a one-stripe object's: inside the record, for the node to write to a
    shard file of its own (it is above the inline size the machine sets)."""
    part = blob_part(blob)
    part.inline = blob_data(blob)
    return part


def write_blob(store: Store, blob: str, shard: int, partition: int) -> None:
    w = store.begin_blob(partition, blob, shard, BS)
    w.write(blob_data(blob))
    store.finish_blob(w, partition, blob, shard)


def record(key: str, version: str, shard: int, kind: str, blob: str = "x") -> ObjectRecord:
    parts = {"inline": [PartRef(1, 3, "e", "i", inline=b"abc")],
             "blob": [blob_part(blob)],
             "absent": [PartRef(1, 3 * BS, "e", blob, present=False)],
             "mixed": [blob_part(blob), PartRef(2, 10, "e", "elsewhere", present=False)],
             "carried": [carried_part(blob)],
             "deleted": []}[kind]
    return ObjectRecord(bucket="bk", key=key, version=version, shard=shard, ec=EC, parts=parts,
                        size=sum(p.size for p in parts), deleted=kind == "deleted")


def rows_held(store: Store) -> list[int]:
    return store.sql_executor.submit(lambda: [p for (p,) in store._db.execute(
        "SELECT DISTINCT partition FROM objects ORDER BY partition")]).result()


class DigestMachine(RuleBasedStateMachine):
    """Every kind of change a node's records and blob rows see, each followed by every digest asked again."""

    def __init__(self) -> None:
        super().__init__()
        self.dir = Path(tempfile.mkdtemp(prefix="digests-"))
        self.store = Store(self.dir / "node", partition_bits=BITS, fsync=False)
        self.uploaded: set[tuple[str, int, int]] = set()
        self.inline_max, node.store.INLINE_MAX_SHARD = node.store.INLINE_MAX_SHARD, BS  # "carried" makes files

    def teardown(self) -> None:
        self.ask_digests()
        self.store.close()
        node.store.INLINE_MAX_SHARD = self.inline_max
        shutil.rmtree(self.dir, ignore_errors=True)

    @rule(key=st.sampled_from(KEYS), version=st.sampled_from(["v1", "v2", "v3"]), shard=SHARDS,
          kind=st.sampled_from(["inline", "blob", "absent", "mixed", "carried", "deleted"]),
          blob=st.sampled_from(BLOBS))
    def put_record(self, key: str, version: str, shard: int, kind: str, blob: str) -> None:
        try:
            self.store.put_record(record(key, version, shard, kind, blob))
        except BlobMissing:
            pass

    @precondition(lambda self: self.uploaded)
    @rule(data=st.data(), version=st.sampled_from(["v1", "v2", "v3"]), kind=st.sampled_from(["blob", "mixed"]))
    def put_record_naming_a_shard(self, data: st.DataObject, version: str, kind: str) -> None:
        """A record naming a shard uploaded here, of a key of the partition it was uploaded for (when any)."""
        blob, shard, partition = data.draw(st.sampled_from(sorted(self.uploaded)))
        keys = [k for k in KEYS if partition_of("bk", k, BITS) == partition] or KEYS
        self.put_record(data.draw(st.sampled_from(keys)), version, shard, kind, blob)

    @rule(calls=st.lists(st.tuples(st.sampled_from(KEYS), st.sampled_from(["v1", "v2", "v3"]), SHARDS,
                                   st.sampled_from(["inline", "blob", "absent", "carried", "deleted"]),
                                   st.sampled_from(BLOBS)),
                         min_size=2, max_size=5))
    def put_records(self, calls: list[tuple[str, str, int, str, str]]) -> None:
        """Several records in one transaction, as a batch from a gateway commits them: the same version
        twice, several versions of a key, new and rewritten versions, some refused."""
        self.store.put_records([record(*call) for call in calls], 4)

    @rule(key=st.sampled_from(KEYS), version=st.sampled_from(["v1", "v2", "v3"]))
    def delete_record(self, key: str, version: str) -> None:
        self.store.delete_record("bk", key, version)

    @rule(blob=st.sampled_from(BLOBS), shard=SHARDS, key=st.sampled_from(KEYS),
          elsewhere=st.integers(0, 2 ** BITS - 1) | st.none())
    def upload_blob(self, blob: str, shard: int, key: str, elsewhere: int | None) -> None:
        """A shard uploaded (or rebuilt) for a key's partition, or now and then for another one."""
        partition = partition_of("bk", key, BITS) if elsewhere is None else elsewhere
        write_blob(self.store, blob, shard, partition)
        self.uploaded.add((blob, shard, partition))

    @rule(blob=st.sampled_from(BLOBS), shard=SHARDS)
    def quarantine(self, blob: str, shard: int) -> None:
        row = self.store.blob(blob, shard)
        if row is not None:
            self.store.quarantine(row, "test")

    @rule(blob=st.sampled_from(BLOBS), shard=SHARDS, force=st.booleans())
    def delete_blob(self, blob: str, shard: int, force: bool) -> None:
        try:
            self.store.delete_blob(blob, shard, force=force)
        except BlobReferenced:
            pass

    @rule(blob=st.sampled_from(BLOBS), shard=SHARDS)
    def drop_pending(self, blob: str, shard: int) -> None:
        self.store.drop_pending_blob(blob, shard, time.time_ns() + 10**12)

    @rule(key=st.sampled_from(KEYS))
    def damage_record(self, key: str) -> None:
        """A record that no longer reads back (bit rot in records.db) is unhealthy: only a restart sees it."""
        store = self.store
        store.sql_executor.submit(lambda: store._db.execute(
            "UPDATE objects SET record = substr(record, 1, 20) WHERE key=?", (key,))).result()
        self.restart()

    @rule()
    def restart(self) -> None:
        self.store.close()
        self.store = Store(self.dir / "node", partition_bits=BITS, fsync=False)

    @rule()
    def ask_digests(self) -> None:
        """Now and then, not after every change: a digest kept over several changes (a repair pass's
        interval) must come out as one read afresh."""
        for p in range(2 ** BITS):
            assert self.store.partition_digest(p) == self.store.fresh_digest(p), p

    @invariant()
    def held_partitions_are_fresh(self) -> None:
        assert self.store.partitions_held() == rows_held(self.store)


TestDigestMachine = DigestMachine.TestCase
TestDigestMachine.settings = settings(max_examples=60, stateful_step_count=40, deadline=None,
                                      suppress_health_check=[HealthCheck.too_slow])


@pytest.fixture
def store(tmp_path: Path) -> Store:
    s = Store(tmp_path / "node", partition_bits=BITS, fsync=False)
    yield s
    s.close()


def test_an_unchanged_partition_is_not_read_again(store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    store.put_record(record("a", "v1", 0, "inline"))
    p = partition_of("bk", "a", BITS)
    first = store.partition_digest(p)
    calls: list[int] = []
    fresh = store._fresh_sum
    monkeypatch.setattr(store, "_fresh_sum", lambda q: calls.append(q) or fresh(q))
    assert [store.partition_digest(p) for _ in range(3)] == [first] * 3 and calls == []
    other = next(k for k in KEYS if partition_of("bk", k, BITS) != p)
    store.put_record(record(other, "v1", 0, "inline"))  # another partition: this one stays kept
    assert store.partition_digest(p) == first and calls == []


def test_a_write_costs_the_digest_the_versions_it_touched_not_the_partition(
        store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    """Under steady writes every partition changes between two repair passes: asking its digest must
    not read every record of it again, or a pass costs the whole bucket."""
    p = partition_of("bk", "a", BITS)
    keys = [k for k in KEYS if partition_of("bk", k, BITS) == p]
    for i in range(50):
        store.put_record(record(keys[0], f"v{i:03d}", 0, "inline"))
    store.partition_digest(p)
    whole: list[int] = []
    terms: list[tuple[str, str, str]] = []
    fresh, term = store._fresh_sum, store._term
    monkeypatch.setattr(store, "_fresh_sum", lambda q: whole.append(q) or fresh(q))
    monkeypatch.setattr(store, "_term", lambda q, b, k, v: terms.append((b, k, v)) or term(q, b, k, v))
    store.put_record(record(keys[-1], "w1", 0, "inline"))
    store.put_record(record(keys[-1], "w1", 1, "inline"))  # a second shard of the same version
    store.delete_record("bk", keys[0], "v007")
    got = store.partition_digest(p)
    assert whole == [] and sorted(set(terms)) == [("bk", keys[0], "v007"), ("bk", keys[-1], "w1")]
    assert len(terms) == 4  # each version read once before its first change and once when asked
    assert got == store.fresh_digest(p) and got[1] == 50


def test_a_partition_changed_wholesale_is_read_again_whole(store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(Store, "PENDING_MAX", 3)
    p = partition_of("bk", "a", BITS)
    for i in range(6):
        store.put_record(record("a", f"v{i}", 0, "inline"))
    store.partition_digest(p)
    for i in range(5):
        store.delete_record("bk", "a", f"v{i}")
    assert store.sql_executor.submit(lambda: p not in store._digests).result()
    assert store.partition_digest(p) == store.fresh_digest(p) and store.partition_digest(p)[1] == 1


def test_the_digest_does_not_depend_on_the_order_records_came_in(tmp_path: Path) -> None:
    """Owners that got the same versions in another order (repair, handoffs) agree on the digest."""
    one = Store(tmp_path / "one", partition_bits=BITS, fsync=False)
    two = Store(tmp_path / "two", partition_bits=BITS, fsync=False)
    try:
        recs = [record(k, v, 0, "inline") for k in KEYS for v in ("v1", "v2")]
        for r in recs:
            one.put_record(r)
        for r in reversed(recs):
            two.put_record(r)
        for p in range(2 ** BITS):
            assert one.partition_digest(p) == two.partition_digest(p)
    finally:
        one.close()
        two.close()


def test_quarantine_of_a_shard_changes_the_digest_of_its_partition(store: Store) -> None:
    """Repair finds a shard scrub quarantined only through the digest: a kept one must not hide it."""
    p = partition_of("bk", "a", BITS)
    write_blob(store, "x", 0, p)
    store.put_record(record("a", "v1", 0, "blob", "x"))
    store.put_record(record("a", "v0", 0, "inline"))
    healthy, count, size, _ = store.partition_digest(p)
    assert count == 2
    row = store.blob("x", 0)
    assert row is not None
    store.quarantine(row, "scrub")
    assert store.partition_digest(p) == store.fresh_digest(p)
    assert store.partition_digest(p)[1] == 1
    write_blob(store, "x", 0, p)  # rebuilt by repair: whole again
    assert store.partition_digest(p) == (healthy, 2, size, 0)


def test_held_partitions_follow_puts_and_deletes(store: Store) -> None:
    assert store.partitions_held() == []
    store.put_record(record("a", "v1", 0, "inline"))
    store.put_record(record("a", "v1", 1, "inline"))
    p = partition_of("bk", "a", BITS)
    assert store.partitions_held() == [p]
    with pytest.raises(BlobMissing):  # a refused write leaves nothing held
        store.put_record(record("b", "v1", 0, "blob", "z"))
    assert store.partitions_held() == rows_held(store)
    store.delete_record("bk", "a", "v1")
    assert store.partitions_held() == []


async def test_one_call_gives_every_partition_digest_as_the_per_partition_call_does(tmp_path: Path) -> None:
    from tests.unit.test_node_rpc import record as rpc_record
    from tests.unit.test_node_rpc import start

    node = await start(tmp_path / "n1")
    try:
        inline = PartRef(1, 3, "e", "i", inline=b"abc")
        for i in range(40):
            await node.client.put_record(node.info, rpc_record(f"key{i}", f"{i + 1:016x}", [inline]))
        batch = await node.client.partition_digests(node.info)
        held = await node.client.partitions_held(node.info)
        assert sorted(batch.held) == held and len(held) > 1
        for p in range(256):  # the harness map has 2^8 partitions
            assert batch.of(p) == await node.client.partition_digest(node.info, p)
        assert batch.empty[1] == 0 and batch.of(next(p for p in range(256) if p not in held)) == batch.empty
        await node.client.delete_record(node.info, "b", "key0", f"{1:016x}")
        again = await node.client.partition_digests(node.info)
        p0 = partition_of("b", "key0", 8)
        assert again.of(p0) == await node.client.partition_digest(node.info, p0) != batch.of(p0)
    finally:
        await node.client.close()
        await node.server.close()


async def test_askers_at_once_after_writes_settle_each_digest_once(tmp_path: Path, monkeypatch) -> None:
    """Every node's repair pass asks for the digests at about the same time. After a burst of writes the
    first asker settles them; the others wait their turn and find them settled (each settling them all
    again cost a node a second of CPU for 6,000 writes at 6 askers)."""
    from tests.unit.test_node_rpc import record as rpc_record
    from tests.unit.test_node_rpc import start

    node = await start(tmp_path / "n1")
    try:
        inline = PartRef(1, 3, "e", "i", inline=b"abc")
        for i in range(60):
            await node.client.put_record(node.info, rpc_record(f"key{i}", f"{i + 1:016x}", [inline]))
        first = await node.client.partition_digests(node.info)  # kept from here on
        for i in range(0, 60, 2):
            await node.client.delete_record(node.info, "b", f"key{i}", f"{i + 1:016x}")
        for i in range(60, 90):
            await node.client.put_record(node.info, rpc_record(f"key{i}", f"{i + 1:016x}", [inline]))
        asked: list[int] = []
        digest = Store.partition_digest.__wrapped__  # type: ignore[attr-defined]

        def counted(store: Store, p: int) -> tuple[str, int, int, int]:
            asked.append(p)
            return digest(store, p)

        monkeypatch.setattr(Store, "partition_digest", counted)
        monkeypatch.setattr("node.server.PARTITIONS_JOB_SECONDS", 0.0)  # a job a partition: the askers interleave
        answers = await asyncio.gather(*(node.client.partition_digests(node.info) for _ in range(6)))
        settled, asked[:] = list(asked), []
        held = await node.client.partitions_held(node.info)
        assert all(a.held == answers[0].held for a in answers) and sorted(answers[0].held) == held
        for p in range(256):  # the harness map has 2^8 partitions
            want = await node.client.partition_digest(node.info, p)
            assert all(a.of(p) == want for a in answers)
        assert len(settled) > 10, "the deletes left no digest to settle"
        assert len(settled) == len(set(settled)), "a digest was settled more than once"
        assert any(answers[0].of(p) != first.of(p) for p in settled)
    finally:
        await node.client.close()
        await node.server.close()


def test_one_digest_job_settles_as_many_partitions_as_its_budget_allows(store: Store) -> None:
    for key in KEYS:
        store.put_record(record(key, "v1", 0, "inline"))
    held = store.partitions_held()
    assert len(held) > 1
    assert store.each_partition(store.partition_digest, held, 0.0) == [store.fresh_digest(held[0])]  # one at least
    everything = store.each_partition(store.partition_digest, held, 60.0)
    assert everything == [store.fresh_digest(p) for p in held]


def test_records_damaged_on_disk_are_found_by_scrub_not_hidden_by_a_kept_digest(store: Store) -> None:
    store.put_record(record("a", "v1", 0, "inline"))
    store.put_record(record("a", "v2", 0, "inline"))
    p = partition_of("bk", "a", BITS)
    assert store.partition_digest(p)[1] == 2 and not store.scrub_records(p)
    # Another writer of records.db, as bit rot would be: the store sees no change through itself.
    with sqlite3.connect(store.root / "records.db") as db:
        db.execute("UPDATE objects SET record = substr(record, 1, 20) WHERE version='v2'")
    assert store.partition_digest(p)[1] == 2  # kept
    assert store.scrub_records(p)
    assert store.partition_digest(p) == store.fresh_digest(p) and store.partition_digest(p)[1] == 1
    assert store.corrupt_found == 1 and not store.scrub_records(p)


def test_a_version_removed_and_written_again_between_two_asks_counts_once(store: Store) -> None:
    """A small object's record written as new after the digest was kept (its term added at once) must not
    be counted again when the note of its earlier removal settles (a repair rebuilding a lost shard)."""
    p = partition_of("bk", "a", BITS)
    store.put_record(record("a", "v1", 0, "inline"))
    store.put_record(record("b", "v1", 0, "inline"))
    kept = store.partition_digest(p)
    store.delete_record("bk", "a", "v1")
    store.put_record(record("a", "v1", 1, "inline"))
    store.put_record(record("a", "v2", 0, "inline"))  # the short way, with the partition's digest kept
    assert store.partition_digest(p) == store.fresh_digest(p) != kept
    assert store.partition_digest(p)[1] == kept[1] + 1


def test_a_shard_file_carried_in_again_counts_for_every_record_that_names_it(
        store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    """A new record that carries a shard file other records here name (one quarantined since) is not
    written the short way: they turn whole again with it, and their partitions' digests must say so."""
    monkeypatch.setattr(node.store, "INLINE_MAX_SHARD", BS)
    store.put_record(record("a", "v1", 0, "carried", "x"))
    p = partition_of("bk", "a", BITS)
    whole = store.partition_digest(p)
    store.quarantine(store.blob("x", 0), "test")
    assert store.partition_digest(p) == store.fresh_digest(p) != whole
    store.put_record(record("a", "v2", 0, "carried", "x"))  # a new version here, naming the same file
    assert store.blob("x", 0).state == "committed"
    assert store.partition_digest(p) == store.fresh_digest(p)
    assert store.partition_digest(p)[1] == whole[1] + 1  # v1 whole again, and v2


def test_a_new_record_and_the_shard_file_it_carries_take_a_few_statements(
        store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    """The common write of a one-stripe object: its shard file is new and the version is new here, so
    its rows go in without the checks of a rewrite (a dozen statements a record, measured 2.7x the
    SQLite time). Sent again, it takes the full way and changes nothing."""
    monkeypatch.setattr(node.store, "INLINE_MAX_SHARD", BS)
    store.put_record(record("a", "v0", 0, "inline"))
    for p in range(2 ** BITS):
        store.partition_digest(p)  # kept: the write adds its term
    statements: list[str] = []
    store.sql_executor.submit(lambda: store._db.set_trace_callback(statements.append)).result()
    assert store.put_records([record("a", "v1", 0, "carried", "x")], 4) == [["v0"]]
    store.sql_executor.submit(lambda: store._db.set_trace_callback(None)).result()
    record_statements = [s for s in statements if not s.startswith(("BEGIN", "COMMIT"))]
    assert len(record_statements) <= 5, record_statements
    assert store.blob("x", 0).state == "committed"
    assert store.partition_digest(partition_of("bk", "a", BITS)) == store.fresh_digest(partition_of("bk", "a", BITS))
    assert store.put_records([record("a", "v1", 0, "carried", "x")], 4) == [["v0"]]
    assert [r.version for r in store.versions("bk", "a")] == ["v1", "v0"]


def test_a_batch_answers_each_record_with_the_older_versions_the_whole_batch_left(store: Store) -> None:
    """Two versions of one key in one batch, newest first: the newer one's answer names the older one
    (so the gateway retires it), as if each record had been committed after the whole batch."""
    store.put_record(record("a", "v1", 0, "inline"))
    results = store.put_records([record("a", "v3", 0, "inline"), record("a", "v2", 0, "inline"),
                                 record("b", "v1", 0, "inline")], 4)
    assert results == [["v2", "v1"], ["v1"], []]
