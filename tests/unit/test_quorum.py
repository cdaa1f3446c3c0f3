"""The quorum helper with fake calls: early return, spares on failure, impossibility, order, ownership of stragglers."""

from __future__ import annotations

import asyncio

import pytest

from objstore.quorum import Background, QuorumError, quorum, settle


class Fake:
    """Calls that succeed or fail after a delay, and a log of when each started and ended."""

    def __init__(self, delays: dict[str, float], failing: set[str] | None = None) -> None:
        self.delays, self.failing = delays, failing or set()
        self.started: list[str] = []
        self.finished: list[str] = []
        self.cancelled: list[str] = []

    async def __call__(self, target: str) -> str:
        self.started.append(target)
        try:
            await asyncio.sleep(self.delays.get(target, 0.0))
        except asyncio.CancelledError:
            self.cancelled.append(target)
            raise
        self.finished.append(target)
        if target in self.failing:
            raise OSError(f"{target} is down")
        return target.upper()


async def test_returns_at_quorum_without_waiting_for_slow_calls() -> None:
    fake = Fake({"a": 0.0, "b": 0.01, "c": 5.0})
    bg = Background()
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    got = await asyncio.wait_for(quorum(["a", "b", "c"], fake, need=2, parallel=3, background=bg), 2)
    assert loop.time() - t0 < 1.0
    assert got == [("a", "A"), ("b", "B")]
    assert len(bg) == 1  # the slow call still runs, owned by the background
    await bg.close(timeout=0.01)
    assert fake.cancelled == ["c"] and len(bg) == 0


async def test_starts_need_calls_then_a_spare_for_each_failure_in_target_order() -> None:
    fake = Fake({}, failing={"a", "c"})
    got = await quorum(["a", "b", "c", "d", "e"], fake, need=2)
    assert fake.started == ["a", "b", "c", "d"]  # e never needed
    assert sorted(got) == [("b", "B"), ("d", "D")]


async def test_default_parallel_is_need_and_never_less() -> None:
    fake = Fake({"a": 0.05, "b": 0.05, "c": 0.05})
    await quorum(["a", "b", "c"], fake, need=2, parallel=1)
    assert fake.started == ["a", "b"]


async def test_raises_as_soon_as_quorum_is_impossible() -> None:
    fake = Fake({"a": 0.0, "b": 0.0, "c": 10.0}, failing={"a", "b"})
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    with pytest.raises(QuorumError) as e:
        await asyncio.wait_for(quorum(["a", "b", "c"], fake, need=2, parallel=3), 2)
    assert loop.time() - t0 < 1.0  # did not wait for c: two failures of three make 2 impossible
    assert e.value.successes == [] and [t for t, _ in e.value.errors] == ["a", "b"]
    assert all(isinstance(err, OSError) for _, err in e.value.errors) and e.value.need == 2
    await asyncio.sleep(0)
    assert fake.cancelled == ["c"]  # no background: nothing outlives the call


async def test_error_carries_partial_successes() -> None:
    fake = Fake({}, failing={"b", "c"})
    with pytest.raises(QuorumError) as e:
        await quorum(["a", "b", "c"], fake, need=2, parallel=3)
    assert e.value.successes == [("a", "A")]
    assert "1 of 2" in str(e.value)


async def test_too_few_targets_and_zero_need() -> None:
    fake = Fake({})
    with pytest.raises(QuorumError):
        await quorum(["a"], fake, need=2)
    assert await quorum([], fake, need=0) == []
    assert fake.started == []


async def test_caller_cancelled_cancels_every_call_even_with_a_background() -> None:
    fake = Fake({"a": 10.0, "b": 10.0})
    bg = Background()
    task = asyncio.ensure_future(quorum(["a", "b"], fake, need=2, background=bg))
    await asyncio.sleep(0.01)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await asyncio.sleep(0)
    assert sorted(fake.cancelled) == ["a", "b"] and len(bg) == 0


async def test_late_success_lands_in_the_background() -> None:
    fake = Fake({"a": 0.0, "b": 0.05})
    bg = Background()
    await quorum(["a", "b"], fake, need=1, parallel=2, background=bg)
    assert fake.finished == ["a"]
    await bg.close(timeout=2)
    assert fake.finished == ["a", "b"]  # a straggling write still completes on its node


async def test_background_close_cancels_after_the_timeout() -> None:
    bg = Background()
    done = asyncio.Event()

    async def forever() -> None:
        try:
            await asyncio.sleep(60)
        finally:
            done.set()

    bg.spawn(forever())
    bg.spawn(asyncio.sleep(0))
    await asyncio.wait_for(bg.close(timeout=0.05), 2)
    assert done.is_set() and len(bg) == 0


async def test_settle_waits_for_running_calls_so_the_error_lists_every_success() -> None:
    fake = Fake({"a": 0.0, "b": 0.05, "c": 0.1}, failing={"a"})
    with pytest.raises(QuorumError) as e:
        await asyncio.wait_for(quorum(["a", "b", "c"], fake, need=3, parallel=3, settle=True), 2)
    assert sorted(e.value.successes) == [("b", "B"), ("c", "C")]  # a writer learns all it wrote
    assert fake.cancelled == []


async def test_hedge_starts_the_remaining_targets_when_a_call_lags() -> None:
    fake = Fake({"a": 0.0, "b": 5.0, "c": 0.0, "d": 0.0})
    bg = Background()
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    got = await asyncio.wait_for(quorum(["a", "b", "c", "d"], fake, need=2, parallel=2, background=bg,
                                        hedge_after=0.05), 2)
    assert 0.04 <= loop.time() - t0 < 1.0
    assert fake.started == ["a", "b", "c", "d"]
    assert sorted(r for _, r in got)[:2] == ["A", "C"]
    await bg.close(timeout=0)


async def test_no_hedge_when_the_quorum_comes_in_time() -> None:
    fake = Fake({"a": 0.0, "b": 0.01, "c": 0.0})
    got = await asyncio.wait_for(quorum(["a", "b", "c"], fake, need=2, parallel=2, hedge_after=1.0), 2)
    assert [r for _, r in got] == ["A", "B"] and fake.started == ["a", "b"]


# ---------------------------------------------------------------- settle: every call, stragglers cut off


def start(fake: Fake, targets: str) -> list[asyncio.Future[str]]:
    return [asyncio.ensure_future(fake(t)) for t in targets]


async def test_settle_waits_for_every_call_that_answers_in_time() -> None:
    fake = Fake({"a": 0.01, "b": 0.02, "c": 0.03}, failing={"b"})
    results = await settle(start(fake, "abc"), lambda done: len(done) >= 1, patience=1.0)
    assert results[0] == "A" and isinstance(results[1], OSError) and results[2] == "C"
    assert fake.cancelled == []


async def test_settle_cuts_off_a_silent_call_once_the_others_are_enough() -> None:
    fake = Fake({"a": 0.01, "b": 0.01, "c": 60.0})
    loop = asyncio.get_running_loop()
    began = loop.time()
    results = await settle(start(fake, "abc"), lambda done: len(done) >= 2, patience=0.1, factor=2.0)
    assert loop.time() - began < 5.0  # not the silent call's 60 s
    assert results[:2] == ["A", "B"] and isinstance(results[2], TimeoutError)
    assert fake.cancelled == ["c"]  # no background to own it: cancelled, and awaited


async def test_settle_hands_a_cut_off_call_to_the_background_to_finish() -> None:
    fake = Fake({"a": 0.01, "b": 0.5})
    background = Background()
    results = await settle(start(fake, "ab"), lambda done: len(done) >= 1, patience=0.05, factor=0.0,
                           background=background)
    assert results[0] == "A" and isinstance(results[1], TimeoutError)
    assert len(background) == 1 and fake.cancelled == []
    await background.close(timeout=5.0)
    assert fake.finished == ["a", "b"]  # it landed late, as a straggler of a write would


async def test_settle_without_enough_waits_for_all_however_long() -> None:
    fake = Fake({"a": 0.01, "b": 0.3}, failing={"a"})
    results = await settle(start(fake, "ab"), lambda done: len(done) >= 2, patience=0.01, factor=0.0)
    assert isinstance(results[0], OSError) and results[1] == "B"


async def test_settle_cancelled_cancels_its_calls() -> None:
    fake = Fake({"a": 60.0, "b": 60.0})
    task = asyncio.ensure_future(settle(start(fake, "ab"), lambda done: False))
    await asyncio.sleep(0.05)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await asyncio.sleep(0)
    assert sorted(fake.cancelled) == ["a", "b"]
