"""Node RPC signatures: what verifies and what does not."""

from __future__ import annotations

from objstore.auth import DATE_HEADER, MAX_SKEW, SIGNATURE_HEADER, sign, verify

SECRET = "s3cr3t"
NOW = 1_700_000_000.0
PATH = "/record?bucket=b&key=a%2Fb%20%F0%9F%9A%80"


def test_signed_request_verifies() -> None:
    headers = sign(SECRET, "GET", PATH, now=NOW)
    assert set(headers) == {DATE_HEADER, SIGNATURE_HEADER} and headers[DATE_HEADER] == str(int(NOW))
    assert verify(SECRET, "GET", PATH, headers, now=NOW)
    assert verify(SECRET, "get", PATH, headers, now=NOW)  # the method is case-blind, as HTTP's is


def test_unsigned_or_malformed_headers_are_rejected() -> None:
    assert not verify(SECRET, "GET", PATH, {}, now=NOW)
    good = sign(SECRET, "GET", PATH, now=NOW)
    assert not verify(SECRET, "GET", PATH, {DATE_HEADER: good[DATE_HEADER]}, now=NOW)
    assert not verify(SECRET, "GET", PATH, {SIGNATURE_HEADER: good[SIGNATURE_HEADER]}, now=NOW)
    assert not verify(SECRET, "GET", PATH, {**good, DATE_HEADER: "-5"}, now=NOW)
    assert not verify(SECRET, "GET", PATH, {**good, DATE_HEADER: "1e9"}, now=NOW)


def test_wrong_secret_is_rejected() -> None:
    assert not verify(SECRET, "GET", PATH, sign("other", "GET", PATH, now=NOW), now=NOW)


def test_tampered_method_path_query_or_date_is_rejected() -> None:
    headers = sign(SECRET, "GET", PATH, now=NOW)
    assert not verify(SECRET, "DELETE", PATH, headers, now=NOW)
    assert not verify(SECRET, "GET", PATH.replace("bucket=b", "bucket=c"), headers, now=NOW)
    assert not verify(SECRET, "GET", PATH + "&version=1", headers, now=NOW)
    assert not verify(SECRET, "GET", "/record", headers, now=NOW)
    moved = {**headers, DATE_HEADER: str(int(NOW) + 1)}
    assert not verify(SECRET, "GET", PATH, moved, now=NOW)
    flipped = headers[SIGNATURE_HEADER][:-1] + ("0" if headers[SIGNATURE_HEADER][-1] != "0" else "1")
    assert not verify(SECRET, "GET", PATH, {**headers, SIGNATURE_HEADER: flipped}, now=NOW)


def test_stale_and_future_dates_are_rejected() -> None:
    headers = sign(SECRET, "GET", PATH, now=NOW)
    assert verify(SECRET, "GET", PATH, headers, now=NOW + MAX_SKEW)
    assert not verify(SECRET, "GET", PATH, headers, now=NOW + MAX_SKEW + 1)
    assert not verify(SECRET, "GET", PATH, headers, now=NOW - MAX_SKEW - 1)
    assert not verify(SECRET, "GET", PATH, headers, max_skew=10, now=NOW + 11)
