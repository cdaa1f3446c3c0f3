"""An in-memory S3 endpoint that measures nothing but the load generator: it keeps sizes, not bytes.

The load generator's bodies are windows of one seeded stream (benchmarks/s3load.py), so the sink checks
each PUT body against the window for its key (a memcmp per chunk) and keeps only the size; a GET sends
the same window back from the sink's own copy of the stream. Gigabytes of objects cost it a few hundred
bytes each. A body that is not a load generator payload is kept whole if it is at most 1 MiB (so aws cli
and friends work for a quick look) and refused above that.

No authentication is checked. Buckets are path-style. Supported: PUT/DELETE/HEAD bucket, PUT/GET/HEAD/
DELETE object, ListObjectsV2 (prefix, max-keys up to 1000, continuation-token, start-after; no
delimiter). `corrupt_every=N` flips one byte in every Nth GET body, to test that corruption is caught.

    python -m benchmarks.sink [--port 0] [--seed N] [--corrupt-every N]

prints `listening on http://127.0.0.1:PORT` once it accepts connections, and runs until SIGTERM or
Ctrl-C.
"""

from __future__ import annotations

import argparse
import asyncio
import bisect
import hashlib
import signal
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from email.utils import formatdate
from typing import Self
from xml.sax.saxutils import escape

from aiohttp import web

from benchmarks.s3load import DEFAULT_SEED, PayloadStream

__all__ = ["Sink", "SinkState", "main", "make_app"]

KEEP_FOREIGN = 1 << 20  # bodies that are not load generator payloads are kept up to this size
_CHUNK = 1 << 20
_XML = "application/xml"


@dataclass
class SinkObject:
    size: int
    etag: str
    modified: float
    data: bytes | None = None  # the bytes, for a foreign body; None means the payload window of the key


@dataclass
class SinkState:
    """Buckets, each a dict of objects and its keys kept sorted for listing."""

    payloads: PayloadStream
    corrupt_every: int = 0
    objects: dict[str, dict[str, SinkObject]] = field(default_factory=dict)
    sorted_keys: dict[str, list[str]] = field(default_factory=dict)
    gets: int = 0
    corrupted: int = 0

    def store(self, bucket: str, key: str, obj: SinkObject) -> None:
        objects = self.objects[bucket]
        if key not in objects:
            bisect.insort(self.sorted_keys[bucket], key)
        objects[key] = obj

    def remove(self, bucket: str, key: str) -> None:
        if self.objects[bucket].pop(key, None) is not None:
            keys = self.sorted_keys[bucket]
            del keys[bisect.bisect_left(keys, key)]


STATE = web.AppKey("state", SinkState)


def _error(status: int, code: str, message: str = "") -> web.Response:
    body = f"<?xml version='1.0' encoding='UTF-8'?>\n<Error><Code>{code}</Code><Message>{escape(message)}</Message></Error>"
    return web.Response(status=status, text=body, content_type=_XML)


def _bucket_or_error(state: SinkState, bucket: str) -> dict[str, SinkObject] | web.Response:
    found = state.objects.get(bucket)
    return _error(404, "NoSuchBucket", bucket) if found is None else found


async def _bucket(request: web.Request) -> web.StreamResponse:
    state = request.app[STATE]
    bucket = request.match_info["bucket"]
    if request.method == "PUT":
        state.objects.setdefault(bucket, {})
        state.sorted_keys.setdefault(bucket, [])
        return web.Response()
    objects = _bucket_or_error(state, bucket)
    if isinstance(objects, web.Response):
        return objects if request.method != "HEAD" else web.Response(status=404)
    if request.method == "HEAD":
        return web.Response()
    if request.method == "DELETE":
        if objects:
            return _error(409, "BucketNotEmpty", bucket)
        del state.objects[bucket], state.sorted_keys[bucket]
        return web.Response(status=204)
    if request.method == "GET":
        return _list(state, bucket, request)
    return _error(405, "MethodNotAllowed", request.method)


def _list(state: SinkState, bucket: str, request: web.Request) -> web.Response:
    q = request.query
    prefix = q.get("prefix", "")
    try:
        max_keys = min(int(q.get("max-keys", "1000")), 1000)
    except ValueError:
        return _error(400, "InvalidArgument", "max-keys")
    keys = state.sorted_keys[bucket]
    start = bisect.bisect_left(keys, prefix)
    marker = q.get("continuation-token") or q.get("start-after")
    if marker:
        start = max(start, bisect.bisect_right(keys, marker))
    page: list[str] = []
    for key in keys[start : start + max_keys + 1]:
        if not key.startswith(prefix):
            break
        page.append(key)
    truncated = len(page) > max_keys
    page = page[:max_keys]
    objects = state.objects[bucket]
    parts = [
        "<?xml version='1.0' encoding='UTF-8'?>\n<ListBucketResult xmlns='http://s3.amazonaws.com/doc/2006-03-01/'>",
        f"<Name>{escape(bucket)}</Name><Prefix>{escape(prefix)}</Prefix><KeyCount>{len(page)}</KeyCount>",
        f"<MaxKeys>{max_keys}</MaxKeys><IsTruncated>{'true' if truncated else 'false'}</IsTruncated>",
    ]
    if truncated:
        parts.append(f"<NextContinuationToken>{escape(page[-1])}</NextContinuationToken>")
    for key in page:
        obj = objects[key]
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime(obj.modified))
        parts.append(
            f"<Contents><Key>{escape(key)}</Key><LastModified>{stamp}</LastModified><ETag>&quot;{obj.etag}&quot;"
            f"</ETag><Size>{obj.size}</Size><StorageClass>STANDARD</StorageClass></Contents>"
        )
    parts.append("</ListBucketResult>")
    return web.Response(text="".join(parts), content_type=_XML)


async def _object(request: web.Request) -> web.StreamResponse:
    state = request.app[STATE]
    bucket, key = request.match_info["bucket"], request.match_info["key"]
    objects = _bucket_or_error(state, bucket)
    if isinstance(objects, web.Response):
        return objects if request.method != "HEAD" else web.Response(status=404)
    if request.method == "PUT":
        return await _put(state, bucket, key, request)
    if request.method == "DELETE":
        state.remove(bucket, key)
        return web.Response(status=204)
    obj = objects.get(key)
    if obj is None:
        return _error(404, "NoSuchKey", key) if request.method == "GET" else web.Response(status=404)
    headers = {"ETag": f'"{obj.etag}"', "Last-Modified": formatdate(obj.modified, usegmt=True),
               "Content-Type": "application/octet-stream"}
    if request.method == "HEAD":
        headers["Content-Length"] = str(obj.size)
        return web.Response(headers=headers)
    if request.method == "GET":
        return await _get(state, key, obj, headers, request)
    return _error(405, "MethodNotAllowed", request.method)


async def _put(state: SinkState, bucket: str, key: str, request: web.Request) -> web.Response:
    length = request.content_length
    if length is not None:
        await state.payloads.ensure(length)
    is_payload = length is not None
    kept: list[bytes] = []
    position = 0
    async for chunk in request.content.iter_any():
        if is_payload and not state.payloads.matches(key, position, chunk):
            is_payload = False
        position += len(chunk)
        if position <= KEEP_FOREIGN:
            kept.append(chunk)
        elif not is_payload:
            return _error(400, "EntityTooLarge", "the sink keeps only load generator payloads above 1 MiB")
    if is_payload and position != length:
        return _error(400, "IncompleteBody", f"{position} of {length} bytes")
    # not an MD5 of the body: hashing every byte would make the sink slower than the generator it measures
    etag = hashlib.md5(f"{key}\0{position}\0{is_payload}".encode()).hexdigest()
    state.store(bucket, key, SinkObject(position, etag, time.time(), None if is_payload else b"".join(kept)))
    return web.Response(headers={"ETag": f'"{etag}"'})


async def _get(
    state: SinkState, key: str, obj: SinkObject, headers: dict[str, str], request: web.Request
) -> web.StreamResponse:
    state.gets += 1
    body = memoryview(obj.data) if obj.data is not None else state.payloads.body(key, obj.size)
    if state.corrupt_every and state.gets % state.corrupt_every == 0 and obj.size:
        state.corrupted += 1
        flipped = bytearray(body[obj.size // 2 : obj.size // 2 + 1])
        flipped[0] ^= 0x01
        body_parts = [body[: obj.size // 2], memoryview(bytes(flipped)), body[obj.size // 2 + 1 :]]
    else:
        body_parts = [body]
    if obj.size <= _CHUNK:
        return web.Response(body=body_parts[0] if len(body_parts) == 1 else b"".join(body_parts), headers=headers)
    response = web.StreamResponse(headers=headers)
    response.content_length = obj.size
    await response.prepare(request)
    for part in body_parts:
        for start in range(0, len(part), _CHUNK):
            await response.write(part[start : start + _CHUNK])
    await response.write_eof()
    return response


def make_app(seed: int = DEFAULT_SEED, corrupt_every: int = 0) -> web.Application:
    """The sink as an aiohttp application; its state is `app[STATE]`."""
    app = web.Application()
    app[STATE] = SinkState(PayloadStream(seed), corrupt_every)
    app.router.add_route("*", "/{bucket}", _bucket)
    app.router.add_route("*", "/{bucket}/", _bucket)
    app.router.add_route("*", "/{bucket}/{key:.+}", _object)
    return app


class Sink:
    """The sink served on 127.0.0.1 inside the running event loop (for tests and in-process use)."""

    def __init__(self, seed: int = DEFAULT_SEED, corrupt_every: int = 0, port: int = 0) -> None:
        self.app = make_app(seed, corrupt_every)
        self.port = port
        self._runner = web.AppRunner(self.app, access_log=None)

    @property
    def state(self) -> SinkState:
        return self.app[STATE]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self) -> Self:
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port).start()
        self.port = int(self._runner.addresses[0][1])
        return self

    async def stop(self) -> None:
        await self._runner.cleanup()

    async def __aenter__(self) -> Self:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()


async def _serve(port: int, seed: int, corrupt_every: int) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    async with Sink(seed, corrupt_every, port) as sink:
        print(f"listening on {sink.url}", flush=True)
        await stop.wait()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.sink", description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=0, help="port on 127.0.0.1 (0: any free one; default)")
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED, help="payload seed, as given to the generator")
    parser.add_argument("--corrupt-every", type=int, default=0, metavar="N", help="flip a byte in every Nth GET")
    args = parser.parse_args(argv)
    try:
        import uvloop

        runner = asyncio.Runner(loop_factory=uvloop.new_event_loop)
    except ImportError:
        runner = asyncio.Runner()
    with runner:
        runner.run(_serve(args.port, args.seed, args.corrupt_every))
    return 0


if __name__ == "__main__":
    sys.exit(main())
