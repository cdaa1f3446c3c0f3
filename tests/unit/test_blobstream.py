"""The blob GET client (objstore.blobstream) against scripted HTTP servers on 127.0.0.1."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Awaitable, Callable

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import objstore.client
from objstore.blobstream import BlobStreams, StreamError
from objstore.client import NodeUnavailable
from objstore.cluster import NodeInfo

Script = Callable[[asyncio.StreamReader, asyncio.StreamWriter, int], Awaitable[None]]
"""Answers the n-th request of a connection (n from 0); returns to read the next one."""


def response(body: bytes, status: int = 200, extra: str = "") -> bytes:
    return (f"HTTP/1.1 {status} OK\r\nContent-Type: application/octet-stream\r\nContent-Length: {len(body)}\r\n"
            f"{extra}\r\n").encode() + body


class Server:
    """Accepts connections and answers each request on them with `script`; counts connections."""

    def __init__(self, script: Script) -> None:
        self.script, self.connections, self.requests = script, 0, []  # type: ignore[var-annotated]
        self.server: asyncio.Server | None = None
        self.writers: list[asyncio.StreamWriter] = []

    async def __aenter__(self) -> Server:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self.server is not None
        self.server.close()
        for w in self.writers:
            w.close()
        await self.server.wait_closed()

    @property
    def address(self) -> str:
        assert self.server is not None
        return "127.0.0.1:%d" % self.server.sockets[0].getsockname()[1]

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        self.writers.append(writer)
        n = 0
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                self.requests.append(head)
                await self.script(reader, writer, n)
                n += 1
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()


def streams(timeout: float = 5.0) -> BlobStreams:
    return BlobStreams(timeout, 2.0, None)


async def fetch(pool: BlobStreams, address: str) -> bytes:
    """The whole body of one GET through `pool`."""
    async with pool.get(address, "/blob/x/0", {}) as (status, body):
        assert status == 200
        return bytes(await body.read_exactly(body.remaining))


async def pieces(writer: asyncio.StreamWriter, data: bytes, cuts: list[int]) -> None:
    """Send `data` in pieces of the sizes `cuts` cycles through, each flushed before the next."""
    pos, i = 0, 0
    while pos < len(data):
        n = cuts[i % len(cuts)]
        writer.write(data[pos:pos + n])
        await writer.drain()
        await asyncio.sleep(0)
        pos, i = pos + n, i + 1


@settings(max_examples=60, deadline=None)
@given(st.integers(0, 70_000), st.lists(st.integers(1, 30_000), min_size=1, max_size=12),
       st.lists(st.integers(1, 40_000), min_size=1, max_size=12))
def test_reads_hand_back_the_body_in_order_however_it_arrives(size: int, cuts: list[int], reads: list[int]) -> None:
    """The head and body arrive cut anywhere (the head itself split, body bytes with the head); exact reads
    into the caller's buffers give the body in order, and a read past its end is a NodeUnavailable."""
    data = os.urandom(size)

    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> None:
        await pieces(writer, response(data), cuts)

    async def run() -> None:
        async with Server(script) as server:
            pool = streams()
            async with pool.get(server.address, "/blob/b/0", {"X-Test": "1"}) as (status, body):
                assert status == 200 and body.remaining == size
                reader = objstore.client.BlobReader(NodeInfo("n1", server.address, "z1"), body)
                got, at = [], 0
                for n in reads:
                    if at + n > size:
                        with pytest.raises(NodeUnavailable, match=f"asked for {n} bytes, the body has {size - at}"):
                            await reader.read_exactly(n)
                        break
                    buf = memoryview(bytearray(n))
                    await reader.read_into(buf)
                    got.append(bytes(buf))
                    at += n
                assert b"".join(got) == data[:at]
            pool.close()
            assert server.requests[0].startswith(b"GET /blob/b/0 HTTP/1.1\r\n")
            assert b"\r\nX-Test: 1\r\n" in server.requests[0]

    asyncio.run(run())


async def test_a_connection_is_reused_once_its_body_is_read() -> None:
    bodies = [os.urandom(300_000), os.urandom(5)]

    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> None:
        writer.write(response(bodies[n % 2]))
        await writer.drain()

    async with Server(script) as server:
        pool = streams()
        for i in range(4):
            async with pool.get(server.address, f"/blob/x/{i}", {}) as (status, body):
                assert status == 200
                assert await body.read_exactly(body.remaining) == bodies[i % 2]
        assert server.connections == 1 and len(server.requests) == 4
        pool.close()


async def test_a_body_left_unread_closes_its_connection() -> None:
    data = os.urandom(1 << 20)

    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> None:
        writer.write(response(data))
        await writer.drain()

    async with Server(script) as server:
        pool = streams()
        async with pool.get(server.address, "/blob/x/0", {}) as (_, body):
            assert await body.read_exactly(1000) == data[:1000]
        assert await fetch(pool, server.address) == data  # not the rest of the first answer
        assert server.connections == 2
        pool.close()


async def test_a_pooled_connection_the_node_closed_is_replaced_transparently() -> None:
    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> None:
        writer.write(response(b"hello"))
        await writer.drain()
        writer.close()  # keep-alive promised, then the node drops the idle connection

    async with Server(script) as server:
        pool = streams()
        for _ in range(3):
            assert await fetch(pool, server.address) == b"hello"
            await asyncio.sleep(0.05)
        assert server.connections == 3
        pool.close()


async def test_a_request_the_pooled_connection_drops_unanswered_is_sent_again_on_a_new_one() -> None:
    """The node's keep-alive timer can close a connection just as a request goes out on it."""
    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> None:
        if n == 1:
            writer.transport.abort()
            return
        writer.write(response(b"hello"))
        await writer.drain()

    async with Server(script) as server:
        pool = streams()
        assert [await fetch(pool, server.address) for _ in range(2)] == [b"hello"] * 2
        assert server.connections == 2 and len(server.requests) == 3
        pool.close()


async def test_a_node_that_answers_nothing_on_a_new_connection_fails_at_once() -> None:
    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> None:
        writer.transport.abort()

    async with Server(script) as server:
        pool = streams()
        with pytest.raises(StreamError):
            async with pool.get(server.address, "/blob/x/0", {}):
                pass
        assert server.connections == 1


async def test_connection_close_is_honoured() -> None:
    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> None:
        writer.write(response(b"abc", extra="Connection: close\r\n"))
        await writer.drain()

    async with Server(script) as server:
        pool = streams()
        assert [await fetch(pool, server.address) for _ in range(2)] == [b"abc"] * 2
        assert server.connections == 2
        pool.close()


async def test_a_cancelled_read_never_writes_into_the_abandoned_buffer() -> None:
    """A hedged read that lost is cancelled: bytes the node sends afterwards must not land in the buffer,
    which the reader may already have handed on."""
    half = 200_000
    release = asyncio.Event()

    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> None:
        raw = response(b"\x01" * 2 * half)
        writer.write(raw[:len(raw) - half])
        await writer.drain()
        await release.wait()
        writer.write(raw[len(raw) - half:])
        await writer.drain()

    async with Server(script) as server:
        pool = streams()
        buf = bytearray(2 * half)
        async with pool.get(server.address, "/blob/x/0", {}) as (_, body):
            task = asyncio.ensure_future(body.read_into(memoryview(buf)))
            for _ in range(200):
                if buf[half - 1]:
                    break
                await asyncio.sleep(0.01)
            assert buf[half - 1] == 1 and task.done() is False
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            release.set()
            await asyncio.sleep(0.2)
            assert not any(buf[half:])
            with pytest.raises(StreamError):
                await body.read_into(memoryview(bytearray(1)))
        pool.close()


async def test_a_body_cut_short_fails_after_the_bytes_that_came() -> None:
    data = os.urandom(100_000)

    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> None:
        raw = response(data)
        writer.write(raw[:len(raw) - 40_000])
        await writer.drain()
        writer.transport.abort()  # the node found a damaged block mid-stream

    async with Server(script) as server:
        pool = streams()
        async with pool.get(server.address, "/blob/x/0", {}) as (_, body):
            assert await body.read_exactly(50_000) == data[:50_000]
            with pytest.raises(StreamError, match="closed|lost"):
                await body.read_exactly(50_000)
        pool.close()


async def test_a_silent_node_times_out() -> None:
    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> None:
        writer.write(response(b"x" * 1000)[:-500])
        await writer.drain()
        await asyncio.sleep(5)

    async with Server(script) as server:
        pool = streams(timeout=0.2)
        async with pool.get(server.address, "/blob/x/0", {}) as (_, body):
            await body.read_exactly(500)
            with pytest.raises(StreamError, match="no bytes from the node for 0.2 s"):
                await body.read_exactly(500)
        pool.close()


@pytest.mark.parametrize("answer, error", [
    (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n", "no Content-Length"),
    (b"HTTP/1.1 200 OK\r\nX-Big: " + b"a" * 20_000 + b"\r\n\r\n", "head over"),
    (b"garbage\r\n\r\n", "unreadable response head"),
    (b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nabc", "longer than its Content-Length"),
])
async def test_answers_it_does_not_read_are_errors(answer: bytes, error: str) -> None:
    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> None:
        writer.write(answer)
        await writer.drain()
        await asyncio.sleep(1)

    async with Server(script) as server:
        pool = streams()
        with pytest.raises(StreamError, match=error):
            async with pool.get(server.address, "/blob/x/0", {}):
                pass
        pool.close()


async def test_an_unreachable_node_is_a_stream_error() -> None:
    async with Server(lambda r, w, n: asyncio.sleep(0)) as server:
        address = server.address
    pool = streams()
    with pytest.raises(StreamError, match="connect to"):
        async with pool.get(address, "/blob/x/0", {}):
            pass


async def test_a_read_that_ends_after_close_does_not_go_back_to_the_pool() -> None:
    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> None:
        writer.write(response(b"abc"))
        await writer.drain()

    async with Server(script) as server:
        pool = streams()
        async with pool.get(server.address, "/blob/x/0", {}) as (_, body):
            pool.close()  # the gateway shuts down while a read is under way
            assert await body.read_exactly(3) == b"abc"
        assert not any(pool._idle.values())


async def test_a_post_sends_its_body_sized_and_reuses_the_connection() -> None:
    """Batched record calls: the body goes with its Content-Length; the connection serves the next call."""
    received: list[bytes] = []

    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> None:
        head = server.requests[-1].decode("latin-1").lower()
        length = int(head.split("content-length:")[1].split("\r\n")[0])
        received.append(await reader.readexactly(length))
        writer.write(response(b"answer %d" % n))

    async with Server(script) as server:
        pool = streams()
        bodies = [os.urandom(100_000), b"\x91\x01", os.urandom(3)]
        for i, data in enumerate(bodies):
            async with pool.request("POST", server.address, "/records/get?shard_max=1", {"X-A": "b"},
                                    data) as (status, answer):
                assert (status, bytes(await answer.read_exactly(answer.remaining))) == (200, b"answer %d" % i)
        pool.close()
    assert received == bodies
    assert server.connections == 1
    assert server.requests[0].startswith(b"POST /records/get?shard_max=1 HTTP/1.1\r\n")


async def test_node_client_batches_go_through_the_pool_and_map_errors() -> None:
    """NodeClient._post: a 2xx answer is unpacked, another is the NodeError the node's message names."""

    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> None:
        head = server.requests[-1].decode("latin-1").lower()
        await reader.readexactly(int(head.split("content-length:")[1].split("\r\n")[0]))
        if n == 0:
            writer.write(response(msgpack.packb([[200, {"ok": True}]])))
        else:
            writer.write(response(msgpack.packb({"code": "bad_request", "message": "no"}), status=400))

    async with Server(script) as server:
        client = objstore.client.NodeClient("secret")
        node = NodeInfo("n1", server.address, "z1")
        try:
            assert await client._post(node, "/records", msgpack.packb([b"r"])) == [[200, {"ok": True}]]
            with pytest.raises(objstore.client.NodeError) as e:
                await client._post(node, "/records", msgpack.packb([b"r"]))
            assert (e.value.status, e.value.code) == (400, "bad_request")
        finally:
            await client.close()
    assert server.connections == 1
