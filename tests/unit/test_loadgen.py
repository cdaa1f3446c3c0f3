"""The S3 load generator against the in-memory sink: counts, bounds, corruption caught, SigV4 equal to botocore's."""

from __future__ import annotations

import datetime
import json
import os
import random
import re
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from types import SimpleNamespace
from unittest import mock

import aiohttp
import pytest
from aiohttp import web
from botocore.auth import S3SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials
from hypothesis import given, settings
from hypothesis import strategies as st

from benchmarks import loadgen
from benchmarks.loadcell import KeySpace, latency_summary, run_cell
from benchmarks.procstat import ProcSampler, parse_pids, pids_from_cluster_file
from benchmarks.s3load import (
    ROTATION,
    PayloadStream,
    S3LoadClient,
    S3Target,
    SigV4Signer,
    encode_key,
)
from benchmarks.sink import STATE, Sink

ACCESS, SECRET, REGION = "AKIDLOADGEN", "loadgen/secret+key", "eu-west-3"
NOW = 1_700_000_000.0  # 2023-11-14T22:13:20Z


def botocore_authorization(method: str, url: str, params: dict[str, str], headers: dict[str, str], now: float) -> str:
    """Authorization header botocore's S3SigV4Auth computes for the same request at the same time."""
    request = AWSRequest(method=method, url=url, params=params, headers=headers)
    # botocore's own switch for UNSIGNED-PAYLOAD (honoured over https only), as the load generator signs
    request.context["client_config"] = SimpleNamespace(s3={"payload_signing_enabled": False})
    stamp = datetime.datetime.fromtimestamp(now, datetime.UTC)
    with mock.patch("botocore.auth.get_current_datetime", return_value=stamp):
        S3SigV4Auth(Credentials(ACCESS, SECRET), "s3", REGION).add_auth(request)
    return str(request.headers["Authorization"])


key_text = st.text(st.characters(blacklist_categories=("Cs", "Cc")), min_size=1, max_size=40)


@settings(max_examples=60, deadline=None)
@given(
    method=st.sampled_from(["GET", "PUT", "HEAD", "DELETE"]),
    key=key_text,
    prefix=st.none() | key_text,
    token=st.none() | key_text,
    content_type=st.none() | st.sampled_from(["application/octet-stream", "text/plain;  charset=utf-8"]),
    # whole microseconds, as botocore's datetime holds them; the signer truncates to the second
    now=st.integers(min_value=10**15, max_value=4 * 10**15).map(lambda micros: micros / 1e6),
)
def test_signature_equals_botocore(
    method: str, key: str, prefix: str | None, token: str | None, content_type: str | None, now: float
) -> None:
    signer = SigV4Signer(ACCESS, SECRET, REGION)
    host = "127.0.0.1:9000"
    path = f"/bucket/{encode_key(key)}"
    params = {name: value for name, value in (("prefix", prefix), ("continuation-token", token)) if value is not None}
    extra = {"Content-Type": content_type} if content_type else {}
    query, headers = signer.sign(method, host, path, list(params.items()), extra, now=now)
    expected = botocore_authorization(method, f"https://{host}{path}", params,
                                      {"X-Amz-Content-SHA256": "UNSIGNED-PAYLOAD", **extra}, now)
    assert headers["authorization"] == expected
    assert headers["x-amz-content-sha256"] == "UNSIGNED-PAYLOAD"
    assert sorted(query.split("&")) == query.split("&") or not query


def test_signing_key_changes_with_the_day() -> None:
    signer = SigV4Signer(ACCESS, SECRET, REGION)
    one = signer.sign("GET", "h", "/b/k", now=NOW)[1]["authorization"]
    next_day = signer.sign("GET", "h", "/b/k", now=NOW + 86400)[1]["authorization"]
    assert "20231114/eu-west-3/s3/aws4_request" in one and "20231115/eu-west-3/s3/aws4_request" in next_day
    assert signer.sign("GET", "h", "/b/k", now=NOW)[1]["authorization"] == one


def test_payload_windows_are_deterministic_and_distinct() -> None:
    a, b = PayloadStream(seed=5), PayloadStream(seed=5)
    a.grow(4096)
    b.grow(3 << 20)  # growing further keeps the stream's beginning
    assert bytes(a.body("k1", 4096)) == bytes(b.body("k1", 4096))
    assert bytes(a.body("k1", 4096)) != bytes(a.body("k2", 4096))
    assert len(a) >= 4096 + ROTATION
    chunk = bytes(b.body("k9", 3 << 20)[1000:70000])
    assert b.matches("k9", 1000, chunk) and not b.matches("k9", 1001, chunk)
    with pytest.raises(ValueError):
        a.body("k1", 8 << 20)


def test_parsers() -> None:
    assert [loadgen.parse_size(s) for s in ("4KiB", "4k", "1MiB", "256m", "4096", "1 GiB")] == [
        4096, 4096, 1 << 20, 256 << 20, 4096, 1 << 30]
    with pytest.raises(ValueError):
        loadgen.parse_size("4 parsecs")
    assert loadgen.parse_mix("get=70,put=20,list=5,delete=5") == {"get": 70, "put": 20, "list": 5, "delete": 5}
    for bad in ("get=70,copy=30", "get", "get=0"):
        with pytest.raises(ValueError):
            loadgen.parse_mix(bad)
    assert loadgen.format_size(4096) == "4 KiB" and loadgen.format_size(1000) == "1000 B"
    assert latency_summary([0.001, 0.002, 0.003, 0.004]) == {"p50": 2.0, "p90": 4.0, "p99": 4.0, "max": 4.0,
                                                             "mean": 2.5}


def test_keyspace_never_deletes_a_key_being_read() -> None:
    keys = KeySpace("p/", 4096)
    for _ in range(3):
        keys.add(keys.new_key())
    rng = random.Random(1)
    reading = {keys.start_read(rng) for _ in range(20)}
    taken = [keys.take(rng) for _ in range(10)]
    assert all(key not in reading for key in taken if key is not None)
    assert keys.take(rng, keep=len(keys)) is None
    assert len(keys) + sum(1 for key in taken if key is not None) == 3


def test_procstat_samples_this_process(tmp_path: Path) -> None:
    with ProcSampler([os.getpid()], interval=0.01) as sampler:
        sum(i * i for i in range(200_000))
    usage = sampler.usage[0]
    assert usage.alive and usage.cpu_seconds is not None and usage.cpu_seconds >= 0
    assert usage.peak_rss_bytes and usage.hwm_bytes and usage.hwm_bytes >= usage.peak_rss_bytes // 2
    gone = ProcSampler([2**22 + 7])  # above the kernel's pid_max default: no such process
    gone.start()
    assert gone.stop()[0].alive is False
    cluster = tmp_path / "cluster.json"
    cluster.write_text(json.dumps({"gateway": {"pid": 11}, "nodes": [{"pid": 12}, {"pid": 13}, {"pid": None}]}))
    assert pids_from_cluster_file(cluster) == [11, 12, 13] == parse_pids(str(cluster))
    assert parse_pids("5, 6") == [5, 6] and parse_pids(None) == [] and parse_pids([7]) == [7]


@pytest.fixture
async def sink() -> AsyncIterator[Sink]:
    async with Sink() as running:
        yield running


def target(sink: Sink) -> S3Target:
    return S3Target(sink.url, "bench", ACCESS, SECRET, REGION)


async def test_run_workload_reports_sane_counts(sink: Sink) -> None:
    results = await loadgen.run_workload(
        target(sink), ["put", "get", "head", "list", "mixed", "delete"], [4096, 2 << 20], [1, 4],
        max_ops=24, max_seconds=20, objects=12, mix={"get": 50, "put": 30, "head": 10, "list": 5, "delete": 5},
    )
    assert len(results) == 6 * 2 * 2
    for r in results:
        assert r.errors == 0, r.first_error
        assert r.seconds > 0 and r.ops_per_s > 0 and r.latency_ms["p50"] <= r.latency_ms["p99"] <= r.latency_ms["max"]
        if r.workload in ("put", "get", "head", "list", "mixed"):
            assert r.ops == 24 and r.stopped_by == "max_ops"
        if r.workload in ("put", "get"):
            assert r.bytes == r.ops * r.size and r.mb_per_s > 0
        if r.workload == "head":
            assert r.bytes == 0
        if r.workload == "list":
            assert r.listed >= r.ops * 12
        if r.workload == "mixed":
            assert set(r.by_op) <= {"get", "put", "head", "list", "delete"} and sum(
                int(v["ops"]) for v in r.by_op.values()) == 24
    deletes = [r for r in results if r.workload == "delete"]
    assert all(0 < r.ops <= 24 and r.stopped_by in ("max_ops", "no_keys") for r in deletes)
    assert sink.state.objects["bench"] == {}  # everything the run wrote was deleted at the end


async def test_delete_stops_when_no_key_is_left(sink: Sink) -> None:
    [result] = await loadgen.run_workload(target(sink), ["delete"], [4096], [3], max_ops=50, objects=7)
    assert (result.ops, result.errors, result.stopped_by) == (7, 0, "no_keys")
    assert sink.state.objects["bench"] == {}


async def test_duration_bound_ends_a_cell(sink: Sink) -> None:
    [result] = await loadgen.run_workload(target(sink), ["put"], [4096], [2], max_ops=10**9, max_seconds=0.3)
    # in-flight requests finish after the deadline: on a busy machine that can take a while
    assert result.stopped_by == "duration" and 0.3 <= result.seconds < 10 and result.ops > 0
    put, head = await loadgen.run_workload(target(sink), ["put", "head"], [8192], [2], max_ops=40,
                                           max_bytes=5 * 8192, objects=3)
    assert (put.ops, put.stopped_by) == (5, "max_bytes")  # a byte bound caps PUT and GET ...
    assert (head.ops, head.stopped_by) == (40, "max_ops")  # ... not HEAD, which moves no body
    with pytest.raises(ValueError):
        await loadgen.run_workload(target(sink), ["put"], max_seconds=0)
    with pytest.raises(ValueError):
        await loadgen.run_workload(target(sink), ["copy"])


async def client_for(sink: Sink, session: aiohttp.ClientSession, sizes: list[int]) -> S3LoadClient:
    client = S3LoadClient(session, target(sink), PayloadStream())
    await client.create_bucket()
    for size in sizes:
        await client.payloads.ensure(size)
    return client


@pytest.mark.parametrize("size", [4096, 3 << 20])
async def test_corrupted_get_is_an_error(size: int) -> None:
    async with Sink(corrupt_every=1) as sink, aiohttp.ClientSession() as session:
        client = await client_for(sink, session, [size])
        keys = KeySpace("c/", size)
        for _ in range(3):
            key = keys.new_key()
            await client.put(key, size)
            keys.add(key)
        result = await run_cell(client, keys, "get", 2, max_ops=10, max_seconds=10, mix={}, rng=random.Random(0))
        assert result.ops == 0 and result.errors == 10 == sink.state.corrupted
        assert result.errors_by_kind == {"GET body mismatch": 10}
        sink.state.corrupt_every = 0
        clean = await run_cell(client, keys, "get", 2, max_ops=10, max_seconds=10, mix={}, rng=random.Random(0))
        assert clean.ops == 10 and clean.errors == 0


async def test_missing_and_short_objects_are_errors(sink: Sink) -> None:
    async with aiohttp.ClientSession() as session:
        client = await client_for(sink, session, [8192])
        keys = KeySpace("m/", 8192)
        keys.add(keys.new_key())  # never written: GET answers 404
        short = keys.new_key()
        await client.put(short, 4096)  # written at half the size the generator expects
        keys.add(short)
        result = await run_cell(client, keys, "get", 1, max_ops=20, max_seconds=10, mix={}, rng=random.Random(3))
        assert result.ops == 0 and result.errors == 20
        assert set(result.errors_by_kind) == {"GET 404", "GET short body"}
        head = await run_cell(client, keys, "head", 1, max_ops=20, max_seconds=10, mix={}, rng=random.Random(3))
        assert set(head.errors_by_kind) == {"HEAD 404", "HEAD wrong length"}


async def test_list_pages_through_the_prefix(sink: Sink) -> None:
    async with aiohttp.ClientSession() as session:
        client = await client_for(sink, session, [4096])
        names = ["p/a", "p/a b", "p/b&c", "p/\u00e9", "p/z", "q/other"]
        for name in names:
            await client.put(name, 4096)
        seen, token, pages = 0, None, 0
        while pages < 10:
            count, token = await client.list_page("p/", token, max_keys=2)
            seen, pages = seen + count, pages + 1
            if token is None:
                break
        assert (seen, pages) == (5, 3)


def verifying(seen: list[bool]) -> Callable[[web.Request, Callable[[web.Request], Awaitable[web.StreamResponse]]],
                                             Awaitable[web.StreamResponse]]:
    """Middleware that recomputes each request's signature with botocore from what arrived on the wire."""

    @web.middleware
    async def check(request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
                    ) -> web.StreamResponse:
        found = re.fullmatch(r"AWS4-HMAC-SHA256 Credential=[^,]+, SignedHeaders=([^,]+), Signature=(\w+)",
                             request.headers.get("Authorization", ""))
        assert found is not None
        signed = found.group(1).split(";")
        headers = {name: request.headers[name] for name in signed if name != "host"}
        wire = AWSRequest(method=request.method, url=f"http://{request.headers['host']}{request.raw_path}",
                          headers=headers)
        auth = S3SigV4Auth(Credentials(ACCESS, SECRET), "s3", REGION)
        wire.context["timestamp"] = request.headers["x-amz-date"]
        signature = auth.signature(auth.string_to_sign(wire, auth.canonical_request(wire)), wire)
        seen.append(signature == found.group(2))
        if signature != found.group(2):
            return web.Response(status=403)
        return await handler(request)

    return check


async def test_requests_on_the_wire_verify_with_botocore() -> None:
    seen: list[bool] = []
    sink = Sink()
    sink.app.middlewares.append(verifying(seen))
    async with sink:
        results = await loadgen.run_workload(
            target(sink), ["put", "get", "head", "list", "delete"], [4096], [2], max_ops=6, max_seconds=10,
            objects=4, prefix="odd keys/\u00e9+&=/",
        )
    assert all(r.errors == 0 for r in results), [r.first_error for r in results]
    assert len(seen) > 30 and all(seen)
    assert sink.app[STATE].objects["bench"] == {}


def test_main_against_sink_writes_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "results.json"
    code = loadgen.main(["--against-sink", "--sizes", "4KiB", "--concurrency", "2", "--max-ops", "30",
                         "--duration", "10", "--json", str(out)])
    assert code == 0
    data = json.loads(out.read_text())
    assert data["meta"]["against_sink"] is True and len(data["meta"]["pids"]) == 1
    assert [(r["workload"], r["size"], r["concurrency"], r["ops"]) for r in data["results"]] == [
        ("put", 4096, 2, 30), ("get", 4096, 2, 30)]
    assert all(r["server"]["cpu_seconds"] is not None and r["server"]["peak_rss_bytes"] > 0 for r in data["results"])
    assert "generator ceiling PUT 4 KiB: " in capsys.readouterr().out


def test_main_refuses_a_missing_target(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.delenv(name, raising=False)
    assert loadgen.main(["--sizes", "4KiB"]) == 2
    assert loadgen.main(["--endpoint", "http://127.0.0.1:1", "--access-key", "a", "--secret-key", "b",
                         "--timeout", "2"]) == 2
    assert "error" in capsys.readouterr().out


@pytest.mark.parametrize("size", [4096, 3 << 20])
async def test_put_answered_slowdown_is_retried_as_sdks_do_and_counted(size: int,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    from benchmarks import s3load

    monkeypatch.setattr(s3load, "SLOWDOWN_BACKOFF", 0.001)
    refusals = {"left": 3}

    @web.middleware
    async def shed(request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
                   ) -> web.StreamResponse:
        if request.method == "PUT" and request.path.count("/") > 1 and refusals["left"]:
            refusals["left"] -= 1
            async for _ in request.content.iter_chunked(1 << 16):  # the whole body, as a gateway drains it
                pass
            return web.Response(status=503, text="<Error><Code>SlowDown</Code></Error>", content_type="application/xml")
        return await handler(request)

    sink = Sink()
    sink.app.middlewares.append(shed)
    async with sink, aiohttp.ClientSession() as session:
        client = await client_for(sink, session, [size])
        keys = KeySpace("s/", size)
        result = await run_cell(client, keys, "put", 1, max_ops=2, max_seconds=10, mix={}, rng=random.Random(0))
        assert (result.ops, result.errors, result.slowdowns) == (2, 0, 3)
        assert len(sink.state.objects["bench"]) == 2, "the retried bodies arrived whole"
        refusals["left"] = s3load.SLOWDOWN_RETRIES + 1  # one more than a PUT retries
        result = await run_cell(client, keys, "put", 1, max_ops=1, max_seconds=10, mix={}, rng=random.Random(0))
        assert (result.ops, result.errors, result.slowdowns) == (0, 1, s3load.SLOWDOWN_RETRIES)
        assert result.errors_by_kind == {"PUT 503": 1}
