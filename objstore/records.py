"""Records: msgpack documents with an explicit schema version (object versions and KV documents)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, TypeVar

import msgpack

from objstore.cluster import ECProfile

SCHEMA_VERSION = 1
INLINE_MAX_SHARD = 64 * 1024
"""A node keeps a shard of up to this size inside its record (a small object costs no file on any node); a
record that carries a larger one has it written to a shard file on arrival (see `node.store.Store.carry_in`)."""
T = TypeVar("T")
_U64 = 2**64


class RecordError(ValueError):
    """Bytes that are not a record this code can read: never turned into a wrong object."""


def evolve(obj: T, **changes: Any) -> T:
    """`dataclasses.replace` for the write path's records and parts: a copy with some fields changed.

    It copies the instance dict (no __init__, no walk over the fields): 0.7 against 1.7 us here, and a
    PUT makes three per shard.
    """
    assert changes.keys() <= obj.__dict__.keys(), f"no such fields: {set(changes) - set(obj.__dict__)}"
    new = object.__new__(type(obj))
    new.__dict__ = {**obj.__dict__, **changes}
    return new


def _check(cond: bool, what: str) -> None:
    if not cond:
        raise RecordError(what)


def _unpack_map(data: bytes, kind: str) -> dict[str, Any]:
    try:
        obj = msgpack.unpackb(data, raw=False, strict_map_key=True)
    except (msgpack.ExtraData, msgpack.FormatError, msgpack.StackError, ValueError, TypeError) as e:
        raise RecordError(f"{kind} record is not valid msgpack ({type(e).__name__}: {e})") from None
    _check(isinstance(obj, dict), f"{kind} record is not a map")
    v = obj.get("v")
    # type(v) is int: True and 1.0 compare equal to 1 but are not a schema version this code wrote.
    _check(type(v) is int and v == SCHEMA_VERSION,
           f"{kind} record has schema version {v!r}; this build reads {SCHEMA_VERSION}")
    _check(obj.get("t") == kind, f"record kind is {obj.get('t')!r}, expected {kind!r}")
    return obj


def _field(d: dict[str, Any], name: str, typ: type | tuple[type, ...], kind: str) -> Any:
    _check(name in d, f"{kind} record lacks field {name!r}")
    value = d[name]
    _check(isinstance(value, typ) and not (typ is int and isinstance(value, bool)),
           f"{kind} record field {name!r} has type {type(value).__name__}")
    return value


def _str_map(d: dict[str, Any], name: str, kind: str) -> dict[str, str]:
    m = _field(d, name, dict, kind)
    _check(all(isinstance(k, str) and isinstance(v, str) for k, v in m.items()),
           f"{kind} record field {name!r} must map strings to strings")
    return dict(m)


@dataclass
class PartRef:
    """One erasure-coded blob of an object (a single-part object has one, with blob id = version id)."""

    number: int
    size: int
    etag: str
    blob: str
    checksums: list[int] = field(default_factory=list)  # xxh3_64 of each block of *this node's* shard
    inline: bytes | None = None  # this node's shard bytes, for small objects
    present: bool = True  # False: this node lacks this part's shard (it sits on a handoff until repair moves it)

    def to_wire(self) -> dict[str, Any]:
        return {"n": self.number, "size": self.size, "etag": self.etag, "blob": self.blob,
                "sums": self.checksums, "inline": self.inline, "p": self.present}

    @classmethod
    def from_wire(cls, d: Any) -> PartRef:
        # Fast path: every field there with exactly the type msgpack gives (bool is not an int here).
        # Anything else takes the field-by-field checks below, which name what is wrong.
        if type(d) is dict:
            try:
                number, size, etag, blob, sums, present = d["n"], d["size"], d["etag"], d["blob"], d["sums"], d["p"]
            except KeyError:
                pass
            else:
                inline = d.get("inline")
                if (type(number) is int and type(size) is int and type(etag) is str and type(blob) is str
                        and type(present) is bool and type(sums) is list and (inline is None or type(inline) is bytes)
                        and all(type(c) is int and 0 <= c < _U64 for c in sums)):
                    return cls(number, size, etag, blob, sums, inline, present)
        _check(isinstance(d, dict), "part is not a map")
        inline = d.get("inline")
        _check(inline is None or isinstance(inline, bytes), "part inline must be bytes or nil")
        sums = _field(d, "sums", list, "part")
        _check(all(type(s) is int and 0 <= s < 2**64 for s in sums), "part checksums must be u64")
        return cls(number=_field(d, "n", int, "part"), size=_field(d, "size", int, "part"),
                   etag=_field(d, "etag", str, "part"), blob=_field(d, "blob", str, "part"),
                   checksums=list(sums), inline=inline, present=_field(d, "p", bool, "part"))


@dataclass
class ObjectRecord:
    """What one node holds of one object version: metadata plus its shard's index and checksums."""

    bucket: str
    key: str
    version: str
    shard: int
    ec: ECProfile
    deleted: bool = False
    size: int = 0
    etag: str = ""
    content_type: str = ""
    headers: dict[str, str] = field(default_factory=dict)
    meta: dict[str, str] = field(default_factory=dict)
    checksum: dict[str, str] = field(default_factory=dict)
    parts: list[PartRef] = field(default_factory=list)
    handoff: bool = False
    created: int = 0  # ns since the epoch, by the writer's clock
    multipart: bool = False

    KIND = "obj"

    def summary(self) -> tuple[str, str, str, int, bool]:
        """What anti-entropy compares: (bucket, key, version, shard, deleted)."""
        return (self.bucket, self.key, self.version, self.shard, self.deleted)

    def pack(self) -> bytes:
        return msgpack.packb({
            "v": SCHEMA_VERSION, "t": self.KIND,
            "bucket": self.bucket, "key": self.key, "version": self.version, "shard": self.shard,
            "ec": [self.ec.k, self.ec.m, self.ec.block_size], "deleted": self.deleted,
            "size": self.size, "etag": self.etag, "ctype": self.content_type,
            "headers": self.headers, "meta": self.meta, "checksum": self.checksum,
            "parts": [p.to_wire() for p in self.parts], "handoff": self.handoff,
            "created": self.created, "mp": self.multipart,
        }, use_bin_type=True)

    @classmethod
    def unpack(cls, data: bytes) -> ObjectRecord:
        d = _unpack_map(data, cls.KIND)
        fast = cls._unpack_fast(d)
        if fast is not None:
            return fast
        k = cls.KIND
        ec = _field(d, "ec", list, k)
        _check(len(ec) == 3 and all(type(x) is int for x in ec), "object record ec must be [k, m, block_size]")
        try:
            profile = ECProfile(*ec)
        except ValueError as e:
            raise RecordError(f"object record ec is invalid: {e}") from None
        rec = cls(
            bucket=_field(d, "bucket", str, k), key=_field(d, "key", str, k),
            version=_field(d, "version", str, k), shard=_field(d, "shard", int, k), ec=profile,
            deleted=_field(d, "deleted", bool, k), size=_field(d, "size", int, k),
            etag=_field(d, "etag", str, k), content_type=_field(d, "ctype", str, k),
            headers=_str_map(d, "headers", k), meta=_str_map(d, "meta", k),
            checksum=_str_map(d, "checksum", k),
            parts=[PartRef.from_wire(p) for p in _field(d, "parts", list, k)],
            handoff=_field(d, "handoff", bool, k), created=_field(d, "created", int, k),
            multipart=_field(d, "mp", bool, k),
        )
        _check(0 <= rec.shard < profile.width, f"shard index {rec.shard} outside 0..{profile.width - 1}")
        _check(rec.size >= 0, "object size must be >= 0")
        return rec

    _FIELDS = ("bucket", "key", "version", "shard", "deleted", "size", "etag", "ctype", "handoff", "created", "mp")
    _TYPES = (str, str, str, int, bool, int, str, str, bool, int, bool)

    @classmethod
    def _unpack_fast(cls, d: dict[str, Any]) -> ObjectRecord | None:
        """`unpack` of a well-formed record in one pass of exact type checks (a node reads one for every
        record it is sent or holds); None for anything else, which `unpack` then checks field by field."""
        try:
            values = [d[name] for name in cls._FIELDS]
            ec, headers, meta, checksum, wire_parts = d["ec"], d["headers"], d["meta"], d["checksum"], d["parts"]
        except KeyError:
            return None
        if not (all(type(v) is t for v, t in zip(values, cls._TYPES))
                and type(ec) is list and len(ec) == 3 and all(type(x) is int for x in ec)
                and all(type(m) is dict and all(type(a) is str and type(b) is str for a, b in m.items())
                        for m in (headers, meta, checksum))
                and type(wire_parts) is list):
            return None
        bucket, key, version, shard, deleted, size, etag, ctype, handoff, created, mp = values
        try:
            profile = ECProfile(*ec)
        except ValueError:
            return None
        if not (0 <= shard < profile.width and size >= 0):
            return None
        parts = [PartRef.from_wire(p) for p in wire_parts]
        return cls(bucket, key, version, shard, profile, deleted, size, etag, ctype, headers, meta, checksum,
                   parts, handoff, created, mp)


@dataclass
class KVRecord:
    """A small replicated document (a bucket, a multipart upload); the highest version wins."""

    ns: str
    name: str
    version: str
    value: dict[str, Any] = field(default_factory=dict)
    deleted: bool = False

    KIND = "kv"

    def pack(self) -> bytes:
        return msgpack.packb({"v": SCHEMA_VERSION, "t": self.KIND, "ns": self.ns, "name": self.name,
                              "version": self.version, "value": self.value, "deleted": self.deleted},
                             use_bin_type=True)

    @classmethod
    def unpack(cls, data: bytes) -> KVRecord:
        d = _unpack_map(data, cls.KIND)
        k = cls.KIND
        return cls(ns=_field(d, "ns", str, k), name=_field(d, "name", str, k),
                   version=_field(d, "version", str, k), value=_field(d, "value", dict, k),
                   deleted=_field(d, "deleted", bool, k))


@dataclass
class ListEntry:
    """One row of a node's sorted listing: a record without its payload details."""

    key: str
    version: str
    deleted: bool
    size: int
    etag: str
    created: int
    shard: int

    def to_wire(self) -> list[Any]:
        return [self.key, self.version, self.deleted, self.size, self.etag, self.created, self.shard]

    @classmethod
    def from_wire(cls, row: Any) -> ListEntry:
        _check(isinstance(row, list) and len(row) == 7, "list entry must have 7 fields")
        return cls(row[0], row[1], bool(row[2]), row[3], row[4], row[5], row[6])
