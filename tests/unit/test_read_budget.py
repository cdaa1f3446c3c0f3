"""The gateway's read budget: a GET's share from the read path's constants, SlowDown when it does not come in time,
nothing leaked on error or cancel, and copies that count their source read in their write share."""

from __future__ import annotations

import asyncio

import pytest

from gateway.budget import Budget, read_share, write_share
from gateway.errors import S3Error
from objstore.cluster import ECProfile
from objstore.objects import write_buffer_bytes
from objstore.reader import STREAM_READAHEAD, read_buffer_bytes
from objstore.records import ObjectRecord, PartRef

EC = ECProfile(4, 2, 256 * 1024)
MiB = 2**20


def record(*parts: tuple[int, bool], ec: ECProfile = EC) -> ObjectRecord:
    """A record whose parts have these (size, inline) pairs."""
    refs = [PartRef(i + 1, size, "e", f"blob{i}", inline=b"x" if inline else None)
            for i, (size, inline) in enumerate(parts)]
    return ObjectRecord(bucket="b", key="k", version="v", shard=0, ec=ec, size=sum(p.size for p in refs), etag="e",
                        parts=refs)


def run(coro):  # type: ignore[no-untyped-def]
    return asyncio.run(coro)


def test_a_streamed_get_reserves_two_stripes_the_blocks_in_flight_and_each_stream_head_whatever_its_size() -> None:
    in_flight = EC.k + min(EC.k, EC.m)  # k streams and a hedged spare per laggard (only m other shards exist)
    streamed = (2 * EC.k + in_flight) * EC.block_size + in_flight * STREAM_READAHEAD
    assert streamed == 14 * 256 * 1024 + 6 * 16 * 1024  # at 4+2 with 256 KiB blocks; a stream's head buffer
    assert read_buffer_bytes(record((16 * MiB, False)), 0, 16 * MiB) == streamed
    assert read_buffer_bytes(record((10 * 2**30, False)), 0, 10 * 2**30) == streamed, "does not grow with size"
    assert read_buffer_bytes(record((10 * 2**30, False)), 5 * 2**30 + 7, 1) == streamed, \
        "one byte of a large object still reads whole blocks on every stream"
    parts = record((8 * MiB, False), (8 * MiB, False), (3 * MiB, False))
    assert read_buffer_bytes(parts, 0, parts.size) == streamed
    assert read_buffer_bytes(parts, 16 * MiB, 3 * MiB) == streamed  # partNumber=3


def test_a_small_get_costs_about_its_size() -> None:
    small = record((4096, True))
    assert read_buffer_bytes(small, 0, 4096) == 14 * 1024  # its payload, k blocks, spares: no stream, no read-ahead
    assert read_buffer_bytes(record((100, True)), 0, 100) == 14 * 25
    assert read_buffer_bytes(small, 0, 0) == 0 and read_buffer_bytes(record((0, True)), 0, 0) == 0
    # a small object whose shards sit in blob files has streams, hence their read-ahead
    assert read_buffer_bytes(record((4096, False)), 0, 4096) == 14 * 1024 + 6 * STREAM_READAHEAD
    narrow = ECProfile(2, 1, 4096)
    assert read_buffer_bytes(record((1 * MiB, False), ec=narrow), 0, 1 * MiB) == (4 + 3) * 4096 + 3 * STREAM_READAHEAD


def test_a_get_waits_first_come_first_served_then_slowdown_and_leaks_nothing() -> None:
    async def main() -> None:
        big = record((16 * MiB, False))
        b = Budget(read_buffer_bytes(big, 0, big.size), wait=0.02, kind="read")
        async with read_share(b, big, 0, big.size):
            assert b.in_use == b.capacity
            with pytest.raises(S3Error) as e:
                async with read_share(b, record((4096, True)), 0, 4096):
                    pass
            assert e.value.code == "SlowDown" and e.value.status == 503
            async with read_share(b, big, 0, 0):  # an empty range reads nothing: no share, no wait
                assert b.in_use == b.capacity
        assert b.in_use == 0 and b.refused == 1 and b.waiting == 0
        with pytest.raises(ConnectionResetError):  # the client hung up mid-body
            async with read_share(b, big, 0, big.size):
                raise ConnectionResetError
        assert b.in_use == 0
    run(main())


def test_a_cancelled_get_gives_its_share_back_whether_holding_or_queued() -> None:
    async def main() -> None:
        big = record((16 * MiB, False))
        b = Budget(read_buffer_bytes(big, 0, big.size), wait=5.0, kind="read")
        sending = asyncio.Event()

        async def get() -> None:
            async with read_share(b, big, 0, big.size):
                sending.set()
                await asyncio.sleep(60)  # a slow download
        holder = asyncio.create_task(get())
        await sending.wait()
        queued = asyncio.create_task(get())
        await asyncio.sleep(0.01)
        assert b.waiting == 1
        queued.cancel()
        with pytest.raises(asyncio.CancelledError):
            await queued
        assert b.waiting == 0 and b.in_use == b.capacity
        holder.cancel()
        with pytest.raises(asyncio.CancelledError):
            await holder
        assert b.in_use == 0 and b.waiting == 0
    run(main())


def test_shards_that_came_with_the_records_are_counted_or_dropped_before_a_wait() -> None:
    async def main() -> None:
        medium = record((1 * MiB, False))
        own = read_buffer_bytes(medium, 0, MiB)
        b = Budget(own + MiB, wait=5.0, kind="read")
        shards = {("n1", i, "blob0"): bytes(256 * 1024) for i in range(4)}
        async with read_share(b, medium, 0, MiB, shards):
            # granted at once: the shards count too, in place of the read-ahead of the k streams they spare
            assert b.in_use == own + MiB - 4 * STREAM_READAHEAD and len(shards) == 4
            queued = {("n2", 0, "blob0"): bytes(256 * 1024)}
            waiting = asyncio.create_task(read_share(b, medium, 0, MiB, queued).__aenter__())
            await asyncio.sleep(0.01)
            assert not queued and b.waiting == 1  # it would wait: dropped, to be streamed once granted
        await waiting
        assert b.in_use == own
    run(main())


def test_a_copy_takes_its_source_read_out_of_its_write_share() -> None:
    async def main() -> None:
        src = record((16 * MiB, False))
        both = write_buffer_bytes(EC, src.size) + read_buffer_bytes(src, 0, src.size)
        b = Budget(10 * both, wait=1.0)
        async with write_share(b, EC, src.size, (src, 0, src.size)):
            assert b.in_use == both
        async with write_share(b, EC, 5 * MiB, (src, 2 * MiB, 5 * MiB)):  # UploadPartCopy of a range
            assert b.in_use == write_buffer_bytes(EC, 5 * MiB) + read_buffer_bytes(src, 2 * MiB, 5 * MiB)
        async with write_share(b, EC, 0):  # an empty body still takes its one byte, as before
            assert b.in_use == 1
        assert b.in_use == 0
    run(main())


@pytest.mark.parametrize("field,value", [("read_buffer_mb", 0.5), ("read_buffer_mb", -1), ("read_wait", -0.1),
                                         ("read_buffer_mb", "64"), ("read_wait", True)])
def test_gateway_refuses_a_bad_read_budget_setting(field: str, value: object) -> None:
    from objstore.config import ConfigError, gateway_config_from_dict

    doc = {"listen": "127.0.0.1:9000", "secret": "s", "map": "m.json", field: value}
    with pytest.raises(ConfigError, match=field):
        gateway_config_from_dict(doc)
    ok = gateway_config_from_dict({"listen": "127.0.0.1:9000", "secret": "s", "map": "m.json",
                                   "read_buffer_mb": 8, "read_wait": 0})
    assert (ok.read_buffer_mb, ok.read_wait) == (8.0, 0.0)
