"""S3 listings: ListObjects (v1), ListObjectsV2 and ListObjectVersions over the merged node listings."""

from __future__ import annotations

import base64
import binascii
from collections.abc import AsyncIterator
from dataclasses import dataclass
from urllib.parse import quote

from aiohttp import web

from gateway import versioning
from gateway.buckets import Bucket
from gateway.errors import S3Error
from gateway.headers import ns_datetime, quote_etag
from gateway.s3buckets import owner_xml, xml_response
from gateway.server import Gateway, S3Request
from gateway.xmlio import render
from objstore.listing import KEY_CEILING, MergedListing, VersionInfo, listing_nodes, node_page

MAX_KEYS = 1000
MIN_NODE_PAGE = 100
"""Entries asked of a node at least: a small S3 page that skips delete markers or rolls keys up needs more."""


@dataclass
class Item:
    """One row of a listing page: a key's version, or a common prefix."""

    key: str
    versions: list[VersionInfo] | None = None  # None for a common prefix

    @property
    def is_prefix(self) -> bool:
        return self.versions is None


def _merged(gw: Gateway, bucket: Bucket, prefix: str, start_after: str, max_keys: int) -> MergedListing:
    ring = gw.view.ring(bucket.pool)
    nodes, reserve = listing_nodes(gw.view, ring)
    # A node's page is a little more than the S3 page needs: one more key tells whether it is truncated.
    page = node_page(max(MIN_NODE_PAGE, max_keys + 1))
    return MergedListing(gw.client, nodes, bucket.name, ring.ec.k, prefix=prefix, start_after=start_after,
                         page=page, reserve=reserve)


def _max_keys(req: S3Request) -> int:
    raw = req.query.get("max-keys", str(MAX_KEYS))
    try:
        n = int(raw)
    except ValueError:
        raise S3Error("InvalidArgument", "Provided max-keys not an integer or within integer range",
                      extra={"ArgumentName": "max-keys", "ArgumentValue": raw}) from None
    if n < 0 or n > 2**31 - 1:
        raise S3Error("InvalidArgument", "Argument maxKeys must be an integer between 0 and 2147483647",
                      extra={"ArgumentName": "maxKeys", "ArgumentValue": raw})
    return min(n, MAX_KEYS)


def _skip_marker(marker: str, prefix: str, delimiter: str) -> str:
    """Where listing resumes after `marker`: past every key that rolls up into a common prefix it names."""
    if delimiter and marker.startswith(prefix) and marker[len(prefix):].endswith(delimiter):
        return marker + KEY_CEILING
    return marker


async def _walk(gw: Gateway, bucket: Bucket, prefix: str, delimiter: str, after: str,
                include_deleted: bool, include: str | None = None, max_keys: int = MAX_KEYS) -> AsyncIterator[Item]:
    """Keys (with their visible versions) and common prefixes in order, after `after` (or equal to `include`)."""
    start = include[:-1] if include else after
    merged = _merged(gw, bucket, prefix, start, max_keys)
    async for key, versions in merged.keys():
        if not key.startswith(prefix) or (key <= after and key != include):
            continue
        if not include_deleted:
            if versions[0].deleted:
                continue
            versions = versions[:1]
        rest = key[len(prefix):]
        if delimiter and delimiter in rest:
            cp = prefix + rest[:rest.index(delimiter) + len(delimiter)]
            merged.skip_to(cp + KEY_CEILING)
            yield Item(cp)
            continue
        yield Item(key, versions)


def _enc(value: str | None, url: bool) -> str | None:
    if value is None:
        return None
    return quote(value, safe="/") if url else value


def _encoding(req: S3Request) -> bool:
    enc = req.query.get("encoding-type")
    if enc is None:
        return False
    if enc != "url":
        raise S3Error("InvalidArgument", "Invalid Encoding Method specified in Request",
                      extra={"ArgumentName": "encoding-type", "ArgumentValue": enc})
    return True


def _contents(item: Item, url: bool, owner: dict[str, str] | None) -> dict[str, object]:
    assert item.versions is not None
    v = item.versions[0]
    return {"Key": _enc(item.key, url), "LastModified": ns_datetime(v.created), "ETag": quote_etag(v.etag),
            "Size": v.size, "StorageClass": "STANDARD", "Owner": owner}


async def _page(gw: Gateway, bucket: Bucket, prefix: str, delimiter: str, after: str, max_keys: int,
                include_deleted: bool = False) -> tuple[list[Item], bool]:
    items: list[Item] = []
    truncated = False
    if max_keys == 0:
        return items, False  # S3 answers an empty, untruncated page, whatever the bucket holds
    async for item in _walk(gw, bucket, prefix, delimiter, after, include_deleted, max_keys=max_keys):
        if len(items) >= max_keys:
            truncated = True
            break
        items.append(item)
    return items, truncated


async def list_objects_v1(gw: Gateway, req: S3Request) -> web.StreamResponse:
    bucket = await gw.buckets.get(req.bucket, req.user.access_key)
    url = _encoding(req)
    prefix, delimiter = req.query.get("prefix", ""), req.query.get("delimiter", "")
    marker = req.query.get("marker", "")
    max_keys = _max_keys(req)
    items, truncated = await _page(gw, bucket, prefix, delimiter, _skip_marker(marker, prefix, delimiter), max_keys)
    owner = owner_xml(gw, bucket.owner)
    body: list[tuple[str, object]] = [
        # v1 sends Prefix as given even with encoding-type=url (SDKs decode Marker, Delimiter and keys only)
        ("Name", bucket.name), ("Prefix", prefix), ("Marker", _enc(marker, url)),
        ("MaxKeys", max_keys), ("Delimiter", _enc(delimiter, url) if delimiter else None),
        ("IsTruncated", truncated), ("EncodingType", "url" if url else None),
    ]
    if truncated and delimiter and items:
        body.append(("NextMarker", _enc(items[-1].key, url)))
    body += [("Contents", _contents(i, url, owner)) for i in items if not i.is_prefix]
    body += [("CommonPrefixes", {"Prefix": _enc(i.key, url)}) for i in items if i.is_prefix]
    return xml_response(render("ListBucketResult", body))  # type: ignore[arg-type]


def _token(after: str) -> str:
    return base64.urlsafe_b64encode(after.encode("utf-8", "surrogatepass")).decode()


def _untoken(token: str) -> str:
    try:
        # validate: the lenient decoder drops foreign characters, so garbage would restart the listing
        return base64.b64decode(token.encode(), altchars=b"-_", validate=True).decode("utf-8", "surrogatepass")
    except (binascii.Error, ValueError, UnicodeDecodeError):
        raise S3Error("InvalidArgument", "The continuation token provided is incorrect",
                      extra={"ArgumentName": "continuation-token", "ArgumentValue": token}) from None


async def list_objects_v2(gw: Gateway, req: S3Request) -> web.StreamResponse:
    bucket = await gw.buckets.get(req.bucket, req.user.access_key)
    if req.query.get("list-type") != "2":
        raise S3Error("InvalidArgument", "Invalid List Type specified",
                      extra={"ArgumentName": "list-type", "ArgumentValue": req.query.get("list-type", "")})
    url = _encoding(req)
    prefix, delimiter = req.query.get("prefix", ""), req.query.get("delimiter", "")
    token = req.query.get("continuation-token")
    start_after = req.query.get("start-after", "")
    after = _untoken(token) if token is not None else _skip_marker(start_after, prefix, delimiter)
    max_keys = _max_keys(req)
    items, truncated = await _page(gw, bucket, prefix, delimiter, after, max_keys)
    owner = owner_xml(gw, bucket.owner) if req.query.get("fetch-owner") == "true" else None
    body: list[tuple[str, object]] = [
        ("Name", bucket.name), ("Prefix", _enc(prefix, url)),
        ("Delimiter", _enc(delimiter, url) if delimiter else None), ("MaxKeys", max_keys),
        ("EncodingType", "url" if url else None), ("KeyCount", len(items)), ("IsTruncated", truncated),
        ("ContinuationToken", token), ("StartAfter", _enc(start_after, url) if start_after else None),
    ]
    if truncated and items:
        last = items[-1]
        body.append(("NextContinuationToken", _token(last.key + KEY_CEILING if last.is_prefix else last.key)))
    body += [("Contents", _contents(i, url, owner)) for i in items if not i.is_prefix]
    body += [("CommonPrefixes", {"Prefix": _enc(i.key, url)}) for i in items if i.is_prefix]
    return xml_response(render("ListBucketResult", body))  # type: ignore[arg-type]


def _after_version_marker(versions: list[VersionInfo], marker: str) -> int:
    """Position of the first version (newest first) that comes after `marker` in a versions listing."""
    if marker == versioning.NULL:  # a key has one null version: resume just past it
        return next((i + 1 for i, v in enumerate(versions) if versioning.is_null(v.version)), 0)
    return next((i for i, v in enumerate(versions) if v.version < marker), len(versions))


async def list_versions(gw: Gateway, req: S3Request) -> web.StreamResponse:
    bucket = await gw.buckets.get(req.bucket, req.user.access_key)
    url = _encoding(req)
    prefix, delimiter = req.query.get("prefix", ""), req.query.get("delimiter", "")
    key_marker = req.query.get("key-marker", "")
    vid_marker = req.query.get("version-id-marker", "")
    if vid_marker and not key_marker:
        raise S3Error("InvalidArgument", "A version-id marker cannot be specified without a key marker.",
                      extra={"ArgumentName": "version-id-marker", "ArgumentValue": vid_marker})
    if vid_marker:
        versioning.check_version_id(vid_marker, "version-id-marker")
    max_keys = _max_keys(req)
    owner = owner_xml(gw, bucket.owner)
    rows: list[tuple[str, object]] = []
    truncated = False
    next_key = next_vid = None
    after = _skip_marker(key_marker, prefix, delimiter)
    # With a version-id marker the marker's own key may still have versions to show (those older than it).
    resume_key = key_marker if key_marker and vid_marker else None
    count = 0
    async for item in _walk(gw, bucket, prefix, delimiter, after, include_deleted=bool(bucket.versioning),
                            include=resume_key):
        if max_keys == 0:
            break  # an empty, untruncated page, as for the object listings
        if item.is_prefix:
            if count >= max_keys:
                truncated, next_key = True, item.key
                break
            rows.append(("CommonPrefixes", {"Prefix": _enc(item.key, url)}))
            count += 1
            continue
        versions = item.versions or []
        first = _after_version_marker(versions, vid_marker) if item.key == resume_key else 0
        for pos, v in enumerate(versions):
            if pos < first:
                continue
            if count >= max_keys:
                truncated = True
                break
            vid = versioning.shown(bucket, v.version) or versioning.NULL
            if v.deleted:
                rows.append(("DeleteMarker", {"Key": _enc(item.key, url), "VersionId": vid, "IsLatest": pos == 0,
                                              "LastModified": ns_datetime(v.created), "Owner": owner}))
            else:
                rows.append(("Version", {"Key": _enc(item.key, url), "VersionId": vid, "IsLatest": pos == 0,
                                         "LastModified": ns_datetime(v.created), "ETag": quote_etag(v.etag),
                                         "Size": v.size, "StorageClass": "STANDARD", "Owner": owner}))
            count += 1
            next_key, next_vid = item.key, vid
        if truncated:
            break
    body: list[tuple[str, object]] = [
        ("Name", bucket.name), ("Prefix", _enc(prefix, url)), ("KeyMarker", _enc(key_marker, url)),
        ("VersionIdMarker", vid_marker), ("MaxKeys", max_keys),
        ("Delimiter", _enc(delimiter, url) if delimiter else None), ("IsTruncated", truncated),
        ("EncodingType", "url" if url else None),
    ]
    if truncated:
        body += [("NextKeyMarker", _enc(next_key, url)), ("NextVersionIdMarker", next_vid)]
    return xml_response(render("ListVersionsResult", body + rows))  # type: ignore[arg-type]


async def bucket_is_empty(gw: Gateway, bucket: Bucket) -> bool:
    """No visible object; in a bucket that has had versioning, no version or delete marker either."""
    async for _ in _walk(gw, bucket, "", "", "", include_deleted=bool(bucket.versioning), max_keys=1):
        return False
    return True
