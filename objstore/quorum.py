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
    """Fewer than `need` calls succeeded; carries what did succeed and what failed."""

    def __init__(self, need: int, successes: list[tuple[T, R]], errors: list[tuple[T, BaseException]]) -> None:
        self.need, self.successes, self.errors = need, successes, errors
        detail = "; ".join(f"{t}: {type(e).__name__}: {e}" for t, e in errors[:4])
        super().__init__(f"{len(successes)} of {need} needed calls succeeded ({detail})")


class Background:
    """Owner of tasks that outlive the request that started them (stragglers, cleanups)."""

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
                 parallel: int | None = None, background: Background | None = None) -> list[tuple[T, R]]:
    """Call targets in order until `need` calls succeeded; returns (target, result) of the successes.

    `parallel` calls start at once (default `need`); each failure starts the next target. Once the
    quorum is met, calls still running are handed to `background` (or cancelled if there is none).
    Raises QuorumError once `need` can no longer be reached and the calls in flight have ended.
    """
    if need <= 0:
        return []
    start = min(len(targets), max(need, parallel or need))
    queue = list(targets)
    running: dict[asyncio.Future[R], T] = {}
    successes: list[tuple[T, R]] = []
    errors: list[tuple[T, BaseException]] = []

    def launch() -> None:
        target = queue.pop(0)
        running[asyncio.ensure_future(call(target))] = target

    for _ in range(start):
        launch()
    try:
        while len(successes) < need:
            if len(successes) + len(running) + len(queue) < need or not running:
                # Unreachable: let the calls in flight finish so the error lists every success.
                for fut, target in list(running.items()):
                    try:
                        successes.append((target, await fut))
                    except Exception as e:
                        errors.append((target, e))
                running.clear()
                raise QuorumError(need, successes, errors)
            done, _ = await asyncio.wait(running, return_when=asyncio.FIRST_COMPLETED)
            for fut in done:
                target = running.pop(fut)
                exc = fut.exception()
                if exc is None:
                    successes.append((target, fut.result()))
                else:
                    errors.append((target, exc))
                    if queue:
                        launch()
        return successes
    finally:
        for fut in running:
            if background is not None:
                background.spawn(_drain(fut))
            else:
                fut.cancel()


async def _drain(fut: asyncio.Future[Any]) -> None:
    try:
        await fut
    except Exception as e:  # a straggler's failure no longer matters to anyone
        log.debug("straggler failed: %s", e)
