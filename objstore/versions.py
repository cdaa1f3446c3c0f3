"""Version ids that sort by time: a hybrid logical clock plus a random suffix."""

from __future__ import annotations

import os
import secrets
import threading
import time

_CLOCK_OFFSET_NS = int(float(os.environ.get("OBJSTORE_CLOCK_OFFSET", "0")) * 1e9)
"""Fault hook for clock-skew tests: seconds added to this process's wall clock."""


def wall_ns() -> int:
    """This process's idea of wall-clock time, in ns (with the test offset, if any)."""
    return time.time_ns() + _CLOCK_OFFSET_NS


class HybridClock:
    """max(last + 1, now): never goes backwards, and follows the newest time it has seen."""

    def __init__(self) -> None:
        self._last = 0
        self._lock = threading.Lock()

    def now(self) -> int:
        with self._lock:
            self._last = max(self._last + 1, wall_ns())
            return self._last

    def observe(self, ns: int) -> None:
        """Move forward to a time seen elsewhere (a version read from a node), so our next id sorts after it."""
        with self._lock:
            self._last = max(self._last, ns)


CLOCK = HybridClock()

VERSION_LEN = 32


def new_version(clock: HybridClock = CLOCK) -> str:
    """A 32-char hex id: 16 hex of HLC nanoseconds, 16 hex random. Lexical order is time order."""
    return f"{clock.now():016x}{secrets.token_hex(8)}"


def version_time_ns(version: str) -> int:
    """The HLC timestamp inside a version id."""
    return int(version[:16], 16)


NULL_MARK = 16
"""Index of the first hex digit of a version id's random half; its top bit set marks an S3 null version."""


def is_null(version: str) -> bool:
    """A null version: written while its bucket's versioning was not Enabled (see gateway/versioning.py)."""
    return int(version[NULL_MARK], 16) >= 8


def is_version(s: str) -> bool:
    if len(s) != VERSION_LEN:
        return False
    try:
        int(s, 16)
    except ValueError:
        return False
    return s == s.lower()
