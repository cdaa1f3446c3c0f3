"""HTTP header semantics of S3 objects: metadata in and out, dates, ETags, ranges and conditional requests."""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import email.utils
from collections.abc import Mapping
from dataclasses import dataclass

from gateway.errors import S3Error
from objstore.records import ObjectRecord

STORED_HEADERS = ("Content-Encoding", "Content-Disposition", "Content-Language", "Cache-Control", "Expires")
"""Standard headers S3 stores with an object and sends back on GET/HEAD."""
META_PREFIX = "x-amz-meta-"
MAX_META_BYTES = 2048
RESPONSE_OVERRIDES = {
    "response-content-type": "Content-Type",
    "response-content-language": "Content-Language",
    "response-expires": "Expires",
    "response-cache-control": "Cache-Control",
    "response-content-disposition": "Content-Disposition",
    "response-content-encoding": "Content-Encoding",
}


UNSUPPORTED_WRITE_HEADERS = ("x-amz-server-side-encryption", "x-amz-copy-source-server-side-encryption",
                             "x-amz-object-lock-", "x-amz-tagging", "x-amz-website-redirect-location")
"""Header prefixes of features objects here do not have: refused on writes, not silently dropped."""
STORAGE_CLASS = "STANDARD"


@dataclass
class ObjectMeta:
    """What a client sets on an object besides its bytes."""

    content_type: str
    headers: dict[str, str]
    meta: dict[str, str]


def meta_from_request(headers: Mapping[str, str]) -> ObjectMeta:
    """Content-Type, the stored standard headers and x-amz-meta-* of a PUT, copy with REPLACE or multipart create."""
    stored = {h: headers[h] for h in STORED_HEADERS if h in headers}
    if "Content-Encoding" in stored:  # aws-chunked is how the body travelled, not what it is
        codings = [c.strip() for c in stored["Content-Encoding"].split(",") if c.strip() != "aws-chunked"]
        if codings:
            stored["Content-Encoding"] = ", ".join(codings)
        else:
            del stored["Content-Encoding"]
    meta = {k[len(META_PREFIX):].lower(): v for k, v in headers.items() if k.lower().startswith(META_PREFIX)}
    if sum(len(k) + len(v) for k, v in meta.items()) > MAX_META_BYTES:
        raise S3Error("MetadataTooLarge")
    return ObjectMeta(headers.get("Content-Type", "binary/octet-stream"), stored, meta)


def check_write_headers(headers: Mapping[str, str]) -> None:
    """Refuse what a PUT, copy or multipart create asks for that would not be honoured (S3's NotImplemented).

    Encryption, object lock, tagging and redirects are absent; the one storage class is STANDARD.
    """
    for name in headers:
        lname = name.lower()
        if lname == "x-amz-tagging-directive" and headers[name].upper() == "COPY":
            continue  # copying no tags is what a copy without tags does
        if lname.startswith(UNSUPPORTED_WRITE_HEADERS):
            raise S3Error("NotImplemented", f"{lname} is not implemented")
    storage_class = headers.get("x-amz-storage-class")
    if storage_class is not None and storage_class != STORAGE_CLASS:
        raise S3Error("InvalidStorageClass", extra={"StorageClassRequested": storage_class})


def http_date(ns: int) -> str:
    """RFC 7231 date of a time in ns, at one-second resolution as S3 sends it."""
    return email.utils.formatdate(ns // 1_000_000_000, usegmt=True)


def ns_datetime(ns: int) -> dt.datetime:
    """A time in ns as an aware UTC datetime, at millisecond resolution (what S3's XML shows)."""
    return dt.datetime.fromtimestamp(ns // 1_000_000 / 1000, dt.UTC)


def last_modified(rec: ObjectRecord) -> dt.datetime:
    return ns_datetime(rec.created // 1_000_000_000 * 1_000_000_000)


def quote_etag(etag: str) -> str:
    return f'"{etag}"'


def object_headers(rec: ObjectRecord, version_id: str | None, query: Mapping[str, str] | None = None,
                   checksum_mode: bool = False) -> dict[str, str]:
    """Response headers of GET/HEAD for a version (Content-Length and ranges are the caller's)."""
    out = {
        "ETag": quote_etag(rec.etag),
        "Last-Modified": http_date(rec.created),
        "Content-Type": rec.content_type or "binary/octet-stream",
        "Accept-Ranges": "bytes",
    }
    out.update(rec.headers)
    for k, v in rec.meta.items():
        out[META_PREFIX + k] = v
    if version_id is not None:
        out["x-amz-version-id"] = version_id
    if checksum_mode and rec.checksum.get("algorithm"):
        out[f"x-amz-checksum-{rec.checksum['algorithm'].lower()}"] = rec.checksum["value"]
        out["x-amz-checksum-type"] = rec.checksum.get("type", "FULL_OBJECT")
    if rec.multipart:
        out.setdefault("x-amz-mp-parts-count", str(len(rec.parts)))
    for param, header in RESPONSE_OVERRIDES.items():
        if query and param in query:
            out[header] = query[param]
    return out


def content_md5(headers: Mapping[str, str]) -> bytes | None:
    """The decoded Content-MD5 header, or None; a malformed one raises InvalidDigest."""
    value = headers.get("Content-MD5")
    if value is None:
        return None
    try:
        digest = base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise S3Error("InvalidDigest") from None
    if len(digest) != 16:
        raise S3Error("InvalidDigest")
    return digest


def parse_range(value: str | None, size: int) -> tuple[int, int] | None:
    """(offset, length) of a `bytes=` range, None for the whole object; unsatisfiable raises InvalidRange.

    Like S3, a header that is not a single well-formed byte range is ignored (whole object).
    """
    if not value or not value.startswith("bytes=") or "," in value:
        return None
    spec = value[len("bytes="):].strip()
    first, sep, last = spec.partition("-")
    if not sep:
        return None
    try:
        if first == "":
            if not last.isdigit():
                return None
            n = int(last)
            if n == 0 or size == 0:
                raise _invalid_range(size)
            n = min(n, size)
            return size - n, n
        if not first.isdigit() or (last and not last.isdigit()):
            return None
        start = int(first)
        end = int(last) if last else size - 1
    except ValueError:
        return None
    if start >= size:
        raise _invalid_range(size)
    if end < start:
        return None
    end = min(end, size - 1)
    return start, end - start + 1


def _invalid_range(size: int) -> S3Error:
    return S3Error("InvalidRange", extra={"ActualObjectSize": str(size)},
                   headers={"Content-Range": f"bytes */{size}"})


def _parse_date(value: str | None) -> int | None:
    """Seconds since the epoch of an HTTP date; None if absent or unparseable (then the condition is ignored)."""
    if not value:
        return None
    try:
        parsed = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=dt.UTC)
    return int(parsed.timestamp())


def _etag_matches(header: str, etag: str) -> bool:
    wanted = [t.strip() for t in header.split(",")]
    return any(t == "*" or t.strip('"') == etag or t.removeprefix("W/").strip('"') == etag for t in wanted)


def check_conditions(headers: Mapping[str, str], rec: ObjectRecord, prefix: str = "If-",
                     read: bool = True) -> None:
    """S3's precedence of If-Match, If-Unmodified-Since, If-None-Match, If-Modified-Since.

    If-Match true wins over a false If-Unmodified-Since; If-None-Match false wins over a true
    If-Modified-Since. `prefix` is "x-amz-copy-source-if-" for CopyObject's source conditions, where
    every failure is 412.
    """
    modified = rec.created // 1_000_000_000
    if_match = headers.get(prefix + "Match")
    if_none = headers.get(prefix + "None-Match")
    if if_match is not None:
        if not _etag_matches(if_match, rec.etag):
            raise S3Error("PreconditionFailed", extra={"Condition": prefix + "Match"})
    else:
        since = _parse_date(headers.get(prefix + "Unmodified-Since"))
        if since is not None and modified > since:
            raise S3Error("PreconditionFailed", extra={"Condition": prefix + "Unmodified-Since"})
    not_modified = "NotModified" if read else "PreconditionFailed"
    if if_none is not None:
        if _etag_matches(if_none, rec.etag):
            raise S3Error(not_modified, extra={"Condition": prefix + "None-Match"},
                          headers={"ETag": quote_etag(rec.etag), "Last-Modified": http_date(rec.created)})
    else:
        since = _parse_date(headers.get(prefix + "Modified-Since"))
        if since is not None and modified <= since:
            raise S3Error(not_modified, extra={"Condition": prefix + "Modified-Since"},
                          headers={"ETag": quote_etag(rec.etag), "Last-Modified": http_date(rec.created)})
