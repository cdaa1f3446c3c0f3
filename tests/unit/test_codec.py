"""Property tests of the object layout: any k of k+m shards rebuild the object, checksums catch bit flips."""

from __future__ import annotations

import asyncio
import itertools
import random
from collections.abc import AsyncIterator, Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from objstore.cluster import ECProfile
from objstore.codec import (
    ChecksumError,
    StripeCodec,
    block_checksum,
    block_len,
    codec_for,
    encode_stream,
    encode_stream_checked,
    range_to_stripes,
    rechunk,
    shard_checksums,
    shard_size,
    shard_span,
    stripe_count,
    stripe_payload_len,
    verify_block,
)

SMALL_BLOCKS = (512, 576, 1024, 4096)


@st.composite
def profiles(draw: st.DrawFn, max_width: int = 12) -> ECProfile:
    k = draw(st.integers(1, max_width - 1))
    m = draw(st.integers(0, max_width - k))
    return ECProfile(k=k, m=m, block_size=draw(st.sampled_from(SMALL_BLOCKS)))


@st.composite
def objects(draw: st.DrawFn) -> tuple[ECProfile, bytes]:
    """A profile and a payload: empty, one byte, stripe-aligned, ragged, or several stripes."""
    ec = draw(profiles())
    stripe = ec.stripe_size
    size = draw(st.one_of(
        st.sampled_from([0, 1, ec.k - 1, ec.k, ec.k + 1, stripe - 1, stripe, stripe + 1, 3 * stripe]),
        st.integers(0, 4 * stripe),
    ))
    return ec, random.Random(draw(st.integers(0, 2**32))).randbytes(max(size, 0))


def cut_shards(payload: bytes, ec: ECProfile) -> list[bytes]:
    """Encode through the stripe API and concatenate block i of every stripe into shard i."""
    codec = StripeCodec(ec)
    shards = [bytearray() for _ in range(ec.width)]
    for s in range(stripe_count(len(payload), ec)):
        start = s * ec.stripe_size
        for i, block in enumerate(codec.encode(payload[start:start + ec.stripe_size])):
            shards[i] += block
    return [bytes(s) for s in shards]


def stripe_blocks(shards: dict[int, bytes], size: int, ec: ECProfile) -> Iterator[dict[int, bytes]]:
    """The blocks of every stripe, read from whole shards by the documented offsets."""
    for s in range(stripe_count(size, ec)):
        off, length = shard_span(s, s, size, ec)
        yield {i: shard[off:off + length] for i, shard in shards.items()}


@settings(max_examples=150, deadline=None)
@given(objects(), st.randoms(use_true_random=False))
def test_any_k_shards_rebuild_the_payload(obj: tuple[ECProfile, bytes], rnd: random.Random) -> None:
    ec, payload = obj
    shards = cut_shards(payload, ec)
    assert all(len(s) == shard_size(len(payload), ec) for s in shards)
    chosen = rnd.sample(range(ec.width), ec.k)
    codec = StripeCodec(ec)
    out = bytearray()
    for s, blocks in enumerate(stripe_blocks({i: shards[i] for i in chosen}, len(payload), ec)):
        out += codec.decode(blocks, stripe_payload_len(len(payload), ec, s))
    assert bytes(out) == payload


@settings(max_examples=100, deadline=None)
@given(objects())
def test_data_shards_are_the_payload_cut_in_blocks(obj: tuple[ECProfile, bytes]) -> None:
    """Systematic layout: data block i of stripe s is payload bytes at s*stripe + i*block_len."""
    ec, payload = obj
    shards = cut_shards(payload, ec)
    for s, blocks in enumerate(stripe_blocks(dict(enumerate(shards)), len(payload), ec)):
        blen = block_len(len(payload), ec, s)
        base = s * ec.stripe_size
        plen = stripe_payload_len(len(payload), ec, s)
        for i in range(ec.k):
            piece = payload[base + i * blen:base + min((i + 1) * blen, plen)]
            assert blocks[i] == piece + bytes(blen - len(piece))


@settings(max_examples=100, deadline=None)
@given(objects(), st.randoms(use_true_random=False))
def test_rebuild_recreates_exactly_the_missing_blocks(obj: tuple[ECProfile, bytes], rnd: random.Random) -> None:
    ec, payload = obj
    shards = cut_shards(payload, ec)
    lost = rnd.sample(range(ec.width), rnd.randint(0, ec.m))
    codec = StripeCodec(ec)
    for blocks in stripe_blocks(dict(enumerate(shards)), len(payload), ec):
        kept = {i: b for i, b in blocks.items() if i not in lost}
        rebuilt = codec.rebuild(kept, lost)
        assert rebuilt == {i: blocks[i] for i in lost}


@settings(max_examples=200, deadline=None)
@given(st.binary(min_size=1, max_size=4096), st.data())
def test_a_flipped_bit_is_caught_by_the_block_checksum(block: bytes, data: st.DataObject) -> None:
    bit = data.draw(st.integers(0, len(block) * 8 - 1))
    damaged = bytearray(block)
    damaged[bit // 8] ^= 1 << (bit % 8)
    expected = block_checksum(block)
    verify_block(block, expected, "shard 0 block 0")
    with pytest.raises(ChecksumError, match="shard 3 block 7"):
        verify_block(damaged, expected, "shard 3 block 7")


@settings(max_examples=100, deadline=None)
@given(objects(), st.data())
def test_shard_checksums_point_at_the_damaged_block(obj: tuple[ECProfile, bytes], data: st.DataObject) -> None:
    ec, payload = obj
    index = data.draw(st.integers(0, ec.width - 1))
    shard = cut_shards(payload, ec)[index]
    sums = shard_checksums(shard, ec.block_size)
    # Checksum j covers exactly the block of stripe j.
    assert sums == [block_checksum(b[index]) for b in stripe_blocks({index: shard}, len(payload), ec)]
    if not shard:
        return
    bit = data.draw(st.integers(0, len(shard) * 8 - 1))
    damaged = bytearray(shard)
    damaged[bit // 8] ^= 1 << (bit % 8)
    bad = [j for j, (a, b) in enumerate(zip(sums, shard_checksums(damaged, ec.block_size))) if a != b]
    assert bad == [bit // 8 // ec.block_size]


def model_stripes(size: int, ec: ECProfile) -> list[tuple[int, int, int]]:
    """Brute force: (object offset, payload bytes, block bytes) of every stripe, walking the object."""
    stripes, pos = [], 0
    while pos < size:
        payload = min(ec.stripe_size, size - pos)
        blen = 0
        while blen * ec.k < payload:  # smallest block that holds the payload in k blocks
            blen += 1
        stripes.append((pos, payload, blen))
        pos += payload
    return stripes


def near_stripe_edges(ec: ECProfile, low: int, high: int) -> st.SearchStrategy[int]:
    """Integers in [low, high], half of them within one byte of a stripe boundary."""
    edges = st.builds(lambda n, d: n * ec.stripe_size + d, st.integers(0, 8), st.integers(-1, 1))
    return st.one_of(edges.filter(lambda x: low <= x <= high), st.integers(low, high))


@settings(max_examples=400, deadline=None)
@given(profiles(), st.data())
def test_layout_arithmetic_matches_a_brute_force_model(ec: ECProfile, data: st.DataObject) -> None:
    size = data.draw(near_stripe_edges(ec, 0, 8 * ec.stripe_size + 1))
    model = model_stripes(size, ec)
    assert stripe_count(size, ec) == len(model)
    assert shard_size(size, ec) == sum(blen for _, _, blen in model)
    for s, (_, payload, blen) in enumerate(model):
        assert stripe_payload_len(size, ec, s) == payload
        assert block_len(size, ec, s) == blen
    if size == 0:
        with pytest.raises(ValueError):
            range_to_stripes(0, 1, size, ec)
        return
    offset = data.draw(near_stripe_edges(ec, 0, size - 1))
    length = data.draw(near_stripe_edges(ec, offset + 1, size)) - offset
    touched = [s for s, (start, payload, _) in enumerate(model) if start < offset + length and offset < start + payload]
    first, last = range_to_stripes(offset, length, size, ec)
    assert (first, last) == (touched[0], touched[-1])
    shard_offsets = [sum(blen for _, _, blen in model[:s]) for s in range(len(model) + 1)]
    assert shard_span(first, last, size, ec) == (shard_offsets[first], shard_offsets[last + 1] - shard_offsets[first])


@pytest.mark.parametrize("offset,length", [(-1, 2), (0, 0), (5, -1), (90, 11), (100, 1)])
def test_range_outside_the_object_is_refused(offset: int, length: int) -> None:
    with pytest.raises(ValueError):
        range_to_stripes(offset, length, 100, ECProfile(2, 1, 512))


def test_stripe_indexes_outside_the_object_are_refused() -> None:
    ec = ECProfile(2, 1, 512)
    with pytest.raises(IndexError):
        stripe_payload_len(2048, ec, 2)
    with pytest.raises(IndexError):
        shard_span(0, 3, 2048, ec)
    with pytest.raises(ValueError):
        shard_span(1, 0, 2048, ec)


def test_decode_refuses_too_few_or_ragged_blocks() -> None:
    ec = ECProfile(3, 2, 512)
    codec = StripeCodec(ec)
    blocks = dict(enumerate(codec.encode(b"x" * 1000)))
    with pytest.raises(ValueError, match="need 3 blocks"):
        codec.decode({0: blocks[0], 4: blocks[4]}, 1000)
    with pytest.raises(ValueError, match="differ in length"):
        codec.decode({0: blocks[0], 1: blocks[1], 4: blocks[4][:-1]}, 1000)
    with pytest.raises(ValueError, match="outside"):
        codec.decode({0: blocks[0], 1: blocks[1], 5: blocks[4]}, 1000)
    with pytest.raises(ValueError, match="exceeds stripe_size"):
        codec.encode(bytes(ec.stripe_size + 1))


def test_decode_leaves_the_callers_blocks_untouched() -> None:
    codec = StripeCodec(ECProfile(3, 2, 512))
    blocks = dict(enumerate(codec.encode(bytes(range(256)) * 6)))
    given_blocks = {4: blocks[4], 2: blocks[2], 3: blocks[3]}
    before = dict(given_blocks)
    assert codec.decode(given_blocks, 1536) == bytes(range(256)) * 6
    assert given_blocks == before


def test_one_codec_serves_many_threads() -> None:
    ec = ECProfile(4, 2, 4096)
    codec = codec_for(ec)
    assert codec_for(ECProfile(4, 2, 4096)) is codec
    payloads = [random.Random(i).randbytes(ec.stripe_size) for i in range(16)]
    expected = [StripeCodec(ec).encode(p) for p in payloads]
    with ThreadPoolExecutor(4) as pool:
        assert list(pool.map(codec.encode, payloads)) == expected
        decoded = pool.map(lambda blocks: codec.decode({i: blocks[i] for i in (1, 3, 4, 5)}, ec.stripe_size), expected)
        assert list(decoded) == payloads


# Streaming. Hypothesis drives plain functions; each example runs its own event loop.

@pytest.fixture(scope="module")
def pool() -> Iterator[ThreadPoolExecutor]:
    with ThreadPoolExecutor(2) as executor:
        yield executor


def chunked(payload: bytes, cuts: list[int]) -> list[bytes]:
    """The payload cut at the given offsets (duplicates give empty chunks, as a network may)."""
    bounds = [0, *sorted(c % (len(payload) + 1) for c in cuts), len(payload)]
    return [payload[a:b] for a, b in itertools.pairwise(bounds)]


async def feed(chunks: list[bytes], pulled: list[int] | None = None) -> AsyncIterator[bytes]:
    for chunk in chunks:
        await asyncio.sleep(0)  # let the encoder's executor job interleave with reads
        if pulled is not None:
            pulled.append(len(chunk))
        yield chunk


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(objects(), st.lists(st.integers(0, 2**20), max_size=30))
def test_encode_stream_matches_whole_payload_encoding(pool: ThreadPoolExecutor, obj: tuple[ECProfile, bytes],
                                                       cuts: list[int]) -> None:
    ec, payload = obj
    codec = StripeCodec(ec)
    expected = [codec.encode(payload[s:s + ec.stripe_size]) for s in range(0, len(payload), ec.stripe_size)]
    seen: list[bytes] = []

    async def run() -> list[list[bytes]]:
        return [blocks async for blocks in encode_stream(feed(chunked(payload, cuts)), ec, pool, seen.append)]

    assert asyncio.run(run()) == expected
    assert b"".join(seen) == payload
    assert all(len(p) == ec.stripe_size for p in seen[:-1])


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(objects(), st.lists(st.integers(0, 2**20), max_size=10))
def test_encode_stream_checked_yields_block_checksums(pool: ThreadPoolExecutor, obj: tuple[ECProfile, bytes],
                                                      cuts: list[int]) -> None:
    ec, payload = obj

    async def run() -> None:
        async for stripe in encode_stream_checked(feed(chunked(payload, cuts)), ec, pool):
            assert stripe.checksums == [block_checksum(b) for b in stripe.blocks]
            assert len(stripe.blocks) == ec.width

    asyncio.run(run())


@settings(max_examples=50, deadline=None)
@given(st.binary(max_size=3000), st.lists(st.integers(0, 3000), max_size=20), st.integers(1, 700))
def test_rechunk_cuts_exact_pieces(payload: bytes, cuts: list[int], size: int) -> None:
    async def run() -> list[bytes]:
        return [piece async for piece in rechunk(feed(chunked(payload, cuts)), size)]

    pieces = asyncio.run(run())
    assert b"".join(pieces) == payload
    assert all(len(p) == size for p in pieces[:-1])
    assert all(0 < len(p) <= size for p in pieces)


def test_encode_stream_reads_at_most_two_stripes_ahead(pool: ThreadPoolExecutor) -> None:
    ec = ECProfile(2, 1, 512)
    chunk = 300
    payload = random.Random(7).randbytes(40 * ec.stripe_size + 77)
    pulled: list[int] = []

    async def run() -> int:
        stripes = 0
        async for _ in encode_stream(feed(chunked(payload, list(range(chunk, len(payload), chunk))), pulled), ec, pool):
            stripes += 1
            # The consumer holds one stripe, the executor encodes the next, and rechunk holds
            # part of the one after: less than one stripe plus one incoming chunk.
            assert sum(pulled) <= (stripes + 1) * ec.stripe_size + chunk
        return stripes

    assert asyncio.run(run()) == 41


def test_encode_stream_can_be_abandoned(pool: ThreadPoolExecutor) -> None:
    ec = ECProfile(2, 1, 512)
    payload = bytes(10 * ec.stripe_size)

    async def run() -> int:
        stream = encode_stream(feed([payload]), ec, pool)
        first = await anext(stream)
        await stream.aclose()
        return len(first)

    assert asyncio.run(run()) == 3


def test_encode_stream_reports_a_failing_on_payload(pool: ThreadPoolExecutor) -> None:
    def explode(_: bytes) -> None:
        raise RuntimeError("md5 failed")

    async def run() -> None:
        async for _ in encode_stream(feed([bytes(5000)]), ECProfile(2, 1, 512), pool, explode):
            pass

    with pytest.raises(RuntimeError, match="md5 failed"):
        asyncio.run(run())
