"""boto3 and raw HTTP against `objstore dev`: presigned URLs, users, auth errors, checksums, copy ranges,
versions, listing pagination under change, URL encoding, response overrides, conditionals."""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import importlib
import json
import os
import socket
import time
import urllib.error
import urllib.request
import zlib
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import botocore.auth
import botocore.exceptions
import pytest
from botocore.config import Config

from tests.cluster import DevCluster, cluster_factory, wait_until
from tests.integration.s3raw import HTTP_TIMEOUT, assert_s3_error, raw

pytestmark = pytest.mark.integration

ALT_KEY, ALT_SECRET = "ALTUSER0000000000001", "alt-secret-alt-secret-alt-secret-0001"


def _code(exc: botocore.exceptions.ClientError) -> str:
    return exc.response["Error"]["Code"]


def _status(exc: botocore.exceptions.ClientError) -> int:
    return exc.response["ResponseMetadata"]["HTTPStatusCode"]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DevCluster]:
    """A dev cluster with a second, non-admin user (listed in credentials.json before the first start)."""
    def mkdir() -> Path:
        return tmp_path_factory.mktemp("dev-users")

    with cluster_factory(mkdir) as factory:
        data = tmp_path_factory.mktemp("dev-users-data") / "data"
        data.mkdir()
        (data / "credentials.json").write_text(json.dumps({
            "access_key": "OBJADMIN000000000001", "secret_key": "admin-secret-admin-secret-admin-0001",
            "users": [{"access_key": ALT_KEY, "secret_key": ALT_SECRET, "name": "alt"}]}))
        yield factory(data_dir=data)


@pytest.fixture(scope="module")
def s3(cluster: DevCluster):  # type: ignore[no-untyped-def]
    return cluster.s3()


@pytest.fixture(scope="module")
def alt(cluster: DevCluster):  # type: ignore[no-untyped-def]
    import boto3

    return boto3.client("s3", endpoint_url=cluster.endpoint, aws_access_key_id=ALT_KEY,
                        aws_secret_access_key=ALT_SECRET, region_name=cluster.region,
                        config=Config(signature_version="s3v4", s3={"addressing_style": "path"},
                                       retries={"max_attempts": 1}))


@pytest.fixture
def bucket(s3, request) -> str:  # type: ignore[no-untyped-def]
    name = "m-" + "".join(c for c in request.node.name.lower() if c.isalnum())[:40] + f"-{os.getpid() % 10000}"
    s3.create_bucket(Bucket=name)
    return name


# ---------------------------------------------------------------- presigned URLs, users, clocks


def test_presigned_get_and_put(cluster: DevCluster, s3, bucket: str) -> None:  # type: ignore[no-untyped-def]
    v4 = cluster.s3(signature_version="s3v4")
    put_url = v4.generate_presigned_url("put_object", Params={"Bucket": bucket, "Key": "pre signed+key"},
                                        ExpiresIn=300)
    body = os.urandom(100_000)
    req = urllib.request.Request(put_url, data=body, method="PUT")
    with urllib.request.urlopen(req, timeout=HTTP_TIMEOUT) as resp:
        assert resp.status == 200 and resp.headers["ETag"] == f'"{hashlib.md5(body).hexdigest()}"'
    get_url = v4.generate_presigned_url("get_object", Params={
        "Bucket": bucket, "Key": "pre signed+key", "ResponseContentDisposition": "attachment; filename=x.bin"},
        ExpiresIn=300)
    with urllib.request.urlopen(get_url, timeout=HTTP_TIMEOUT) as resp:
        assert resp.read() == body
        assert resp.headers["Content-Disposition"] == "attachment; filename=x.bin"
    # A presigned URL covers its method: the GET URL cannot delete.
    with pytest.raises(urllib.error.HTTPError) as e:
        urllib.request.urlopen(urllib.request.Request(get_url, method="DELETE"), timeout=HTTP_TIMEOUT)
    assert e.value.code == 403 and b"SignatureDoesNotMatch" in e.value.read()
    assert s3.get_object(Bucket=bucket, Key="pre signed+key")["ContentLength"] == len(body)


def test_presigned_url_expires(cluster: DevCluster, s3, bucket: str) -> None:  # type: ignore[no-untyped-def]
    s3.put_object(Bucket=bucket, Key="k", Body=b"x")
    url = cluster.s3(signature_version="s3v4").generate_presigned_url(
        "get_object", Params={"Bucket": bucket, "Key": "k"}, ExpiresIn=1)
    time.sleep(2.2)
    with pytest.raises(urllib.error.HTTPError) as e:
        urllib.request.urlopen(url, timeout=HTTP_TIMEOUT)
    body = e.value.read()
    assert e.value.code == 403 and b"<Code>AccessDenied</Code>" in body and b"expired" in body


def test_other_user_is_denied(cluster: DevCluster, s3, alt, bucket: str) -> None:  # type: ignore[no-untyped-def]
    s3.put_object(Bucket=bucket, Key="secret", Body=b"mine")
    calls = [
        lambda: alt.get_object(Bucket=bucket, Key="secret"),
        lambda: alt.put_object(Bucket=bucket, Key="theirs", Body=b"x"),
        lambda: alt.delete_object(Bucket=bucket, Key="secret"),
        lambda: alt.list_objects_v2(Bucket=bucket),
        lambda: alt.list_object_versions(Bucket=bucket),
        lambda: alt.create_multipart_upload(Bucket=bucket, Key="mp"),
        lambda: alt.delete_bucket(Bucket=bucket),
        lambda: alt.get_bucket_versioning(Bucket=bucket),
        lambda: alt.delete_objects(Bucket=bucket, Delete={"Objects": [{"Key": "secret"}]}),
    ]
    for call in calls:
        with pytest.raises(botocore.exceptions.ClientError) as e:
            call()
        assert _code(e.value) == "AccessDenied" and _status(e.value) == 403
    with pytest.raises(botocore.exceptions.ClientError) as e:
        alt.head_object(Bucket=bucket, Key="secret")
    assert _status(e.value) == 403
    with pytest.raises(botocore.exceptions.ClientError) as e:
        alt.create_bucket(Bucket=bucket)
    assert _code(e.value) == "BucketAlreadyExists"
    assert bucket not in [b["Name"] for b in alt.list_buckets()["Buckets"]]
    # Copying out of someone else's bucket into one's own is refused too.
    alt.create_bucket(Bucket=f"{bucket}-alt")
    with pytest.raises(botocore.exceptions.ClientError) as e:
        alt.copy_object(Bucket=f"{bucket}-alt", Key="stolen", CopySource={"Bucket": bucket, "Key": "secret"})
    assert _code(e.value) == "AccessDenied"
    # A URL the other user presigns is theirs: it does not open this bucket either.
    url = alt.generate_presigned_url("get_object", Params={"Bucket": bucket, "Key": "secret"}, ExpiresIn=60)
    with pytest.raises(urllib.error.HTTPError) as he:
        urllib.request.urlopen(url, timeout=HTTP_TIMEOUT)
    assert he.value.code == 403
    assert s3.get_object(Bucket=bucket, Key="secret")["Body"].read() == b"mine"


def test_request_time_too_skewed(cluster: DevCluster, bucket: str, monkeypatch: pytest.MonkeyPatch) -> None:
    client = cluster.s3(retries={"max_attempts": 1})
    skewed = dt.datetime.now(dt.UTC) - dt.timedelta(minutes=20)

    def clock(remove_tzinfo: bool = True) -> dt.datetime:
        return skewed.replace(tzinfo=None) if remove_tzinfo else skewed
    monkeypatch.setattr(botocore.auth, "get_current_datetime", clock)
    try:  # with awscrt installed botocore signs S3 requests with the CRT signer
        monkeypatch.setattr(importlib.import_module("botocore.crt.auth"), "get_current_datetime", clock)
    except ImportError:
        pass
    with pytest.raises(botocore.exceptions.ClientError) as e:
        client.put_object(Bucket=bucket, Key="late", Body=b"x")
    assert _code(e.value) == "RequestTimeTooSkewed" and _status(e.value) == 403
    with pytest.raises(botocore.exceptions.ClientError):
        client.head_object(Bucket=bucket, Key="late")
    monkeypatch.undo()
    with pytest.raises(botocore.exceptions.ClientError) as e:
        client.head_object(Bucket=bucket, Key="late")
    assert _status(e.value) == 404  # the skewed PUT stored nothing


def test_unsigned_and_bad_signatures(cluster: DevCluster, bucket: str) -> None:
    status, _, body = raw(cluster, "GET", f"/{bucket}", sign=False)
    assert status == 403 and b"<Code>AccessDenied</Code>" in body
    status, _, body = raw(cluster, "GET", f"/{bucket}", secret_key="wrong")
    assert status == 403 and b"<Code>SignatureDoesNotMatch</Code>" in body
    status, _, body = raw(cluster, "GET", f"/{bucket}", access_key="NOSUCHKEY")
    assert status == 403 and b"<Code>InvalidAccessKeyId</Code>" in body


def test_expect_100_continue_refuses_before_the_body(cluster: DevCluster, bucket: str) -> None:
    """An unsigned PUT with Expect: 100-continue gets its 403 at once, not a 100 Continue."""
    host, port = urlsplit(cluster.endpoint).netloc.split(":")
    with socket.create_connection((host, int(port)), timeout=HTTP_TIMEOUT) as sock:
        sock.sendall(f"PUT /{bucket}/x HTTP/1.1\r\nHost: {host}\r\nContent-Length: 123\r\n"
                     "Expect: 100-continue\r\n\r\n".encode())
        first = sock.recv(4096).decode("latin-1")
    assert first.startswith("HTTP/1.1 403"), first
    # A signed one is told to go on, and an unknown Expect value is ignored (not 417).
    status, _, _ = raw(cluster, "PUT", f"/{bucket}/expect", body=b"abc", headers={"Expect": "100-continue"})
    assert status == 200
    status, _, _ = raw(cluster, "PUT", f"/{bucket}/expect", body=b"abc", headers={"Expect": "200-ok"})
    assert status == 200


def test_virtual_hosted_style(cluster: DevCluster, s3, bucket: str) -> None:  # type: ignore[no-untyped-def]
    """Host: <bucket>.localhost addresses the bucket (the default domain), the whole path being the key."""
    port = urlsplit(cluster.endpoint).port
    vhost = {"Host": f"{bucket}.localhost:{port}"}
    status, _, _ = raw(cluster, "PUT", "/dir/v%20key", body=b"virtual", headers=vhost)
    assert status == 200
    assert s3.get_object(Bucket=bucket, Key="dir/v key")["Body"].read() == b"virtual"
    status, _, body = raw(cluster, "GET", "/dir/v%20key", headers=vhost)
    assert status == 200 and body == b"virtual"
    status, _, body = raw(cluster, "GET", "/", "list-type=2", headers=vhost)
    assert status == 200 and f"<Name>{bucket}</Name>".encode() in body and b"<Key>dir/v key</Key>" in body
    status, _, body = raw(cluster, "GET", "/dir/v%20key", headers={"Host": f"no-such-bucket-v.localhost:{port}"})
    assert status == 404 and b"<Code>NoSuchBucket</Code>" in body


# ---------------------------------------------------------------- integrity


def test_checksum_mode_returns_the_crc32_sent(s3, bucket: str) -> None:  # type: ignore[no-untyped-def]
    data = os.urandom(300 * 1024 + 5)
    crc = base64.b64encode(zlib.crc32(data).to_bytes(4, "big")).decode()
    put = s3.put_object(Bucket=bucket, Key="c", Body=data, ChecksumAlgorithm="CRC32")
    assert put["ChecksumCRC32"] == crc
    got = s3.get_object(Bucket=bucket, Key="c", ChecksumMode="ENABLED")
    assert got["ChecksumCRC32"] == crc and got["Body"].read() == data
    assert s3.head_object(Bucket=bucket, Key="c", ChecksumMode="ENABLED")["ChecksumCRC32"] == crc
    # Without ChecksumMode, or for a range, the whole-object checksum is not sent.
    assert "ChecksumCRC32" not in s3.head_object(Bucket=bucket, Key="c")
    assert "ChecksumCRC32" not in s3.get_object(Bucket=bucket, Key="c", Range="bytes=0-9", ChecksumMode="ENABLED")


def test_multipart_checksums(s3, bucket: str) -> None:  # type: ignore[no-untyped-def]
    """CreateMultipartUpload with a checksum algorithm: parts are checksummed, the object gets S3's
    COMPOSITE (CRC32) or FULL_OBJECT (CRC64NVME) checksum, and a Complete naming another part checksum fails."""
    from awscrt import checksums as crt

    parts = [os.urandom(5 * 1024 * 1024), os.urandom(1024 * 1024 + 3)]
    crc32s = [zlib.crc32(p).to_bytes(4, "big") for p in parts]
    uid = s3.create_multipart_upload(Bucket=bucket, Key="c32", ChecksumAlgorithm="CRC32")["UploadId"]
    done = []
    for n, p in enumerate(parts, 1):
        got = s3.upload_part(Bucket=bucket, Key="c32", UploadId=uid, PartNumber=n, Body=p, ChecksumAlgorithm="CRC32")
        assert got["ChecksumCRC32"] == base64.b64encode(crc32s[n - 1]).decode()
        done.append({"PartNumber": n, "ETag": got["ETag"], "ChecksumCRC32": got["ChecksumCRC32"]})
    with pytest.raises(botocore.exceptions.ClientError) as e:
        s3.upload_part(Bucket=bucket, Key="c32", UploadId=uid, PartNumber=3, Body=b"x", ChecksumAlgorithm="SHA256")
    assert _code(e.value) == "InvalidRequest"
    with pytest.raises(botocore.exceptions.ClientError) as e:
        s3.complete_multipart_upload(Bucket=bucket, Key="c32", UploadId=uid, MultipartUpload={"Parts": [
            done[0], {**done[1], "ChecksumCRC32": "AAAAAA=="}]})
    assert _code(e.value) == "InvalidPart"
    out = s3.complete_multipart_upload(Bucket=bucket, Key="c32", UploadId=uid, MultipartUpload={"Parts": done})
    composite = base64.b64encode(zlib.crc32(b"".join(crc32s)).to_bytes(4, "big")).decode() + "-2"
    assert out["ChecksumCRC32"] == composite and out["ChecksumType"] == "COMPOSITE"
    head = s3.head_object(Bucket=bucket, Key="c32", ChecksumMode="ENABLED")
    assert head["ChecksumCRC32"] == composite and head["ChecksumType"] == "COMPOSITE"

    uid = s3.create_multipart_upload(Bucket=bucket, Key="c64", ChecksumAlgorithm="CRC64NVME")["UploadId"]
    etags = [s3.upload_part(Bucket=bucket, Key="c64", UploadId=uid, PartNumber=n, Body=p,
                            ChecksumAlgorithm="CRC64NVME")["ETag"] for n, p in enumerate(parts, 1)]
    s3.complete_multipart_upload(Bucket=bucket, Key="c64", UploadId=uid, MultipartUpload={"Parts": [
        {"PartNumber": n, "ETag": etag} for n, etag in enumerate(etags, 1)]})
    whole = base64.b64encode(crt.crc64nvme(b"".join(parts)).to_bytes(8, "big")).decode()
    got = s3.get_object(Bucket=bucket, Key="c64", ChecksumMode="ENABLED")
    assert got["ChecksumCRC64NVME"] == whole and got["ChecksumType"] == "FULL_OBJECT"
    assert got["Body"].read() == b"".join(parts)


def test_wrong_checksums_are_refused(s3, bucket: str) -> None:  # type: ignore[no-untyped-def]
    wrong_md5 = base64.b64encode(hashlib.md5(b"something else").digest()).decode()
    with pytest.raises(botocore.exceptions.ClientError) as e:
        s3.put_object(Bucket=bucket, Key="md5", Body=b"payload", ContentMD5=wrong_md5)
    assert _code(e.value) == "BadDigest"
    with pytest.raises(botocore.exceptions.ClientError) as e:
        s3.put_object(Bucket=bucket, Key="md5", Body=b"payload", ContentMD5="not base64!")
    assert _code(e.value) == "InvalidDigest"
    with pytest.raises(botocore.exceptions.ClientError) as e:
        s3.put_object(Bucket=bucket, Key="md5", Body=b"payload", ChecksumCRC32="AAAAAA==")
    assert _status(e.value) == 400
    with pytest.raises(botocore.exceptions.ClientError) as e:
        s3.head_object(Bucket=bucket, Key="md5")
    assert _status(e.value) == 404


def test_malformed_delete_objects_xml(cluster: DevCluster, bucket: str) -> None:
    for body in (b"<Delete><Object><Key>a</Key></Object>", b"not xml at all", b"<Nope/>",
                 b"<Delete>" + b"<Object><Key>k</Key></Object>" * 1001 + b"</Delete>"):
        md5 = base64.b64encode(hashlib.md5(body).digest()).decode()
        status, _, resp = raw(cluster, "POST", f"/{bucket}", "delete=", body, {"Content-MD5": md5})
        assert status == 400 and b"<Code>MalformedXML</Code>" in resp, (body[:40], resp)


def test_unknown_operations_are_not_implemented(s3, cluster: DevCluster, bucket: str) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(botocore.exceptions.ClientError) as e:
        s3.put_bucket_lifecycle_configuration(Bucket=bucket, LifecycleConfiguration={"Rules": [
            {"ID": "r", "Status": "Enabled", "Filter": {"Prefix": ""}, "Expiration": {"Days": 1}}]})
    assert _code(e.value) == "NotImplemented" and _status(e.value) == 501
    with pytest.raises(botocore.exceptions.ClientError) as e:
        s3.put_bucket_policy(Bucket=bucket, Policy="{}")
    assert _code(e.value) == "NotImplemented"
    status, _, body = raw(cluster, "DELETE", f"/{bucket}", "logging")  # never DeleteBucket in disguise
    assert status == 501 and b"<Code>NotImplemented</Code>" in body
    s3.head_bucket(Bucket=bucket)
    status, _, body = raw(cluster, "POST", f"/{bucket}/k", "select=&select-type=2", b"<x/>")
    assert status == 501 and b"<Code>NotImplemented</Code>" in body
    status, _, body = raw(cluster, "PATCH", f"/{bucket}/k")
    assert_s3_error(status, body)
    assert status in (405, 501)


def test_only_private_acls_are_accepted(s3, bucket: str) -> None:  # type: ignore[no-untyped-def]
    """A grant the gateway cannot honour is refused, never accepted and silently dropped."""
    s3.put_object(Bucket=bucket, Key="k", Body=b"x")
    policy = s3.get_object_acl(Bucket=bucket, Key="k")
    policy.pop("ResponseMetadata")
    s3.put_object_acl(Bucket=bucket, Key="k", AccessControlPolicy=policy)  # the owner's FULL_CONTROL: as it is
    s3.put_object_acl(Bucket=bucket, Key="k", ACL="private")
    s3.put_bucket_acl(Bucket=bucket, ACL="private")
    public = {**policy, "Grants": policy["Grants"] + [
        {"Grantee": {"Type": "Group", "URI": "http://acs.amazonaws.com/groups/global/AllUsers"}, "Permission": "READ"}]}
    for call in (lambda: s3.put_object_acl(Bucket=bucket, Key="k", AccessControlPolicy=public),
                 lambda: s3.put_bucket_acl(Bucket=bucket, AccessControlPolicy=public),
                 lambda: s3.put_object_acl(Bucket=bucket, Key="k", ACL="public-read"),
                 lambda: s3.put_bucket_acl(Bucket=bucket, GrantRead="uri=http://acs.amazonaws.com/groups/global/AllUsers"),
                 lambda: s3.put_object(Bucket=bucket, Key="pub", Body=b"x", ACL="public-read"),
                 lambda: s3.copy_object(Bucket=bucket, Key="pub", CopySource=f"{bucket}/k", ACL="public-read"),
                 lambda: s3.create_multipart_upload(Bucket=bucket, Key="pub", ACL="authenticated-read"),
                 lambda: s3.create_bucket(Bucket=f"{bucket}-pub", ACL="public-read-write")):
        with pytest.raises(botocore.exceptions.ClientError) as e:
            call()
        assert _code(e.value) == "NotImplemented"
    assert [g["Permission"] for g in s3.get_object_acl(Bucket=bucket, Key="k")["Grants"]] == ["FULL_CONTROL"]
    with pytest.raises(botocore.exceptions.ClientError):
        s3.head_object(Bucket=bucket, Key="pub")  # nothing was written by the refused requests
    s3.put_object(Bucket=bucket, Key="own", Body=b"x", ACL="bucket-owner-full-control")  # grants only the owner


def test_unsupported_write_features_are_refused(s3, bucket: str) -> None:  # type: ignore[no-untyped-def]
    """Encryption, tags, object lock, redirects, storage classes: refused on write, never silently dropped."""
    s3.put_object(Bucket=bucket, Key="src", Body=b"x", StorageClass="STANDARD")
    refused = [
        (lambda: s3.put_object(Bucket=bucket, Key="k", Body=b"x", ServerSideEncryption="AES256"), "NotImplemented"),
        (lambda: s3.put_object(Bucket=bucket, Key="k", Body=b"x", SSECustomerAlgorithm="AES256",
                               SSECustomerKey="k" * 32), "NotImplemented"),
        (lambda: s3.put_object(Bucket=bucket, Key="k", Body=b"x", Tagging="a=b"), "NotImplemented"),
        (lambda: s3.put_object(Bucket=bucket, Key="k", Body=b"x", WebsiteRedirectLocation="/x"), "NotImplemented"),
        (lambda: s3.put_object(Bucket=bucket, Key="k", Body=b"x", ObjectLockLegalHoldStatus="ON"), "NotImplemented"),
        (lambda: s3.put_object(Bucket=bucket, Key="k", Body=b"x", StorageClass="GLACIER"), "InvalidStorageClass"),
        (lambda: s3.copy_object(Bucket=bucket, Key="k", CopySource=f"{bucket}/src", TaggingDirective="REPLACE",
                                Tagging="a=b"), "NotImplemented"),
        (lambda: s3.create_multipart_upload(Bucket=bucket, Key="k", ServerSideEncryption="aws:kms"), "NotImplemented"),
    ]
    for call, code in refused:
        with pytest.raises(botocore.exceptions.ClientError) as e:
            call()
        assert _code(e.value) == code
    with pytest.raises(botocore.exceptions.ClientError):
        s3.head_object(Bucket=bucket, Key="k")
    s3.copy_object(Bucket=bucket, Key="k", CopySource=f"{bucket}/src", TaggingDirective="COPY")
    assert s3.get_object(Bucket=bucket, Key="k")["Body"].read() == b"x"


def test_unset_bucket_configurations(s3, alt, bucket: str) -> None:  # type: ignore[no-untyped-def]
    """Tools read every bucket configuration; those that cannot be set read as S3's "there is none"."""
    for call, code in ((s3.get_bucket_policy, "NoSuchBucketPolicy"), (s3.get_bucket_cors, "NoSuchCORSConfiguration"),
                       (s3.get_bucket_lifecycle_configuration, "NoSuchLifecycleConfiguration"),
                       (s3.get_bucket_tagging, "NoSuchTagSet"), (s3.get_bucket_website, "NoSuchWebsiteConfiguration"),
                       (s3.get_bucket_encryption, "ServerSideEncryptionConfigurationNotFoundError"),
                       (s3.get_object_lock_configuration, "ObjectLockConfigurationNotFoundError"),
                       (s3.get_public_access_block, "NoSuchPublicAccessBlockConfiguration"),
                       (s3.get_bucket_ownership_controls, "OwnershipControlsNotFoundError"),
                       (s3.get_bucket_replication, "ReplicationConfigurationNotFoundError")):
        with pytest.raises(botocore.exceptions.ClientError) as e:
            call(Bucket=bucket)
        assert _code(e.value) == code and _status(e.value) == 404, call
    assert "LoggingEnabled" not in s3.get_bucket_logging(Bucket=bucket)
    assert s3.get_bucket_request_payment(Bucket=bucket)["Payer"] == "BucketOwner"
    assert "Status" not in s3.get_bucket_accelerate_configuration(Bucket=bucket)
    s3.get_bucket_notification_configuration(Bucket=bucket)
    for call in (s3.delete_bucket_policy, s3.delete_bucket_cors, s3.delete_bucket_lifecycle, s3.delete_bucket_tagging,
                 s3.delete_bucket_website, s3.delete_bucket_encryption, s3.delete_public_access_block):
        assert call(Bucket=bucket)["ResponseMetadata"]["HTTPStatusCode"] == 204
    s3.head_bucket(Bucket=bucket)  # deleting a configuration never deletes the bucket
    with pytest.raises(botocore.exceptions.ClientError) as e:
        alt.get_bucket_policy(Bucket=bucket)
    assert _code(e.value) == "AccessDenied"
    with pytest.raises(botocore.exceptions.ClientError) as e:
        alt.delete_bucket_cors(Bucket=bucket)
    assert _code(e.value) == "AccessDenied"
    with pytest.raises(botocore.exceptions.ClientError) as e:
        s3.get_bucket_policy(Bucket="no-such-bucket-here")
    assert _code(e.value) == "NoSuchBucket"


# ---------------------------------------------------------------- multipart copy


def test_upload_part_copy_with_ranges(s3, bucket: str) -> None:  # type: ignore[no-untyped-def]
    src = os.urandom(7 * 1024 * 1024 + 123)
    s3.put_object(Bucket=bucket, Key="src", Body=src)
    uid = s3.create_multipart_upload(Bucket=bucket, Key="dst")["UploadId"]
    cut = 5 * 1024 * 1024 + 17
    p1 = s3.upload_part_copy(Bucket=bucket, Key="dst", UploadId=uid, PartNumber=1,
                             CopySource={"Bucket": bucket, "Key": "src"}, CopySourceRange=f"bytes=0-{cut - 1}")
    p2 = s3.upload_part_copy(Bucket=bucket, Key="dst", UploadId=uid, PartNumber=2,
                             CopySource={"Bucket": bucket, "Key": "src"}, CopySourceRange=f"bytes={cut}-{len(src) - 1}")
    assert p1["CopyPartResult"]["ETag"] == f'"{hashlib.md5(src[:cut]).hexdigest()}"'
    for bad, code in ((f"bytes=0-{len(src)}", "InvalidRange"), ("bytes=5-", "InvalidArgument"),
                      ("bytes=-5", "InvalidArgument"), ("bytes=9-3", "InvalidArgument"), ("rows=1-2", "InvalidArgument")):
        with pytest.raises(botocore.exceptions.ClientError) as e:
            s3.upload_part_copy(Bucket=bucket, Key="dst", UploadId=uid, PartNumber=3,
                                CopySource={"Bucket": bucket, "Key": "src"}, CopySourceRange=bad)
        assert _code(e.value) == code, bad
    s3.complete_multipart_upload(Bucket=bucket, Key="dst", UploadId=uid, MultipartUpload={"Parts": [
        {"PartNumber": 1, "ETag": p1["CopyPartResult"]["ETag"]}, {"PartNumber": 2, "ETag": p2["CopyPartResult"]["ETag"]}]})
    assert s3.get_object(Bucket=bucket, Key="dst")["Body"].read() == src
    assert s3.get_object(Bucket=bucket, Key="dst", PartNumber=2)["Body"].read() == src[cut:]


def test_delete_bucket_with_upload_in_progress(s3) -> None:  # type: ignore[no-untyped-def]
    """An unfinished multipart upload does not keep a bucket from being deleted; objects do."""
    s3.create_bucket(Bucket="mpu-left-behind")
    uid = s3.create_multipart_upload(Bucket="mpu-left-behind", Key="k")["UploadId"]
    s3.upload_part(Bucket="mpu-left-behind", Key="k", UploadId=uid, PartNumber=1, Body=os.urandom(300_000))
    s3.put_object(Bucket="mpu-left-behind", Key="obj", Body=b"x")
    with pytest.raises(botocore.exceptions.ClientError) as e:
        s3.delete_bucket(Bucket="mpu-left-behind")
    assert _code(e.value) == "BucketNotEmpty"
    s3.delete_object(Bucket="mpu-left-behind", Key="obj")
    s3.delete_bucket(Bucket="mpu-left-behind")
    s3.create_bucket(Bucket="mpu-left-behind")  # the name is free again, with no upload of the old bucket in it
    assert s3.list_multipart_uploads(Bucket="mpu-left-behind").get("Uploads", []) == []
    s3.delete_bucket(Bucket="mpu-left-behind")


# ---------------------------------------------------------------- listings


def test_list_objects_v1_pagination_with_markers(s3, bucket: str) -> None:  # type: ignore[no-untyped-def]
    keys = sorted([f"a/{i:02d}" for i in range(7)] + [f"b/{i}" for i in range(3)] + ["c", "d", "e"])
    for k in keys:
        s3.put_object(Bucket=bucket, Key=k, Body=b"")
    seen, marker = [], ""
    for _ in range(20):
        page = s3.list_objects(Bucket=bucket, MaxKeys=4, Marker=marker)
        seen += [o["Key"] for o in page.get("Contents", [])]
        assert "NextMarker" not in page  # only sent with a delimiter: the next marker is the last key
        if not page["IsTruncated"]:
            break
        marker = page["Contents"][-1]["Key"]
    assert seen == keys
    # With a delimiter, NextMarker names the last key or common prefix of the page.
    rows, marker = [], ""
    for _ in range(20):
        page = s3.list_objects(Bucket=bucket, MaxKeys=2, Delimiter="/", Marker=marker)
        rows += [p["Prefix"] for p in page.get("CommonPrefixes", [])] + [o["Key"] for o in page.get("Contents", [])]
        if not page["IsTruncated"]:
            break
        marker = page["NextMarker"]
    assert sorted(rows) == ["a/", "b/", "c", "d", "e"]
    empty = s3.list_objects(Bucket=bucket, MaxKeys=0)
    assert empty["IsTruncated"] is False and "Contents" not in empty
    assert s3.list_objects_v2(Bucket=bucket, MaxKeys=0)["IsTruncated"] is False


def test_list_object_versions_pagination(s3, bucket: str) -> None:  # type: ignore[no-untyped-def]
    s3.put_bucket_versioning(Bucket=bucket, VersioningConfiguration={"Status": "Enabled"})
    expected: list[tuple[str, str]] = []
    for key in ("k1", "k2", "k3"):
        ids = [s3.put_object(Bucket=bucket, Key=key, Body=str(i).encode())["VersionId"] for i in range(3)]
        expected += [(key, v) for v in reversed(ids)]  # newest first within a key
    marker = s3.delete_object(Bucket=bucket, Key="k2")["VersionId"]
    expected.insert(3, ("k2", marker))
    with pytest.raises(botocore.exceptions.ClientError) as e:
        s3.head_object(Bucket=bucket, Key="k2")
    headers = e.value.response["ResponseMetadata"]["HTTPHeaders"]
    assert headers["x-amz-delete-marker"] == "true" and headers["x-amz-version-id"] == marker
    seen: list[tuple[str, str]] = []
    kw: dict[str, str] = {}
    for _ in range(30):
        page = s3.list_object_versions(Bucket=bucket, MaxKeys=2, **kw)
        rows = page.get("Versions", []) + page.get("DeleteMarkers", [])
        rows.sort(key=lambda r: (r["Key"], [v for k, v in expected].index(r["VersionId"])))
        seen += [(r["Key"], r["VersionId"]) for r in rows]
        assert len(rows) <= 2
        if not page["IsTruncated"]:
            break
        kw = {"KeyMarker": page["NextKeyMarker"], "VersionIdMarker": page["NextVersionIdMarker"]}
    assert seen == expected
    latest = {r["Key"]: r for r in s3.list_object_versions(Bucket=bucket)["Versions"] if r["IsLatest"]}
    assert sorted(latest) == ["k1", "k3"]


def test_null_versions(s3, bucket: str) -> None:  # type: ignore[no-untyped-def]
    """S3's null version: what a bucket not (or no longer) versioning writes; one per key, replaced in place."""
    def versions() -> list[tuple[str, str]]:
        page = s3.list_object_versions(Bucket=bucket)
        rows = [(v["VersionId"], "v") for v in page.get("Versions", [])]
        rows += [(m["VersionId"], "m") for m in page.get("DeleteMarkers", [])]
        return sorted(rows)

    def body(**kw: str) -> bytes:
        return s3.get_object(Bucket=bucket, Key="k", **kw)["Body"].read()

    assert "VersionId" not in s3.put_object(Bucket=bucket, Key="k", Body=b"v1")
    s3.put_bucket_versioning(Bucket=bucket, VersioningConfiguration={"Status": "Enabled"})
    v2 = s3.put_object(Bucket=bucket, Key="k", Body=b"v2")["VersionId"]
    assert versions() == sorted([(v2, "v"), ("null", "v")])
    assert body(VersionId="null") == b"v1" and body() == b"v2"
    assert s3.head_object(Bucket=bucket, Key="k", VersionId="null")["VersionId"] == "null"
    s3.delete_object(Bucket=bucket, Key="k", VersionId="null")
    assert versions() == [(v2, "v")]
    with pytest.raises(botocore.exceptions.ClientError) as e:
        body(VersionId="null")
    assert _code(e.value) == "NoSuchVersion"

    s3.put_bucket_versioning(Bucket=bucket, VersioningConfiguration={"Status": "Suspended"})
    assert "VersionId" not in s3.put_object(Bucket=bucket, Key="k", Body=b"v3")
    assert "VersionId" not in s3.put_object(Bucket=bucket, Key="k", Body=b"v4")  # replaces v3, the null version
    wait_until(lambda: versions() == sorted([(v2, "v"), ("null", "v")]), 10, "v3 to be retired")
    assert body() == b"v4" and body(VersionId=v2) == b"v2"
    s3.delete_object(Bucket=bucket, Key="k")  # a null delete marker, replacing v4
    wait_until(lambda: versions() == sorted([(v2, "v"), ("null", "m")]), 10, "v4 to be retired")
    with pytest.raises(botocore.exceptions.ClientError) as e:
        body()
    assert _code(e.value) == "NoSuchKey"
    s3.delete_object(Bucket=bucket, Key="k", VersionId="null")  # removing the marker uncovers v2
    assert body() == b"v2"


ODD_KEYS = ["a b", "a+b", "a%20b", "a%2Fb", "caf\u00e9", "\U0001F600/\U0001F680 x", "q?x=1&y=2", "tab\tkey",
            "sp ace/", "x" * 1024, "\u00e9" * 512, "trailing space ", "<xml>&amp;'\""]


def test_encoding_type_url_and_odd_keys(cluster: DevCluster, s3, bucket: str) -> None:  # type: ignore[no-untyped-def]
    for k in ODD_KEYS:
        s3.put_object(Bucket=bucket, Key=k, Body=k.encode())
    # boto3 asks for encoding-type=url and decodes: every key comes back exactly
    listed = [o["Key"] for o in s3.list_objects_v2(Bucket=bucket)["Contents"]]
    assert listed == sorted(ODD_KEYS, key=lambda k: k.encode())
    assert [o["Key"] for o in s3.list_objects(Bucket=bucket)["Contents"]] == listed
    assert sorted(v["Key"] for v in s3.list_object_versions(Bucket=bucket)["Versions"]) == sorted(ODD_KEYS)
    for k in ODD_KEYS:
        assert s3.get_object(Bucket=bucket, Key=k)["Body"].read() == k.encode()
    # on the wire, the keys are percent-encoded
    status, _, body = raw(cluster, "GET", f"/{bucket}", "encoding-type=url&list-type=2&prefix=a")
    assert status == 200 and b"<Key>a%20b</Key>" in body and b"<Key>a%2B" in body.replace(b"%2b", b"%2B")
    assert b"<Key>a%2520b</Key>" in body
    with pytest.raises(botocore.exceptions.ClientError) as e:
        s3.put_object(Bucket=bucket, Key="y" * 1025, Body=b"")
    assert _code(e.value) == "KeyTooLongError"
    status, _, body = raw(cluster, "GET", f"/{bucket}", "encoding-type=base64")
    assert status == 400 and b"InvalidArgument" in body


def test_listing_pages_while_keys_come_and_go(s3, bucket: str) -> None:  # type: ignore[no-untyped-def]
    stable = [f"k{i:03d}" for i in range(0, 60, 2)]
    for k in stable:
        s3.put_object(Bucket=bucket, Key=k, Body=b"s")
    doomed = [f"k{i:03d}x" for i in range(30, 60, 4)]  # ahead of the cursor, deleted before it gets there
    for k in doomed:
        s3.put_object(Bucket=bucket, Key=k, Body=b"d")
    seen: list[str] = []
    token = None
    added_behind, added_ahead = [], []
    for page_no in range(40):
        kw = {"ContinuationToken": token} if token else {}
        page = s3.list_objects_v2(Bucket=bucket, MaxKeys=5, **kw)
        seen += [o["Key"] for o in page.get("Contents", [])]
        if page_no == 1:
            for k in doomed:
                s3.delete_object(Bucket=bucket, Key=k)
            added_behind = ["k000a", "k001"]  # sorts before the cursor: must not be listed now
            added_ahead = ["k055a", "k059z"]  # sorts after it: must be listed
            for k in added_behind + added_ahead:
                s3.put_object(Bucket=bucket, Key=k, Body=b"n")
        if not page["IsTruncated"]:
            break
        token = page["NextContinuationToken"]
    assert seen == sorted(seen) and len(seen) == len(set(seen)), seen
    assert set(stable) <= set(seen)
    assert not set(doomed) & set(seen)
    assert not set(added_behind) & set(seen) and set(added_ahead) <= set(seen)


# ---------------------------------------------------------------- GET options


def test_response_overrides(s3, bucket: str) -> None:  # type: ignore[no-untyped-def]
    s3.put_object(Bucket=bucket, Key="o", Body=b"{}", ContentType="application/json", CacheControl="no-cache")
    got = s3.get_object(Bucket=bucket, Key="o", ResponseContentType="text/plain",
                        ResponseContentDisposition='attachment; filename="o.txt"', ResponseCacheControl="max-age=60",
                        ResponseContentLanguage="fr", ResponseExpires=dt.datetime(2030, 1, 1, tzinfo=dt.UTC),
                        ResponseContentEncoding="identity")
    h = got["ResponseMetadata"]["HTTPHeaders"]
    assert h["content-type"] == "text/plain" and h["content-disposition"] == 'attachment; filename="o.txt"'
    assert h["cache-control"] == "max-age=60" and h["content-language"] == "fr"
    assert h["content-encoding"] == "identity" and h["expires"].startswith("Tue, 01 Jan 2030")
    assert s3.head_object(Bucket=bucket, Key="o")["CacheControl"] == "no-cache"


def test_conditional_precedence(s3, bucket: str) -> None:  # type: ignore[no-untyped-def]
    etag = s3.put_object(Bucket=bucket, Key="c", Body=b"data")["ETag"]
    past = dt.datetime(2000, 1, 1, tzinfo=dt.UTC)
    future = dt.datetime.now(dt.UTC) + dt.timedelta(days=1)

    def status(**kw: object) -> int:
        try:
            return s3.get_object(Bucket=bucket, Key="c", **kw)["ResponseMetadata"]["HTTPStatusCode"]
        except botocore.exceptions.ClientError as e:
            return _status(e)

    assert status(IfModifiedSince=past) == 200
    assert status(IfModifiedSince=future) == 304
    assert status(IfUnmodifiedSince=future) == 200
    assert status(IfUnmodifiedSince=past) == 412
    # If-Match true wins over a false If-Unmodified-Since
    assert status(IfMatch=etag, IfUnmodifiedSince=past) == 200
    assert status(IfMatch='"other"', IfUnmodifiedSince=future) == 412
    # If-None-Match false wins over a true If-Modified-Since; a true one makes If-Modified-Since moot
    assert status(IfNoneMatch=etag, IfModifiedSince=past) == 304
    assert status(IfNoneMatch='"other"', IfModifiedSince=future) == 200
    # If-Match false beats If-None-Match: 412 before 304
    assert status(IfMatch='"other"', IfNoneMatch=etag) == 412
    # an unparseable date is ignored
    assert s3.get_object(Bucket=bucket, Key="c", IfModifiedSince=past)["Body"].read() == b"data"
