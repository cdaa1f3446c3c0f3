"""The gateway's bucket cache: one read of a bucket record per expiry, however many requests ask at once."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

from gateway.buckets import CACHE_TTL, REFRESH_AFTER, Bucket, Buckets
from gateway.errors import S3Error
from objstore.kv import KVUnavailable
from objstore.records import KVRecord
from objstore.versions import new_version


class FakeView:
    def all_nodes(self) -> list[Any]:
        return []

    def by_availability(self, nodes: list[Any]) -> list[Any]:
        return nodes


class SlowKV:
    """Bucket records in a dict; each read takes a while and is counted."""

    def __init__(self) -> None:
        self.records: dict[str, KVRecord] = {}
        self.reads = 0
        self.fail = False
        self.gate = asyncio.Event()
        self.gate.set()

    async def get(self, nodes: Any, ns: str, name: str) -> KVRecord | None:
        self.reads += 1
        seen = self.records.get(name)  # what the nodes hold when they are asked
        await self.gate.wait()
        await asyncio.sleep(0.01)
        if self.fail:
            raise KVUnavailable("no majority")
        return seen

    async def put(self, nodes: Any, rec: KVRecord) -> None:
        self.records[rec.name] = rec


def bucket_record(name: str, versioning: str | None = None) -> KVRecord:
    return KVRecord("buckets", name, new_version(), {"owner": "AK", "owner_name": "u", "created": 1,
                                                    "versioning": versioning, "region": "us-east-1"})


@pytest.fixture
def kv() -> SlowKV:
    return SlowKV()


@pytest.fixture
def buckets(kv: SlowKV) -> Buckets:
    return Buckets(FakeView(), kv)  # type: ignore[arg-type]


def age(buckets: Buckets, name: str, seconds: float) -> None:
    when, rec = buckets._cache[name]
    buckets._cache[name] = (time.monotonic() - seconds, rec)


async def test_requests_of_an_expired_bucket_share_one_read(buckets: Buckets, kv: SlowKV) -> None:
    kv.records["b"] = bucket_record("b")
    found = await asyncio.gather(*(buckets.lookup("b") for _ in range(50)))
    assert kv.reads == 1 and all(f is not None and f.name == "b" for f in found)
    age(buckets, "b", CACHE_TTL + 1)
    await asyncio.gather(*(buckets.lookup("b") for _ in range(50)))
    assert kv.reads == 2


async def test_a_fresh_copy_is_not_read_again_and_an_aging_one_is_read_ahead(buckets: Buckets, kv: SlowKV) -> None:
    kv.records["b"] = bucket_record("b")
    await buckets.lookup("b")
    await asyncio.gather(*(buckets.lookup("b") for _ in range(20)))
    assert kv.reads == 1
    kv.records["b"] = bucket_record("b", versioning="Enabled")  # changed by another gateway
    age(buckets, "b", REFRESH_AFTER + 0.1)
    kv.gate.clear()
    found = await asyncio.wait_for(asyncio.gather(*(buckets.lookup("b") for _ in range(20))), 1)
    assert all(f is not None and f.versioning is None for f in found)  # answered from the cache, no wait
    assert kv.reads == 2  # and read again once, in the background
    kv.gate.set()
    for _ in range(100):
        if not buckets._reads:
            break
        await asyncio.sleep(0.01)
    found1 = await buckets.lookup("b")
    assert found1 is not None and found1.versioning == "Enabled" and kv.reads == 2


async def test_a_read_that_began_before_a_write_does_not_replace_it(buckets: Buckets, kv: SlowKV) -> None:
    kv.gate.clear()
    reading = asyncio.ensure_future(buckets.lookup("b"))  # the nodes hold no bucket yet
    await asyncio.sleep(0)
    await asyncio.wait_for(buckets.update(Bucket("b", "AK", "u", 123)), 1)  # the write path of create
    kv.gate.set()
    assert await asyncio.wait_for(reading, 1) is None
    found = await buckets.lookup("b")
    assert found is not None and found.created_ns == 123 and kv.reads == 1


async def test_a_failed_read_fails_its_waiters_and_the_next_lookup_reads_again(buckets: Buckets, kv: SlowKV) -> None:
    kv.records["b"] = bucket_record("b")
    kv.fail = True
    results = await asyncio.gather(*(buckets.lookup("b") for _ in range(5)), return_exceptions=True)
    assert kv.reads == 1 and all(isinstance(r, S3Error) and r.code == "ServiceUnavailable" for r in results)
    kv.fail = False
    assert await buckets.lookup("b") is not None and kv.reads == 2


async def test_a_read_ahead_that_fails_is_quiet_and_leaves_the_cached_copy(buckets: Buckets, kv: SlowKV) -> None:
    kv.records["b"] = bucket_record("b")
    await buckets.lookup("b")
    age(buckets, "b", REFRESH_AFTER + 0.1)
    kv.fail = True
    assert await buckets.lookup("b") is not None
    for _ in range(100):
        if not buckets._reads:
            break
        await asyncio.sleep(0.01)
    assert not buckets._reads and await buckets.lookup("b") is not None  # still within CACHE_TTL
