"""The gateway's write budget: FIFO shares, a bounded wait that ends in SlowDown, nothing leaked on error or cancel."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from gateway import budget as budget_mod
from gateway.budget import BudgetTimeout, Budget, declared_size, write_share
from gateway.errors import S3Error
from objstore.cluster import ECProfile
from objstore.objects import INLINE_MAX_SHARD, SHARD_QUEUE_DEPTH, write_buffer_bytes

EC = ECProfile(4, 2, 256 * 1024)


def run(coro):  # type: ignore[no-untyped-def]
    return asyncio.run(coro)


async def _hold(b: Budget, n: int, order: list[str], name: str, release: asyncio.Event) -> None:
    async with b.reserve(n):
        order.append(name)
        await release.wait()


def test_writes_are_let_in_first_come_first_served_small_ones_do_not_overtake() -> None:
    async def main() -> None:
        b = Budget(10, wait=5.0)
        order: list[str] = []
        gates = {name: asyncio.Event() for name in "abcd"}
        a = asyncio.create_task(_hold(b, 8, order, "a", gates["a"]))
        await asyncio.sleep(0)
        big = asyncio.create_task(_hold(b, 5, order, "big", gates["b"]))
        await asyncio.sleep(0)
        small = asyncio.create_task(_hold(b, 1, order, "small", gates["c"]))  # would fit, but "big" came first
        await asyncio.sleep(0.01)
        assert order == ["a"] and b.waiting == 2 and b.in_use == 8
        gates["a"].set()
        await asyncio.sleep(0.01)
        assert order == ["a", "big", "small"] and b.in_use == 6 and b.waiting == 0
        gates["b"].set(), gates["c"].set()
        await asyncio.gather(a, big, small)
        assert b.in_use == 0 and b.granted == 3 and b.refused == 0
    run(main())


def test_many_small_writes_behind_a_large_one_all_get_in_without_starving_it() -> None:
    async def main() -> None:
        b = Budget(100, wait=5.0)
        order: list[str] = []
        first = asyncio.Event()
        holder = asyncio.create_task(_hold(b, 60, order, "first", first))
        await asyncio.sleep(0)
        done = asyncio.Event()
        done.set()
        large = asyncio.create_task(_hold(b, 80, order, "large", done))
        await asyncio.sleep(0)
        smalls = [asyncio.create_task(_hold(b, 1, order, f"s{i}", done)) for i in range(20)]
        await asyncio.sleep(0.01)
        assert order == ["first"], "small writes wait behind the large one that came before them"
        first.set()
        await asyncio.gather(holder, large, *smalls)
        assert order[:2] == ["first", "large"] and len(order) == 22 and b.in_use == 0
    run(main())


def test_a_write_waits_at_most_wait_seconds_then_is_refused_and_leaves_the_queue() -> None:
    async def main() -> None:
        b = Budget(10, wait=0.05)
        gate = asyncio.Event()
        holder = asyncio.create_task(_hold(b, 10, [], "holder", gate))
        await asyncio.sleep(0)
        loop = asyncio.get_running_loop()
        start = loop.time()
        with pytest.raises(BudgetTimeout):
            async with b.reserve(1):
                pass
        assert 0.04 < loop.time() - start < 1.0
        assert b.refused == 1 and b.waiting == 0 and b.in_use == 10
        gate.set()
        await holder
        async with b.reserve(10):  # nothing was leaked by the refused write
            assert b.in_use == 10
        assert b.in_use == 0
    run(main())


def test_a_refused_head_lets_the_writes_behind_it_in() -> None:
    async def main() -> None:
        b = Budget(10, wait=5.0)
        gate = asyncio.Event()
        holder = asyncio.create_task(_hold(b, 6, [], "holder", gate))
        await asyncio.sleep(0)
        b.wait = 0.05
        head = asyncio.create_task(b.acquire(8))  # can't fit until holder leaves; gives up first
        await asyncio.sleep(0)
        b.wait = 5.0
        order: list[str] = []
        behind = asyncio.create_task(_hold(b, 3, order, "behind", gate))
        with pytest.raises(BudgetTimeout):
            await head
        await asyncio.sleep(0.01)
        assert order == ["behind"], "a queue whose head gave up moves on at once"
        gate.set()
        await asyncio.gather(holder, behind)
        assert b.in_use == 0 and b.waiting == 0
    run(main())


def test_the_share_goes_back_on_error_and_on_cancel_while_holding_or_waiting() -> None:
    async def main() -> None:
        b = Budget(10, wait=5.0)
        with pytest.raises(RuntimeError):
            async with b.reserve(7):
                raise RuntimeError("node failed mid-write")
        assert b.in_use == 0

        started = asyncio.Event()

        async def hung_up() -> None:  # a client that disconnects: aiohttp cancels the handler
            async with b.reserve(7):
                started.set()
                await asyncio.sleep(60)
        holder = asyncio.create_task(hung_up())
        await started.wait()
        waiter = asyncio.create_task(b.acquire(5))
        await asyncio.sleep(0.01)
        assert b.waiting == 1
        waiter.cancel()  # cancelled while queued: leaves the queue, takes nothing
        with pytest.raises(asyncio.CancelledError):
            await waiter
        assert b.waiting == 0 and b.in_use == 7
        holder.cancel()
        with pytest.raises(asyncio.CancelledError):
            await holder
        assert b.in_use == 0 and b.waiting == 0
    run(main())


def test_a_grant_that_races_with_cancellation_is_handed_back() -> None:
    async def main() -> None:
        b = Budget(10, wait=5.0)
        n = await b.acquire(10)
        waiter = asyncio.create_task(b.acquire(4))
        await asyncio.sleep(0)
        b.release(n)  # grants the waiter ...
        waiter.cancel()  # ... which is cancelled before it runs again
        with pytest.raises(asyncio.CancelledError):
            await waiter
        assert b.in_use == 0 and b.waiting == 0
    run(main())


def test_a_request_larger_than_the_budget_waits_for_all_of_it() -> None:
    async def main() -> None:
        b = Budget(10, wait=5.0)
        async with b.reserve(10**9) as n:
            assert n == 10 and b.in_use == 10
        assert b.in_use == 0
    run(main())


def test_write_share_answers_slowdown_and_releases_what_it_took() -> None:
    async def main() -> None:
        b = Budget(write_buffer_bytes(EC, None), wait=0.02)
        async with write_share(b, EC, 5 * 2**30):
            assert b.in_use == b.capacity
            with pytest.raises(S3Error) as e:
                async with write_share(b, EC, 4096):
                    pass
            assert e.value.code == "SlowDown" and e.value.status == 503
        assert b.in_use == 0 and b.refused == 1
        with pytest.raises(ValueError):
            async with write_share(b, EC, 4096):
                raise ValueError("bad digest")
        assert b.in_use == 0
    run(main())


def test_idle_budget_trims_malloc_after_enough_bytes_went_through(monkeypatch: pytest.MonkeyPatch) -> None:
    async def main() -> None:
        calls: list[int] = []
        monkeypatch.setattr(budget_mod, "TRIM_AFTER_BYTES", 100)
        b = Budget(1000, wait=1.0, on_idle=lambda: calls.append(b.in_use))
        async with b.reserve(60):
            async with b.reserve(60):
                pass
            assert calls == [], "not idle while a write is in flight"
        assert calls == [0]
        async with b.reserve(60):
            pass
        assert calls == [0], "too few bytes since the last trim"
    run(main())
    budget_mod.malloc_trim()  # harmless wherever it runs (a no-op without glibc)


def test_gateway_keeps_freed_buffers_under_load_and_trims_only_once_idle(monkeypatch: pytest.MonkeyPatch,
                                                                          tmp_path: Path) -> None:
    """Budgets touch zero between requests all the time: one trim follows real idleness, not each of those."""
    from aiohttp.test_utils import TestServer

    from gateway import server
    from objstore.cluster import ClusterMap, NodeInfo
    from objstore.config import GatewayConfig

    assert isinstance(budget_mod.keep_freed_buffers(), bool)  # True on glibc, False where there is no mallopt
    trims: list[int] = []
    monkeypatch.setattr(server, "malloc_trim", lambda: trims.append(0))
    monkeypatch.setattr(server, "TRIM_AFTER_IDLE", 0.05)
    monkeypatch.setattr(budget_mod, "TRIM_AFTER_BYTES", 1)
    cmap = ClusterMap(epoch=2, ec=ECProfile(k=2, m=1, block_size=1024),
                      nodes=tuple(NodeInfo(f"n{i}", "127.0.0.1:1", f"z{i}") for i in range(1, 4)))
    cmap.save(tmp_path / "map.json")

    async def main() -> None:
        app = await server.build_app(GatewayConfig(listen="127.0.0.1:0", secret="s", map=str(tmp_path / "map.json")))
        test_server = TestServer(app, host="127.0.0.1")
        await test_server.start_server()
        try:
            gw = app[server.GATEWAY]
            for _ in range(10):  # busy: between two requests the read budget is idle for an instant
                async with gw.read_budget.reserve(10):
                    await asyncio.sleep(0.02)
            assert trims == [], "no trim while requests keep coming"
            await asyncio.sleep(0.3)
            assert trims == [0], "one trim once reads and writes stayed idle"
        finally:
            await test_server.close()
    run(main())


def test_shares_by_size() -> None:
    streamed = write_buffer_bytes(EC, None)
    assert streamed == 2 * EC.stripe_size + (SHARD_QUEUE_DEPTH + 2) * EC.width * EC.block_size
    assert write_buffer_bytes(EC, 10 * 2**30) == streamed, "a streamed write's share does not grow with its size"
    assert write_buffer_bytes(EC, 4096) == 4096 + 1024 * 6
    assert write_buffer_bytes(EC, 0) == 0
    assert write_buffer_bytes(EC, EC.k * INLINE_MAX_SHARD) < streamed

    class Plain:
        decoded_length, content_length = None, 123

    class Chunked:
        decoded_length, content_length = 100, 180

    assert declared_size(Plain()) == 123 and declared_size(Chunked()) == 100 and declared_size(object()) is None


def test_budget_must_be_positive() -> None:
    with pytest.raises(ValueError):
        Budget(0, wait=1.0)


@pytest.mark.parametrize("field,value", [("write_buffer_mb", 0.5), ("write_buffer_mb", -1), ("write_wait", -0.1),
                                         ("write_buffer_mb", "64"), ("write_wait", True)])
def test_gateway_refuses_a_bad_budget_setting(field: str, value: object) -> None:
    from objstore.config import ConfigError, gateway_config_from_dict

    doc = {"listen": "127.0.0.1:9000", "secret": "s", "map": "m.json", field: value}
    with pytest.raises(ConfigError, match=field):
        gateway_config_from_dict(doc)
    ok = gateway_config_from_dict({"listen": "127.0.0.1:9000", "secret": "s", "map": "m.json",
                                   "write_buffer_mb": 8, "write_wait": 0})
    assert (ok.write_buffer_mb, ok.write_wait) == (8.0, 0.0)
