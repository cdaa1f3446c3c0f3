"""The one quorum helper every fan-out uses: just enough requests, a spare for each failure, the rest left to finish."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from typing import Any, Generic, TypeVar

T = TypeVar("T")
R = TypeVar("R")
log = logging.getLogger("objstore.quorum")


class QuorumError(Exception, Generic[T, R]):
    """Fewer than `need` calls can succeed; carries what did succeed and what failed so far."""

    def __init__(self, successes: list[tuple[T, R]], errors: list[tuple[T, BaseException]], need: int = 0) -> None:
        self.successes, self.errors, self.need = successes, errors, need
        detail = "; ".join(f"{t}: {type(e).__name__}: {e}" for t, e in errors[:4])
        super().__init__(f"{len(successes)} of {need} needed calls succeeded ({detail})")


class Background:
    """Owner of tasks that outlive the request that started them (stragglers, cleanups).

    Nothing is fire-and-forget: every task is kept here until it ends, and `close` waits for the
    running ones a while, then cancels the rest.
    """

    def __init__(self) -> None:
        self._tasks: set[asyncio.Task[Any]] = set()

    def spawn(self, coro: Coroutine[Any, Any, Any] | Awaitable[Any]) -> asyncio.Task[Any]:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._done)
        return task

    def _done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.debug("background task failed: %s", task.exception())

    def __len__(self) -> int:
        return len(self._tasks)

    async def close(self, timeout: float = 5.0) -> None:
        """Give running tasks `timeout` seconds, then cancel the rest."""
        if not self._tasks:
            return
        _, pending = await asyncio.wait(set(self._tasks), timeout=timeout)
        for t in pending:
            t.cancel()
        await asyncio.gather(*pending, return_exceptions=True)


async def quorum(targets: Sequence[T], call: Callable[[T], Awaitable[R]], need: int, *,
                 parallel: int | None = None, background: Background | None = None,
                 settle: bool = False, hedge_after: float | None = None) -> list[tuple[T, R]]:
    """Call targets in order until `need` calls succeeded; returns (target, result) of the successes, in
    the order they finished (at least `need`; more if several finished at the same instant).

    `parallel` calls start at once (default `need`, never fewer); each failure starts the next target.
    It returns as soon as `need` calls succeeded, and raises QuorumError as soon as `need` can no longer
    be reached (successes + running + untried < need). Calls still running at that point are handed to
    `background` to finish (a write that lands late still counts on its node); without a background
    they are cancelled, so nothing outlives the call without an owner. If the caller is cancelled, every
    running call is cancelled too.

    With `settle`, an out-of-reach quorum first lets the running calls end, so the QuorumError lists
    every success: a writer that must clean up after a failed write needs to know all it wrote.

    With `hedge_after`, every target not yet called is started once that many seconds pass without
    a quorum: a slow target costs a bounded wait, not its whole latency.
    """
    if need <= 0:
        return []
    queue = list(enumerate(targets))
    running: dict[asyncio.Future[R], tuple[int, T]] = {}
    successes: list[tuple[T, R]] = []
    errors: list[tuple[T, BaseException]] = []
    cancelled = False

    def launch() -> None:
        index, target = queue.pop(0)
        running[asyncio.ensure_future(call(target))] = (index, target)

    for _ in range(min(len(queue), max(need, parallel or need))):
        launch()
    hedge_at = None if hedge_after is None else asyncio.get_running_loop().time() + hedge_after
    try:
        while len(successes) < need:
            if len(successes) + len(running) + len(queue) < need:
                if settle and running:
                    for fut, (_, target) in sorted(running.items(), key=lambda item: item[1][0]):
                        try:
                            successes.append((target, await fut))
                        except Exception as e:  # noqa: BLE001 - collected into the QuorumError
                            errors.append((target, e))
                    running.clear()
                raise QuorumError(successes, errors, need)
            timeout = None
            if hedge_at is not None and queue:
                timeout = max(0.0, hedge_at - asyncio.get_running_loop().time())
            done, _ = await asyncio.wait(running, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
            if not done:
                while queue:
                    launch()
                continue
            for fut in sorted(done, key=lambda f: running[f][0]):  # same-instant results in target order
                _, target = running.pop(fut)
                exc = asyncio.CancelledError() if fut.cancelled() else fut.exception()
                if exc is None:
                    successes.append((target, fut.result()))
                else:
                    errors.append((target, exc))
                    if queue:
                        launch()
        return successes
    except asyncio.CancelledError:
        cancelled = True
        raise
    finally:
        for fut in running:
            if background is not None and not cancelled:
                background.spawn(_drain(fut))
            else:
                fut.cancel()


async def settle(calls: Sequence[asyncio.Future[R]], enough: Callable[[list[R]], bool], *,
                 patience: float = 1.0, factor: float = 2.0, background: Background | None = None
                 ) -> list[R | BaseException]:
    """Wait for every call, but once the successes so far are `enough`, give the others only
    max(`patience`, `factor` x the time that took) more: a node that went silent (a cut network, a
    hung disk) costs a write about a second, not its whole timeout.

    Returns each call's result or exception, in order; a call cut off this way gets a TimeoutError and
    is handed to `background` to finish (a record that lands late still counts on its node), or
    cancelled without one. If the caller is cancelled, every running call is cancelled too.
    """
    loop = asyncio.get_running_loop()
    started = loop.time()
    running = set(calls)
    deadline: float | None = None
    try:
        while running:
            timeout = None if deadline is None else max(0.0, deadline - loop.time())
            done, running = await asyncio.wait(running, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
            if not done:
                break  # the deadline passed
            if deadline is None and enough([c.result() for c in calls if c.done() and not c.cancelled()
                                            and c.exception() is None]):
                now = loop.time()
                deadline = now + max(patience, factor * (now - started))
    except asyncio.CancelledError:
        for c in running:
            c.cancel()
        raise
    for c in running:
        if background is not None:
            background.spawn(_drain(c))
        else:
            c.cancel()
    if background is None:
        await asyncio.gather(*running, return_exceptions=True)
    out: list[R | BaseException] = []
    for c in calls:
        if c in running:
            out.append(TimeoutError("cut off: the others were enough and it took too long"))
        elif c.cancelled():
            out.append(asyncio.CancelledError())
        else:
            exc = c.exception()
            out.append(exc if exc is not None else c.result())
    return out


async def _drain(fut: asyncio.Future[Any]) -> None:
    try:
        await fut
    except Exception as e:  # noqa: BLE001 - a straggler's failure no longer matters to anyone
        log.debug("straggler failed: %s", e)
