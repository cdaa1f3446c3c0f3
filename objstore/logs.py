"""Structured logs: one JSON object per line, carrying the process name and the request id being served."""

from __future__ import annotations

import atexit
import json
import logging
import queue
import sys
import threading
import time
from typing import IO, Any

from objstore.client import REQUEST_ID

# Attributes every LogRecord has; anything else on a record came from `extra=` and is logged as a field.
_STANDARD = frozenset(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime", "request_id"}


class RequestIdFilter(logging.Filter):
    """Stamps each record with the request id of the context that logged it (`extra={"request_id": ...}` wins)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(record, "request_id", None) is None:
            record.request_id = REQUEST_ID.get()
        return True


class JsonFormatter(logging.Formatter):
    """`{"ts", "level", "process", "logger", "msg", "request_id"?, "exc"?, ...extra fields}` on one line."""

    def __init__(self, process_name: str) -> None:
        super().__init__()
        self.process_name = process_name
        # default=str: an odd value in `extra` must cost a field's precision, never the log line
        self._encode = json.JSONEncoder(ensure_ascii=False, default=str, separators=(",", ":")).encode
        self._second: tuple[int, str] = (-1, "")  # the last second formatted: every line of it shares the text

    def _timestamp(self, record: logging.LogRecord) -> str:
        second = int(record.created)
        cached = self._second
        if cached[0] != second:
            cached = self._second = (second, time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second)))
        return f"{cached[1]}.{int(record.msecs):03d}Z"

    def format(self, record: logging.LogRecord) -> str:
        doc: dict[str, Any] = {"ts": self._timestamp(record), "level": record.levelname.lower(),
                               "process": self.process_name, "pid": record.process, "logger": record.name,
                               "msg": record.getMessage()}
        request_id = getattr(record, "request_id", None)
        if request_id:
            doc["request_id"] = request_id
        for name, value in vars(record).items():
            if name not in _STANDARD and name not in doc:
                doc[name] = value
        if record.exc_info:
            doc["exc"] = self.formatException(record.exc_info)
        elif record.exc_text:
            doc["exc"] = record.exc_text
        if record.stack_info:
            doc["stack"] = self.formatStack(record.stack_info)
        return self._encode(doc)


class _LineHandler(logging.Handler):
    """Formats a record where it is logged (the request id lives in that context) and queues the line."""

    def __init__(self, lines: queue.SimpleQueue[str | None]) -> None:
        super().__init__()
        self.lines = lines

    def handle(self, record: logging.LogRecord) -> bool:
        # No handler lock: the queue is thread-safe and formatting shares nothing between records.
        if not self.filter(record):
            return False
        self.emit(record)
        return True

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.lines.put(self.format(record))
        except Exception:  # noqa: BLE001 - logging must never take the caller down
            self.handleError(record)


LINGER = 0.05
"""Seconds the writer lets lines gather after the first one of a batch."""


class _LineWriter(threading.Thread):
    """Writes queued lines to the stream, as many as are waiting in one write; None ends it.

    After the first line of a batch it lingers (LINGER) before it writes: a thread blocked in get() is
    woken by every put (a futex wake and a GIL handoff, 14% of a node's busy time at one line per shard
    read), one asleep in the linger is not, so under load logging a line costs its formatting alone.
    """

    def __init__(self, lines: queue.SimpleQueue[str | None], stream: IO[str]) -> None:
        super().__init__(name="log-writer", daemon=True)
        self.lines, self.stream = lines, stream

    def run(self) -> None:
        behind = False  # the last batch left lines queued: write on at once
        while True:
            first = self.lines.get()
            if first is not None and not behind:
                time.sleep(LINGER)
            batch = [first]
            while len(batch) < 1000:
                try:
                    batch.append(self.lines.get_nowait())
                except queue.Empty:
                    break
            behind = len(batch) == 1000
            done = None in batch
            text = [line for line in batch if line is not None]
            try:
                if text:
                    self.stream.write("\n".join(text) + "\n")
                    self.stream.flush()
            except (OSError, ValueError):  # a closed or broken stream: the lines are lost, the process goes on
                pass
            if done:
                return


_writer: _LineWriter | None = None
_LOOKUPS = (logging.logThreads, logging._srcfile)
"""What setup_logging turns off and stop_logging puts back (other handlers, pytest's among them, show them)."""
_atexit_registered = False


def setup_logging(level: str, process_name: str, stream: IO[str] | None = None) -> None:
    """Send every log record of this process, as JSON lines, to `stream` (stderr by default).

    A record is formatted where it is logged (the request id lives in that context) and queued; a thread
    writes the lines, so logging never blocks the event loop on a slow disk or pipe. Replaces the root
    logger's handlers, so calling it twice does not double the lines.
    """
    global _writer, _atexit_registered
    stop_logging()
    lines: queue.SimpleQueue[str | None] = queue.SimpleQueue()
    handler = _LineHandler(lines)
    handler.setFormatter(JsonFormatter(process_name))
    handler.addFilter(RequestIdFilter())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())
    # aiohttp's access logger repeats what the request middlewares already log, in another format
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
    # The lines carry no source file, line or thread name: skip looking them up for every record
    # (the logging HOWTO's "Optimization").
    logging.logThreads = False
    logging._srcfile = None
    _writer = _LineWriter(lines, stream if stream is not None else sys.stderr)
    _writer.start()
    if not _atexit_registered:
        atexit.register(stop_logging)
        _atexit_registered = True


def stop_logging() -> None:
    """Write out the queued lines and stop the writer thread; later records are written as they come.

    Runs at exit; tests call it before reading the stream they gave to setup_logging.
    """
    global _writer
    if _writer is None:
        return
    writer, _writer = _writer, None
    writer.lines.put(None)
    writer.join(timeout=10)
    logging.logThreads, logging._srcfile = _LOOKUPS
    root = logging.getLogger()
    for handler in list(root.handlers):
        if isinstance(handler, _LineHandler) and handler.lines is writer.lines:
            direct = logging.StreamHandler(writer.stream)
            direct.setFormatter(handler.formatter)
            direct.addFilter(RequestIdFilter())
            root.removeHandler(handler)
            root.addHandler(direct)
