"""Records round-trip exactly, and bytes that are not a readable record always raise RecordError."""

from __future__ import annotations

from typing import Any

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from objstore.cluster import ECProfile
from objstore.records import (
    SCHEMA_VERSION,
    KVRecord,
    ObjectRecord,
    PartRef,
    RecordError,
)

texts = st.text(max_size=24)  # any unicode, including NUL, accents and astral-plane characters
str_maps = st.dictionaries(texts, texts, max_size=4)
u64 = st.integers(0, 2**64 - 1)

part_refs = st.builds(
    PartRef,
    number=st.integers(1, 10_000),
    size=st.integers(0, 2**48),
    etag=texts,
    blob=texts,
    checksums=st.lists(u64, max_size=6),
    inline=st.none() | st.binary(max_size=200),
    present=st.booleans(),
)

ec_profiles = st.builds(ECProfile, k=st.integers(1, 16), m=st.integers(0, 8),
                        block_size=st.sampled_from([512, 4096, 256 * 1024]))


@st.composite
def object_records(draw: st.DrawFn) -> ObjectRecord:
    ec = draw(ec_profiles)
    return ObjectRecord(
        bucket=draw(texts), key=draw(texts), version=draw(texts),
        shard=draw(st.integers(0, ec.width - 1)), ec=ec,
        deleted=draw(st.booleans()), size=draw(st.integers(0, 2**50)), etag=draw(texts),
        content_type=draw(texts), headers=draw(str_maps), meta=draw(str_maps), checksum=draw(str_maps),
        parts=draw(st.lists(part_refs, max_size=4)), handoff=draw(st.booleans()),
        created=draw(st.integers(0, 2**63)), multipart=draw(st.booleans()),
    )


# KV values are msgpack documents with string keys; NaN is left out only because NaN != NaN.
kv_values = st.dictionaries(texts, st.recursive(
    st.none() | st.booleans() | st.integers(-2**63, 2**64 - 1) | st.floats(allow_nan=False) | texts | st.binary(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(texts, inner, max_size=4),
    max_leaves=12,
), max_size=5)

kv_records = st.builds(KVRecord, ns=texts, name=texts, version=texts, value=kv_values, deleted=st.booleans())


def wire(record: ObjectRecord | KVRecord) -> dict[str, Any]:
    decoded: dict[str, Any] = msgpack.unpackb(record.pack(), raw=False)
    return decoded


def repack(d: dict[str, Any]) -> bytes:
    return msgpack.packb(d, use_bin_type=True)


SAMPLE = ObjectRecord(
    bucket="photos", key="été/🐈.jpg", version="0001", shard=2, ec=ECProfile(4, 2, 4096), size=10,
    etag="abc", meta={"owner": "zoé"}, parts=[PartRef(1, 10, "abc", "0001", [1, 2], b"\x00shard", True)],
)


@settings(max_examples=200, deadline=None)
@given(object_records())
def test_object_record_round_trips(record: ObjectRecord) -> None:
    assert ObjectRecord.unpack(record.pack()) == record


@settings(max_examples=200, deadline=None)
@given(kv_records)
def test_kv_record_round_trips(record: KVRecord) -> None:
    assert KVRecord.unpack(record.pack()) == record


@settings(max_examples=40, deadline=None)
@given(object_records() | kv_records)
def test_every_truncation_raises_record_error(record: ObjectRecord | KVRecord) -> None:
    packed = record.pack()
    for cut in range(len(packed)):
        with pytest.raises(RecordError):
            type(record).unpack(packed[:cut])


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300))
def test_arbitrary_bytes_raise_only_record_error(data: bytes) -> None:
    for kind in (ObjectRecord, KVRecord):
        with pytest.raises(RecordError):
            kind.unpack(data)


@settings(max_examples=300, deadline=None)
@given(object_records() | kv_records, st.data())
def test_a_damaged_byte_gives_a_record_or_record_error(record: ObjectRecord | KVRecord, data: st.DataObject) -> None:
    """A flipped byte may still be a valid record (checksums guard shards, not this); nothing else escapes."""
    packed = bytearray(record.pack())
    pos = data.draw(st.integers(0, len(packed) - 1))
    packed[pos] ^= data.draw(st.integers(1, 255))
    try:
        type(record).unpack(bytes(packed))
    except RecordError:
        pass


@pytest.mark.parametrize("version", [0, 2, 99, "1", True, None, 1.0])
def test_unknown_schema_version_is_refused(version: Any) -> None:
    for record in (SAMPLE, KVRecord("bucket", "photos", "0001", {"acl": "private"})):
        d = wire(record)
        d["v"] = version
        with pytest.raises(RecordError, match=rf"schema version {version!r}; this build reads {SCHEMA_VERSION}"):
            type(record).unpack(repack(d))


def test_missing_schema_version_is_refused() -> None:
    d = wire(SAMPLE)
    del d["v"]
    with pytest.raises(RecordError, match="schema version None"):
        ObjectRecord.unpack(repack(d))


def test_a_record_of_the_other_kind_is_refused() -> None:
    with pytest.raises(RecordError, match="expected 'kv'"):
        KVRecord.unpack(SAMPLE.pack())
    with pytest.raises(RecordError, match="expected 'obj'"):
        ObjectRecord.unpack(KVRecord("bucket", "b", "1").pack())


def test_a_non_map_is_refused() -> None:
    with pytest.raises(RecordError, match="not a map"):
        ObjectRecord.unpack(repack([SCHEMA_VERSION, "obj"]))
    with pytest.raises(RecordError, match="extra|not valid"):
        ObjectRecord.unpack(SAMPLE.pack() + b"\x00")


OBJECT_FIELDS = ["bucket", "key", "version", "shard", "ec", "deleted", "size", "etag", "ctype",
                 "headers", "meta", "checksum", "parts", "handoff", "created", "mp"]


@pytest.mark.parametrize("name", OBJECT_FIELDS)
def test_a_missing_object_field_is_refused(name: str) -> None:
    d = wire(SAMPLE)
    del d[name]
    with pytest.raises(RecordError):
        ObjectRecord.unpack(repack(d))


WRONG_OBJECT_FIELDS: list[tuple[str, Any]] = [
    ("bucket", 1), ("key", b"bytes"), ("version", None), ("shard", "2"), ("shard", True), ("shard", 6),
    ("shard", -1), ("ec", {"k": 4}), ("ec", [4, 2]), ("ec", [4, 2, "4096"]), ("ec", [True, 2, 4096]),
    ("ec", [0, 2, 4096]), ("ec", [4, 2, 100]), ("deleted", 0), ("deleted", "no"), ("size", 1.5),
    ("size", True), ("size", -1), ("etag", []), ("ctype", 1), ("headers", []), ("headers", {"a": 1}),
    ("meta", {"a": None}), ("checksum", "crc32"), ("parts", {}), ("parts", [1]), ("handoff", None),
    ("created", "now"), ("mp", 1),
]


@pytest.mark.parametrize("name,value", WRONG_OBJECT_FIELDS)
def test_a_wrongly_typed_object_field_is_refused(name: str, value: Any) -> None:
    d = wire(SAMPLE)
    d[name] = value
    with pytest.raises(RecordError):
        ObjectRecord.unpack(repack(d))


WRONG_PART_FIELDS: list[tuple[str, Any]] = [
    ("n", "1"), ("n", None), ("size", 2.0), ("etag", 5), ("blob", b"0001"), ("sums", 7),
    ("sums", [1.0]), ("sums", [-1]), ("sums", [True]), ("sums", ["1"]), ("inline", "text"), ("inline", 3),
    ("p", 1), ("p", None),
]


@pytest.mark.parametrize("name,value", WRONG_PART_FIELDS)
def test_a_wrongly_typed_part_field_is_refused(name: str, value: Any) -> None:
    d = wire(SAMPLE)
    d["parts"][0][name] = value
    with pytest.raises(RecordError):
        ObjectRecord.unpack(repack(d))


def test_non_string_map_keys_are_refused() -> None:
    d = wire(SAMPLE)
    d["meta"] = {1: "x"}
    with pytest.raises(RecordError):
        ObjectRecord.unpack(repack(d))


@pytest.mark.parametrize("name,value", [("ns", 1), ("name", None), ("version", 3), ("value", [1]),
                                        ("value", "x"), ("deleted", 0), ("deleted", None)])
def test_a_wrongly_typed_kv_field_is_refused(name: str, value: Any) -> None:
    d = wire(KVRecord("bucket", "photos", "0001", {"acl": "private"}))
    d[name] = value
    with pytest.raises(RecordError):
        KVRecord.unpack(repack(d))


@pytest.mark.parametrize("name", ["ns", "name", "version", "value", "deleted"])
def test_a_missing_kv_field_is_refused(name: str) -> None:
    d = wire(KVRecord("bucket", "photos", "0001"))
    del d[name]
    with pytest.raises(RecordError):
        KVRecord.unpack(repack(d))
