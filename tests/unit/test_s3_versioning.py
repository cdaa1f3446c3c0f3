"""S3 versioning helpers: null versions are told apart by their id, and shown to clients as S3 does."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway import versioning
from gateway.buckets import Bucket
from gateway.errors import S3Error
from objstore.versions import is_version, version_time_ns


def bucket(state: str | None) -> Bucket:
    return Bucket("b", "owner", "owner", 0, versioning=state)


@settings(max_examples=200, deadline=None)
@given(st.sampled_from([None, "Enabled", "Suspended"]))
def test_ids_are_null_exactly_when_versioning_is_not_enabled(state: str | None) -> None:
    version = versioning.object_version(bucket(state))
    assert is_version(version)
    assert versioning.is_null(version) == (state != "Enabled")


def test_ids_still_sort_by_time() -> None:
    ids = [versioning.object_version(bucket(s)) for s in (None, "Enabled", "Suspended", "Enabled", None)]
    assert ids == sorted(ids)
    assert [version_time_ns(v) for v in ids] == sorted(version_time_ns(v) for v in ids)


def test_what_clients_see() -> None:
    enabled, null = versioning.object_version(bucket("Enabled")), versioning.object_version(bucket(None))
    assert versioning.shown(bucket(None), null) is None  # never versioned: no version ids at all
    assert versioning.shown(bucket("Enabled"), enabled) == enabled
    assert versioning.shown(bucket("Enabled"), null) == "null"
    assert versioning.shown(bucket("Suspended"), null) == "null"
    assert versioning.shown_on_write(bucket("Suspended"), null) is None  # S3 sends no id for a null write
    assert versioning.shown_on_write(bucket("Enabled"), enabled) == enabled


@pytest.mark.parametrize("value", ["null", "0" * 32, "18ec3885051608b2e73c19c35542b87f"])
def test_accepted_version_ids(value: str) -> None:
    versioning.check_version_id(value)


@pytest.mark.parametrize("value", ["", "NULL", "zz", "0" * 31, "G" * 32, "18EC3885051608B2E73C19C35542B87F"])
def test_refused_version_ids(value: str) -> None:
    with pytest.raises(S3Error) as e:
        versioning.check_version_id(value)
    assert e.value.code == "InvalidArgument"
