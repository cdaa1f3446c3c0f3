"""x-amz-checksum algorithms agree with botocore's, incrementally, and combine like S3's multipart checksums."""

from __future__ import annotations

import base64

import pytest
from botocore import httpchecksum
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway import checksums
from gateway.errors import S3Error

BOTOCORE_ALGORITHMS = sorted(set(checksums.ALGORITHMS) & set(httpchecksum._CHECKSUM_CLS))


def test_botocore_knows_every_algorithm_we_offer() -> None:
    # awscrt is installed, so botocore offers the CRT algorithms too; if this fails an algorithm is untested.
    assert BOTOCORE_ALGORITHMS == sorted(checksums.ALGORITHMS)


def _split(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({min(c, len(data)) for c in cuts})
    pieces, start = [], 0
    for p in points + [len(data)]:
        pieces.append(data[start:p])
        start = p
    return pieces


@settings(max_examples=60, deadline=None)
@given(
    algorithm=st.sampled_from(BOTOCORE_ALGORITHMS),
    data=st.binary(max_size=5000),
    cuts=st.lists(st.integers(min_value=0, max_value=5000), max_size=6),
)
def test_incremental_digest_matches_botocore(algorithm: str, data: bytes, cuts: list[int]) -> None:
    ours = checksums.new_checksum(algorithm.upper())
    for piece in _split(data, cuts):
        ours.update(piece)
    theirs = httpchecksum._CHECKSUM_CLS[algorithm]()
    theirs.update(data)
    assert ours.b64digest() == theirs.b64digest()
    assert len(ours.digest()) == ours.digest_size == checksums.DIGEST_SIZES[algorithm]


def test_known_values() -> None:
    # The empty input and the standard "123456789" check values are fixed by the CRC definitions.
    assert checksums.new_checksum("crc32").b64digest() == "AAAAAA=="
    assert checksums.new_checksum("crc64nvme").b64digest() == "AAAAAAAAAAA="
    c = checksums.new_checksum("crc32c")
    c.update(b"123456789")
    assert c.digest().hex() == "e3069283"  # the CRC-32C check value
    c = checksums.new_checksum("crc64nvme")
    c.update(b"123456789")
    assert c.digest().hex() == "ae8b14860a799888"  # the CRC-64/NVME check value
    c = checksums.new_checksum("crc32")
    c.update(b"123456789")
    assert c.digest().hex() == "cbf43926"


def test_xxhash_digest_can_be_read_twice_but_not_extended() -> None:
    c = checksums.new_checksum("xxhash128")
    c.update(b"abc")
    assert c.digest() == c.digest()
    with pytest.raises(ValueError):
        c.update(b"more")


@settings(max_examples=40, deadline=None)
@given(
    algorithm=st.sampled_from(sorted(checksums.CRC_ALGORITHMS)),
    parts=st.lists(st.binary(max_size=3000), min_size=1, max_size=5),
)
def test_full_object_crc_equals_crc_of_concatenation(algorithm: str, parts: list[bytes]) -> None:
    part_values = []
    for p in parts:
        c = checksums.new_checksum(algorithm)
        c.update(p)
        part_values.append((c.b64digest(), len(p)))
    whole = checksums.new_checksum(algorithm)
    whole.update(b"".join(parts))
    assert checksums.full_object_crc(algorithm, part_values) == whole.b64digest()


def test_full_object_refuses_non_crc() -> None:
    with pytest.raises(ValueError):
        checksums.full_object_crc("sha256", [("AA==", 1)])


def test_composite_checksum_is_checksum_of_part_digests() -> None:
    parts = [b"a" * 100, b"b" * 7]
    values = []
    for p in parts:
        c = checksums.new_checksum("sha256")
        c.update(p)
        values.append(c.b64digest())
    expect = checksums.new_checksum("sha256")
    for v in values:
        expect.update(base64.b64decode(v))
    assert checksums.composite_checksum("sha256", values) == expect.b64digest() + "-2"


def test_checksum_from_headers() -> None:
    c = checksums.new_checksum("crc32")
    c.update(b"x")
    headers = {"Content-Type": "text/plain", "x-amz-checksum-crc32": c.b64digest(), "x-amz-checksum-type": "FULL_OBJECT"}
    assert checksums.checksum_from_headers(headers) == ("crc32", c.b64digest())
    assert checksums.checksum_from_headers({"Content-Type": "x"}) is None


@pytest.mark.parametrize(
    "headers",
    [
        {"x-amz-checksum-crc32": "AAAAAA==", "x-amz-checksum-sha1": "2jmj7l5rSw0yVb/vlWAYkK/YBwk="},
        {"x-amz-checksum-md4": "AAAAAA=="},
        {"x-amz-checksum-crc32": "AAAA"},  # 3 bytes, not 4
        {"x-amz-checksum-crc32": "not base64!"},
        {"x-amz-checksum-sha256": "AAAAAA=="},
    ],
)
def test_checksum_from_headers_refuses_bad_input(headers: dict[str, str]) -> None:
    with pytest.raises(S3Error) as e:
        checksums.checksum_from_headers(headers)
    assert e.value.code == "InvalidRequest" and e.value.status == 400


def test_parse_algorithm() -> None:
    assert checksums.parse_algorithm("CRC64NVME") == "crc64nvme"
    with pytest.raises(S3Error):
        checksums.parse_algorithm("MD5")
    with pytest.raises(ValueError):
        checksums.new_checksum("md5")
    assert checksums.header_name("SHA1") == "x-amz-checksum-sha1"
