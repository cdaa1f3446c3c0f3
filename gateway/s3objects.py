"""S3 object operations: Put, Get, Head, Delete, DeleteObjects, Copy (and the ACL/tagging stubs clients probe)."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
from collections.abc import AsyncIterator
from urllib.parse import unquote

from aiohttp import web

from gateway import versioning
from gateway.buckets import Bucket
from gateway.budget import declared_size, read_share, write_share
from gateway.errors import S3Error
from gateway.headers import (
    ObjectMeta,
    check_conditions,
    check_write_headers,
    content_md5,
    last_modified,
    meta_from_request,
    object_headers,
    parse_range,
    quote_etag,
)
from gateway.s3buckets import acl_xml, check_private_acl, xml_response
from gateway.server import Gateway, S3Request
from gateway.xmlio import parse_delete, render
from objstore.objects import ObjectVersion, ReadFailed, WriteFailed
from objstore.records import ObjectRecord, PartRef
from objstore.versions import new_version, version_time_ns

UNSUPPORTED_OBJECT_SUBRESOURCES = ("retention", "legal-hold", "torrent", "restore", "select", "attributes")


async def resolve_version(gw: Gateway, bucket: Bucket, key: str, version_id: str | None) -> str | None:
    """Our id of the version a versionId parameter names (None: the newest; "" if no null version exists)."""
    if version_id is None:
        return None
    versioning.check_version_id(version_id)
    if version_id == versioning.NULL:
        return await versioning.null_version(gw, bucket, key) or ""
    return version_id


async def _current(gw: Gateway, bucket: Bucket, key: str, version_id: str | None = None,
                   prefetch: bool = False) -> ObjectVersion:
    """The version a read names: the newest, or the one asked for; errors as S3 gives them.

    `prefetch`: its bytes will be read, so small enough shards come with the records (`ObjectReader.find`).
    """
    ring = gw.view.ring(bucket.pool)
    version = await resolve_version(gw, bucket, key, version_id)
    if version == "":
        raise S3Error("NoSuchVersion", extra={"Key": key, "VersionId": version_id or ""})
    obj = await gw.io.find(ring, bucket.name, key, version, prefetch=prefetch)
    if obj is None:
        if version is not None:
            raise S3Error("NoSuchVersion", extra={"Key": key, "VersionId": version_id or ""})
        raise S3Error("NoSuchKey", extra={"Key": key})
    if obj.deleted:
        if version is not None:
            raise S3Error("MethodNotAllowed", "The specified method is not allowed against this resource.",
                          headers={"x-amz-delete-marker": "true",
                                   "x-amz-version-id": versioning.shown(bucket, obj.record.version) or "null"})
        headers = {"x-amz-delete-marker": "true"}
        if (shown := versioning.shown(bucket, obj.record.version)) is not None:
            headers["x-amz-version-id"] = shown  # S3 names the delete marker that hides the key
        raise S3Error("NoSuchKey", extra={"Key": key}, headers=headers)
    return obj


async def store_object(gw: Gateway, bucket: Bucket, key: str, source: AsyncIterator[bytes] | object,
                       meta: ObjectMeta, expect_md5: bytes | None = None,
                       checksum: dict[str, str] | None = None,
                       payload_checksum: object | None = None, size: int | None = None,
                       copy_of: ObjectRecord | None = None) -> ObjectRecord:
    """Erasure-code `source` into a new version of bucket/key and commit it. Nothing is visible on failure.

    `size` (None: not known) is what the client declared: the write waits for its share of the write
    budget (503 SlowDown if it does not come) before it reads a byte. A copy names the record `source`
    reads (`copy_of`): its share covers that read too.
    """
    ring = gw.view.ring(bucket.pool)
    partition = ring.partition_of(bucket.name, key)
    md5 = hashlib.md5()
    try:
        async with write_share(gw.budget, ring.ec, size, (copy_of, 0, copy_of.size) if copy_of else None):
            blob = await gw.io.write_blob(ring, partition, new_version(), source,  # type: ignore[arg-type]
                                          on_payload=md5.update)
    except WriteFailed as e:
        raise S3Error("ServiceUnavailable", f"not enough storage nodes answered: {e}") from None
    try:
        digest = md5.digest()
        if expect_md5 is not None and digest != expect_md5:
            raise S3Error("BadDigest")
        sums = dict(checksum or {})
        if payload_checksum is not None:
            sums = payload_checksum()  # type: ignore[operator]
        etag = digest.hex()
        # The version is drawn once the body is in: of two overlapping PUTs the one that completes last wins.
        version = versioning.object_version(bucket)
        template = ObjectRecord(
            bucket=bucket.name, key=key, version=version, shard=0, ec=ring.ec, size=blob.size, etag=etag,
            content_type=meta.content_type, headers=meta.headers, meta=meta.meta, checksum=sums,
            parts=[PartRef(1, blob.size, etag, blob.blob)], created=version_time_ns(version))
        done = await gw.io.commit(ring, partition, template, [(template.parts[0], blob)])
    except WriteFailed as e:
        raise S3Error("ServiceUnavailable", f"not enough storage nodes committed: {e}") from None
    except BaseException:
        await gw.io.discard(blob)
        raise
    versioning.retire_older(gw, bucket, done)
    return template


def _payload_checksum(req: S3Request):  # type: ignore[no-untyped-def]
    """After the body is read: the x-amz-checksum-* the client sent and the reader verified, if any."""
    def get() -> dict[str, str]:
        algo = getattr(req.payload, "checksum_algorithm", None)
        value = getattr(req.payload, "checksum_value", None)
        if algo and value:
            return {"algorithm": algo.upper(), "value": value, "type": "FULL_OBJECT"}
        return {}
    return get


async def _exists(gw: Gateway, bucket: Bucket, key: str) -> ObjectVersion | None:
    obj = await gw.io.find(gw.view.ring(bucket.pool), bucket.name, key)
    return None if obj is None or obj.deleted else obj


async def _check_write_conditions(gw: Gateway, bucket: Bucket, req: S3Request) -> None:
    if_none, if_match = req.headers.get("If-None-Match"), req.headers.get("If-Match")
    if if_none is None and if_match is None:
        return
    if if_none is not None and if_none.strip() != "*":
        raise S3Error("NotImplemented", "If-None-Match on PUT supports only '*'")
    current = await _exists(gw, bucket, req.key)
    if if_none is not None and current is not None:
        raise S3Error("PreconditionFailed", extra={"Condition": "If-None-Match"})
    if if_match is not None:
        if current is None:
            raise S3Error("NoSuchKey", extra={"Key": req.key})
        check_conditions(req.headers, current.record, read=False)


async def put_object(gw: Gateway, req: S3Request) -> web.StreamResponse:
    bucket = await gw.buckets.get(req.bucket, req.user.access_key)
    check_private_acl(req)
    check_write_headers(req.headers)
    meta = meta_from_request(req.headers)
    expect_md5 = content_md5(req.headers)
    await _check_write_conditions(gw, bucket, req)
    rec = await store_object(gw, bucket, req.key, req.payload, meta, expect_md5,
                             payload_checksum=_payload_checksum(req), size=declared_size(req.payload))
    headers = {"ETag": quote_etag(rec.etag)}
    if (v := versioning.shown_on_write(bucket, rec.version)) is not None:
        headers["x-amz-version-id"] = v
    if rec.checksum.get("algorithm"):
        headers[f"x-amz-checksum-{rec.checksum['algorithm'].lower()}"] = rec.checksum["value"]
    return web.Response(status=200, headers=headers)


def _part_range(rec: ObjectRecord, number: str) -> tuple[int, int]:
    try:
        n = int(number)
    except ValueError:
        raise S3Error("InvalidArgument", "Part number must be an integer between 1 and 10000, inclusive",
                      extra={"ArgumentName": "partNumber", "ArgumentValue": number}) from None
    if not 1 <= n <= 10000:
        raise S3Error("InvalidArgument", "Part number must be an integer between 1 and 10000, inclusive",
                      extra={"ArgumentName": "partNumber", "ArgumentValue": number})
    if not rec.multipart:
        if n != 1:
            raise S3Error("InvalidPartNumber")
        return 0, rec.size
    offset = 0
    for p in rec.parts:
        if p.number == n:
            return offset, p.size
        offset += p.size
    raise S3Error("InvalidPartNumber")


async def _object_response(gw: Gateway, req: S3Request, head: bool) -> web.StreamResponse:
    bucket = await gw.buckets.get(req.bucket, req.user.access_key)
    obj = await _current(gw, bucket, req.key, req.query.get("versionId"), prefetch=not head)
    rec = obj.record
    check_conditions(req.headers, rec)
    # The stored checksum covers the whole object: S3 sends it only with whole-object answers.
    whole = "partNumber" not in req.query and parse_range(req.headers.get("Range"), rec.size) is None
    headers = object_headers(rec, versioning.shown(bucket, rec.version), req.query,
                             checksum_mode=whole and req.headers.get("x-amz-checksum-mode", "").upper() == "ENABLED")
    status = 200
    offset, length = 0, rec.size
    if "partNumber" in req.query:
        offset, length = _part_range(rec, req.query["partNumber"])
        headers["x-amz-mp-parts-count"] = str(len(rec.parts)) if rec.multipart else "1"
        if rec.multipart or length != rec.size:
            status = 206
            headers["Content-Range"] = f"bytes {offset}-{offset + length - 1}/{rec.size}" if length else f"bytes */{rec.size}"
    else:
        rng = parse_range(req.headers.get("Range"), rec.size)
        if rng is not None:
            offset, length = rng
            status = 206
            headers["Content-Range"] = f"bytes {offset}-{offset + length - 1}/{rec.size}"
    if head:
        resp = web.StreamResponse(status=status, headers=headers)
        resp.content_length = length
        await resp.prepare(req.http)
        await resp.write_eof()
        return resp
    # The share is held until the last byte is handed to the client's connection, or the request ends
    # otherwise (an error, a client that hung up); the reader is closed before it goes back.
    async with read_share(gw.read_budget, rec, offset, length, obj.shards):
        payload = gw.io.held_payload(obj, offset, length)
        if payload is not None:
            # One stripe, every data shard at hand: one write carries the head and the body.
            resp = web.Response(status=status, headers=headers, body=payload)
            await resp.prepare(req.http)
            await resp.write_eof()
            return resp
        return await _stream_object(gw, req, obj, status, headers, offset, length)


async def _stream_object(gw: Gateway, req: S3Request, obj: ObjectVersion, status: int, headers: dict[str, str],
                         offset: int, length: int) -> web.StreamResponse:
    """Send object bytes [offset, offset+length) stripe by stripe as they are read (the caller holds the share)."""
    async with contextlib.aclosing(gw.io.read(obj, offset, length)) as chunks:
        first = b""
        if length:
            try:
                first = await anext(chunks)  # fail before the status line if the object is unreadable
            except (ReadFailed, StopAsyncIteration) as e:
                raise S3Error("ServiceUnavailable", f"object unreadable right now: {e}") from None
        resp = web.StreamResponse(status=status, headers=headers)
        resp.content_length = length
        await resp.prepare(req.http)
        if first:
            await resp.write(first)
            async for chunk in chunks:
                await resp.write(chunk)
        await resp.write_eof()
    return resp


async def get_object(gw: Gateway, req: S3Request) -> web.StreamResponse:
    return await _object_response(gw, req, head=False)


async def head_object(gw: Gateway, req: S3Request) -> web.StreamResponse:
    return await _object_response(gw, req, head=True)


async def delete_key(gw: Gateway, bucket: Bucket, key: str, version_id: str | None) -> tuple[bool, str | None]:
    """Delete one key (a delete marker) or one version (permanently). Returns (is delete marker, version)."""
    ring = gw.view.ring(bucket.pool)
    if version_id is not None:
        version = await resolve_version(gw, bucket, key, version_id)
        if not version:  # "null" and the key has no null version: nothing to remove
            return False, version_id
        obj = await gw.io.find(ring, bucket.name, key, version)
        await gw.io.delete_version(ring, bucket.name, key, version)
        return (obj is not None and obj.deleted), version_id
    partition = ring.partition_of(bucket.name, key)
    version = versioning.object_version(bucket)
    template = ObjectRecord(bucket=bucket.name, key=key, version=version, shard=0, ec=ring.ec, deleted=True,
                            created=version_time_ns(version))
    try:
        done = await gw.io.commit(ring, partition, template, [])
    except WriteFailed as e:
        raise S3Error("ServiceUnavailable", f"delete not durable: {e}") from None
    versioning.retire_older(gw, bucket, done)
    return True, versioning.shown(bucket, version)


async def delete_object(gw: Gateway, req: S3Request) -> web.StreamResponse:
    bucket = await gw.buckets.get(req.bucket, req.user.access_key)
    marker, version = await delete_key(gw, bucket, req.key, req.query.get("versionId"))
    headers = {}
    if bucket.versioning and marker:
        headers["x-amz-delete-marker"] = "true"
    if version is not None and bucket.versioning:
        headers["x-amz-version-id"] = version
    return web.Response(status=204, headers=headers)


async def delete_objects(gw: Gateway, req: S3Request) -> web.StreamResponse:
    bucket = await gw.buckets.get(req.bucket, req.user.access_key)
    body = await req.payload.read()
    md5 = content_md5(req.headers)
    if md5 is not None and hashlib.md5(body).digest() != md5:
        raise S3Error("BadDigest")
    request = parse_delete(body)
    sem = asyncio.Semaphore(16)

    async def one(key: str, version_id: str | None) -> tuple[str, object]:
        async with sem:
            try:
                if len(key.encode()) > 1024:
                    raise S3Error("KeyTooLongError")
                return "ok", await delete_key(gw, bucket, key, version_id)
            except S3Error as e:
                return "err", e

    results = await asyncio.gather(*(one(o.key, o.version_id) for o in request.objects))
    entries: list[tuple[str, object]] = []
    for o, (status, value) in zip(request.objects, results):
        if status == "ok":
            if request.quiet:
                continue
            marker, version = value  # type: ignore[misc]
            d: dict[str, object] = {"Key": o.key}
            if o.version_id:
                d["VersionId"] = o.version_id
            if marker and bucket.versioning:
                d["DeleteMarker"] = True
                if version and not o.version_id:
                    d["DeleteMarkerVersionId"] = version
            entries.append(("Deleted", d))
        else:
            err: S3Error = value  # type: ignore[assignment]
            entries.append(("Error", {"Key": o.key, "VersionId": o.version_id, "Code": err.code,
                                      "Message": err.message}))
    return xml_response(render("DeleteResult", entries))  # type: ignore[arg-type]


def parse_copy_source(value: str) -> tuple[str, str, str | None]:
    """(bucket, key, versionId) of an x-amz-copy-source header (URL-encoded, optional leading '/')."""
    path, _, query = value.partition("?")
    path = unquote(path).lstrip("/")
    bucket, _, key = path.partition("/")
    if not bucket or not key:
        raise S3Error("InvalidArgument", "Copy Source must mention the source bucket and key: sourcebucket/sourcekey",
                      extra={"ArgumentName": "x-amz-copy-source", "ArgumentValue": value})
    version = None
    if query.startswith("versionId="):
        version = unquote(query[len("versionId="):])
    return bucket, key, version


async def copy_source(gw: Gateway, req: S3Request) -> tuple[Bucket, ObjectVersion]:
    """The object named by x-amz-copy-source, readable by this user, with its copy-source conditions checked."""
    src_bucket_name, src_key, src_version = parse_copy_source(req.headers["x-amz-copy-source"])
    src_bucket = await gw.buckets.get(src_bucket_name, req.user.access_key)
    obj = await _current(gw, src_bucket, src_key, src_version)
    check_conditions(req.headers, obj.record, prefix="x-amz-copy-source-if-", read=False)
    return src_bucket, obj


async def copy_object(gw: Gateway, req: S3Request) -> web.StreamResponse:
    bucket = await gw.buckets.get(req.bucket, req.user.access_key)
    check_private_acl(req)
    check_write_headers(req.headers)
    src_bucket, src = await copy_source(gw, req)
    directive = req.headers.get("x-amz-metadata-directive", "COPY").upper()
    if directive not in ("COPY", "REPLACE"):
        raise S3Error("InvalidArgument", "Unknown metadata directive.",
                      extra={"ArgumentName": "x-amz-metadata-directive", "ArgumentValue": directive})
    same = src_bucket.name == bucket.name and src.record.key == req.key
    if same and directive == "COPY" and not req.has("versionId"):
        raise S3Error("InvalidRequest", "This copy request is illegal because it is trying to copy an object to "
                      "itself without changing the object's metadata, storage class, website redirect location "
                      "or encryption attributes.")
    await req.payload.read()
    rec = src.record
    if directive == "REPLACE":
        meta = meta_from_request(req.headers)
    else:
        meta = ObjectMeta(rec.content_type, dict(rec.headers), dict(rec.meta))
    new = await store_object(gw, bucket, req.key, gw.io.read(src), meta,
                             checksum=rec.checksum if not rec.multipart else None, size=rec.size, copy_of=rec)
    headers = {}
    if (v := versioning.shown_on_write(bucket, new.version)) is not None:
        headers["x-amz-version-id"] = v
    if (v := versioning.shown(src_bucket, rec.version)) is not None:
        headers["x-amz-copy-source-version-id"] = v
    return xml_response(render("CopyObjectResult", {"LastModified": last_modified(new),
                                                    "ETag": quote_etag(new.etag)}), headers=headers)


async def get_acl(gw: Gateway, req: S3Request) -> web.StreamResponse:
    bucket = await gw.buckets.get(req.bucket, req.user.access_key)
    await _current(gw, bucket, req.key, req.query.get("versionId"))
    return xml_response(acl_xml(gw, bucket.owner))


async def put_acl(gw: Gateway, req: S3Request) -> web.StreamResponse:
    bucket = await gw.buckets.get(req.bucket, req.user.access_key)
    await _current(gw, bucket, req.key, req.query.get("versionId"))
    check_private_acl(req, await req.payload.read(), bucket.owner)
    return web.Response(status=200)


async def get_tagging(gw: Gateway, req: S3Request) -> web.StreamResponse:
    bucket = await gw.buckets.get(req.bucket, req.user.access_key)
    await _current(gw, bucket, req.key, req.query.get("versionId"))
    return xml_response(render("Tagging", {"TagSet": {}}))


async def put_tagging(gw: Gateway, req: S3Request) -> web.StreamResponse:
    raise S3Error("NotImplemented", "object tagging is not implemented")


async def delete_tagging(gw: Gateway, req: S3Request) -> web.StreamResponse:
    bucket = await gw.buckets.get(req.bucket, req.user.access_key)
    await _current(gw, bucket, req.key, req.query.get("versionId"))
    return web.Response(status=204)
