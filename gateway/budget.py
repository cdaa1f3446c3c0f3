"""The gateway's write and read budgets: the bytes the writes, and the GETs, in flight may buffer, first come first served."""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import ctypes.util
import logging
import time
from collections import deque
from collections.abc import AsyncIterator, Callable

from objstore.cluster import ECProfile
from objstore.objects import write_buffer_bytes
from objstore.reader import STREAM_READAHEAD, read_buffer_bytes
from objstore.records import ObjectRecord

from gateway.errors import S3Error

log = logging.getLogger("objstore.gateway.budget")

TRIM_AFTER_BYTES = 64 * 1024 * 1024
"""Bytes granted since the last malloc_trim before the budget's next idle moment trims again."""


class BudgetTimeout(Exception):
    """A request waited `wait` seconds for its share of the budget without getting it (S3 answers SlowDown)."""


class Budget:
    """A byte budget for requests in flight, handed out in arrival order; a gateway has one for writes, one for GETs.

    Each write reserves, before it reads a byte of its body, the most it can buffer (a small PUT its
    size, a streamed one a few stripes: `objstore.objects.write_buffer_bytes`), and gives it back when
    its blob is written, failed or abandoned; each GET, before it reads a shard, the most its read path
    holds (`objstore.reader.read_buffer_bytes`), until its response is sent or abandoned. A request that
    does not fit waits in a FIFO queue behind the ones that came before it: a later one, small or large,
    never overtakes an earlier one, so neither kind can starve the other. After `wait` seconds in the
    queue it gives up (BudgetTimeout).
    """

    def __init__(self, capacity: int, wait: float, on_idle: Callable[[], None] | None = None,
                 kind: str = "write") -> None:
        if capacity <= 0:
            raise ValueError(f"budget capacity must be > 0, got {capacity}")
        self.kind = kind  # "write" or "read": names its metrics and messages
        self.capacity = capacity
        self.wait = wait
        self.in_use = 0
        self.refused = 0  # requests that gave up waiting (answered SlowDown)
        self.granted = 0  # reservations granted, all time
        self._waiters: deque[tuple[int, asyncio.Future[None]]] = deque()
        self._on_idle = on_idle
        self._since_idle = 0  # bytes granted since on_idle last ran

    def free_now(self, nbytes: int) -> bool:
        """Whether `acquire(nbytes)` would be granted at once: nobody is queued and it fits."""
        return not self._waiters and self.in_use + max(1, min(nbytes, self.capacity)) <= self.capacity

    @property
    def waiting(self) -> int:
        """Requests queued for their share now."""
        return len(self._waiters)

    @contextlib.asynccontextmanager
    async def reserve(self, nbytes: int) -> AsyncIterator[int]:
        """Hold `nbytes` of the budget (at most all of it) for the body of the `async with`.

        Raises BudgetTimeout after `wait` seconds in the queue. The share goes back however the body
        ends: normally, on an error, or cancelled (a client that hung up).
        """
        n = await self.acquire(nbytes)
        try:
            yield n
        finally:
            self.release(n)

    async def acquire(self, nbytes: int) -> int:
        """Wait in line for `nbytes` (at most the whole budget); returns what was taken, for `release`."""
        n = max(1, min(nbytes, self.capacity))
        if not self._waiters and self.in_use + n <= self.capacity:
            self._grant(n)
            return n
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        entry = (n, fut)
        self._waiters.append(entry)
        try:
            async with asyncio.timeout(self.wait):
                await fut
        except BaseException as e:
            if fut.done() and not fut.cancelled():
                self.release(n)  # granted in the same instant as it gave up: hand it straight back
            else:
                fut.cancel()
                with contextlib.suppress(ValueError):  # _wake may have dropped it already
                    self._waiters.remove(entry)
                self._wake()  # it may have been the head that held the others back
            if isinstance(e, TimeoutError):
                self.refused += 1
                raise BudgetTimeout(f"no {n} bytes of the {self.kind} budget free within {self.wait:g}s "
                                    f"({self.in_use} of {self.capacity} in use, {self.waiting} waiting)") from None
            raise
        return n

    def _grant(self, n: int) -> None:
        self.in_use += n
        self.granted += 1
        self._since_idle += n

    def release(self, n: int) -> None:
        """Give back what `acquire` returned, and let in the requests at the head of the queue that now fit."""
        self.in_use -= n
        self._wake()
        if self.in_use == 0 and not self._waiters and self._since_idle >= TRIM_AFTER_BYTES and self._on_idle:
            self._since_idle = 0
            self._on_idle()

    def _wake(self) -> None:
        # Strict FIFO: the head is served first; those behind it wait even if they would fit.
        while self._waiters:
            n, fut = self._waiters[0]
            if fut.done():  # cancelled, its owner removes it; do not let it block the queue meanwhile
                self._waiters.popleft()
                continue
            if self.in_use + n > self.capacity:
                return
            self._waiters.popleft()
            self._grant(n)
            fut.set_result(None)


@contextlib.asynccontextmanager
async def share(budget: Budget, nbytes: int) -> AsyncIterator[None]:
    """Hold `nbytes` of `budget` for the body of the `async with`; 0 takes nothing and never waits.

    Not granted within the budget's wait: S3's 503 SlowDown, before a byte is read from the client or
    the nodes, which SDKs retry with backoff.
    """
    if nbytes <= 0:
        yield
        return
    try:
        n = await budget.acquire(nbytes)
    except BudgetTimeout:
        raise S3Error("SlowDown") from None  # counted in objstore_gateway_<kind>_budget_refused
    try:
        yield
    finally:
        budget.release(n)


def write_share(budget: Budget, ec: ECProfile, size: int | None,
                source: tuple[ObjectRecord, int, int] | None = None) -> contextlib.AbstractAsyncContextManager[None]:
    """Hold the share of a write of `size` bytes (None: unknown) for the body of the `async with`.

    A copy names its `source` (record, offset, length): what reading it holds comes out of the same
    write share, so a copy waits in one queue only and never holds one budget while it waits for the other.
    """
    nbytes = write_buffer_bytes(ec, size)
    if source is not None:
        nbytes += read_buffer_bytes(*source)
    return share(budget, max(1, nbytes))


def read_share(budget: Budget, rec: ObjectRecord, offset: int, length: int,
               prefetched: dict[tuple[str, int, str], bytes] | None = None) -> contextlib.AbstractAsyncContextManager[None]:
    """Hold the share of a GET of bytes [offset, offset+length) of `rec` (an empty one takes nothing).

    `prefetched`: whole shards the GET already holds, by (node, index, blob) (they came with the records,
    `ObjectVersion.shards`). They count in the share, and each distinct index stands in for a shard stream
    and its read-ahead, when the share is granted at once; a GET that has to wait for its share drops them
    first (it streams those shards once granted), so no GET holds bytes the budget does not count while it
    waits.
    """
    nbytes = read_buffer_bytes(rec, offset, length)
    if prefetched:
        held = sum(len(d) for d in prefetched.values())
        streams_spared = min(len({index for _, index, _ in prefetched}), rec.ec.k)
        with_shards = nbytes + held - streams_spared * STREAM_READAHEAD
        if nbytes and budget.free_now(with_shards):
            nbytes = with_shards
        else:
            prefetched.clear()
    return share(budget, nbytes)


def declared_size(payload: object) -> int | None:
    """The body size a request declares: x-amz-decoded-content-length of aws-chunked, else Content-Length."""
    decoded = getattr(payload, "decoded_length", None)
    return decoded if decoded is not None else getattr(payload, "content_length", None)


def _load_malloc_trim() -> Callable[[int], int] | None:
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name or "libc.so.6")
        trim = libc.malloc_trim
    except (OSError, AttributeError):  # not glibc (musl, macOS): nothing to trim
        return None
    trim.argtypes = [ctypes.c_size_t]
    trim.restype = ctypes.c_int
    return trim  # type: ignore[no-any-return]


_malloc_trim = _load_malloc_trim()


def malloc_trim() -> None:
    """Give the memory glibc keeps in its free lists (of every arena) back to the kernel.

    Stripes are allocated and freed by the encoding threads, each with its own malloc arena; after a
    burst of writes glibc keeps those pages, and RSS stays at the burst's peak. Takes a few ms.
    """
    if _malloc_trim is None:
        return
    start = time.monotonic()
    _malloc_trim(0)
    log.debug("malloc_trim took %.1f ms", (time.monotonic() - start) * 1000)


M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # glibc's mallopt parameters (malloc.h)
MMAP_THRESHOLD = 4 * 1024 * 1024
"""Allocations below this come from a heap (reused once freed), above it from an mmap of their own."""
TRIM_THRESHOLD = 32 * 1024 * 1024
"""Free bytes a heap keeps at its top before free() gives pages back to the kernel."""


def keep_freed_buffers() -> bool:
    """Let glibc keep freed blocks, stripes and bodies for reuse; malloc_trim gives them back once idle.

    The gateway allocates and frees buffers of 256 KiB to a few MiB all the time. With glibc's defaults
    most are fresh mmaps (the threshold starts at 128 KiB) or sit at the top of a heap trimmed as soon as
    they are freed, so each costs a page fault per 4 KiB when first written: on the 2-core VM of issue #5
    a 1 MiB buffer took about 0.7 ms that way, 0.02 ms when its pages were kept. False where there is no
    mallopt (not glibc).
    """
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    ok = bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD))
    if not ok:
        log.warning("mallopt refused the mmap and trim thresholds: large buffers cost page faults")
    return ok
