"""boto3 against a real `objstore dev` cluster: buckets, objects, ranges, conditionals, copy, delete."""

from __future__ import annotations

import hashlib
import os
import time

import botocore.exceptions
import pytest

pytestmark = pytest.mark.integration


def _code(exc: botocore.exceptions.ClientError) -> str:
    return exc.response["Error"]["Code"]


@pytest.fixture(scope="module")
def s3(dev_cluster):
    return dev_cluster.s3()


@pytest.fixture
def bucket(s3, request):
    name = f"t-{request.node.name[:30].lower().replace('_', '-')}-{os.getpid() % 1000}-{int(time.time() * 1000) % 100000}"
    name = "".join(c for c in name if c.isalnum() or c == "-").strip("-")[:63]
    s3.create_bucket(Bucket=name)
    yield name


def test_bucket_lifecycle(s3):
    s3.create_bucket(Bucket="life-cycle")
    assert "life-cycle" in [b["Name"] for b in s3.list_buckets()["Buckets"]]
    s3.head_bucket(Bucket="life-cycle")
    with pytest.raises(botocore.exceptions.ClientError) as e:
        s3.create_bucket(Bucket="life-cycle")
    assert _code(e.value) == "BucketAlreadyOwnedByYou"
    with pytest.raises(botocore.exceptions.ClientError) as e:
        s3.create_bucket(Bucket="Bad_Name")
    assert _code(e.value) == "InvalidBucketName"
    s3.put_object(Bucket="life-cycle", Key="k", Body=b"x")
    with pytest.raises(botocore.exceptions.ClientError) as e:
        s3.delete_bucket(Bucket="life-cycle")
    assert _code(e.value) == "BucketNotEmpty"
    s3.delete_object(Bucket="life-cycle", Key="k")
    s3.delete_bucket(Bucket="life-cycle")
    with pytest.raises(botocore.exceptions.ClientError) as e:
        s3.head_bucket(Bucket="life-cycle")
    assert e.value.response["ResponseMetadata"]["HTTPStatusCode"] == 404
    s3.create_bucket(Bucket="where-am-i")
    assert s3.get_bucket_location(Bucket="where-am-i")["LocationConstraint"] is None


@pytest.mark.parametrize("size", [0, 1, 1000, 300 * 1024, 1024 * 1024 + 7, 5 * 1024 * 1024 + 3])
def test_put_get_roundtrip(s3, bucket, size):
    data = os.urandom(size)
    put = s3.put_object(Bucket=bucket, Key=f"obj-{size}", Body=data, ContentType="text/plain",
                        Metadata={"color": "blue"})
    assert put["ETag"] == f'"{hashlib.md5(data).hexdigest()}"'
    got = s3.get_object(Bucket=bucket, Key=f"obj-{size}")
    assert got["Body"].read() == data
    assert got["ContentType"] == "text/plain"
    assert got["Metadata"] == {"color": "blue"}
    assert got["ContentLength"] == size
    head = s3.head_object(Bucket=bucket, Key=f"obj-{size}")
    assert head["ContentLength"] == size and head["ETag"] == put["ETag"]


def test_ranges(s3, bucket):
    data = os.urandom(3 * 1024 * 1024 + 11)
    s3.put_object(Bucket=bucket, Key="r", Body=data)
    for rng, expect in [("bytes=0-0", data[:1]), ("bytes=100-", data[100:]), ("bytes=-500", data[-500:]),
                        ("bytes=1048570-2097160", data[1048570:2097161]), ("bytes=5-999999999", data[5:])]:
        got = s3.get_object(Bucket=bucket, Key="r", Range=rng)
        assert got["Body"].read() == expect, rng
        assert got["ResponseMetadata"]["HTTPStatusCode"] == 206
    with pytest.raises(botocore.exceptions.ClientError) as e:
        s3.get_object(Bucket=bucket, Key="r", Range=f"bytes={len(data)}-")
    assert _code(e.value) == "InvalidRange"


def test_conditionals(s3, bucket):
    put = s3.put_object(Bucket=bucket, Key="c", Body=b"hello")
    etag = put["ETag"]
    assert s3.get_object(Bucket=bucket, Key="c", IfMatch=etag)["Body"].read() == b"hello"
    with pytest.raises(botocore.exceptions.ClientError) as e:
        s3.get_object(Bucket=bucket, Key="c", IfMatch='"nope"')
    assert e.value.response["ResponseMetadata"]["HTTPStatusCode"] == 412
    with pytest.raises(botocore.exceptions.ClientError) as e:
        s3.get_object(Bucket=bucket, Key="c", IfNoneMatch=etag)
    assert e.value.response["ResponseMetadata"]["HTTPStatusCode"] == 304
    with pytest.raises(botocore.exceptions.ClientError) as e:
        s3.put_object(Bucket=bucket, Key="c", Body=b"again", IfNoneMatch="*")
    assert e.value.response["ResponseMetadata"]["HTTPStatusCode"] == 412
    assert s3.get_object(Bucket=bucket, Key="c")["Body"].read() == b"hello"


def test_overwrite_and_delete(s3, bucket):
    s3.put_object(Bucket=bucket, Key="o", Body=b"v1")
    s3.put_object(Bucket=bucket, Key="o", Body=b"v2")
    assert s3.get_object(Bucket=bucket, Key="o")["Body"].read() == b"v2"
    assert s3.delete_object(Bucket=bucket, Key="o")["ResponseMetadata"]["HTTPStatusCode"] == 204
    assert s3.delete_object(Bucket=bucket, Key="o")["ResponseMetadata"]["HTTPStatusCode"] == 204
    with pytest.raises(botocore.exceptions.ClientError) as e:
        s3.get_object(Bucket=bucket, Key="o")
    assert _code(e.value) == "NoSuchKey"


def test_copy(s3, bucket):
    s3.put_object(Bucket=bucket, Key="src", Body=b"copy me", Metadata={"a": "1"})
    s3.copy_object(Bucket=bucket, Key="dst", CopySource={"Bucket": bucket, "Key": "src"})
    got = s3.get_object(Bucket=bucket, Key="dst")
    assert got["Body"].read() == b"copy me" and got["Metadata"] == {"a": "1"}
    s3.copy_object(Bucket=bucket, Key="src", CopySource={"Bucket": bucket, "Key": "src"},
                   MetadataDirective="REPLACE", Metadata={"b": "2"})
    assert s3.head_object(Bucket=bucket, Key="src")["Metadata"] == {"b": "2"}
    with pytest.raises(botocore.exceptions.ClientError) as e:
        s3.copy_object(Bucket=bucket, Key="src", CopySource={"Bucket": bucket, "Key": "src"})
    assert _code(e.value) == "InvalidRequest"


def test_delete_objects(s3, bucket):
    for i in range(5):
        s3.put_object(Bucket=bucket, Key=f"d/{i}", Body=b"x")
    out = s3.delete_objects(Bucket=bucket, Delete={"Objects": [{"Key": f"d/{i}"} for i in range(5)]})
    assert sorted(d["Key"] for d in out["Deleted"]) == [f"d/{i}" for i in range(5)]
    assert s3.list_objects_v2(Bucket=bucket, Prefix="d/")["KeyCount"] == 0


def test_listing_pages_and_delimiter(s3, bucket):
    keys = [f"dir{i % 3}/file {i:03d}+%😀" for i in range(25)] + ["top"]
    for k in keys:
        s3.put_object(Bucket=bucket, Key=k, Body=b"1")
    seen, token = [], None
    while True:
        kw = {"ContinuationToken": token} if token else {}
        page = s3.list_objects_v2(Bucket=bucket, MaxKeys=7, **kw)
        seen += [o["Key"] for o in page.get("Contents", [])]
        if not page["IsTruncated"]:
            break
        token = page["NextContinuationToken"]
    assert seen == sorted(keys)
    page = s3.list_objects_v2(Bucket=bucket, Delimiter="/")
    assert [p["Prefix"] for p in page["CommonPrefixes"]] == ["dir0/", "dir1/", "dir2/"]
    assert [o["Key"] for o in page["Contents"]] == ["top"]
    v1 = s3.list_objects(Bucket=bucket, Prefix="dir1/", MaxKeys=3)
    assert len(v1["Contents"]) == 3 and v1["IsTruncated"]
    versions = s3.list_object_versions(Bucket=bucket)
    assert sorted(v["Key"] for v in versions["Versions"]) == sorted(keys)


def test_multipart(s3, bucket):
    part1, part2 = os.urandom(5 * 1024 * 1024), os.urandom(1024 * 1024 + 5)
    up = s3.create_multipart_upload(Bucket=bucket, Key="mp", ContentType="application/x-test")
    uid = up["UploadId"]
    e1 = s3.upload_part(Bucket=bucket, Key="mp", UploadId=uid, PartNumber=1, Body=part1)["ETag"]
    e2 = s3.upload_part(Bucket=bucket, Key="mp", UploadId=uid, PartNumber=2, Body=part2)["ETag"]
    assert [p["PartNumber"] for p in s3.list_parts(Bucket=bucket, Key="mp", UploadId=uid)["Parts"]] == [1, 2]
    assert [u["UploadId"] for u in s3.list_multipart_uploads(Bucket=bucket).get("Uploads", [])] == [uid]
    done = s3.complete_multipart_upload(Bucket=bucket, Key="mp", UploadId=uid, MultipartUpload={
        "Parts": [{"PartNumber": 1, "ETag": e1}, {"PartNumber": 2, "ETag": e2}]})
    md5s = hashlib.md5(bytes.fromhex(e1.strip('"')) + bytes.fromhex(e2.strip('"'))).hexdigest()
    assert done["ETag"] == f'"{md5s}-2"'
    got = s3.get_object(Bucket=bucket, Key="mp")
    assert got["Body"].read() == part1 + part2 and got["ContentType"] == "application/x-test"
    assert s3.get_object(Bucket=bucket, Key="mp", Range="bytes=5242870-5242889")["Body"].read() == \
        (part1 + part2)[5242870:5242890]
    assert s3.get_object(Bucket=bucket, Key="mp", PartNumber=2)["Body"].read() == part2


def test_multipart_errors_and_abort(s3, bucket):
    uid = s3.create_multipart_upload(Bucket=bucket, Key="bad")["UploadId"]
    e1 = s3.upload_part(Bucket=bucket, Key="bad", UploadId=uid, PartNumber=1, Body=b"small")["ETag"]
    e2 = s3.upload_part(Bucket=bucket, Key="bad", UploadId=uid, PartNumber=2, Body=b"small")["ETag"]
    with pytest.raises(botocore.exceptions.ClientError) as e:
        s3.complete_multipart_upload(Bucket=bucket, Key="bad", UploadId=uid, MultipartUpload={
            "Parts": [{"PartNumber": 1, "ETag": e1}, {"PartNumber": 2, "ETag": e2}]})
    assert _code(e.value) == "EntityTooSmall"
    with pytest.raises(botocore.exceptions.ClientError) as e:
        s3.complete_multipart_upload(Bucket=bucket, Key="bad", UploadId=uid, MultipartUpload={
            "Parts": [{"PartNumber": 2, "ETag": e2}, {"PartNumber": 1, "ETag": e1}]})
    assert _code(e.value) == "InvalidPartOrder"
    with pytest.raises(botocore.exceptions.ClientError) as e:
        s3.complete_multipart_upload(Bucket=bucket, Key="bad", UploadId=uid, MultipartUpload={
            "Parts": [{"PartNumber": 1, "ETag": '"0000"'}]})
    assert _code(e.value) == "InvalidPart"
    s3.abort_multipart_upload(Bucket=bucket, Key="bad", UploadId=uid)
    with pytest.raises(botocore.exceptions.ClientError) as e:
        s3.list_parts(Bucket=bucket, Key="bad", UploadId=uid)
    assert _code(e.value) == "NoSuchUpload"


def test_errors_are_s3_xml(s3, bucket, dev_cluster):
    import urllib.request

    with pytest.raises(botocore.exceptions.ClientError) as e:
        s3.get_object(Bucket=bucket, Key="missing")
    assert _code(e.value) == "NoSuchKey"
    assert e.value.response["ResponseMetadata"]["HTTPHeaders"].get("x-amz-request-id")
    with pytest.raises(urllib.error.HTTPError) as he:
        urllib.request.urlopen(f"{dev_cluster.endpoint}/{bucket}/missing", timeout=10)
    body = he.value.read().decode()
    assert he.value.code == 403 and "<Code>AccessDenied</Code>" in body and "<RequestId>" in body
