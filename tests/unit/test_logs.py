"""Structured logs: one JSON object per line with process, level, message, request id and extra fields."""

from __future__ import annotations

import asyncio
import io
import json
import logging
from collections.abc import Iterator

import pytest

from objstore.client import REQUEST_ID
from objstore.logs import setup_logging, stop_logging


@pytest.fixture
def log_stream() -> Iterator[io.StringIO]:
    """setup_logging into a buffer; the root logger's handlers and level are put back afterwards."""
    root = logging.getLogger()
    saved_handlers, saved_level = list(root.handlers), root.level
    stream = io.StringIO()
    setup_logging("debug", "n7", stream)
    try:
        yield stream
    finally:
        stop_logging()
        for h in list(root.handlers):
            root.removeHandler(h)
        for h in saved_handlers:
            root.addHandler(h)
        root.setLevel(saved_level)


def lines(stream: io.StringIO) -> list[dict[str, object]]:
    """The JSON lines written so far (the writer thread is stopped first, so every queued line is out)."""
    stop_logging()
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def test_a_record_is_one_json_line_with_its_fields(log_stream: io.StringIO) -> None:
    logging.getLogger("objstore.test").info("stored %d shards\nof a \"quoted\" key", 3, extra={"bucket": "b1"})
    [doc] = lines(log_stream)
    assert doc["msg"] == 'stored 3 shards\nof a "quoted" key'
    assert doc["level"] == "info" and doc["process"] == "n7" and doc["logger"] == "objstore.test"
    assert doc["bucket"] == "b1"
    assert doc["ts"].endswith("Z") and "T" in doc["ts"]
    assert "request_id" not in doc  # no request being served


def test_the_request_id_of_the_context_is_on_every_line(log_stream: io.StringIO) -> None:
    async def serve(rid: str) -> None:
        REQUEST_ID.set(rid)
        await asyncio.sleep(0)
        logging.getLogger("objstore.test").warning("serving")

    async def main() -> None:
        # two requests interleaved on one loop keep their own ids (contextvars are per task)
        await asyncio.gather(serve("AAAA"), serve("BBBB"))

    asyncio.run(main())
    ours = [d for d in lines(log_stream) if d["logger"] == "objstore.test"]  # asyncio logs its selector at debug
    assert sorted(d["request_id"] for d in ours) == ["AAAA", "BBBB"]
    assert REQUEST_ID.get() is None


def test_an_explicit_request_id_wins_and_exceptions_keep_their_traceback(log_stream: io.StringIO) -> None:
    token = REQUEST_ID.set("CONTEXT")
    try:
        try:
            raise ValueError("bad shard")
        except ValueError:
            logging.getLogger("objstore.test").exception("failed", extra={"request_id": "EXPLICIT"})
    finally:
        REQUEST_ID.reset(token)
    [doc] = lines(log_stream)
    assert doc["request_id"] == "EXPLICIT"
    assert doc["level"] == "error"
    assert "ValueError: bad shard" in str(doc["exc"])


def test_setup_twice_does_not_double_lines_and_odd_extras_are_strings(log_stream: io.StringIO) -> None:
    second = io.StringIO()
    setup_logging("info", "gateway", second)
    logging.getLogger("objstore.test").debug("dropped below info")
    logging.getLogger("objstore.test").info("kept", extra={"when": object()})
    assert lines(log_stream) == []
    [doc] = lines(second)
    assert doc["process"] == "gateway" and doc["msg"] == "kept"
    assert str(doc["when"]).startswith("<object object")


def test_lines_are_written_by_a_thread_and_all_out_after_stop(log_stream: io.StringIO) -> None:
    log = logging.getLogger("objstore.test")
    for i in range(200):
        log.info("line %d", i)
    docs = lines(log_stream)  # stop_logging drains the queue
    assert [d["msg"] for d in docs] == [f"line {i}" for i in range(200)]
    log.info("after stop")  # written at once by the handler that replaced the queue
    assert json.loads(log_stream.getvalue().splitlines()[-1])["msg"] == "after stop"


def test_lines_from_many_threads_arrive_whole_and_lookups_come_back(log_stream: io.StringIO) -> None:
    import re
    import threading

    log = logging.getLogger("objstore.test")

    def burst(n: int) -> None:
        for i in range(300):
            log.info("t%d line %d", n, i, extra={"n": n})

    threads = [threading.Thread(target=burst, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert logging._srcfile is None  # no caller lookup while the JSON lines are on
    docs = lines(log_stream)
    for n in range(4):
        assert [d["msg"] for d in docs if d["n"] == n] == [f"t{n} line {i}" for i in range(300)]
    assert logging._srcfile is not None and logging.logThreads  # put back for every other handler
    assert all(re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", str(d["ts"])) for d in docs)
