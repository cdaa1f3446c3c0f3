"""S3 multipart upload: each part is its own erasure-coded blob; Complete writes records listing them (no copy)."""

from __future__ import annotations

import asyncio
import hashlib
import re
import secrets
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from gateway import checksums, versioning
from gateway.buckets import Bucket
from gateway.budget import declared_size, write_share
from gateway.errors import S3Error
from gateway.headers import (
    check_write_headers,
    content_md5,
    meta_from_request,
    ns_datetime,
    quote_etag,
)
from gateway.s3buckets import check_private_acl, owner_xml, xml_response
from gateway.s3objects import copy_source
from gateway.server import Gateway, S3Request
from gateway.xmlio import parse_complete_multipart_upload, render
from objstore.cluster import NodeInfo
from objstore.kv import PARTS, SEP, UPLOADS, KVUnavailable
from objstore.objects import BlobWrite, ShardWrite, WriteFailed
from objstore.records import KVRecord, ObjectRecord, PartRef
from objstore.ring import Ring
from objstore.versions import new_version, version_time_ns

MIN_PART_SIZE = 5 * 1024 * 1024
MAX_PART_NUMBER = 10000


@dataclass
class Upload:
    bucket: str
    key: str
    upload_id: str
    initiated_ns: int
    owner: str
    meta: dict[str, Any]


def _upload_name(bucket: str, upload_id: str) -> str:
    return f"{bucket}{SEP}{upload_id}"


def _owners(gw: Gateway, bucket: Bucket, key: str) -> tuple[Ring, int, list[NodeInfo]]:
    ring = gw.view.ring(bucket.pool)
    partition = ring.partition_of(bucket.name, key)
    return ring, partition, gw.view.by_availability(ring.owner_nodes(partition))


async def _kv(aw: Any) -> Any:
    try:
        return await aw
    except KVUnavailable as e:
        raise S3Error("ServiceUnavailable", str(e)) from None


async def _load_upload(gw: Gateway, bucket: Bucket, req: S3Request) -> Upload:
    upload_id = req.query.get("uploadId", "")
    _, _, owners = _owners(gw, bucket, req.key)
    rec = await _kv(gw.kv.get(owners, UPLOADS, _upload_name(bucket.name, upload_id)))
    if rec is None or rec.deleted or rec.value.get("key") != req.key:
        raise S3Error("NoSuchUpload", extra={"UploadId": upload_id})
    v = rec.value
    return Upload(bucket.name, req.key, upload_id, v["initiated"], v["owner"], v["meta"])


def _int_param(req: S3Request, name: str, default: int) -> int:
    """A non-negative integer query parameter (markers, page sizes); anything else is InvalidArgument."""
    raw = req.query.get(name)
    if raw is None or raw == "":
        return default
    if not raw.isdigit() or len(raw) > 10 or int(raw) > 2**31 - 1:
        raise S3Error("InvalidArgument", f"Provided {name} not an integer or within integer range",
                      extra={"ArgumentName": name, "ArgumentValue": raw})
    return int(raw)


def _part_number(req: S3Request) -> int:
    raw = req.query.get("partNumber", "")
    if not raw.isdigit() or not 1 <= int(raw) <= MAX_PART_NUMBER:
        raise S3Error("InvalidArgument", "Part number must be an integer between 1 and 10000, inclusive",
                      extra={"ArgumentName": "partNumber", "ArgumentValue": raw})
    return int(raw)


def _checksum_choice(req: S3Request) -> dict[str, str] | None:
    """The object checksum a CreateMultipartUpload asks for: {"algorithm", "type"} (COMPOSITE or FULL_OBJECT)."""
    algorithm = req.headers.get("x-amz-checksum-algorithm")
    kind = req.headers.get("x-amz-checksum-type", "").strip().upper()
    if algorithm is None:
        if kind:
            raise S3Error("InvalidRequest", "The x-amz-checksum-type header can only be used with the "
                          "x-amz-checksum-algorithm header.")
        return None
    name = checksums.parse_algorithm(algorithm, "x-amz-checksum-algorithm")
    kind = kind or ("FULL_OBJECT" if name == "crc64nvme" else "COMPOSITE")
    # CRCs combine into a full-object CRC; any algorithm but CRC64NVME can be hashed over the parts' digests
    allowed = checksums.CRC_ALGORITHMS if kind == "FULL_OBJECT" else set(checksums.ALGORITHMS) - {"crc64nvme"}
    if kind not in ("COMPOSITE", "FULL_OBJECT") or name not in allowed:
        raise S3Error("InvalidRequest", f"The {kind} checksum type cannot be used with the {name} algorithm.")
    return {"algorithm": name, "type": kind}


async def create_upload(gw: Gateway, req: S3Request) -> web.StreamResponse:
    bucket = await gw.buckets.get(req.bucket, req.user.access_key)
    check_private_acl(req)
    check_write_headers(req.headers)
    await req.payload.read()
    meta = meta_from_request(req.headers)
    checksum = _checksum_choice(req)
    upload_id = new_version()
    _, _, owners = _owners(gw, bucket, req.key)
    value = {"key": req.key, "initiated": version_time_ns(upload_id), "owner": req.user.access_key,
             "meta": {"content_type": meta.content_type, "headers": meta.headers, "meta": meta.meta,
                      "checksum": checksum}}
    await _kv(gw.kv.put(owners, KVRecord(UPLOADS, _upload_name(bucket.name, upload_id), upload_id, value)))
    headers = {}
    if checksum:
        headers = {"x-amz-checksum-algorithm": checksum["algorithm"].upper(), "x-amz-checksum-type": checksum["type"]}
    return xml_response(render("InitiateMultipartUploadResult",
                               {"Bucket": bucket.name, "Key": req.key, "UploadId": upload_id}), headers=headers)


def _shards_value(bw: BlobWrite) -> list[list[Any]]:
    return [[s.index, s.node.id, s.checksums, s.handoff, s.inline] for s in bw.shards]


def _blob_from_value(gw: Gateway, ring: Ring, value: dict[str, Any]) -> BlobWrite:
    shards = []
    for index, node_id, sums, handoff, inline in value["shards"]:
        try:
            node = gw.view.map.node(node_id)
        except KeyError:
            continue  # the node left the cluster; repair rebuilds its shard
        shards.append(ShardWrite(index, node, list(sums), handoff, inline))
    return BlobWrite(value["blob"], value["size"], ring.ec, shards)


def _part_checksum_algorithm(req: S3Request, upload: Upload) -> str | None:
    """The algorithm a part is checksummed with: the upload's; a part sent with another one is refused."""
    wanted = (upload.meta.get("checksum") or {}).get("algorithm")
    sent = checksums.checksum_from_headers(req.headers)
    declared = req.headers.get("x-amz-sdk-checksum-algorithm") or req.headers.get("x-amz-trailer", "")
    sent_algorithm = sent[0] if sent else declared.strip().lower().removeprefix(checksums.HEADER_PREFIX) or None
    if wanted and sent_algorithm and sent_algorithm != wanted:
        raise S3Error("InvalidRequest", f"Checksum Type mismatch occurred, expected checksum Type: {wanted}, "
                      f"actual checksum Type: {sent_algorithm}")
    return wanted


async def _store_part(gw: Gateway, bucket: Bucket, upload: Upload, number: int, source: Any,
                      expect_md5: bytes | None, algorithm: str | None = None, size: int | None = None,
                      copy_of: tuple[ObjectRecord, int, int] | None = None) -> dict[str, Any]:
    """Write one part; UploadPartCopy names what `source` reads (`copy_of`: record, offset, length) for its share."""
    ring, partition, owners = _owners(gw, bucket, upload.key)
    blob_id = f"{upload.upload_id}-{number:05d}-{secrets.token_hex(4)}"
    md5 = hashlib.md5()
    summer = checksums.new_checksum(algorithm) if algorithm else None

    def feed(payload: bytes) -> None:  # in the codec's thread, stripe by stripe, in order
        md5.update(payload)
        if summer is not None:
            summer.update(payload)
    try:
        async with write_share(gw.budget, ring.ec, size, copy_of):  # 503 SlowDown if no share within write_wait
            bw = await gw.io.write_blob(ring, partition, blob_id, source, on_payload=feed, carry=False)
    except WriteFailed as e:
        raise S3Error("ServiceUnavailable", f"not enough storage nodes answered: {e}") from None
    if expect_md5 is not None and md5.digest() != expect_md5:
        await gw.io.discard(bw)
        raise S3Error("BadDigest")
    version = new_version()
    value = {"number": number, "size": bw.size, "etag": md5.hexdigest(), "blob": blob_id,
             "shards": _shards_value(bw), "modified": version_time_ns(version)}
    if summer is not None and algorithm is not None:
        value["checksum"] = {"algorithm": algorithm, "value": summer.b64digest()}
    name = f"{upload.upload_id}{SEP}{number:05d}"
    try:
        await _kv(gw.kv.put(owners, KVRecord(PARTS, name, version, value)))
    except BaseException:
        await gw.io.discard(bw)
        raise
    return value


async def upload_part(gw: Gateway, req: S3Request) -> web.StreamResponse:
    bucket = await gw.buckets.get(req.bucket, req.user.access_key)
    number = _part_number(req)
    upload = await _load_upload(gw, bucket, req)
    algorithm = _part_checksum_algorithm(req, upload)
    value = await _store_part(gw, bucket, upload, number, req.payload, content_md5(req.headers), algorithm,
                              size=declared_size(req.payload))
    headers = {"ETag": quote_etag(value["etag"])}
    if "checksum" in value:
        headers[checksums.header_name(algorithm or "")] = value["checksum"]["value"]
    return web.Response(status=200, headers=headers)


_COPY_RANGE = re.compile(r"bytes=(\d{1,19})-(\d{1,19})")


def _copy_range(raw: str, size: int) -> tuple[int, int]:
    """(offset, length) of x-amz-copy-source-range: both ends given and inside the source, unlike a GET Range."""
    m = _COPY_RANGE.fullmatch(raw.strip())
    if m is None or int(m.group(1)) > int(m.group(2)):
        raise S3Error("InvalidArgument", "The x-amz-copy-source-range value must be of the form bytes=first-last "
                      "where first and last are the zero-based offsets of the first and last bytes to copy",
                      extra={"ArgumentName": "x-amz-copy-source-range", "ArgumentValue": raw})
    first, last = int(m.group(1)), int(m.group(2))
    if last >= size:
        raise S3Error("InvalidRange", extra={"ActualObjectSize": str(size), "RangeRequested": raw})
    return first, last - first + 1


async def upload_part_copy(gw: Gateway, req: S3Request) -> web.StreamResponse:
    bucket = await gw.buckets.get(req.bucket, req.user.access_key)
    number = _part_number(req)
    upload = await _load_upload(gw, bucket, req)
    _, src = await copy_source(gw, req)
    await req.payload.read()
    offset, length = 0, src.record.size
    if "x-amz-copy-source-range" in req.headers:
        offset, length = _copy_range(req.headers["x-amz-copy-source-range"], src.record.size)
    algorithm = (upload.meta.get("checksum") or {}).get("algorithm")
    value = await _store_part(gw, bucket, upload, number, gw.io.read(src, offset, length), None, algorithm,
                              size=length, copy_of=(src.record, offset, length))
    result: dict[str, object] = {"LastModified": ns_datetime(value["modified"]), "ETag": quote_etag(value["etag"])}
    if "checksum" in value:
        result[f"Checksum{value['checksum']['algorithm'].upper()}"] = value["checksum"]["value"]
    return xml_response(render("CopyPartResult", result))  # type: ignore[arg-type]


async def _parts(gw: Gateway, bucket: Bucket, upload: Upload) -> list[dict[str, Any]]:
    _, _, owners = _owners(gw, bucket, upload.key)
    records = await _kv(gw.kv.list(owners, PARTS, upload.upload_id + SEP))
    return [r.value for r in records if not r.deleted]


async def _forget(gw: Gateway, bucket: Bucket, upload: Upload, parts: list[dict[str, Any]],
                  keep_blobs: set[str]) -> None:
    """Tombstone the upload and its parts; remove the shards of parts not kept."""
    ring, _, owners = _owners(gw, bucket, upload.key)
    kv = gw.kv
    await _kv(kv.put(owners, KVRecord(UPLOADS, _upload_name(bucket.name, upload.upload_id), new_version(),
                                      {"key": upload.key}, deleted=True)))
    for p in parts:
        name = f"{upload.upload_id}{SEP}{p['number']:05d}"
        gw.background.spawn(_quiet(kv.put(owners, KVRecord(PARTS, name, new_version(), {}, deleted=True))))
        if p["blob"] not in keep_blobs:
            gw.background.spawn(gw.io.discard(_blob_from_value(gw, ring, p)))


async def _quiet(aw: Any) -> None:
    try:
        await aw
    except Exception:  # tombstones of parts are tidiness; the upload tombstone is what counts
        pass


async def complete_upload(gw: Gateway, req: S3Request) -> web.StreamResponse:
    bucket = await gw.buckets.get(req.bucket, req.user.access_key)
    upload = await _load_upload(gw, bucket, req)
    wanted = parse_complete_multipart_upload(await req.payload.read())
    if not wanted:
        raise S3Error("MalformedXML", "You must specify at least one part")
    stored = {p["number"]: p for p in await _parts(gw, bucket, upload)}
    numbers = [w.part_number for w in wanted]
    if numbers != sorted(numbers) or len(set(numbers)) != len(numbers):
        raise S3Error("InvalidPartOrder")
    chosen = []
    for pos, w in enumerate(wanted):
        p = stored.get(w.part_number)
        if p is None or p["etag"] != w.etag.strip('"'):
            raise S3Error("InvalidPart", extra={"UploadId": upload.upload_id, "PartNumber": w.part_number,
                                                "ETag": w.etag})
        if pos < len(wanted) - 1 and p["size"] < MIN_PART_SIZE:
            raise S3Error("EntityTooSmall", extra={"ProposedSize": p["size"], "MinSizeAllowed": MIN_PART_SIZE,
                                                   "PartNumber": w.part_number, "ETag": w.etag})
        chosen.append(p)
    object_checksum = _object_checksum(upload, wanted, chosen)
    ring, partition, _ = _owners(gw, bucket, upload.key)
    etag = hashlib.md5(b"".join(bytes.fromhex(p["etag"]) for p in chosen)).hexdigest() + f"-{len(chosen)}"
    version = versioning.object_version(bucket)
    refs = [(PartRef(p["number"], p["size"], p["etag"], p["blob"]), _blob_from_value(gw, ring, p)) for p in chosen]
    meta = upload.meta
    template = ObjectRecord(
        bucket=bucket.name, key=upload.key, version=version, shard=0, ec=ring.ec, size=sum(p["size"] for p in chosen),
        etag=etag, content_type=meta["content_type"], headers=meta["headers"], meta=meta["meta"],
        checksum=object_checksum, parts=[r for r, _ in refs], created=version_time_ns(version), multipart=True)
    try:
        done = await gw.io.commit(ring, partition, template, refs)
    except WriteFailed as e:
        raise S3Error("ServiceUnavailable", f"not enough storage nodes committed: {e}") from None
    await _forget(gw, bucket, upload, list(stored.values()), keep_blobs={p["blob"] for p in chosen})
    versioning.retire_older(gw, bucket, done)
    headers = {}
    if (v := versioning.shown_on_write(bucket, version)) is not None:
        headers["x-amz-version-id"] = v
    result: dict[str, object] = {"Location": f"/{bucket.name}/{upload.key}", "Bucket": bucket.name,
                                 "Key": upload.key, "ETag": quote_etag(etag)}
    if object_checksum:
        result[f"Checksum{object_checksum['algorithm']}"] = object_checksum["value"]
        result["ChecksumType"] = object_checksum["type"]
    return xml_response(render("CompleteMultipartUploadResult", result), headers=headers)  # type: ignore[arg-type]


def _object_checksum(upload: Upload, wanted: list[Any], chosen: list[dict[str, Any]]) -> dict[str, str]:
    """The completed object's checksum from its parts' (COMPOSITE or FULL_OBJECT), if the upload asked for one.

    A part checksum listed in the Complete request must be the one the part was stored with.
    """
    choice = upload.meta.get("checksum")
    for w, p in zip(wanted, chosen):
        for algorithm, value in w.checksums.items():
            if value and (p.get("checksum", {}).get("algorithm") != algorithm or p["checksum"]["value"] != value):
                raise S3Error("InvalidPart", extra={"UploadId": upload.upload_id, "PartNumber": p["number"],
                                                    "ETag": w.etag})
    if not choice or any("checksum" not in p for p in chosen):
        return {}
    algorithm = choice["algorithm"]
    if choice["type"] == "FULL_OBJECT":
        value = checksums.full_object_crc(algorithm, [(p["checksum"]["value"], p["size"]) for p in chosen])
    else:
        value = checksums.composite_checksum(algorithm, [p["checksum"]["value"] for p in chosen])
    return {"algorithm": algorithm.upper(), "value": value, "type": choice["type"]}


async def abort_upload(gw: Gateway, req: S3Request) -> web.StreamResponse:
    bucket = await gw.buckets.get(req.bucket, req.user.access_key)
    upload = await _load_upload(gw, bucket, req)
    parts = await _parts(gw, bucket, upload)
    await _forget(gw, bucket, upload, parts, keep_blobs=set())
    return web.Response(status=204)


async def list_parts(gw: Gateway, req: S3Request) -> web.StreamResponse:
    bucket = await gw.buckets.get(req.bucket, req.user.access_key)
    upload = await _load_upload(gw, bucket, req)
    marker = _int_param(req, "part-number-marker", 0)
    max_parts = min(_int_param(req, "max-parts", 1000), 1000)
    parts = sorted((p for p in await _parts(gw, bucket, upload) if p["number"] > marker), key=lambda p: p["number"])
    page, truncated = parts[:max_parts], len(parts) > max_parts
    owner = owner_xml(gw, upload.owner)
    body: list[tuple[str, object]] = [
        ("Bucket", bucket.name), ("Key", upload.key), ("UploadId", upload.upload_id),
        ("Initiator", owner), ("Owner", owner), ("StorageClass", "STANDARD"),
        ("PartNumberMarker", marker), ("NextPartNumberMarker", page[-1]["number"] if page else marker),
        ("MaxParts", max_parts), ("IsTruncated", truncated),
    ]
    body += [("Part", {"PartNumber": p["number"], "LastModified": ns_datetime(p["modified"]),
                       "ETag": quote_etag(p["etag"]), "Size": p["size"]}) for p in page]
    return xml_response(render("ListPartsResult", body))  # type: ignore[arg-type]


async def _all_uploads(gw: Gateway, bucket: Bucket) -> list[Upload]:
    nodes = gw.view.by_availability(n for n in gw.view.map.pool_nodes(bucket.pool) if n.state != "removed")
    # Uploads live on their key's owners: ask every node, keep the newest record of each.
    results = await asyncio.gather(*(gw.client.list_kv(n, UPLOADS, bucket.name + SEP) for n in nodes),
                                   return_exceptions=True)
    newest: dict[str, KVRecord] = {}
    for r in results:
        if isinstance(r, list):
            for rec in r:
                if rec.name not in newest or rec.version > newest[rec.name].version:
                    newest[rec.name] = rec
    out = []
    for rec in newest.values():
        if not rec.deleted:
            v = rec.value
            out.append(Upload(bucket.name, v["key"], rec.name.split(SEP, 1)[1], v["initiated"], v["owner"], v["meta"]))
    return sorted(out, key=lambda u: (u.key, u.upload_id))


async def abort_all_uploads(gw: Gateway, bucket: Bucket) -> None:
    """Abort every upload in progress in the bucket (it is being deleted: S3 drops them with it)."""
    for upload in await _all_uploads(gw, bucket):
        await _forget(gw, bucket, upload, await _parts(gw, bucket, upload), keep_blobs=set())


async def list_uploads(gw: Gateway, req: S3Request) -> web.StreamResponse:
    bucket = await gw.buckets.get(req.bucket, req.user.access_key)
    prefix, delimiter = req.query.get("prefix", ""), req.query.get("delimiter", "")
    key_marker, id_marker = req.query.get("key-marker", ""), req.query.get("upload-id-marker", "")
    max_uploads = min(_int_param(req, "max-uploads", 1000), 1000)
    rows: list[tuple[str, object]] = []
    seen_prefixes: set[str] = set()
    truncated = False
    last: Upload | None = None
    for u in await _all_uploads(gw, bucket):
        if not u.key.startswith(prefix):
            continue
        if key_marker and (u.key < key_marker or (u.key == key_marker and (not id_marker or u.upload_id <= id_marker))):
            continue
        rest = u.key[len(prefix):]
        if delimiter and delimiter in rest:
            cp = prefix + rest[:rest.index(delimiter) + len(delimiter)]
            if cp in seen_prefixes:
                continue
            if len(rows) >= max_uploads:
                truncated = True
                break
            seen_prefixes.add(cp)
            rows.append(("CommonPrefixes", {"Prefix": cp}))
            continue
        if len(rows) >= max_uploads:
            truncated = True
            break
        owner = owner_xml(gw, u.owner)
        rows.append(("Upload", {"Key": u.key, "UploadId": u.upload_id, "Initiator": owner, "Owner": owner,
                                "StorageClass": "STANDARD", "Initiated": ns_datetime(u.initiated_ns)}))
        last = u
    body: list[tuple[str, object]] = [
        ("Bucket", bucket.name), ("KeyMarker", key_marker), ("UploadIdMarker", id_marker),
        ("NextKeyMarker", last.key if last else None), ("NextUploadIdMarker", last.upload_id if last else None),
        ("Prefix", prefix), ("Delimiter", delimiter or None), ("MaxUploads", max_uploads), ("IsTruncated", truncated),
    ]
    return xml_response(render("ListMultipartUploadsResult", body + rows))  # type: ignore[arg-type]
