"""S3 bucket operations: ListBuckets, Create/Head/Delete bucket, location, versioning, ACL."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable

from aiohttp import web

from gateway.errors import S3Error
from gateway.server import Gateway, S3Request
from gateway.xmlio import (
    parse_access_control_policy,
    parse_create_bucket,
    parse_versioning_configuration,
    render,
)

UNSUPPORTED_BUCKET_SUBRESOURCES = (
    "policy", "cors", "lifecycle", "tagging", "encryption", "object-lock", "website", "logging",
    "notification", "replication", "ownershipControls", "publicAccessBlock", "accelerate",
    "requestPayment", "analytics", "metrics", "inventory", "intelligent-tiering", "policyStatus",
)


NOT_CONFIGURED = {
    "policy": "NoSuchBucketPolicy", "cors": "NoSuchCORSConfiguration", "lifecycle": "NoSuchLifecycleConfiguration",
    "tagging": "NoSuchTagSet", "website": "NoSuchWebsiteConfiguration",
    "encryption": "ServerSideEncryptionConfigurationNotFoundError",
    "object-lock": "ObjectLockConfigurationNotFoundError", "publicAccessBlock": "NoSuchPublicAccessBlockConfiguration",
    "ownershipControls": "OwnershipControlsNotFoundError", "replication": "ReplicationConfigurationNotFoundError",
}
"""Bucket configurations that cannot be set here: reading one gets S3's "there is none" error."""
EMPTY_CONFIGURATIONS: dict[str, tuple[str, dict[str, object]]] = {
    "logging": ("BucketLoggingStatus", {}),
    "notification": ("NotificationConfiguration", {}),
    "accelerate": ("AccelerateConfiguration", {}),
    "requestPayment": ("RequestPaymentConfiguration", {"Payer": "BucketOwner"}),
}
"""Bucket configurations whose unset state S3 answers with a document."""


def xml_response(body: bytes, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(status=status, body=body, content_type="application/xml", headers=headers)


def owner_xml(gw: Gateway, access_key: str) -> dict[str, str]:
    user = gw.users.get(access_key)
    return {"ID": access_key, "DisplayName": user.name if user else access_key}


async def list_buckets(gw: Gateway, req: S3Request) -> web.StreamResponse:
    buckets = [b for b in await gw.buckets.list_all() if b.owner == req.user.access_key]
    prefix = req.query.get("prefix", "")
    buckets = [b for b in buckets if b.name.startswith(prefix)]
    return xml_response(render("ListAllMyBucketsResult", {
        "Owner": owner_xml(gw, req.user.access_key),
        "Buckets": {"Bucket": [
            {"Name": b.name, "CreationDate": dt.datetime.fromtimestamp(b.created_ns / 1e9, dt.UTC),
             "BucketRegion": b.region} for b in buckets]},
    }))


async def create_bucket(gw: Gateway, req: S3Request) -> web.StreamResponse:
    check_private_acl(req)
    body = await req.payload.read()
    location = parse_create_bucket(body) if body.strip() else None
    if location and location != gw.cfg.region:
        raise S3Error("IllegalLocationConstraintException",
                      f"The {location} location constraint is incompatible for the region specific endpoint "
                      "this request was sent to.")
    pool = req.headers.get("x-objstore-pool") or None
    await gw.buckets.create(req.bucket, req.user.access_key, req.user.name, gw.cfg.region, pool, gw.view.map)
    return web.Response(status=200, headers={"Location": f"/{req.bucket}"})


async def head_bucket(gw: Gateway, req: S3Request) -> web.StreamResponse:
    bucket = await gw.buckets.get(req.bucket, req.user.access_key)
    return web.Response(status=200, headers={"x-amz-bucket-region": bucket.region})


async def delete_bucket(gw: Gateway, req: S3Request) -> web.StreamResponse:
    bucket = await gw.buckets.get(req.bucket, req.user.access_key)
    from gateway.s3listing import bucket_is_empty
    from gateway.s3multipart import abort_all_uploads

    if not await bucket_is_empty(gw, bucket):
        raise S3Error("BucketNotEmpty", extra={"BucketName": req.bucket})
    # Uploads in progress do not keep a bucket alive in S3: they go with it.
    await abort_all_uploads(gw, bucket)
    await gw.buckets.delete(bucket)
    return web.Response(status=204)


async def get_location(gw: Gateway, req: S3Request) -> web.StreamResponse:
    bucket = await gw.buckets.get(req.bucket, req.user.access_key)
    # S3 answers an empty constraint for us-east-1.
    region = "" if bucket.region == "us-east-1" else bucket.region
    return xml_response(render("LocationConstraint", [], xmlns=True).replace(
        b"</LocationConstraint>", region.encode() + b"</LocationConstraint>"))


async def get_versioning(gw: Gateway, req: S3Request) -> web.StreamResponse:
    bucket = await gw.buckets.get(req.bucket, req.user.access_key)
    return xml_response(render("VersioningConfiguration", {"Status": bucket.versioning}))


async def put_versioning(gw: Gateway, req: S3Request) -> web.StreamResponse:
    bucket = await gw.buckets.get(req.bucket, req.user.access_key)
    conf = parse_versioning_configuration(await req.payload.read())
    if conf.status not in ("Enabled", "Suspended"):
        raise S3Error("IllegalVersioningConfigurationException")
    bucket.versioning = conf.status
    await gw.buckets.update(bucket)
    return web.Response(status=200)


CANNED_ACLS = ("private", "public-read", "public-read-write", "authenticated-read", "aws-exec-read",
               "bucket-owner-read", "bucket-owner-full-control", "log-delivery-write")


OWNER_ONLY_ACLS = ("private", "bucket-owner-full-control", "bucket-owner-read")
"""Canned ACLs that grant nothing beyond the owner (object and bucket owner are one user here)."""


def check_private_acl(req: S3Request, body: bytes = b"", owner: str = "") -> None:
    """Only the private ACL is kept: the owner's FULL_CONTROL alone, as a canned ACL or a policy document.

    Checked wherever a client may set an ACL (PUT, copy, multipart create, bucket create, ?acl). An
    unknown canned ACL is InvalidArgument; any other grant, by header or in the body, is NotImplemented
    rather than accepted and silently not applied.
    """
    acl = req.headers.get("x-amz-acl", "private")
    if acl not in CANNED_ACLS:
        raise S3Error("InvalidArgument", extra={"ArgumentName": "x-amz-acl", "ArgumentValue": acl})
    grant_headers = [h for h in req.headers if h.lower().startswith("x-amz-grant-")]
    if acl not in OWNER_ONLY_ACLS or grant_headers:
        raise S3Error("NotImplemented", "only the private canned ACL is supported")
    if body.strip() and any(g.grantee != owner or g.permission != "FULL_CONTROL"
                            for g in parse_access_control_policy(body)):
        raise S3Error("NotImplemented", "only the owner's FULL_CONTROL grant is supported")


def acl_xml(gw: Gateway, owner: str) -> bytes:
    return render("AccessControlPolicy", {
        "Owner": owner_xml(gw, owner),
        "AccessControlList": {"Grant": [{
            "Grantee": {"ID": owner, "DisplayName": owner_xml(gw, owner)["DisplayName"]},
            "Permission": "FULL_CONTROL"}]},
    }).replace(b"<Grantee>", b'<Grantee xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance" '
                              b'xsi:type="CanonicalUser">')


async def get_acl(gw: Gateway, req: S3Request) -> web.StreamResponse:
    bucket = await gw.buckets.get(req.bucket, req.user.access_key)
    return xml_response(acl_xml(gw, bucket.owner))


async def put_acl(gw: Gateway, req: S3Request) -> web.StreamResponse:
    bucket = await gw.buckets.get(req.bucket, req.user.access_key)
    check_private_acl(req, await req.payload.read(), bucket.owner)
    return web.Response(status=200)




def _configuration(req: S3Request, names: Iterable[str]) -> str:
    return next(name for name in names if name in req.query)


async def get_unset_configuration(gw: Gateway, req: S3Request) -> web.StreamResponse:
    """GET ?policy, ?cors, ?logging...: none of these can be set, so the bucket has none (tools read them all)."""
    await gw.buckets.get(req.bucket, req.user.access_key)
    name = _configuration(req, [*NOT_CONFIGURED, *EMPTY_CONFIGURATIONS])
    if name in NOT_CONFIGURED:
        raise S3Error(NOT_CONFIGURED[name], extra={"BucketName": req.bucket})
    root, body = EMPTY_CONFIGURATIONS[name]
    return xml_response(render(root, body))  # type: ignore[arg-type]


async def delete_unset_configuration(gw: Gateway, req: S3Request) -> web.StreamResponse:
    """DELETE ?policy, ?cors...: removing a configuration the bucket does not have succeeds, as in S3."""
    await gw.buckets.get(req.bucket, req.user.access_key)
    await req.payload.read()
    return web.Response(status=204)
