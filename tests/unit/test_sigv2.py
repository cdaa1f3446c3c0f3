"""SigV2 presigned URLs (the query form aws-cli v1 still makes): botocore-made URLs verify, changes do not."""

from __future__ import annotations

import time
from urllib.parse import urlsplit

import boto3
import pytest
from botocore.config import Config
from multidict import CIMultiDict
from yarl import URL

from gateway import sigv2
from gateway.errors import S3Error
from objstore.config import User

AK, SK = "AKIDV2EXAMPLE", "v2-secret-v2-secret"
USERS = {AK: User(AK, SK, "v2")}
ENDPOINT = "http://127.0.0.1:9000"


def presign(method: str, params: dict[str, object], expires: int = 60) -> str:
    client = boto3.client("s3", endpoint_url=ENDPOINT, aws_access_key_id=AK, aws_secret_access_key=SK,
                          region_name="us-east-1", config=Config(signature_version="s3",
                                                                 s3={"addressing_style": "path"}))
    return client.generate_presigned_url(method, Params=params, ExpiresIn=expires)


def verify(url: str, method: str = "GET", headers: dict[str, str] | None = None, now: float | None = None) -> User:
    parts = urlsplit(url)
    query = URL(url, encoded=True).query
    return sigv2.verify_presigned(method, parts.path, parts.query, query, CIMultiDict(headers or {}), USERS,
                                  time.time() if now is None else now)


def code_of(url: str, **kw: object) -> str:
    with pytest.raises(S3Error) as e:
        verify(url, **kw)  # type: ignore[arg-type]
    return e.value.code


def test_botocore_presigned_get_verifies() -> None:
    url = presign("get_object", {"Bucket": "b", "Key": "dir/a key+é.txt"})
    assert "AWSAccessKeyId=" in url and "X-Amz-Signature" not in url
    assert verify(url).access_key == AK


def test_signed_subresources_and_headers() -> None:
    url = presign("get_object", {"Bucket": "b", "Key": "k", "VersionId": "v1",
                                 "ResponseContentDisposition": "attachment; filename=x"})
    assert verify(url).access_key == AK
    assert code_of(url.replace("versionId=v1", "versionId=v2")) == "SignatureDoesNotMatch"
    assert code_of(url.replace("attachment", "inline")) == "SignatureDoesNotMatch"
    put = presign("put_object", {"Bucket": "b", "Key": "k", "ContentType": "text/plain"})
    assert verify(put, "PUT", {"Content-Type": "text/plain"}).access_key == AK
    assert code_of(put, method="PUT", headers={"Content-Type": "image/png"}) == "SignatureDoesNotMatch"


def test_refusals() -> None:
    url = presign("get_object", {"Bucket": "b", "Key": "k"}, expires=30)
    assert code_of(url, method="DELETE") == "SignatureDoesNotMatch"
    assert code_of(url.replace("/b/k", "/b/other")) == "SignatureDoesNotMatch"
    assert code_of(url, now=time.time() + 60) == "AccessDenied"
    assert code_of(url.replace(f"AWSAccessKeyId={AK}", "AWSAccessKeyId=NOPE")) == "InvalidAccessKeyId"
    assert code_of(f"{ENDPOINT}/b/k?AWSAccessKeyId={AK}&Signature=abc") == "AccessDenied"  # no Expires
    assert code_of(f"{ENDPOINT}/b/k?AWSAccessKeyId={AK}&Signature=abc&Expires=soon") == "AccessDenied"


def test_canonical_resource_keeps_only_signed_parameters() -> None:
    assert sigv2.canonical_resource("/b/k%20x", "foo=1&versionId=a%2Fb&acl&Signature=s") == "/b/k%20x?acl&versionId=a/b"
    assert sigv2.canonical_resource("/b", "") == "/b"
