"""Where repair rebuilds a lost shard: only onto owners that answer, never onto one that just fell silent."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from objstore import repair
from objstore.repair import Repairer
from tests.unit.objects_harness import BUCKET, payload, put, read, start_cluster


async def test_no_rebuild_onto_an_owner_that_is_not_known_to_answer(tmp_path: Path) -> None:
    c = await start_cluster(tmp_path)
    try:
        data = payload(300_000, seed=3)
        committed = await put(c, "k", data)
        lost = c.owners("k")[2]
        c.store(lost.id).delete_record(BUCKET, "k", committed.record.version)
        assert c.store(lost.id).get_record(BUCKET, "k") == []

        # Its detector calls it suspect: alive (it may still hold data), but no target for a rebuild.
        writes_before = c.client.by_node[(lost.id, "PUT /record")]
        suspect = Repairer(c.view, c.client, c.io, writable=lambda n: n.id != lost.id, gc_grace=3600)
        stats = await suspect.run_pass()
        assert (stats.shards_rebuilt, stats.objects_degraded) == (0, 1)
        assert c.client.by_node[(lost.id, "PUT /record")] == writes_before
        assert c.store(lost.id).get_record(BUCKET, "k") == []

        stats = await Repairer(c.view, c.client, c.io, gc_grace=3600).run_pass()  # up again
        assert stats.shards_rebuilt == 1 and stats.objects_degraded == 0
        assert len(c.store(lost.id).get_record(BUCKET, "k")) == 1
        assert await read(c, "k") == data
    finally:
        await c.close()


async def test_a_pass_reports_the_object_bytes_it_scanned(tmp_path: Path) -> None:
    c = await start_cluster(tmp_path)
    try:
        sizes = {"a": 300_000, "b": 10, "c": 50_000, "d": 0}
        for key, size in sizes.items():
            await put(c, key, payload(size, seed=size))
        stats = await Repairer(c.view, c.client, c.io, gc_grace=3600).run_pass()
        assert (stats.objects_scanned, stats.bytes_scanned) == (4, sum(sizes.values()))
        # An owner that lost a record does not make the pass count less: the fullest node's bytes count.
        c.store(c.owners("a")[0].id).delete_record(BUCKET, "a", (await c.io.find(c.ring, BUCKET, "a")).record.version)
        stats = await Repairer(c.view, c.client, c.io, gc_grace=3600).run_pass()
        assert stats.bytes_scanned == sum(sizes.values()) and stats.shards_rebuilt == 1
    finally:
        await c.close()


async def test_owners_that_differ_only_for_a_moment_are_not_compared_record_by_record(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Digests read while a write is in flight differ for its partition; asked again they agree, and
    the pass does not read every record of that partition from every node."""
    monkeypatch.setattr(repair, "RECHECK_DELAY", 0.01)
    c = await start_cluster(tmp_path)
    try:
        await put(c, "k", payload(1000, seed=1))
        late = c.owners("k")[1]
        recs = c.store(late.id).get_record(BUCKET, "k")
        c.store(late.id).delete_record(BUCKET, "k", recs[0].version)  # its record has not landed yet
        repairer = Repairer(c.view, c.client, c.io, gc_grace=3600)
        asked = repairer._partitions_held
        calls: list[int] = []

        async def held_then_landed() -> Any:
            if calls:
                for rec in recs:
                    c.store(late.id).put_record(rec)  # ... and now it has
            calls.append(1)
            return await asked()

        drilled: list[int] = []
        records_of = c.client.partition_records

        async def counted(node: Any, p: int) -> Any:
            drilled.append(p)
            return await records_of(node, p)

        monkeypatch.setattr(repairer, "_partitions_held", held_then_landed)
        monkeypatch.setattr(c.client, "partition_records", counted)
        stats = await repairer.run_pass()
        assert len(calls) == 2 and drilled == []
        assert stats.partitions_in_sync == stats.partitions_scanned == stats.partitions_total
        assert stats.shards_rebuilt == 0

        c.store(late.id).delete_record(BUCKET, "k", recs[0].version)  # lost for good: drilled and rebuilt
        calls.clear()
        stats = await Repairer(c.view, c.client, c.io, gc_grace=3600).run_pass()
        assert drilled and stats.shards_rebuilt == 1
    finally:
        await c.close()
