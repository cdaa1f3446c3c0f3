"""AWS Signature Version 4 verification of S3 requests: Authorization header and presigned URLs."""

from __future__ import annotations

import hashlib
import hmac
import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from functools import lru_cache
from urllib.parse import quote_from_bytes, unquote_to_bytes

from aiohttp import web
from multidict import CIMultiDictProxy, MultiMapping

from gateway import sigv2
from gateway.errors import S3Error
from gateway.payload import (
    STREAMING_MODES,
    STREAMING_SIGNED,
    STREAMING_SIGNED_TRAILER,
    STREAMING_UNSIGNED_TRAILER,
    UNSIGNED_PAYLOAD,
    PayloadReader,
)
from objstore.config import User

__all__ = ["AuthResult", "Authenticator", "ChunkSigner", "PayloadReader", "access_key_of", "canonical_query",
           "uri_encode"]

ALGORITHM = "AWS4-HMAC-SHA256"
SERVICE = "s3"
MAX_PRESIGN_EXPIRES = 7 * 24 * 3600  # S3 refuses presigned URLs valid for longer than a week
AMZ_DATE_FORMAT = "%Y%m%dT%H%M%SZ"
EMPTY_SHA256 = hashlib.sha256(b"").hexdigest()
UNSUPPORTED_MECHANISM = "The authorization mechanism you have provided is not supported. Please use AWS4-HMAC-SHA256."
PRESIGN_PARAMS = ("X-Amz-Algorithm", "X-Amz-Credential", "X-Amz-Date", "X-Amz-Expires", "X-Amz-SignedHeaders",
                  "X-Amz-Signature")

_HEX64 = re.compile(r"[0-9a-fA-F]{64}")
_SIGNATURE = re.compile(r"[0-9a-f]{64}")
_AMZ_DATE = re.compile(r"\d{8}T\d{6}Z")


# ---------------------------------------------------------------- canonical request


def uri_encode(raw: bytes, keep_slash: bool) -> str:
    """AWS's UriEncode: every byte except A-Z a-z 0-9 - _ . ~ (and '/' in paths) as %XX, upper-case hex."""
    return quote_from_bytes(raw, safe="/~" if keep_slash else "~")


def canonical_query(raw_query: str, exclude: str | None = None) -> str:
    """The canonical query string: each name and value decoded then UriEncoded, sorted by name, then value.

    '+' decodes to a space, as the gateway's own query parsing (yarl) reads it, so the
    signature covers the parameters exactly as the handlers will see them.
    """
    pairs: list[tuple[str, str]] = []
    for item in raw_query.split("&"):
        if not item:
            continue
        name, _, value = item.partition("=")
        name_b = unquote_to_bytes(name.replace("+", " "))
        if exclude is not None and name_b == exclude.encode():
            continue
        pairs.append((uri_encode(name_b, False), uri_encode(unquote_to_bytes(value.replace("+", " ")), False)))
    pairs.sort()
    return "&".join(f"{n}={v}" for n, v in pairs)


def canonical_uri_candidates(raw_path: str) -> list[str]:
    """The path as sent (S3 signs it single-encoded, unnormalized), then its AWS re-encoding if different.

    Clients that send a character AWS would encode (e.g. '(' or '!') still sign its encoded
    form; both forms name the same decoded path, so accepting either widens nothing.
    """
    path = raw_path or "/"
    reencoded = uri_encode(unquote_to_bytes(path), True)
    return [path] if reencoded == path else [path, reencoded]


def canonical_headers(headers: MultiMapping[str], signed: list[str]) -> str:
    """'name:value\\n' per signed header; repeated headers joined by ',', whitespace runs collapsed."""
    lines = []
    for name in signed:
        values = headers.getall(name, [])
        lines.append(f"{name}:{','.join(' '.join(v.split()) for v in values)}\n")
    return "".join(lines)


def string_to_sign(amz_date: str, scope: str, canonical_request: str) -> str:
    digest = hashlib.sha256(canonical_request.encode("utf-8", "surrogateescape")).hexdigest()
    return f"{ALGORITHM}\n{amz_date}\n{scope}\n{digest}"


@lru_cache(maxsize=1024)
def signing_key(secret_key: str, date: str, region: str, service: str) -> bytes:
    """The derived key of one user for one day, region and service (cached: it changes once a day)."""
    key = hmac.new(f"AWS4{secret_key}".encode(), date.encode(), hashlib.sha256).digest()
    for part in (region, service, "aws4_request"):
        key = hmac.new(key, part.encode(), hashlib.sha256).digest()
    return key


def sign(key: bytes, text: str) -> str:
    return hmac.new(key, text.encode("utf-8", "surrogateescape"), hashlib.sha256).hexdigest()


@dataclass(frozen=True)
class ChunkSigner:
    """Signs the chunks and trailer of an aws-chunked body, chained from the request's seed signature."""

    key: bytes
    amz_date: str
    scope: str
    seed_signature: str

    def chunk_signature(self, previous: str, chunk_sha256_hex: str) -> str:
        text = f"{ALGORITHM}-PAYLOAD\n{self.amz_date}\n{self.scope}\n{previous}\n{EMPTY_SHA256}\n{chunk_sha256_hex}"
        return sign(self.key, text)

    def trailer_signature(self, previous: str, trailer_sha256_hex: str) -> str:
        return sign(self.key, f"{ALGORITHM}-TRAILER\n{self.amz_date}\n{self.scope}\n{previous}\n{trailer_sha256_hex}")


# ---------------------------------------------------------------- parsing the credentials


@dataclass(frozen=True)
class _Credential:
    access_key: str
    date: str
    region: str
    service: str

    @property
    def scope(self) -> str:
        return f"{self.date}/{self.region}/{self.service}/aws4_request"


@dataclass(frozen=True)
class _Claim:
    """What a request claims about its signature, from the Authorization header or the query."""

    credential: _Credential
    signed_headers: list[str]
    signature: str
    amz_date: str
    request_time: float
    presigned: bool
    expires: int = 0


def _parse_credential(value: str, error: str) -> _Credential:
    # The access key itself may contain '/', so split from the right.
    parts = value.rsplit("/", 4)
    if len(parts) != 5 or parts[4] != "aws4_request" or not parts[0]:
        raise S3Error(error, "The credential is malformed; expecting \"<YOUR-AKID>/YYYYMMDD/REGION/SERVICE/aws4_request\".")
    return _Credential(*parts[:4])


def _parse_amz_date(value: str, error: str, what: str) -> float:
    try:
        if not _AMZ_DATE.fullmatch(value):
            raise ValueError(value)  # strptime alone would accept single-digit fields
        # The fields by position (the pattern fixed them): a third of strptime's cost, every request pays it.
        return datetime(int(value[0:4]), int(value[4:6]), int(value[6:8]), int(value[9:11]), int(value[11:13]),
                        int(value[13:15]), tzinfo=UTC).timestamp()
    except ValueError:
        raise S3Error(error, f"{what} must be in the ISO8601 Long Format \"yyyyMMdd'T'HHmmss'Z'\"") from None


def _parse_signed_headers(value: str, error: str) -> list[str]:
    # AWS sorts them; a client that did not sorted its canonical headers the same way, so keep the order given.
    names = value.split(";")
    if not value or any(not n or n != n.lower().strip() for n in names) or len(set(names)) != len(names):
        raise S3Error(error, "SignedHeaders must be lower-case header names separated by ';'.")
    if "host" not in names:
        raise S3Error(error, "The host header must be signed.")
    return names


def _split_target(raw_target: str) -> tuple[str, str]:
    """Split the raw request target into its path and query, both exactly as sent."""
    if raw_target.startswith(("http://", "https://")):
        # absolute-form target (proxies): drop scheme and authority
        after_scheme = raw_target.split("://", 1)[1]
        slash = after_scheme.find("/")
        raw_target = after_scheme[slash:] if slash >= 0 else "/"
    path, _, query = raw_target.partition("?")
    path = path.split("#", 1)[0]
    return path, query.split("#", 1)[0]


# ---------------------------------------------------------------- the authenticator


def access_key_of(request: web.Request) -> str | None:
    """The access key a request claims (SigV4 header or query, SigV2 query), before anything is verified.

    The gateway uses it to fetch a user it does not know yet; a malformed claim gives None and is refused
    by `Authenticator.authenticate` with the proper error.
    """
    authorization = request.headers.get("Authorization")
    if authorization is not None:
        algorithm, _, rest = authorization.strip().partition(" ")
        if algorithm != ALGORITHM:
            return None
        for item in rest.split(","):
            name, sep, value = item.strip().partition("=")
            if sep and name.strip() == "Credential":
                return value.strip().rsplit("/", 4)[0] or None
        return None
    credential = request.query.get("X-Amz-Credential")
    if credential is not None:
        return credential.rsplit("/", 4)[0] or None
    return request.query.get("AWSAccessKeyId") or None


@dataclass
class AuthResult:
    """An authenticated request: who sent it, and its body, verified as it is read."""

    user: User
    payload: PayloadReader
    presigned: bool = False


class Authenticator:
    """Verifies SigV4 signatures of incoming requests against the configured users."""

    def __init__(
        self,
        users: Mapping[str, User],
        region: str,
        max_skew: float = 900,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.users = users
        self.region = region
        self.max_skew = max_skew
        self.clock = clock

    def authenticate(self, request: web.Request) -> AuthResult:
        """Check the request's signature; raise S3Error unless it is valid. The body is checked as it is read."""
        headers = request.headers
        raw_path, raw_query = _split_target(request.raw_path)
        query_names = {item.partition("=")[0] for item in raw_query.split("&") if item}
        authorization = headers.get("Authorization")
        presigned = "X-Amz-Signature" in query_names or "X-Amz-Credential" in query_names
        if authorization is not None and presigned:
            raise S3Error("InvalidArgument", "Only one auth mechanism allowed; only the X-Amz-Algorithm query "
                          "parameter or the Authorization header should be specified")
        if authorization is not None:
            claim = self._claim_from_header(authorization, headers)
        elif presigned:
            claim = self._claim_from_query(request)
        elif sigv2.is_presigned_v2(query_names):
            # aws-cli v1 presigns with SigV2 by default: accept that URL form (and only that one)
            user = sigv2.verify_presigned(request.method, raw_path, raw_query, request.query, headers, self.users,
                                          self.clock())
            return AuthResult(user, PayloadReader(request.content, headers, UNSIGNED_PAYLOAD), presigned=True)
        else:
            raise S3Error("AccessDenied", "Anonymous access is not allowed.")

        user = self._check_scope(claim)
        self._check_time(claim)
        unsigned = sorted(
            {n.lower() for n in headers if n.lower().startswith("x-amz-")} - set(claim.signed_headers)
        )
        if unsigned:
            raise S3Error("AccessDenied", "There were headers present in the request which were not signed",
                          extra={"HeadersNotSigned": ", ".join(unsigned)})

        content_sha256 = self._payload_hash(headers, claim)
        key = signing_key(user.secret_key, claim.credential.date, claim.credential.region, SERVICE)
        query = canonical_query(raw_query, exclude="X-Amz-Signature" if claim.presigned else None)
        canon_headers = canonical_headers(headers, claim.signed_headers)
        signed_names = ";".join(claim.signed_headers)
        first_attempt: tuple[str, str] | None = None
        for uri in canonical_uri_candidates(raw_path):
            canonical = f"{request.method}\n{uri}\n{query}\n{canon_headers}\n{signed_names}\n{content_sha256}"
            to_sign = string_to_sign(claim.amz_date, claim.credential.scope, canonical)
            if hmac.compare_digest(sign(key, to_sign), claim.signature):
                break
            first_attempt = first_attempt or (canonical, to_sign)
        else:
            assert first_attempt is not None
            raise S3Error("SignatureDoesNotMatch", extra={
                "AWSAccessKeyId": user.access_key,
                "StringToSign": first_attempt[1],
                "SignatureProvided": claim.signature,
                "CanonicalRequest": first_attempt[0],
            })

        signer = ChunkSigner(key, claim.amz_date, claim.credential.scope, claim.signature)
        payload = PayloadReader(request.content, headers, content_sha256, signer)
        return AuthResult(user, payload, claim.presigned)

    # ------------------------------------------------------------ claims

    def _claim_from_header(self, authorization: str, headers: CIMultiDictProxy[str]) -> _Claim:
        error = "AuthorizationHeaderMalformed"
        algorithm, _, rest = authorization.strip().partition(" ")
        if algorithm != ALGORITHM:
            raise S3Error("InvalidRequest", UNSUPPORTED_MECHANISM)
        fields: dict[str, str] = {}
        for item in rest.split(","):
            name, sep, value = item.strip().partition("=")
            if sep:
                fields[name.strip()] = value.strip()
        missing = [f for f in ("Credential", "SignedHeaders", "Signature") if f not in fields]
        if missing:
            raise S3Error(error, f"The authorization header is malformed; missing {missing[0]}.")
        credential = _parse_credential(fields["Credential"], error)
        signed = _parse_signed_headers(fields["SignedHeaders"], error)
        if "x-amz-date" in headers:
            date_header = "x-amz-date"
            request_time = _parse_amz_date(headers["x-amz-date"], "AccessDenied", "X-Amz-Date")
        elif "date" in headers:
            date_header = "date"
            try:
                request_time = parsedate_to_datetime(headers["date"]).timestamp()
            except (TypeError, ValueError):
                raise S3Error("AccessDenied", "AWS authentication requires a valid Date or x-amz-date header") from None
        else:
            raise S3Error("AccessDenied", "AWS authentication requires a valid Date or x-amz-date header")
        if date_header not in signed:
            raise S3Error(error, f"The {date_header} header must be signed.")
        # The string to sign carries the time in the x-amz-date format whichever header gave it.
        amz_date = headers["x-amz-date"] if date_header == "x-amz-date" else time.strftime(
            AMZ_DATE_FORMAT, time.gmtime(request_time))
        if "x-amz-content-sha256" not in headers:
            raise S3Error("InvalidRequest", "Missing required header for this request: x-amz-content-sha256")
        return _Claim(credential, signed, fields["Signature"], amz_date, request_time, presigned=False)

    def _claim_from_query(self, request: web.Request) -> _Claim:
        error = "AuthorizationQueryParametersError"
        q = request.query
        if any(p not in q for p in PRESIGN_PARAMS):
            raise S3Error(error, "Query-string authentication version 4 requires the X-Amz-Algorithm, "
                          "X-Amz-Credential, X-Amz-Signature, X-Amz-Date, X-Amz-SignedHeaders, and "
                          "X-Amz-Expires parameters.")
        if q["X-Amz-Algorithm"] != ALGORITHM:
            raise S3Error(error, "X-Amz-Algorithm only supports \"AWS4-HMAC-SHA256\"")
        credential = _parse_credential(q["X-Amz-Credential"], error)
        signed = _parse_signed_headers(q["X-Amz-SignedHeaders"], error)
        amz_date = q["X-Amz-Date"]
        request_time = _parse_amz_date(amz_date, error, "X-Amz-Date")
        expires_text = q["X-Amz-Expires"]
        if not expires_text.isdigit():
            raise S3Error(error, "X-Amz-Expires should be a number")
        expires = int(expires_text)
        if expires > MAX_PRESIGN_EXPIRES:
            raise S3Error(error, "X-Amz-Expires must be less than a week (in seconds) that is 604800")
        return _Claim(credential, signed, q["X-Amz-Signature"], amz_date, request_time, True, expires)

    # ------------------------------------------------------------ checks

    def _check_scope(self, claim: _Claim) -> User:
        cred = claim.credential
        error = "AuthorizationQueryParametersError" if claim.presigned else "AuthorizationHeaderMalformed"
        user = self.users.get(cred.access_key)
        if user is None:
            raise S3Error("InvalidAccessKeyId", extra={"AWSAccessKeyId": cred.access_key})
        if cred.service != SERVICE:
            raise S3Error(error, f"The authorization header is malformed; incorrect service \"{cred.service}\". "
                          f"This endpoint belongs to \"{SERVICE}\".")
        if cred.region != self.region:
            raise S3Error(error, f"The authorization header is malformed; the region '{cred.region}' is wrong; "
                          f"expecting '{self.region}'", extra={"Region": self.region})
        if cred.date != claim.amz_date[:8]:
            raise S3Error(error, f"The authorization header is malformed; Invalid credential date \"{cred.date}\". "
                          "This date is not the same as X-Amz-Date.")
        if not _SIGNATURE.fullmatch(claim.signature):
            raise S3Error(error, "The signature must be 64 lower-case hexadecimal characters.")
        return user

    def _check_time(self, claim: _Claim) -> None:
        now = self.clock()
        server_time = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(now))
        if claim.presigned:
            if claim.request_time - now > self.max_skew:
                raise S3Error("AccessDenied", "Request is not valid yet")
            if now > claim.request_time + claim.expires:
                expired_at = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(claim.request_time + claim.expires))
                raise S3Error("AccessDenied", "Request has expired", extra={
                    "X-Amz-Expires": claim.expires, "Expires": expired_at, "ServerTime": server_time,
                })
        elif abs(claim.request_time - now) > self.max_skew:
            raise S3Error("RequestTimeTooSkewed", extra={
                "RequestTime": claim.amz_date,
                "ServerTime": server_time,
                "MaxAllowedSkewMilliseconds": int(self.max_skew * 1000),
            })

    def _payload_hash(self, headers: CIMultiDictProxy[str], claim: _Claim) -> str:
        value = headers.get("x-amz-content-sha256")
        if value is None:
            # Presigned URLs cannot know their body; S3 signs them with this constant.
            return UNSIGNED_PAYLOAD
        # Any x-amz-* header present is signed (checked before), so the value is the one the client signed.
        value = value.strip()
        if value == UNSIGNED_PAYLOAD or value in STREAMING_MODES or _HEX64.fullmatch(value):
            return value
        if value.startswith("STREAMING-AWS4-ECDSA-P256-SHA256-PAYLOAD"):
            raise S3Error("NotImplemented", "Signature Version 4A (AWS4-ECDSA-P256-SHA256) is not supported.")
        raise S3Error(
            "InvalidArgument",
            "x-amz-content-sha256 must be UNSIGNED-PAYLOAD, STREAMING-UNSIGNED-PAYLOAD-TRAILER, "
            "STREAMING-AWS4-HMAC-SHA256-PAYLOAD, STREAMING-AWS4-HMAC-SHA256-PAYLOAD-TRAILER or a valid sha256 value.",
            extra={"ArgumentName": "x-amz-content-sha256", "ArgumentValue": value},
        )


__all__ += ["STREAMING_SIGNED", "STREAMING_SIGNED_TRAILER", "STREAMING_UNSIGNED_TRAILER", "UNSIGNED_PAYLOAD"]
