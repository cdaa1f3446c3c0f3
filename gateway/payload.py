"""Request bodies as S3 sends them: plain or aws-chunked, verified (SHA-256, chunk signatures, checksums, MD5)."""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import hmac
import re
from collections.abc import AsyncIterator, Mapping
from typing import Protocol

from aiohttp import StreamReader
from aiohttp.http_exceptions import HttpProcessingError, LineTooLong

from gateway import checksums
from gateway.errors import S3Error

UNSIGNED_PAYLOAD = "UNSIGNED-PAYLOAD"
STREAMING_SIGNED = "STREAMING-AWS4-HMAC-SHA256-PAYLOAD"
STREAMING_SIGNED_TRAILER = "STREAMING-AWS4-HMAC-SHA256-PAYLOAD-TRAILER"
STREAMING_UNSIGNED_TRAILER = "STREAMING-UNSIGNED-PAYLOAD-TRAILER"
STREAMING_MODES = frozenset({STREAMING_SIGNED, STREAMING_SIGNED_TRAILER, STREAMING_UNSIGNED_TRAILER})

BATCH = 256 * 1024  # bytes gathered before hashing: big enough for a thread hop to pay, small enough to bound memory
OFFLOAD_AT = 64 * 1024  # batches at least this big are hashed in the thread pool, smaller ones inline
MAX_LINE = 4096  # longest chunk header or trailer line accepted
MAX_TRAILERS = 16  # trailer lines accepted after the last chunk
READ_ALL_LIMIT = 8 * 1024 * 1024  # read() without a size is for documents (XML), never for object data

_HEX64 = re.compile(r"[0-9a-fA-F]{64}")
_CHUNK_HEADER = re.compile(rb"([0-9a-fA-F]{1,16})(?:;(.*))?")


class ChunkVerifier(Protocol):
    """The SigV4 side of a signed aws-chunked body: the seed signature and how to sign each chunk."""

    seed_signature: str

    def chunk_signature(self, previous: str, chunk_sha256_hex: str) -> str: ...

    def trailer_signature(self, previous: str, trailer_sha256_hex: str) -> str: ...


class _Hasher(Protocol):
    def update(self, data: bytes, /) -> None: ...


def _update_all(hashers: list[_Hasher], pieces: list[bytes]) -> None:
    for piece in pieces:
        for h in hashers:
            h.update(piece)


def _malformed(reason: str) -> S3Error:
    return S3Error("InvalidRequest", f"Malformed aws-chunked body: {reason}")


class PayloadReader:
    """The decoded body of one request, read with bounded memory and verified as it streams.

    Every check that needs the whole body (x-amz-content-sha256, chunk signatures,
    trailer signature, decoded length, Content-MD5, x-amz-checksum-*) raises S3Error
    at the latest from the read that reaches EOF. Bytes returned before EOF are not
    yet proven: nothing may become visible until a read has returned b"" (or `at_eof`).
    """

    trailers: dict[str, str]  # trailer headers (lower-case names) once EOF is reached
    decoded_length: int | None  # x-amz-decoded-content-length of an aws-chunked body
    content_length: int | None  # Content-Length as sent (the encoded length for aws-chunked)
    checksum_algorithm: str | None  # e.g. "crc32": from x-amz-checksum-*, x-amz-trailer or x-amz-sdk-checksum-algorithm
    checksum_value: str | None  # base64 value of checksum_algorithm over the body, once EOF is reached
    bytes_read: int  # decoded bytes returned so far

    def __init__(
        self,
        content: StreamReader,
        headers: Mapping[str, str],
        content_sha256: str = UNSIGNED_PAYLOAD,
        verifier: ChunkVerifier | None = None,
    ) -> None:
        self._content = content
        self._verifier = verifier
        self.trailers = {}
        self.bytes_read = 0
        self.checksum_value = None
        self.content_length = _int_header(headers, "content-length")
        self._streaming = content_sha256 in STREAMING_MODES
        self._signed_chunks = content_sha256 in (STREAMING_SIGNED, STREAMING_SIGNED_TRAILER)
        self._with_trailer = content_sha256 in (STREAMING_SIGNED_TRAILER, STREAMING_UNSIGNED_TRAILER)
        if self._signed_chunks and verifier is None:
            raise ValueError("signed aws-chunked bodies need a ChunkVerifier")
        self.decoded_length = _int_header(headers, "x-amz-decoded-content-length") if self._streaming else None
        self._expected_sha256 = content_sha256.lower() if _HEX64.fullmatch(content_sha256) else None
        self._expected_md5 = _content_md5(headers)
        self._want_md5 = self._expected_md5 is not None
        self._declared_trailers = _declared_trailers(headers) if self._with_trailer else []
        self.checksum_algorithm, self._expected_checksum, self._checksum_in_trailer = self._checksum_expectation(
            headers
        )
        self._started = False
        self._eof = False
        self._failure: S3Error | None = None
        self._buffer = bytearray()
        self._batches: AsyncIterator[list[bytes]] | None = None
        self._hashers: list[_Hasher] = []
        self._sha256: hashlib._Hash | None = None
        self._md5: hashlib._Hash | None = None
        self._checksum: checksums.Checksum | None = None

    # ------------------------------------------------------------ public API

    def track_md5(self) -> None:
        """Also compute the MD5 of the body (for the ETag); call before the first read."""
        if self._started:
            raise RuntimeError("track_md5() must be called before the body is read")
        self._want_md5 = True

    def md5_digest(self) -> bytes:
        """The body's MD5, after EOF, when Content-MD5 was sent or track_md5() was called."""
        if not self._eof or self._md5 is None:
            raise RuntimeError("MD5 is only known after EOF and when tracked")
        return self._md5.digest()

    @property
    def at_eof(self) -> bool:
        """True once the whole body was returned and verified."""
        return self._eof and not self._buffer

    async def read(self, n: int = -1) -> bytes:
        """With n < 0, the rest of the body, verified (at most READ_ALL_LIMIT bytes, else
        MaxMessageLengthExceeded: for XML documents and small bodies). With n > 0, exactly `n`
        bytes, fewer only at the end. b"" at EOF, after every check has passed."""
        if n < 0:
            return await self.read_all(READ_ALL_LIMIT)
        while len(self._buffer) < n and not self._eof:
            if not await self._fill():
                break
        return self._take(n)

    async def readany(self) -> bytes:
        """The next decoded piece, at most one batch (BATCH bytes); b"" at EOF, after every check has passed."""
        if self._buffer or self._eof:
            return self._take(len(self._buffer))
        # A batch straight from the socket: joined once (or not at all), never staged in the buffer.
        batch: list[bytes] | None = []
        while batch == []:
            batch = await self._next_batch()
        if batch is None:
            return b""
        out = batch[0] if len(batch) == 1 else b"".join(batch)
        self.bytes_read += len(out)
        return out

    async def read_all(self, limit: int, error_code: str = "MaxMessageLengthExceeded") -> bytes:
        """The rest of the body, verified; S3Error(error_code) once it exceeds `limit` bytes."""
        parts: list[bytes] = []
        size = 0
        while piece := await self.readany():
            size += len(piece)
            if size > limit:
                raise S3Error(error_code)
            parts.append(piece)
        return b"".join(parts)

    def __aiter__(self) -> AsyncIterator[bytes]:
        return self._iterate()

    async def _iterate(self) -> AsyncIterator[bytes]:
        while piece := await self.readany():
            yield piece

    async def _fill(self) -> bool:
        batch = await self._next_batch()
        if batch is None:
            return False
        for piece in batch:
            self._buffer += piece
        return True

    def _take(self, n: int) -> bytes:
        with memoryview(self._buffer) as view:
            out = bytes(view[:n])  # one copy (slicing the bytearray would make another)
        del self._buffer[:n]
        self.bytes_read += len(out)
        return out

    # ------------------------------------------------------------ setup

    def _checksum_expectation(self, headers: Mapping[str, str]) -> tuple[str | None, str | None, bool]:
        from_header = checksums.checksum_from_headers(headers)
        if from_header is not None:
            return from_header[0], from_header[1], False
        in_trailer = [t for t in self._declared_trailers if t.startswith(checksums.HEADER_PREFIX)]
        if len(in_trailer) > 1:
            raise S3Error("InvalidRequest", "Expecting a single x-amz-checksum- trailer.")
        if in_trailer:
            return checksums.parse_algorithm(in_trailer[0][len(checksums.HEADER_PREFIX):], "x-amz-trailer"), None, True
        sdk = headers.get("x-amz-sdk-checksum-algorithm")
        if sdk:
            checksums.parse_algorithm(sdk)
            raise S3Error(
                "InvalidRequest",
                "x-amz-sdk-checksum-algorithm specified, but no corresponding x-amz-checksum-* "
                "or x-amz-trailer headers were found.",
            )
        return None, None, False

    def _start(self) -> None:
        self._started = True
        if self._expected_sha256 is not None:
            self._sha256 = hashlib.sha256()
            self._hashers.append(self._sha256)
        if self._want_md5:
            self._md5 = hashlib.md5()
            self._hashers.append(self._md5)
        if self.checksum_algorithm is not None:
            self._checksum = checksums.new_checksum(self.checksum_algorithm)
            self._hashers.append(self._checksum)
        self._batches = self._chunked_batches() if self._streaming else self._plain_batches()

    async def _next_batch(self) -> list[bytes] | None:
        if self._failure is not None:
            # A failed body stays failed: a closed generator would otherwise look like a clean EOF.
            raise self._failure
        if not self._started:
            self._start()
        assert self._batches is not None
        try:
            return await anext(self._batches)
        except StopAsyncIteration:
            self._eof = True
            return None
        except S3Error as e:
            self._failure = e
        except LineTooLong:
            self._failure = _malformed("line too long")
        except (HttpProcessingError, ConnectionError, asyncio.IncompleteReadError):
            # The client went away or sent less than it announced.
            self._failure = S3Error("IncompleteBody")
        raise self._failure

    async def _absorb(self, pieces: list[bytes], extra: _Hasher | None = None) -> None:
        hashers = self._hashers + ([extra] if extra is not None else [])
        if not hashers:
            return
        if sum(len(p) for p in pieces) >= OFFLOAD_AT:
            # hashlib, zlib and the CRT release the GIL: big batches use other cores, not the event loop.
            await asyncio.get_running_loop().run_in_executor(None, _update_all, hashers, pieces)
        else:
            _update_all(hashers, pieces)

    # ------------------------------------------------------------ plain bodies

    async def _plain_batches(self) -> AsyncIterator[list[bytes]]:
        total = 0
        while True:
            batch, size = await self._gather(BATCH, exact=False)
            if not batch:
                break
            total += size
            await self._absorb(batch)
            yield batch
        if self.content_length is not None and total != self.content_length:
            raise S3Error("IncompleteBody")
        self._finish()

    async def _gather(self, limit: int, exact: bool) -> tuple[list[bytes], int]:
        """Read up to `limit` bytes (exactly `limit` if `exact`, else IncompleteBody)."""
        batch: list[bytes] = []
        size = 0
        while size < limit:
            data = await self._content.read(limit - size)
            if not data:
                if exact:
                    raise S3Error("IncompleteBody")
                break
            batch.append(data)
            size += len(data)
        return batch, size

    # ------------------------------------------------------------ aws-chunked bodies

    async def _line(self, eof_ok: bool = False) -> bytes | None:
        line = await self._content.readuntil(b"\n", max_size=MAX_LINE)
        if not line and eof_ok:
            return None
        if not line.endswith(b"\n"):
            raise S3Error("IncompleteBody")
        if not line.endswith(b"\r\n"):
            raise _malformed("lines must end with CRLF")
        return line[:-2]

    async def _chunk_line(self) -> bytes:
        line = await self._line()
        assert line is not None
        return line

    async def _chunked_batches(self) -> AsyncIterator[list[bytes]]:
        previous = self._verifier.seed_signature if self._verifier is not None else ""
        decoded = 0
        while True:
            size, signature = self._parse_chunk_header(await self._chunk_line())
            chunk_hash = hashlib.sha256() if self._signed_chunks else None
            remaining = size
            while remaining:
                batch, got = await self._gather(min(remaining, BATCH), exact=True)
                remaining -= got
                await self._absorb(batch, chunk_hash)
                yield batch
            decoded += size
            if chunk_hash is not None and self._verifier is not None:
                expected = self._verifier.chunk_signature(previous, chunk_hash.hexdigest())
                if not hmac.compare_digest(expected, signature or ""):
                    raise S3Error("SignatureDoesNotMatch", "The chunk signature does not match.")
                previous = expected
            if size == 0:
                break
            if await self._content.readexactly(2) != b"\r\n":
                raise _malformed("chunk data must end with CRLF")
        if self._with_trailer:
            await self._read_trailers(previous)
        elif await self._chunk_line() != b"":
            raise _malformed("the final chunk must end with an empty line")
        if await self._content.read(1):
            raise _malformed("data after the final chunk")
        if self.decoded_length is not None and decoded != self.decoded_length:
            raise S3Error("IncompleteBody", "The decoded length does not match x-amz-decoded-content-length.")
        self._finish()

    def _parse_chunk_header(self, line: bytes) -> tuple[int, str | None]:
        m = _CHUNK_HEADER.fullmatch(line)
        if m is None:
            raise _malformed("bad chunk header")
        signature = None
        for ext in (m.group(2) or b"").split(b";"):
            name, _, value = ext.partition(b"=")
            if name.strip() == b"chunk-signature":
                signature = value.strip().decode("ascii", "replace")
        if self._signed_chunks and signature is None:
            raise S3Error("SignatureDoesNotMatch", "A chunk has no chunk-signature.")
        return int(m.group(1), 16), signature

    async def _read_trailers(self, previous: str) -> None:
        lines: list[tuple[str, str]] = []
        signature: str | None = None
        for _ in range(MAX_TRAILERS + 1):
            # Some clients end the body right after the last trailer line, without the empty line.
            line = await self._line(eof_ok=True)
            if not line:
                break
            name, sep, value = line.decode("utf-8", "replace").partition(":")
            if not sep:
                raise _malformed("bad trailer line")
            name, value = name.strip().lower(), value.strip()
            if name == "x-amz-trailer-signature":
                signature = value
            else:
                lines.append((name, value))
        else:
            raise _malformed("too many trailer lines")
        if self._signed_chunks and self._verifier is not None:
            # The trailer signature covers "name:value\n" of each trailer, as sent.
            canonical = "".join(f"{n}:{v}\n" for n, v in lines).encode("utf-8")
            expected = self._verifier.trailer_signature(previous, hashlib.sha256(canonical).hexdigest())
            if not hmac.compare_digest(expected, signature or ""):
                raise S3Error("SignatureDoesNotMatch", "The trailer signature does not match.")
        self.trailers = dict(lines)
        missing = [t for t in self._declared_trailers if t not in self.trailers]
        if missing:
            raise S3Error("InvalidRequest", f"The trailer {missing[0]} announced in x-amz-trailer was not sent.")

    # ------------------------------------------------------------ end of body

    def _finish(self) -> None:
        if self._sha256 is not None and self._expected_sha256 is not None:
            computed = self._sha256.hexdigest()
            if not hmac.compare_digest(computed, self._expected_sha256):
                raise S3Error(
                    "XAmzContentSHA256Mismatch",
                    extra={"ClientComputedContentSHA256": self._expected_sha256, "S3ComputedContentSHA256": computed},
                )
        if (
            self._md5 is not None
            and self._expected_md5 is not None
            and not hmac.compare_digest(self._md5.digest(), self._expected_md5)
        ):
            raise S3Error(
                "BadDigest",
                extra={
                    "ExpectedDigest": base64.b64encode(self._expected_md5).decode("ascii"),
                    "CalculatedDigest": base64.b64encode(self._md5.digest()).decode("ascii"),
                },
            )
        if self._checksum is not None and self.checksum_algorithm is not None:
            computed = self._checksum.b64digest()
            expected = self._expected_checksum
            header = checksums.header_name(self.checksum_algorithm)
            if self._checksum_in_trailer:
                expected = self.trailers.get(header)
                if expected is None:
                    raise S3Error("InvalidRequest", f"The trailer {header} announced in x-amz-trailer was not sent.")
                checksums.decode_value(self.checksum_algorithm, expected)
            if expected is not None and not hmac.compare_digest(computed, expected):
                raise S3Error(
                    "BadDigest", f"The {header} you specified did not match the calculated checksum."
                )
            self.checksum_value = computed


def _int_header(headers: Mapping[str, str], name: str) -> int | None:
    value = headers.get(name)
    if value is None:
        return None
    value = value.strip()
    if not value.isdigit():
        raise S3Error("InvalidArgument", f"{name} must be a non-negative integer",
                      extra={"ArgumentName": name, "ArgumentValue": value})
    return int(value)


def _content_md5(headers: Mapping[str, str]) -> bytes | None:
    value = headers.get("content-md5")
    if value is None:
        return None
    try:
        raw = base64.b64decode(value.strip(), validate=True)
    except (binascii.Error, ValueError):
        raw = b""
    if len(raw) != 16:
        raise S3Error("InvalidDigest")
    return raw


def _declared_trailers(headers: Mapping[str, str]) -> list[str]:
    value = headers.get("x-amz-trailer", "")
    return [t.strip().lower() for t in value.split(",") if t.strip()]
