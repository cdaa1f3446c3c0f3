"""Node RPC authentication: HMAC-SHA256 over method, path with query, and time, keyed by the cluster secret."""

from __future__ import annotations

import hashlib
import hmac
import time
from collections.abc import Mapping

# What a signature does not cover, on purpose: the body (shards are checksummed per block and records
# are checked on commit, so a changed body is refused or detected, not trusted) and replays within the
# skew window (node RPCs are idempotent: a replayed PUT rewrites the same bytes, a replayed DELETE finds
# nothing). The node port belongs on the cluster network, never in front of S3 clients.
DATE_HEADER = "X-Objstore-Date"
SIGNATURE_HEADER = "X-Objstore-Signature"
MAX_SKEW = 900.0


def _mac(secret: str, method: str, path_qs: str, date: str) -> str:
    msg = f"{method.upper()}\n{path_qs}\n{date}".encode("utf-8", "surrogatepass")
    return hmac.new(secret.encode(), msg, hashlib.sha256).hexdigest()


def sign(secret: str, method: str, path_qs: str, now: float | None = None) -> dict[str, str]:
    """Headers that authenticate one request to a node."""
    date = str(int(time.time() if now is None else now))
    return {DATE_HEADER: date, SIGNATURE_HEADER: _mac(secret, method, path_qs, date)}


def verify(secret: str, method: str, path_qs: str, headers: Mapping[str, str], max_skew: float = MAX_SKEW,
           now: float | None = None) -> bool:
    """True if the request carries a valid, fresh signature (constant-time comparison)."""
    date, given = headers.get(DATE_HEADER), headers.get(SIGNATURE_HEADER)
    if not date or not given or not date.isdigit():
        return False
    if abs((time.time() if now is None else now) - int(date)) > max_skew:
        return False
    return hmac.compare_digest(_mac(secret, method, path_qs, date), given)
