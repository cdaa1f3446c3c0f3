"""The x-amz-checksum-* algorithms: incremental hashers, header parsing, and multipart combination."""

from __future__ import annotations

import base64
import binascii
import hashlib
import zlib
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence

from awscrt import checksums as crt

from gateway.errors import S3Error

# Algorithm names as they appear in x-amz-checksum-<name> and, upper-cased, in
# x-amz-sdk-checksum-algorithm / x-amz-checksum-algorithm.
ALGORITHMS: tuple[str, ...] = (
    "crc32",
    "crc32c",
    "crc64nvme",
    "sha1",
    "sha256",
    "sha512",
    "xxhash64",
    "xxhash3",
    "xxhash128",
)
CRC_ALGORITHMS: frozenset[str] = frozenset({"crc32", "crc32c", "crc64nvme"})
HEADER_PREFIX = "x-amz-checksum-"


class Checksum(ABC):
    """An incremental checksum; `b64digest()` is the value S3 sends (base64 of the big-endian digest)."""

    name: str
    digest_size: int

    @abstractmethod
    def update(self, data: bytes | bytearray | memoryview) -> None:
        """Feed the next bytes."""

    @abstractmethod
    def digest(self) -> bytes:
        """The big-endian digest of everything fed so far."""

    def b64digest(self) -> str:
        return base64.b64encode(self.digest()).decode("ascii")


class _Crc(Checksum):
    def __init__(self, name: str, width: int, step: Callable[[bytes, int], int]) -> None:
        self.name = name
        self.digest_size = width // 8
        self._step = step
        self._mask = (1 << width) - 1
        self._value = 0

    def update(self, data: bytes | bytearray | memoryview) -> None:
        self._value = self._step(data, self._value) & self._mask  # type: ignore[arg-type]

    def digest(self) -> bytes:
        return self._value.to_bytes(self.digest_size, "big")


class _Hashlib(Checksum):
    def __init__(self, name: str) -> None:
        self.name = name
        self._hash = hashlib.new(name)
        self.digest_size = self._hash.digest_size

    def update(self, data: bytes | bytearray | memoryview) -> None:
        self._hash.update(data)

    def digest(self) -> bytes:
        return self._hash.digest()


class _XXHash(Checksum):
    def __init__(self, name: str, make: Callable[[], crt.XXHash], digest_size: int) -> None:
        self.name = name
        self.digest_size = digest_size
        self._hash = make()
        self._final: bytes | None = None

    def update(self, data: bytes | bytearray | memoryview) -> None:
        if self._final is not None:
            raise ValueError("checksum already finalized")
        self._hash.update(data)

    def digest(self) -> bytes:
        # The CRT hash can only be finalized once; remember the result.
        if self._final is None:
            self._final = self._hash.finalize()
        return self._final


_FACTORIES: dict[str, Callable[[], Checksum]] = {
    # zlib's CRC32 releases the GIL and is fast; the CRT has the only maintained CRC32C/CRC64NVME
    # with hardware acceleration (the same code botocore uses).
    "crc32": lambda: _Crc("crc32", 32, zlib.crc32),
    "crc32c": lambda: _Crc("crc32c", 32, crt.crc32c),
    "crc64nvme": lambda: _Crc("crc64nvme", 64, crt.crc64nvme),
    "sha1": lambda: _Hashlib("sha1"),
    "sha256": lambda: _Hashlib("sha256"),
    "sha512": lambda: _Hashlib("sha512"),
    "xxhash64": lambda: _XXHash("xxhash64", crt.XXHash.new_xxhash64, 8),
    "xxhash3": lambda: _XXHash("xxhash3", crt.XXHash.new_xxhash3_64, 8),
    "xxhash128": lambda: _XXHash("xxhash128", crt.XXHash.new_xxhash3_128, 16),
}

DIGEST_SIZES: dict[str, int] = {name: make().digest_size for name, make in _FACTORIES.items()}


def new_checksum(algorithm: str) -> Checksum:
    """A fresh hasher for `algorithm` (any case: "CRC32", "crc32"); ValueError if unknown."""
    make = _FACTORIES.get(algorithm.lower())
    if make is None:
        raise ValueError(f"unknown checksum algorithm {algorithm!r}")
    return make()


def header_name(algorithm: str) -> str:
    """The request/response header that carries this algorithm's value, e.g. x-amz-checksum-crc32."""
    return HEADER_PREFIX + algorithm.lower()


def parse_algorithm(value: str, header: str = "x-amz-sdk-checksum-algorithm") -> str:
    """Validate an algorithm name sent by a client; returns it lower-cased."""
    name = value.strip().lower()
    if name not in _FACTORIES:
        raise S3Error(
            "InvalidRequest",
            f"Value for {header} header is invalid.",
            extra={"ArgumentName": header, "ArgumentValue": value},
        )
    return name


def decode_value(algorithm: str, value: str) -> bytes:
    """Decode a base64 checksum value sent by a client, checking it has the algorithm's digest size."""
    header = header_name(algorithm)
    try:
        raw = base64.b64decode(value.strip(), validate=True)
    except (binascii.Error, ValueError):
        raw = b""
    if len(raw) != DIGEST_SIZES[algorithm]:
        raise S3Error("InvalidRequest", f"Value for {header} header is invalid.")
    return raw


def checksum_from_headers(headers: Mapping[str, str]) -> tuple[str, str] | None:
    """The (algorithm, base64 value) of the one x-amz-checksum-<alg> header, or None if there is none.

    Several checksum headers, or one naming an unknown algorithm, are refused as S3 does.
    """
    found: list[tuple[str, str]] = []
    for name, value in headers.items():
        lname = name.lower()
        if not lname.startswith(HEADER_PREFIX):
            continue
        algorithm = lname[len(HEADER_PREFIX):]
        if algorithm in ("type", "algorithm", "mode"):
            continue  # x-amz-checksum-type/-algorithm/-mode describe, they carry no value
        if algorithm not in _FACTORIES:
            raise S3Error("InvalidRequest", f"The algorithm type you specified in {lname} header is invalid.")
        found.append((algorithm, value))
    if len(found) > 1:
        raise S3Error(
            "InvalidRequest", "Expecting a single x-amz-checksum- header. Multiple checksum Types are not allowed."
        )
    if not found:
        return None
    algorithm, value = found[0]
    decode_value(algorithm, value)
    return algorithm, value.strip()


def composite_checksum(algorithm: str, part_checksums: Sequence[str]) -> str:
    """S3's COMPOSITE multipart checksum: the algorithm over the parts' raw digests, then "-<parts>"."""
    combined = new_checksum(algorithm)
    for value in part_checksums:
        combined.update(base64.b64decode(value))
    return f"{combined.b64digest()}-{len(part_checksums)}"


_COMBINE: dict[str, Callable[[int, int, int], int]] = {
    "crc32": crt.combine_crc32,
    "crc32c": crt.combine_crc32c,
    "crc64nvme": crt.combine_crc64nvme,
}


def full_object_crc(algorithm: str, parts: Sequence[tuple[str, int]]) -> str:
    """S3's FULL_OBJECT multipart checksum: the CRC of the whole object from the parts' (base64 CRC, size)."""
    if algorithm not in _COMBINE:
        raise ValueError(f"{algorithm} cannot be combined; only CRCs have a full-object checksum")
    combine = _COMBINE[algorithm]
    width = DIGEST_SIZES[algorithm]
    value = 0
    for i, (b64, size) in enumerate(parts):
        crc = int.from_bytes(base64.b64decode(b64), "big")
        value = crc if i == 0 else combine(value, crc, size)
    return base64.b64encode(value.to_bytes(width, "big")).decode("ascii")
