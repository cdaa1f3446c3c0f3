"""Structured logs: one JSON object per line, carrying the process name and the request id being served."""

from __future__ import annotations

import atexit
import json
import logging
import queue
import sys
import time
from logging.handlers import QueueHandler, QueueListener
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

    def format(self, record: logging.LogRecord) -> str:
        ts = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z"
        doc: dict[str, Any] = {"ts": ts, "level": record.levelname.lower(), "process": self.process_name,
                               "pid": record.process, "logger": record.name, "msg": record.getMessage()}
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
        # default=str: an odd value in `extra` must cost a field's precision, never the log line
        return json.dumps(doc, ensure_ascii=False, default=str, separators=(",", ":"))


_listener: QueueListener | None = None
_atexit_registered = False


def setup_logging(level: str, process_name: str, stream: IO[str] | None = None) -> None:
    """Send every log record of this process, as JSON lines, to `stream` (stderr by default).

    A record is formatted where it is logged (the request id lives in that context) and queued; a thread
    writes the lines, so logging never blocks the event loop on a slow disk or pipe. Replaces the root
    logger's handlers, so calling it twice does not double the lines.
    """
    global _listener, _atexit_registered
    stop_logging()
    sink = logging.StreamHandler(stream if stream is not None else sys.stderr)
    sink.setFormatter(logging.Formatter("%(message)s"))  # records arrive as finished JSON lines
    lines: queue.SimpleQueue[logging.LogRecord] = queue.SimpleQueue()
    handler = QueueHandler(lines)
    handler.setFormatter(JsonFormatter(process_name))
    handler.addFilter(RequestIdFilter())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())
    # aiohttp's access logger repeats what the request middlewares already log, in another format
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
    _listener = QueueListener(lines, sink)
    _listener.start()
    if not _atexit_registered:
        atexit.register(stop_logging)
        _atexit_registered = True


def stop_logging() -> None:
    """Write out the queued lines and stop the writer thread; later records are written as they come.

    Runs at exit; tests call it before reading the stream they gave to setup_logging.
    """
    global _listener
    if _listener is None:
        return
    listener, _listener = _listener, None
    listener.stop()
    root = logging.getLogger()
    for handler in list(root.handlers):
        if isinstance(handler, QueueHandler) and handler.queue is listener.queue:
            sink = listener.handlers[0]
            direct = logging.StreamHandler(getattr(sink, "stream", sys.stderr))
            direct.setFormatter(handler.formatter)
            direct.addFilter(RequestIdFilter())
            root.removeHandler(handler)
            root.addHandler(direct)
