"""AWS Signature Version 2 presigned URLs (query string authentication): verification only.

Only the query form is accepted, because some clients still presign with it by default (`aws s3
presign` of aws-cli v1 against a custom endpoint). Requests signed with a SigV2 Authorization
header are refused as before: every SDK signs those with SigV4.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from collections.abc import Mapping
from urllib.parse import unquote

from multidict import MultiMapping

from gateway.errors import S3Error
from objstore.config import User

PARAMS = ("AWSAccessKeyId", "Signature", "Expires")
SUBRESOURCES = frozenset({
    "accelerate", "acl", "cors", "defaultObjectAcl", "delete", "lifecycle", "location", "logging", "notification",
    "object-lock", "partNumber", "policy", "replication", "requestPayment", "response-cache-control",
    "response-content-disposition", "response-content-encoding", "response-content-language",
    "response-content-type", "response-expires", "restore", "select", "select-type", "storageClass", "tagging",
    "torrent", "uploadId", "uploads", "versionId", "versioning", "versions", "website", "analytics", "metrics",
    "inventory",
})
"""Query parameters that are part of the signed resource (the rest of the query is not signed)."""


def is_presigned_v2(query_names: set[str]) -> bool:
    return "Signature" in query_names or "AWSAccessKeyId" in query_names


def canonical_resource(raw_path: str, raw_query: str) -> str:
    """The path as sent, then the signed sub-resources sorted by name, values decoded."""
    pairs = []
    for item in raw_query.split("&"):
        name, sep, value = item.partition("=")
        if name in SUBRESOURCES:
            pairs.append((name, f"{name}={unquote(value)}" if sep else name))
    pairs.sort(key=lambda p: p[0])
    return raw_path + ("?" + "&".join(p[1] for p in pairs) if pairs else "")


def string_to_sign(method: str, raw_path: str, raw_query: str, query: Mapping[str, str],
                   headers: MultiMapping[str]) -> str:
    """Verb, Content-MD5, Content-Type, Expires, x-amz-* headers (from headers or the query), resource."""
    amz: dict[str, str] = {k.lower(): v.strip() for k, v in query.items() if k.lower().startswith("x-amz-")}
    for name in {h.lower() for h in headers if h.lower().startswith("x-amz-")}:
        amz[name] = ",".join(v.strip() for v in headers.getall(name))
    lines = [method.upper(), headers.get("Content-MD5", query.get("content-md5", "")).strip(),
             headers.get("Content-Type", query.get("content-type", "")).strip(), query["Expires"]]
    lines += [f"{k}:{amz[k]}" for k in sorted(amz)]
    return "\n".join(lines) + "\n" + canonical_resource(raw_path, raw_query)


def verify_presigned(method: str, raw_path: str, raw_query: str, query: Mapping[str, str],
                     headers: MultiMapping[str], users: Mapping[str, User], now: float) -> User:
    """The user whose SigV2 presigned URL this request is; S3Error as S3 answers otherwise."""
    if any(p not in query for p in PARAMS):
        raise S3Error("AccessDenied", "Query-string authentication requires the Signature, Expires and "
                      "AWSAccessKeyId parameters")
    user = users.get(query["AWSAccessKeyId"])
    if user is None:
        raise S3Error("InvalidAccessKeyId", extra={"AWSAccessKeyId": query["AWSAccessKeyId"]})
    expires = query["Expires"]
    if not expires.isdigit() or len(expires) > 12:
        raise S3Error("AccessDenied", "Invalid date (should be seconds since epoch)", extra={"Expires": expires})
    text = string_to_sign(method, raw_path, raw_query, query, headers)
    expected = base64.b64encode(hmac.new(user.secret_key.encode(), text.encode("utf-8", "surrogateescape"),
                                         hashlib.sha1).digest()).decode()
    if not hmac.compare_digest(expected, query["Signature"]):
        raise S3Error("SignatureDoesNotMatch", extra={"AWSAccessKeyId": user.access_key, "StringToSign": text,
                                                      "SignatureProvided": query["Signature"]})
    if now > int(expires):
        raise S3Error("AccessDenied", "Request has expired", extra={"Expires": expires})
    return user
