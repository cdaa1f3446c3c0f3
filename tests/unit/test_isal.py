"""ISA-L does zfec's arithmetic: the same parity, and any k blocks rebuild any others, across the two backends."""

from __future__ import annotations

import itertools
import random
from concurrent.futures import ThreadPoolExecutor

import pytest
import zfec
from hypothesis import given, settings
from hypothesis import strategies as st

from objstore import isal
from objstore.cluster import ECProfile
from objstore.codec import ISAL_MIN_BLOCK, StripeCodec

pytestmark = pytest.mark.skipif(isal.library() is None, reason="ISA-L not found (pip install pyeclib, or libisal2)")

# Lengths around ISA-L's 32- and 64-byte vector steps, and past the threshold where StripeCodec uses it.
LENGTHS = (1, 15, 16, 31, 32, 33, 63, 64, 65, 1000, ISAL_MIN_BLOCK, ISAL_MIN_BLOCK + 7)


@st.composite
def shapes(draw: st.DrawFn) -> tuple[int, int, int]:
    k = draw(st.integers(1, 16))
    m = draw(st.integers(1, 8))
    return k, k + m, draw(st.sampled_from(LENGTHS))


def zfec_coder(k: int, width: int) -> tuple[zfec.Encoder, isal.Coder]:
    enc = zfec.Encoder(k, width)
    coder = isal.Coder.like(k, width, lambda blocks: enc.encode(list(blocks)))
    assert coder is not None
    return enc, coder


@settings(max_examples=60, deadline=None)
@given(shapes(), st.integers(0, 2**32))
def test_parity_is_zfecs(shape: tuple[int, int, int], seed: int) -> None:
    k, width, n = shape
    rng = random.Random(seed)
    enc, coder = zfec_coder(k, width)
    data = [rng.randbytes(n) for _ in range(k)]
    assert coder.parity(data) == enc.encode(list(data))[k:]


@settings(max_examples=60, deadline=None)
@given(shapes(), st.integers(0, 2**32))
def test_any_k_blocks_give_back_every_block(shape: tuple[int, int, int], seed: int) -> None:
    k, width, n = shape
    rng = random.Random(seed)
    enc, coder = zfec_coder(k, width)
    blocks = enc.encode([rng.randbytes(n) for _ in range(k)])
    present = rng.sample(range(width), k)
    want = rng.sample(range(width), rng.randint(1, width))
    # Blocks arrive as bytes, as writable views of a buffer, or as read-only views.
    kinds = [bytes, lambda b: memoryview(bytearray(b)), memoryview]
    have = {i: rng.choice(kinds)(blocks[i]) for i in present}
    assert coder.rows(have, want) == {w: blocks[w] for w in want}


def test_every_pattern_of_a_4_2_stripe() -> None:
    enc, coder = zfec_coder(4, 6)
    rng = random.Random(7)
    blocks = enc.encode([rng.randbytes(ISAL_MIN_BLOCK) for _ in range(4)])
    for present in itertools.combinations(range(6), 4):
        assert coder.rows({i: blocks[i] for i in present}, range(6)) == dict(enumerate(blocks))


@pytest.mark.parametrize("ec", [ECProfile(4, 2, 64 * 1024), ECProfile(2, 1, 16 * 1024), ECProfile(8, 3, 32 * 1024)])
def test_shards_cross_backends(ec: ECProfile) -> None:
    """What one backend wrote the other reads and rebuilds, byte for byte, whole stripes and short ones."""
    fast, slow = StripeCodec(ec), StripeCodec(ec, accelerate=False)
    assert (fast.backend, slow.backend) == ("isa-l", "zfec")
    rng = random.Random(ec.k)
    for size in (ec.stripe_size, ec.stripe_size - 5, ISAL_MIN_BLOCK * ec.k + 1, 100):
        payload = rng.randbytes(size)
        blocks = fast.encode(payload)
        assert blocks == slow.encode(payload)
        for writer, reader in ((fast, slow), (slow, fast)):
            stripe = writer.encode(payload)
            lost = rng.sample(range(ec.width), ec.m)
            have = {i: b for i, b in enumerate(stripe) if i not in lost}
            assert reader.decode(have, size) == payload
            assert reader.rebuild(have, lost) == {i: stripe[i] for i in lost}


def test_a_library_that_disagrees_is_not_used() -> None:
    enc = zfec.Encoder(4, 6)

    def wrong(blocks: list[bytes]) -> list[bytes]:
        out = enc.encode(list(blocks))
        return out[:4] + [out[4], bytes(b ^ 1 for b in out[5])]

    assert isal.Coder.like(4, 6, wrong) is None


def test_turned_off_by_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OBJSTORE_ISAL", "0")
    assert isal._open() is None
    monkeypatch.setenv("OBJSTORE_ISAL", "1")
    assert isal._open() is not None


def test_rejects_what_cannot_be_decoded() -> None:
    _, coder = zfec_coder(4, 6)
    with pytest.raises(ValueError, match="need 4 blocks"):
        coder.rows({0: b"x" * 64, 5: b"y" * 64}, [1])
    with pytest.raises(ValueError, match="differ in length"):
        coder.parity([b"a" * 64, b"b" * 64, b"c" * 64, b"d" * 63])


def test_one_coder_serves_a_thread_pool(monkeypatch: pytest.MonkeyPatch) -> None:
    """Threads decoding different patterns at once, with the matrix cache full and turning over."""
    monkeypatch.setattr(isal, "_CACHE_MAX", 3)
    enc, coder = zfec_coder(4, 7)
    rng = random.Random(3)
    blocks = enc.encode([rng.randbytes(ISAL_MIN_BLOCK) for _ in range(4)])
    patterns = list(itertools.combinations(range(7), 4))

    def work(seed: int) -> int:
        r = random.Random(seed)
        for _ in range(60):
            present = r.choice(patterns)
            want = [w for w in range(7) if w not in present]
            assert coder.rows({i: blocks[i] for i in present}, want) == {w: blocks[w] for w in want}
        return seed

    with ThreadPoolExecutor(4) as pool:
        assert sorted(pool.map(work, range(8))) == list(range(8))


def test_the_start_up_line_names_each_profiles_backend(monkeypatch: pytest.MonkeyPatch) -> None:
    """A profile whose check against zfec fails runs on zfec, and the start-up line says so for that profile."""
    from objstore import codec
    from objstore.cluster import ClusterMap, NodeInfo, Pool

    monkeypatch.setattr(codec, "_codecs", {})
    checked = isal.Coder._agrees
    monkeypatch.setattr(isal.Coder, "_agrees", lambda self, enc: self.k != 2 and checked(self, enc))
    nodes = tuple(NodeInfo(f"n{i}", f"127.0.0.1:{9000 + i}", f"z{i % 3}", labels={"j": "fr"}) for i in range(6))
    cmap = ClusterMap(epoch=1, ec=ECProfile(4, 2, 64 * 1024), nodes=nodes,
                      pools=(Pool("fr", {"j": "fr"}, ECProfile(2, 1, 16 * 1024)),))
    assert codec.codec_summary(cmap) == "2+1 zfec, 4+2 isa-l"
    assert codec.codec_backend() == "isa-l"  # the library is there; one profile does not use it
    assert codec.codec_backend(ECProfile(2, 1, 16 * 1024)) == "zfec"
