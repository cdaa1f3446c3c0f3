"""Raw HTTP to the gateway for integration tests: SigV4-signed requests over exactly the bytes given."""

from __future__ import annotations

import hashlib
import http.client
import socket
from urllib.parse import quote, urlsplit

from botocore.auth import S3SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

from tests.cluster import DevCluster

HTTP_TIMEOUT = 30


def raw(cluster: DevCluster, method: str, path: str, query: str = "", body: bytes = b"",
        headers: dict[str, str] | None = None, sign: bool = True, access_key: str | None = None,
        secret_key: str | None = None) -> tuple[int, dict[str, str], bytes]:
    """One HTTP request to the gateway, SigV4-signed over exactly this path, query, headers and body."""
    host = urlsplit(cluster.endpoint).netloc
    target = path + (f"?{query}" if query else "")
    hdrs = {"Host": host, "x-amz-content-sha256": hashlib.sha256(body).hexdigest(), **(headers or {})}
    if sign:
        req = AWSRequest(method, f"{cluster.endpoint}{target}", headers=hdrs, data=body)
        creds = Credentials(access_key or cluster.access_key, secret_key or cluster.secret_key)
        S3SigV4Auth(creds, "s3", cluster.region).add_auth(req)
        hdrs = dict(req.headers.items())
    conn = http.client.HTTPConnection(host, timeout=HTTP_TIMEOUT)
    try:
        conn.putrequest(method, target, skip_host=True, skip_accept_encoding=True)
        for k, v in hdrs.items():
            conn.putheader(k, v)
        conn.putheader("Content-Length", str(len(body)))
        conn.endheaders(body)
        resp = conn.getresponse()
        data = b"" if method == "HEAD" else resp.read()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, data
    finally:
        conn.close()


def assert_s3_error(status: int, body: bytes, code: str | None = None, head: bool = False) -> None:
    assert status < 500, f"{status}: {body[:500]!r}"
    if not head and status >= 400:
        assert body.startswith(b"<?xml") and b"<Error><Code>" in body, body[:300]
        assert b"Traceback" not in body
        if code is not None:
            assert f"<Code>{code}</Code>".encode() in body, body[:300]




def open_put(cluster: DevCluster, bucket: str, key: str, body: bytes) -> socket.socket:
    """A PUT signed over `body` whose headers are sent: the caller sends the body, or part of it."""
    host = urlsplit(cluster.endpoint).netloc
    req = AWSRequest("PUT", f"{cluster.endpoint}/{bucket}/{quote(key)}", data=body,
                     headers={"Host": host, "Content-Length": str(len(body))})
    S3SigV4Auth(Credentials(cluster.access_key, cluster.secret_key), "s3", cluster.region).add_auth(req)
    hostname, port = host.split(":")
    sock = socket.create_connection((hostname, int(port)), timeout=HTTP_TIMEOUT)
    head = f"PUT /{bucket}/{quote(key)} HTTP/1.1\r\n" + "".join(f"{k}: {v}\r\n" for k, v in req.headers.items())
    sock.sendall((head + "\r\n").encode())
    return sock
