"""The requests the S3 load generator sends: SigV4 signing, deterministic payloads and verified S3 calls.

Every object body is a window of one seeded random byte stream: the body of key K with size S is
`stream[offset(K) : offset(K) + S]`, where offset(K) comes from a hash of K. So the generator holds
one buffer (the largest size plus `ROTATION` bytes) whatever the number of objects, never builds a
body per request, and checks every GET byte for byte against the window it wrote, with no per-key
state. Windows start at key-dependent, unaligned offsets, so a store that deduplicates fixed-size
blocks cannot collapse the objects into one.

Signing is a small SigV4 signer with `x-amz-content-sha256: UNSIGNED-PAYLOAD` (the body is never
hashed). botocore's `S3SigV4Auth` costs about 45 us of CPU per request here (a quarter of a core at
5,000 ops/s, as much again as aiohttp's whole client path) and hashes every body over plain HTTP;
this one costs about 4 us, and the unit tests check its Authorization header against botocore's for
the same request and time, and recompute the signature of what arrives on the wire with botocore.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import random
import re
import time
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote
from xml.sax.saxutils import unescape

import aiohttp
from yarl import URL

__all__ = [
    "DEFAULT_SEED",
    "ROTATION",
    "UNSIGNED_PAYLOAD",
    "OpError",
    "PayloadStream",
    "S3LoadClient",
    "S3Target",
    "SigV4Signer",
    "encode_key",
]

DEFAULT_SEED = 20240601
UNSIGNED_PAYLOAD = "UNSIGNED-PAYLOAD"
ROTATION = 1 << 20  # windows start anywhere in the first MiB of the stream
_BLOCK = 1 << 20  # the stream is generated (and PUT bodies streamed) in blocks of this size
_STREAM_ABOVE = 1 << 20  # bodies above this go out as a series of views, each awaited, not one write
_LIST_TOKEN = re.compile(rb"<NextContinuationToken>([^<]*)</NextContinuationToken>")


class PayloadStream:
    """One seeded random byte stream, grown on demand; object bodies are windows of it."""

    def __init__(self, seed: int = DEFAULT_SEED) -> None:
        self.seed = seed
        self._rng = random.Random(seed)
        self._data = b""
        self._lock = asyncio.Lock()

    def __len__(self) -> int:
        return len(self._data)

    @staticmethod
    def offset(key: str) -> int:
        """Where the window of `key` starts."""
        return int.from_bytes(hashlib.blake2b(key.encode(), digest_size=8).digest(), "big") % ROTATION

    def grow(self, size: int) -> None:
        """Make windows of `size` bytes available for every key (blocking: a 256 MiB size takes seconds)."""
        need = size + ROTATION
        if len(self._data) >= need:
            return
        blocks = [self._data]
        have = len(self._data)
        while have < need:
            blocks.append(self._rng.randbytes(_BLOCK))
            have += _BLOCK
        self._data = b"".join(blocks)  # one assignment: views of the old buffer stay valid

    async def ensure(self, size: int) -> None:
        """`grow` in a worker thread, one growth at a time."""
        if len(self._data) >= size + ROTATION:
            return
        async with self._lock:
            await asyncio.get_running_loop().run_in_executor(None, self.grow, size)

    def body(self, key: str, size: int) -> memoryview:
        """The body of `key` at `size` bytes, without a copy."""
        start = self.offset(key)
        if start + size > len(self._data):
            raise ValueError(f"payload stream holds {len(self._data)} bytes; ensure({size}) first")
        return memoryview(self._data)[start : start + size]

    def matches(self, key: str, position: int, chunk: bytes) -> bool:
        """Whether `chunk` is what the body of `key` holds at `position` (a memcmp, no copy)."""
        return self._data.startswith(chunk, self.offset(key) + position)


def encode_key(key: str) -> str:
    """A key as S3 puts it in a path: UTF-8, everything but unreserved characters and '/' escaped."""
    return quote(key, safe="/-_.~")


def _encode(value: str) -> str:
    return quote(value, safe="-_.~")


class SigV4Signer:
    """AWS Signature Version 4 for S3 requests with an unsigned payload; signing keys cached per day."""

    def __init__(self, access_key: str, secret_key: str, region: str = "us-east-1", service: str = "s3") -> None:
        self.access_key = access_key
        self.region = region
        self.service = service
        self._secret = ("AWS4" + secret_key).encode()
        self._keys: dict[str, bytes] = {}
        self._stamp: tuple[int, str] = (-1, "")

    def _signing_key(self, day: str) -> bytes:
        key = self._keys.get(day)
        if key is None:
            key = self._secret
            for part in (day, self.region, self.service, "aws4_request"):
                key = hmac.digest(key, part.encode(), "sha256")
            self._keys = {day: key}  # only today's key is ever needed again
        return key

    def _amz_date(self, now: float | None) -> str:
        second = int(time.time() if now is None else now)
        if self._stamp[0] != second:
            self._stamp = (second, time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(second)))
        return self._stamp[1]

    def sign(
        self,
        method: str,
        host: str,
        path: str,
        query: Sequence[tuple[str, str]] = (),
        headers: Mapping[str, str] | None = None,
        now: float | None = None,
    ) -> tuple[str, dict[str, str]]:
        """Encoded query string and the headers to send (signed ones plus Authorization).

        `path` is already URI-encoded (see `encode_key`); the query string returned is the canonical
        one, so the request must be sent with exactly it.
        """
        amz_date = self._amz_date(now)
        day = amz_date[:8]
        out = {"host": host, "x-amz-content-sha256": UNSIGNED_PAYLOAD, "x-amz-date": amz_date}
        if headers:
            out.update({name.lower(): " ".join(value.split()) for name, value in headers.items()})
        names = sorted(out)
        canonical_query = "&".join(f"{k}={v}" for k, v in sorted((_encode(k), _encode(v)) for k, v in query))
        signed = ";".join(names)
        canonical = "\n".join(
            (method, path, canonical_query, "".join(f"{n}:{out[n]}\n" for n in names), signed, UNSIGNED_PAYLOAD)
        )
        scope = f"{day}/{self.region}/{self.service}/aws4_request"
        to_sign = f"AWS4-HMAC-SHA256\n{amz_date}\n{scope}\n{hashlib.sha256(canonical.encode()).hexdigest()}"
        signature = hmac.digest(self._signing_key(day), to_sign.encode(), "sha256").hex()  # one C call
        out["authorization"] = (
            f"AWS4-HMAC-SHA256 Credential={self.access_key}/{scope}, SignedHeaders={signed}, Signature={signature}"
        )
        return canonical_query, out


@dataclass(frozen=True)
class S3Target:
    """Where the load goes: a path-style S3 endpoint, a bucket and credentials."""

    endpoint: str  # scheme://host[:port], no path
    bucket: str
    access_key: str
    secret_key: str
    region: str = "us-east-1"


class OpError(Exception):
    """An operation that failed; `kind` names the failure for the error table (e.g. 'GET 404')."""

    def __init__(self, kind: str, detail: str = "") -> None:
        super().__init__(f"{kind}: {detail}" if detail else kind)
        self.kind = kind


async def _views(body: memoryview) -> AsyncIterator[memoryview]:
    # each yield is awaited by aiohttp's writer, which drains the socket: the transport never buffers
    # more than a block, whatever the object size
    for start in range(0, len(body), _BLOCK):
        yield body[start : start + _BLOCK]


SLOWDOWN_RETRIES = 4
"""Retries of a PUT answered 503 SlowDown (botocore's legacy mode makes 5 attempts in all)."""
SLOWDOWN_BACKOFF = 0.5
"""Seconds of the first retry's jitter range; it doubles with each retry."""


class S3LoadClient:
    """The S3 operations of the generator over one aiohttp session; each raises OpError on failure."""

    def __init__(self, session: aiohttp.ClientSession, target: S3Target, payloads: PayloadStream) -> None:
        self.session = session
        self.target = target
        self.payloads = payloads
        url = URL(target.endpoint)
        if url.host is None:
            raise ValueError(f"endpoint {target.endpoint!r} has no host")
        self._base = f"{url.scheme}://{url.raw_authority}"
        self._host = url.raw_authority  # as aiohttp sends it: the port only when not the scheme's default
        self._bucket_path = "/" + encode_key(target.bucket)
        self.signer = SigV4Signer(target.access_key, target.secret_key, target.region)
        self.slowdowns = 0  # 503 SlowDown answers to PUTs, retried

    def _request(
        self,
        method: str,
        key: str | None,
        query: Sequence[tuple[str, str]] = (),
        data: Any = None,
        extra: Mapping[str, str] | None = None,
    ) -> Any:
        path = self._bucket_path if key is None else f"{self._bucket_path}/{encode_key(key)}"
        query_string, headers = self.signer.sign(method, self._host, path, query)
        if extra:
            headers.update(extra)  # unsigned: SigV4 needs only host and the x-amz-* headers signed
        url = URL(f"{self._base}{path}?{query_string}" if query_string else f"{self._base}{path}", encoded=True)
        return self.session.request(method, url, headers=headers, data=data)

    @staticmethod
    async def _fail(op: str, response: aiohttp.ClientResponse) -> OpError:
        detail = (await response.content.read(512)).decode(errors="replace")
        code = re.search(r"<Code>([^<]*)</Code>", detail)
        return OpError(f"{op} {response.status}", code.group(1) if code else detail[:120])

    async def create_bucket(self) -> None:
        """Create the bucket; one that exists already (ours or not) is fine, the first PUT will tell."""
        async with self._request("PUT", None, data=b"") as response:
            if response.status not in (200, 409):
                raise await self._fail("CreateBucket", response)
            await response.read()

    async def put(self, key: str, size: int) -> int:
        """PUT the body of `key` at `size` bytes; returns the bytes sent."""
        body = self.payloads.body(key, size)
        extra = {"Content-Type": "application/octet-stream"}
        streamed = size > _STREAM_ABOVE
        if streamed:
            extra["Content-Length"] = str(size)
        for attempt in range(SLOWDOWN_RETRIES + 1):
            data: Any = _views(body) if streamed else body  # a fresh stream for every attempt
            async with self._request("PUT", key, data=data, extra=extra) as response:
                if response.status == 200:
                    await response.read()
                    return size
                err = await self._fail("PUT", response)
            if err.kind != "PUT 503" or "SlowDown" not in str(err) or attempt == SLOWDOWN_RETRIES:
                raise err
            # A store shedding load: back off and retry, as the AWS SDKs do (full jitter, doubling).
            self.slowdowns += 1
            await asyncio.sleep(random.random() * SLOWDOWN_BACKOFF * 2**attempt)
        raise AssertionError("unreachable")

    async def get(self, key: str, size: int) -> int:
        """GET `key` and compare every byte with its known body; returns the bytes received."""
        async with self._request("GET", key) as response:
            if response.status != 200:
                raise await self._fail("GET", response)
            position = 0
            async for chunk in response.content.iter_any():
                if not self.payloads.matches(key, position, chunk) or position + len(chunk) > size:
                    raise OpError("GET body mismatch", f"{key} differs within bytes {position}..{position + len(chunk)}")
                position += len(chunk)
        if position != size:
            raise OpError("GET short body", f"{key}: {position} of {size} bytes")
        return size

    async def head(self, key: str, size: int) -> int:
        """HEAD `key` and check its Content-Length; returns 0 bytes."""
        async with self._request("HEAD", key) as response:
            if response.status != 200:
                raise OpError(f"HEAD {response.status}")
            if response.content_length != size:
                raise OpError("HEAD wrong length", f"{key}: {response.content_length} != {size}")
        return 0

    async def delete(self, key: str) -> int:
        async with self._request("DELETE", key) as response:
            if response.status not in (200, 204):
                raise await self._fail("DELETE", response)
            await response.read()
        return 0

    async def list_page(self, prefix: str, token: str | None, max_keys: int = 1000) -> tuple[int, str | None]:
        """One ListObjectsV2 page under `prefix`: (keys on it, continuation token or None at the end)."""
        query = [("list-type", "2"), ("max-keys", str(max_keys)), ("prefix", prefix)]
        if token is not None:
            query.append(("continuation-token", token))
        async with self._request("GET", None, query) as response:
            if response.status != 200:
                raise await self._fail("LIST", response)
            text = await response.read()
        if b"<ListBucketResult" not in text:
            raise OpError("LIST bad body", text[:120].decode(errors="replace"))
        found = _LIST_TOKEN.search(text)
        following = unescape(found.group(1).decode()) if found and b"<IsTruncated>true" in text else None
        return text.count(b"<Contents>"), following
