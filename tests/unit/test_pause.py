"""An operator's pause of a node's background work: how it holds and lets go, and its RPC."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from node.loops import Loops
from node.server import NODE, build_app
from objstore.client import NodeError
from objstore.config import MAX_PAUSE
from tests.unit.test_node_rpc import Harness, make_cfg, make_map, start


@pytest.fixture
async def loops(tmp_path: Path) -> AsyncIterator[Loops]:
    app = build_app(make_cfg(tmp_path / "n1"), make_map(), loops=False)
    node = app[NODE]
    loops = Loops(node)  # not started: its methods are driven by hand
    yield loops
    await loops.close()
    node.store.close()


async def returns_within(aw: object, seconds: float) -> float:
    started = time.monotonic()
    await asyncio.wait_for(aw, seconds)  # type: ignore[arg-type]
    return time.monotonic() - started


async def test_not_paused_goes_on_at_once(loops: Loops) -> None:
    assert loops.paused_for() == 0.0 and loops.report()["paused_for"] == 0.0
    assert await returns_within(loops.unpaused(), 0.5) < 0.1


async def test_a_pause_holds_until_it_runs_out(loops: Loops) -> None:
    assert 0.5 < loops.pause(0.6) <= 0.6
    assert loops.report()["paused_for"] > 0
    held = await returns_within(loops.unpaused(), 5.0)
    assert held >= 0.5
    assert loops.paused_for() == 0.0


async def test_resume_lets_every_waiter_go(loops: Loops) -> None:
    loops.pause(600)
    waiters = [asyncio.create_task(loops.unpaused()) for _ in range(3)]
    await asyncio.sleep(0.2)
    assert not any(w.done() for w in waiters)
    assert loops.pause(0) == 0.0
    await asyncio.wait_for(asyncio.gather(*waiters), 1.0)


async def test_a_later_pause_replaces_the_earlier(loops: Loops) -> None:
    loops.pause(600)
    assert loops.pause(0.3) <= 0.3  # shortened, not added
    assert await returns_within(loops.unpaused(), 5.0) < 2.0
    loops.pause(0.2)
    assert loops.pause(600) > 599  # lengthened


async def test_a_pause_is_bounded(loops: Loops) -> None:
    with pytest.raises(ValueError, match="at most"):
        loops.pause(MAX_PAUSE + 1)
    assert loops.paused_for() == 0.0


async def test_a_repair_pass_waits_at_its_gate(loops: Loops) -> None:
    """The repairer is built with the pause as its gate: a pass held there starts no partition scan."""
    assert loops.repairer.gate == loops.unpaused
    loops.pause(600)
    gate = asyncio.create_task(loops.repairer.gate())
    await asyncio.sleep(0.2)
    assert not gate.done()
    loops.pause(0)
    await asyncio.wait_for(gate, 1.0)


async def test_the_rpc_refuses_bad_values_and_a_node_without_loops(tmp_path: Path) -> None:
    h: Harness = await start(tmp_path / "n1")
    try:
        with pytest.raises(NodeError) as e:
            await h.client.pause(h.info, 60)
        assert e.value.status == 409 and "without background loops" in str(e.value)
        for bad in ("soon", "nan"):
            with pytest.raises(NodeError) as e:
                await h.client._call(h.info, "PUT", "/pause", {"seconds": bad})
            assert e.value.status == 400
    finally:
        await h.client.close()
        await h.server.close()


async def test_the_rpc_pauses_and_resumes(tmp_path: Path) -> None:
    h: Harness = await start(tmp_path / "n1")
    node = h.app[NODE]
    node.loops = Loops(node)
    try:
        assert 59 < await h.client.pause(h.info, 60) <= 60
        assert node.loops.paused_for() > 59
        assert (await h.client.health(h.info))["paused_for"] > 59
        with pytest.raises(NodeError) as e:
            await h.client.pause(h.info, MAX_PAUSE * 2)
        assert e.value.status == 400 and node.loops.paused_for() > 59  # a refused pause leaves the last one
        assert await h.client.pause(h.info, 0) == 0.0
        assert node.loops.paused_for() == 0.0
    finally:
        await node.loops.close()
        node.loops = None
        await h.client.close()
        await h.server.close()
