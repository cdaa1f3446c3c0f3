"""The object layout: stripes, zfec (or ISA-L) encode/decode/rebuild, per-block xxh3 checksums and streaming encode."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterable, AsyncIterator, Callable, Sequence
from concurrent.futures import Executor
from typing import NamedTuple

import xxhash
import zfec

from objstore import isal
from objstore.cluster import ClusterMap, ECProfile

# Layout (docs/architecture.md, "Object layout"): an object of S bytes is S // stripe_size full
# stripes of k blocks of block_size bytes, then, if t = S % stripe_size > 0, one short stripe whose
# k blocks are ceil(t / k) bytes (the last data block zero padded). zfec adds m parity blocks of
# the same length per stripe. Shard i is block i of every stripe, concatenated, so block j of any
# shard sits at shard offset j * block_size: the same offsets in every shard.


# Blocks shorter than this go through zfec: ISA-L's fixed cost per call (about 20 us through ctypes)
# is more than zfec takes for a few KiB.
ISAL_MIN_BLOCK = 8 * 1024


class ChecksumError(ValueError):
    """A block whose xxh3_64 checksum does not match the one recorded at write time."""


def block_checksum(data: bytes | bytearray | memoryview) -> int:
    """The xxh3_64 checksum of one shard block, as an unsigned 64-bit int."""
    return xxhash.xxh3_64_intdigest(data)


def verify_block(data: bytes | bytearray | memoryview, expected: int, where: str) -> None:
    """Raise ChecksumError naming `where` unless `data` has the checksum `expected`."""
    actual = block_checksum(data)
    if actual != expected:
        raise ChecksumError(f"{where}: checksum mismatch (expected {expected:016x}, got {actual:016x})")


def shard_checksums(shard: bytes | bytearray | memoryview, block_size: int) -> list[int]:
    """Checksums of every block of a shard (blocks of block_size bytes, the last may be short)."""
    view = memoryview(shard)
    return [block_checksum(view[off:off + block_size]) for off in range(0, len(view), block_size)]


def _ceil_div(a: int, b: int) -> int:
    return -(-a // b)


def stripe_count(size: int, ec: ECProfile) -> int:
    """Stripes of an object of `size` bytes (the short tail stripe counts; an empty object has none)."""
    if size < 0:
        raise ValueError(f"object size must be >= 0, got {size}")
    return _ceil_div(size, ec.stripe_size)


def _check_stripe(size: int, ec: ECProfile, stripe: int) -> None:
    count = stripe_count(size, ec)
    if not 0 <= stripe < count:
        raise IndexError(f"stripe {stripe} outside 0..{count - 1} of a {size}-byte object")


def stripe_payload_len(size: int, ec: ECProfile, stripe: int) -> int:
    """Object bytes carried by stripe #stripe."""
    _check_stripe(size, ec, stripe)
    return min(ec.stripe_size, size - stripe * ec.stripe_size)


def block_len(size: int, ec: ECProfile, stripe: int) -> int:
    """Bytes of each of the k+m blocks of stripe #stripe (block_size, or ceil(t/k) for the tail)."""
    return _ceil_div(stripe_payload_len(size, ec, stripe), ec.k)


def shard_size(size: int, ec: ECProfile) -> int:
    """Bytes of one shard of an object of `size` bytes: full * block_size + ceil(t / k)."""
    if size < 0:
        raise ValueError(f"object size must be >= 0, got {size}")
    full, tail = divmod(size, ec.stripe_size)
    return full * ec.block_size + _ceil_div(tail, ec.k)


def range_to_stripes(offset: int, length: int, size: int, ec: ECProfile) -> tuple[int, int]:
    """First and last stripe touched by object bytes [offset, offset + length) (a non-empty range)."""
    if length <= 0 or offset < 0 or offset + length > size:
        raise ValueError(f"range [{offset}, {offset + length}) is not a non-empty range of a {size}-byte object")
    return offset // ec.stripe_size, (offset + length - 1) // ec.stripe_size


def shard_span(first_stripe: int, last_stripe: int, size: int, ec: ECProfile) -> tuple[int, int]:
    """(offset, length) in every shard of the blocks of stripes first_stripe..last_stripe."""
    if first_stripe > last_stripe:
        raise ValueError(f"stripe range {first_stripe}..{last_stripe} is empty")
    _check_stripe(size, ec, first_stripe)
    _check_stripe(size, ec, last_stripe)
    start = first_stripe * ec.block_size
    return start, (last_stripe - first_stripe) * ec.block_size + block_len(size, ec, last_stripe)


class StripeCodec:
    """zfec for one EC profile: encodes a stripe into k+m blocks, decodes and rebuilds from any k.

    Where ISA-L is at hand (`objstore.isal`), it does the Galois-field work for blocks of
    ISAL_MIN_BLOCK bytes or more, with zfec's coefficients: the same bytes, faster. Both release
    the GIL around that work and only read their matrices, so one StripeCodec can be shared by
    every thread of a pool.
    """

    def __init__(self, ec: ECProfile, accelerate: bool = True) -> None:
        self.ec = ec
        self._encoder = zfec.Encoder(ec.k, ec.width)
        self._decoder = zfec.Decoder(ec.k, ec.width)
        # ISA-L computes the same bytes faster, past a fixed cost per call that small blocks do not repay.
        self._isal = isal.Coder.like(ec.k, ec.width, self._zfec_encode) if accelerate else None

    @property
    def backend(self) -> str:
        return "isa-l" if self._isal is not None else "zfec"

    def _zfec_encode(self, blocks: list[bytes]) -> list[bytes]:
        out: list[bytes] = self._encoder.encode(list(blocks))
        return out

    def _fast(self, block_len: int) -> isal.Coder | None:
        return self._isal if block_len >= ISAL_MIN_BLOCK else None

    def split(self, payload: bytes | bytearray | memoryview) -> list[bytes]:
        """The k data blocks of one stripe payload: equal length, the last zero padded."""
        k, n = self.ec.k, len(payload)
        if n > self.ec.stripe_size:
            raise ValueError(f"stripe payload of {n} bytes exceeds stripe_size {self.ec.stripe_size}")
        blen = _ceil_div(n, k)
        view = memoryview(payload)
        blocks = [bytes(view[i * blen:(i + 1) * blen]) for i in range(k)]
        # Only the tail stripe is short: zeros fill it up to k * blen, at the end of its last blocks.
        return [b if len(b) == blen else b + bytes(blen - len(b)) for b in blocks]

    def encode(self, payload: bytes | bytearray | memoryview) -> list[bytes]:
        """One stripe payload (at most stripe_size bytes) -> its k+m blocks, data blocks first."""
        data = self.split(payload)
        fast = self._fast(len(data[0]))
        if fast is not None:
            return data + fast.parity(data)
        return self._zfec_encode(data)

    def _check(self, blocks: dict[int, bytes]) -> int:
        """The length of the blocks of a stripe, once they are known to be enough to decode it."""
        k, width = self.ec.k, self.ec.width
        bad = [i for i in blocks if not 0 <= i < width]
        if bad:
            raise ValueError(f"block indexes {bad} outside 0..{width - 1}")
        if len(blocks) < k:
            raise ValueError(f"need {k} blocks to decode a stripe, got {len(blocks)} ({sorted(blocks)})")
        lengths = {len(b) for b in blocks.values()}
        if len(lengths) != 1:
            raise ValueError(f"blocks of one stripe differ in length: {sorted(lengths)}")
        return lengths.pop()

    def _data_blocks(self, blocks: dict[int, bytes]) -> list[bytes]:
        """The k data blocks of a stripe from any k of its blocks (decoding only if parity stands in)."""
        k = self.ec.k
        fast = self._fast(self._check(blocks))
        # Data blocks first: with all of them present zfec is not needed at all.
        chosen = sorted(blocks)[:k]
        if chosen[-1] < k:
            return [bytes(blocks[i]) for i in range(k)]
        if fast is not None:  # only the missing data blocks are computed
            made = fast.rows(blocks, [i for i in range(k) if i not in blocks])
            return [bytes(blocks[i]) if i in blocks else made[i] for i in range(k)]
        # zfec reorders the lists it is given in place: always hand it fresh ones.
        decoded: list[bytes] = self._decoder.decode([blocks[i] for i in chosen], list(chosen))
        return decoded

    def decode(self, blocks: dict[int, bytes], payload_len: int) -> bytes:
        """Any k blocks of one stripe (index -> block) -> the first payload_len bytes of its payload."""
        data = self._data_blocks(blocks)
        if not 0 <= payload_len <= len(data[0]) * self.ec.k:
            raise ValueError(f"payload_len {payload_len} does not fit {self.ec.k} blocks of {len(data[0])} bytes")
        return b"".join(data)[:payload_len]

    def rebuild(self, blocks: dict[int, bytes], want: Sequence[int]) -> dict[int, bytes]:
        """Recreate the blocks `want` of one stripe (data or parity) from any k of its blocks."""
        width = self.ec.width
        bad = [i for i in want if not 0 <= i < width]
        if bad:
            raise ValueError(f"wanted block indexes {bad} outside 0..{width - 1}")
        wanted = list(dict.fromkeys(want))
        fast = self._fast(self._check(blocks))
        if fast is not None:  # straight from the blocks at hand, without the data blocks in between
            return fast.rows(blocks, wanted) if wanted else {}
        data = self._data_blocks(blocks)
        made: list[bytes] = self._encoder.encode(data, wanted) if wanted else []
        return {i: bytes(b) for i, b in zip(wanted, made)}


class EncodedStripe(NamedTuple):
    """The k+m blocks of one stripe and their xxh3_64 checksums (block i belongs to shard i)."""

    blocks: list[bytes]
    checksums: list[int]


async def rechunk(source: AsyncIterable[bytes], size: int) -> AsyncIterator[bytes]:
    """Re-cut chunks of any length into pieces of exactly `size` bytes (the last may be short).

    Holds at most one incoming chunk plus size - 1 carried-over bytes: a stripe never waits for
    the whole body.
    """
    if size <= 0:
        raise ValueError(f"chunk size must be > 0, got {size}")
    carry = bytearray()
    async for chunk in source:
        data = bytes(chunk)
        pos = 0
        if carry:
            take = min(size - len(carry), len(data))
            carry += data[:take]
            pos = take
            if len(carry) < size:
                continue
            yield bytes(carry)
            carry.clear()
        while len(data) - pos >= size:
            yield data[pos:pos + size]
            pos += size
        carry += data[pos:]
    if carry:
        yield bytes(carry)


def _encode_job(codec: StripeCodec, payload: bytes, on_payload: Callable[[bytes], None] | None,
                with_checksums: bool) -> EncodedStripe:
    if on_payload is not None:
        on_payload(payload)
    blocks = codec.encode(payload)
    return EncodedStripe(blocks, [block_checksum(b) for b in blocks] if with_checksums else [])


_codecs: dict[ECProfile, StripeCodec] = {}


def codec_backend(ec: ECProfile | None = None) -> str:
    """What does the Galois-field work of large blocks in this process: "isa-l" or "zfec".

    With a profile, what that profile's codec uses: zfec where ISA-L is missing or failed its check
    against zfec for that profile (the codec is built, and checked, on the first call).
    """
    if ec is not None:
        return codec_for(ec).backend
    return "isa-l" if isal.library() is not None else "zfec"


def codec_summary(cmap: ClusterMap) -> str:
    """The backend of every EC profile of a map, for the start-up line: "4+2 isa-l", "4+2 isa-l, 8+3 zfec"."""
    profiles = sorted({cmap.ec, *(p.ec for p in cmap.pools)}, key=lambda ec: (ec.k, ec.m, ec.block_size))
    return ", ".join(f"{ec.k}+{ec.m} {codec_backend(ec)}" for ec in profiles)


def codec_for(ec: ECProfile) -> StripeCodec:
    """The shared StripeCodec of a profile (zfec matrices are built once per profile)."""
    codec = _codecs.get(ec)
    if codec is None:
        codec = _codecs.setdefault(ec, StripeCodec(ec))
    return codec


async def _encode_pipeline(source: AsyncIterable[bytes], ec: ECProfile, executor: Executor | None,
                           on_payload: Callable[[bytes], None] | None,
                           with_checksums: bool) -> AsyncIterator[EncodedStripe]:
    # One stripe is encoded in the executor while the next one is read from the source and the
    # previous one is consumed. Only one job runs at a time, so on_payload (an MD5 update) sees
    # the payloads in order, and memory stays at about three stripes whatever the object size.
    loop = asyncio.get_running_loop()
    codec = codec_for(ec)
    running: asyncio.Future[EncodedStripe] | None = None
    try:
        async for payload in rechunk(source, ec.stripe_size):
            if running is None:
                running = loop.run_in_executor(executor, _encode_job, codec, payload, on_payload, with_checksums)
                continue
            done = await running
            running = loop.run_in_executor(executor, _encode_job, codec, payload, on_payload, with_checksums)
            yield done
        if running is not None:
            done = await running
            running = None
            yield done
    finally:
        # The consumer stopped early: drop the job in flight without leaving its outcome unread.
        if running is not None:
            if running.done():
                if not running.cancelled():
                    running.exception()
            else:
                running.cancel()


async def encode_stream(source: AsyncIterable[bytes], ec: ECProfile, executor: Executor | None = None,
                        on_payload: Callable[[bytes], None] | None = None) -> AsyncIterator[list[bytes]]:
    """Encode a body of chunks of any length stripe by stripe, yielding the k+m blocks of each.

    on_payload is called with every stripe payload in order (in the executor thread: feed a hash
    with it); zfec runs in the executor (the loop's default one if None).
    """
    async for stripe in _encode_pipeline(source, ec, executor, on_payload, with_checksums=False):
        yield stripe.blocks


async def encode_stream_checked(source: AsyncIterable[bytes], ec: ECProfile, executor: Executor | None = None,
                                on_payload: Callable[[bytes], None] | None = None,
                                ) -> AsyncIterator[EncodedStripe]:
    """encode_stream that also yields each block's xxh3_64 checksum, computed in the executor too."""
    async for stripe in _encode_pipeline(source, ec, executor, on_payload, with_checksums=True):
        yield stripe
