"""Request routing of the gateway: bucket and key from path or Host, and which S3 operation a request is."""

from __future__ import annotations

import pytest
from multidict import CIMultiDict, MultiDict

from gateway.errors import S3Error
from gateway.server import select_handler, split_request

DOMAINS = ["localhost", "s3.example.com"]


@pytest.mark.parametrize(("host", "path", "expected"), [
    ("localhost:9000", "/b/k", ("b", "k")),
    ("127.0.0.1:9000", "/b/dir/a%20b%2Bc", ("b", "dir/a b+c")),
    ("[::1]:9000", "/b/k", ("b", "k")),
    ("b.localhost:9000", "/dir/x%20y", ("b", "dir/x y")),
    ("b.localhost", "/", ("b", "")),
    ("my.dotted.bucket.s3.example.com", "//k", ("my.dotted.bucket", "/k")),
    ("B.LOCALHOST.:80", "/k", ("b", "k")),
    ("s3.example.com", "/b/k", ("b", "k")),
    (".localhost", "/b/k", ("b", "k")),
    ("evil-localhost:9000", "/b/k", ("b", "k")),
    (None, "/b/k?x=1", ("b", "k")),
])
def test_bucket_and_key(host: str | None, path: str, expected: tuple[str, str]) -> None:
    assert split_request(path, host, DOMAINS) == expected


def route(method: str, bucket: str, key: str, **query: str) -> str:
    return select_handler(method, bucket, key, MultiDict(query), CIMultiDict()).__name__


def test_sub_resources_choose_the_operation() -> None:
    assert route("GET", "b", "", **{"list-type": "2"}) == "list_objects_v2"
    assert route("GET", "b", "") == "list_objects_v1"
    assert route("GET", "b", "", policy="") == "get_unset_configuration"
    assert route("DELETE", "b", "", cors="") == "delete_unset_configuration"
    assert route("DELETE", "b", "") == "delete_bucket"
    assert route("PUT", "b", "k", partNumber="1", uploadId="u") == "upload_part"


@pytest.mark.parametrize(("method", "query"), [("DELETE", "logging"), ("PUT", "policy"), ("DELETE", "notification"),
                                               ("GET", "intelligent-tiering")])
def test_unhandled_sub_resources_never_fall_through(method: str, query: str) -> None:
    """DELETE ?logging must not be DeleteBucket, PUT ?policy must not be CreateBucket."""
    with pytest.raises(S3Error) as e:
        route(method, "b", "", **{query: ""})
    assert e.value.code == "NotImplemented"
