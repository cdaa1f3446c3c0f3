"""Shard bodies read straight into the caller's buffers: a small HTTP/1.1 client for the node's blob GET
and its batched record calls.

aiohttp hands a response body out as new bytes objects: the event loop copies what the socket gave it,
its parser copies the body out of that, and the reader joined those pieces into blocks and the blocks into
stripes. A 16 MiB GET so copied every byte four times in the gateway, a third of its CPU. Here the socket
reads into the caller's buffer itself (`asyncio.BufferedProtocol`), so the kernel's copy is the only one:
`BlobStream.read_into` fills a slice of the stripe the gateway sends on.

The batched record calls (`POST /records`, `/records/get`, `/records/delete`) come here too: a small
GET's gateway CPU went more into aiohttp's client machinery (request and response objects, timers,
the copies of its parser) than into anything else, and these calls carry every small object.

Only what the node answers is understood: HTTP/1.1 with a Content-Length body. Other RPCs (streamed
shard uploads among them) stay on aiohttp. Connections are kept alive and reused per node; a body not
read to its end closes its connection.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import AsyncIterator, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import cast

__all__ = ["BlobStream", "BlobStreams", "StreamError"]

HEAD_MAX = 16 << 10
"""Bytes a response head may take (the node's are about 200). The first read may carry body bytes past the
head into the same buffer; those are copied out once."""
IDLE_SECONDS = 30.0
"""A pooled connection unused this long is closed rather than reused (the node closes idle ones at 75 s)."""
POOL_MAX = 64
"""Idle connections kept per node."""


class StreamError(Exception):
    """The connection failed, timed out, or the response was not one this client reads."""


class _Connection(asyncio.BufferedProtocol):
    """One keep-alive connection: parses a response head, then lets the reader place the body's bytes.

    Between reads the transport is paused, so body bytes wait in the kernel's socket buffer until a
    buffer is there to take them.
    """

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.head = bytearray(HEAD_MAX)
        self.head_len = 0
        self.in_head = True
        self.spill = memoryview(b"")  # body bytes that came in with the head, not yet handed out
        self.status = 0
        self.length = 0
        self.left = 0  # body bytes not yet read from the socket
        self.keep_alive = True
        self.target: memoryview | None = None
        self.got = 0
        self.waiter: asyncio.Future[None] | None = None
        self.error: BaseException | None = None
        self.timed_out = False
        self.idle_since = 0.0
        self.idle_sink = bytearray(1)

    # -- protocol callbacks --------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's TCP transport is no asyncio.Transport

    def get_buffer(self, sizehint: int) -> memoryview:
        if self.target is not None:
            return self.target[self.got:]
        if self.in_head:
            if self.head_len >= len(self.head):
                self._fail(StreamError(f"response head over {HEAD_MAX} bytes"))
                return memoryview(self.idle_sink)
            return memoryview(self.head)[self.head_len:]
        return memoryview(self.idle_sink)  # idle in the pool, or the body ran over its length

    def buffer_updated(self, nbytes: int) -> None:
        if self.target is not None:
            self.got += nbytes
            self.left -= nbytes
            if self.got == len(self.target):
                self.target = None
                self._pause()
                self._wake()
        elif self.in_head:
            self.head_len += nbytes
            self._parse_head()
        else:
            self._fail(StreamError("bytes past the end of a response"))

    def eof_received(self) -> bool:
        self._fail(StreamError("connection closed by the node"))
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        self._fail(StreamError(f"connection lost: {exc}" if exc else "connection closed"))

    # -- state ---------------------------------------------------------------------------------

    def _parse_head(self) -> None:
        end = self.head.find(b"\r\n\r\n", 0, self.head_len)
        if end < 0:
            return
        lines = bytes(self.head[:end]).split(b"\r\n")
        try:
            version, status, *_ = lines[0].split(b" ", 2)
            self.status = int(status)
            headers = {}
            for line in lines[1:]:
                name, _, value = line.partition(b":")
                headers[name.strip().lower()] = value.strip().lower()
            if b"transfer-encoding" in headers or b"content-length" not in headers:
                raise ValueError("no Content-Length")
            self.length = int(headers[b"content-length"])
        except ValueError as e:
            self._fail(StreamError(f"unreadable response head {bytes(self.head[:min(end, 120)])!r}: {e}"))
            return
        conn = headers.get(b"connection", b"")
        self.keep_alive = conn != b"close" and (version == b"HTTP/1.1" or conn == b"keep-alive")
        body = memoryview(self.head)[end + 4:self.head_len]
        if len(body) > self.length:
            self._fail(StreamError("response body longer than its Content-Length"))
            return
        self.spill, self.left, self.in_head = body, self.length - len(body), False
        self._pause()
        self._wake()

    def _pause(self) -> None:
        if self.transport is not None:
            self.transport.pause_reading()

    def _wake(self) -> None:
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_result(None)

    def _fail(self, e: BaseException) -> None:
        if self.error is None:
            self.error = e
        self.target = None
        if self.transport is not None:
            self.transport.abort()
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_exception(e)

    async def wait(self, timeout: float) -> None:
        """Until the head or the current target is complete; StreamError on failure or after `timeout` s."""
        if self.error is not None:
            raise self.error
        self.waiter = asyncio.get_running_loop().create_future()
        if self.transport is not None:
            self.transport.resume_reading()
        try:
            async with asyncio.timeout(timeout):
                await self.waiter
        except TimeoutError:
            self.timed_out = True
            self._fail(StreamError(f"no bytes from the node for {timeout:g} s"))
            raise self.error from None
        finally:
            self.waiter = None

    def start(self, request: tuple[bytes, ...]) -> None:
        if self.transport is None:
            raise StreamError("connection closed")
        self.head_len, self.in_head, self.status, self.spill = 0, True, 0, memoryview(b"")
        self.transport.writelines(request)

    @property
    def reusable(self) -> bool:
        return (self.transport is not None and self.error is None and not self.in_head and self.left == 0
                and not self.spill and self.keep_alive)

    def park(self) -> None:
        """Back to the pool: read on, so the node closing it is noticed (any byte is a protocol error)."""
        self.idle_since = time.monotonic()
        if self.transport is not None:
            self.transport.resume_reading()

    def close(self) -> None:
        self.target = None
        if self.transport is not None:
            self.transport.abort()
            self.transport = None


class BlobStream:
    """The body of one blob GET (a shard's bytes, or an error's message), read in order into buffers the caller
    owns; `objstore.client.BlobReader` wraps it for the readers."""

    def __init__(self, conn: _Connection, timeout: float) -> None:
        self._conn, self._timeout = conn, timeout

    @property
    def remaining(self) -> int:
        return len(self._conn.spill) + self._conn.left

    async def read_into(self, buf: memoryview) -> None:
        """Fill `buf` with the next len(buf) bytes of the body; StreamError if the body ends or fails first."""
        conn = self._conn
        n = len(buf)
        if n > self.remaining:
            raise StreamError(f"asked for {n} bytes, the body has {self.remaining} left")
        taken = min(n, len(conn.spill))
        if taken:
            buf[:taken] = conn.spill[:taken]
            conn.spill = conn.spill[taken:]
        if taken == n:
            return
        conn.target, conn.got = buf[taken:], 0
        try:
            await conn.wait(self._timeout)
        except BaseException:
            conn.close()  # never let a late byte land in a buffer its owner gave up on
            raise

    async def read_exactly(self, n: int) -> bytearray:
        buf = bytearray(n)
        await self.read_into(memoryview(buf))
        return buf


class BlobStreams:
    """Keep-alive connections to the nodes for blob GETs, pooled per address."""

    def __init__(self, timeout: float, connect_timeout: float, local_addr: tuple[str, int] | None) -> None:
        self.timeout, self.connect_timeout, self.local_addr = timeout, connect_timeout, local_addr
        self._idle: dict[tuple[str, int], deque[_Connection]] = {}
        self._closed = False

    async def _connect(self, host: str, port: int) -> _Connection:
        loop = asyncio.get_running_loop()
        async with asyncio.timeout(self.connect_timeout):
            _, conn = await loop.create_connection(_Connection, host, port, local_addr=self.local_addr)
        return conn

    def _pooled(self, addr: tuple[str, int]) -> _Connection | None:
        idle = self._idle.get(addr)
        now = time.monotonic()
        while idle:
            conn = idle.pop()
            if conn.transport is not None and conn.error is None and now - conn.idle_since < IDLE_SECONDS:
                return conn
            conn.close()
        return None

    def get(self, address: str, path_qs: str,
            headers: dict[str, str]) -> AbstractAsyncContextManager[tuple[int, BlobStream]]:
        """(status, body) of `GET path_qs` from the node at "host:port"; StreamError if no response head came."""
        return self.request("GET", address, path_qs, headers)

    @asynccontextmanager
    async def request(self, method: str, address: str, path_qs: str, headers: dict[str, str],
                      body: bytes | Sequence[bytes] = b"") -> AsyncIterator[tuple[int, BlobStream]]:
        """(status, body) of `method path_qs` with `body` (bytes, or pieces sent one after the other without
        joining them) to the node at "host:port"; StreamError if no response head came. A request the node's
        RPC does not make idempotent must not come here: one sent on a pooled connection that the node
        dropped unanswered is sent again on a new one."""
        host, _, port = address.rpartition(":")
        addr = (host.strip("[]"), int(port))
        pieces = (body,) if isinstance(body, bytes) else tuple(body)
        size = sum(len(p) for p in pieces)
        sized = f"Content-Length: {size}\r\n" if size or method != "GET" else ""
        head = "".join([f"{method} {path_qs} HTTP/1.1\r\nHost: {address}\r\n{sized}",
                        *(f"{k}: {v}\r\n" for k, v in headers.items()), "\r\n"]).encode("latin-1")
        request = (head, *pieces) if size else (head,)
        conn = self._pooled(addr)
        if conn is not None:
            try:
                conn.start(request)
                await conn.wait(self.timeout)
            except StreamError:
                conn.close()
                if conn.head_len or conn.timed_out:
                    raise
                conn = None  # closed by the node while it sat in the pool: once more on a new connection
        if conn is None:
            try:
                conn = await self._connect(*addr)
            except (OSError, TimeoutError) as e:
                raise StreamError(f"connect to {address}: {type(e).__name__}: {e}") from None
            conn.start(request)
            await conn.wait(self.timeout)
        stream = BlobStream(conn, self.timeout)
        try:
            yield conn.status, stream
        finally:
            if conn.reusable and not self._closed:
                conn.park()
                pool = self._idle.setdefault(addr, deque())
                pool.append(conn)
                if len(pool) > POOL_MAX:
                    pool.popleft().close()
            else:
                conn.close()

    def close(self) -> None:
        """Close the idle connections; those in use close when their reads end."""
        self._closed = True
        for pool in self._idle.values():
            for conn in pool:
                conn.close()
        self._idle.clear()
