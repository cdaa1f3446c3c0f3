"""The measuring parts of the gateway benchmark: RSS timeline, seeded payload file, boto3 helpers, timed phases."""

from __future__ import annotations

import hashlib
import io
import os
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Self

import numpy as np
from rich.console import Console
from rich.progress import Progress

from benchmarks.procstat import memory_bytes
from tests.cluster import DevCluster

__all__ = ["MB", "CountingFile", "HashSink", "PhaseRunner", "PhaseState", "RssTimeline", "s3_client", "write_payload"]

MB = 1_000_000
BLOCK = 64 * 1024 * 1024  # the random block the payload repeats, each copy XORed with its own 64-bit word


# ---------------------------------------------------------------------------
# the RSS timeline


@dataclass
class RssTimeline:
    """VmRSS of named processes every `interval` seconds, from a thread; phase windows marked by the caller."""

    pids: dict[str, int]  # role -> pid: "gateway", "n1".."n6", "client"
    interval: float = 0.1
    t: list[float] = field(default_factory=list)
    rss: dict[str, list[int]] = field(default_factory=dict)
    windows: list[dict[str, Any]] = field(default_factory=list)
    _t0: float = 0.0
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)  # the thread and window() both sample

    def _sample(self) -> None:
        with self._lock:
            self.t.append(round(time.monotonic() - self._t0, 3))
            for role, pid in self.pids.items():
                mem = memory_bytes(pid)
                self.rss.setdefault(role, []).append(mem[0] if mem else 0)

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            self._sample()

    def start(self) -> None:
        self._t0 = time.monotonic()
        self._sample()
        self._thread = threading.Thread(target=self._loop, name="rss-timeline", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5.0)

    def latest(self, role: str) -> int:
        values = self.rss.get(role) or [0]
        return values[-1]

    @contextmanager
    def window(self, name: str) -> Iterator[dict[str, Any]]:
        """Mark a phase; on exit its dict holds the start and end times and each role's RSS over it."""
        began = time.monotonic() - self._t0
        first = len(self.t)
        record: dict[str, Any] = {"name": name, "t0": round(began, 3)}
        try:
            yield record
        finally:
            self._sample()  # the end of a short phase falls between two ticks
            record["t1"] = round(time.monotonic() - self._t0, 3)
            nodes = [role for role in self.pids if role not in ("gateway", "client")]
            with self._lock:
                last = len(self.t)
                span = {role: self.rss[role][max(0, first - 1):last] for role in self.pids}
            record["gateway_rss"] = {"start": span["gateway"][0], "peak": max(span["gateway"]),
                                     "end": span["gateway"][-1]}
            record["client_rss_peak"] = max(span["client"])
            record["node_rss_peak_max"] = max(max(span[n]) for n in nodes)
            record["node_rss_peak_sum"] = sum(max(span[n]) for n in nodes)
            self.windows.append(record)

    def to_json(self) -> dict[str, Any]:
        return {"interval": self.interval, "t": self.t, "rss": self.rss, "pids": self.pids}


# ---------------------------------------------------------------------------
# the payload and the client-side counting helpers


def _block_word(index: int) -> np.uint64:
    """A distinct 64-bit word per block (splitmix64 of its index): every word of every copy differs."""
    z = (index + 1) * 0x9E3779B97F4A7C15 & 0xFFFFFFFFFFFFFFFF
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9 & 0xFFFFFFFFFFFFFFFF
    z = (z ^ (z >> 27)) * 0x94D049BB133111EB & 0xFFFFFFFFFFFFFFFF
    return np.uint64(z ^ (z >> 31))


def write_payload(path: Path, size: int, seed: int, on_block: Callable[[int], object] | None = None) -> str:
    """Write `size` seeded bytes to `path` (one random 64 MiB block, XORed per copy); returns their MD5 hex."""
    base = np.random.default_rng(seed).integers(0, 2**64 - 1, size=BLOCK // 8, dtype=np.uint64, endpoint=True)
    md5 = hashlib.md5()
    written = 0
    with open(path, "wb") as f:
        for index in range((size + BLOCK - 1) // BLOCK):
            data = (base ^ _block_word(index)).tobytes()[: size - written]
            md5.update(data)
            f.write(data)
            written += len(data)
            if on_block is not None:
                on_block(len(data))
    return md5.hexdigest()


class CountingFile(io.FileIO):
    """A file botocore reads for put_object, counting its passes over the whole body (hash, checksum, send)."""

    def __init__(self, path: Path) -> None:
        super().__init__(path, "rb")
        self.passes = 0

    def read(self, size: int | None = -1, /) -> bytes:
        at_start = self.tell() == 0
        data = super().read(size)
        if at_start and data:  # botocore rewinds after hashing: a read from offset 0 starts another pass
            self.passes += 1
        return data

    def readinto(self, buffer: Any, /) -> int | None:  # the SHA-256 pass of the signer comes this way
        at_start = self.tell() == 0
        count = super().readinto(buffer)
        if at_start and count:
            self.passes += 1
        return count


class HashSink:
    """A write-only sink: MD5 and length of what it is given, bytes then dropped into /dev/null.

    No seek(), so s3transfer writes the ranges of a download in order (its non-seekable path)."""

    def __init__(self) -> None:
        self.md5 = hashlib.md5()
        self.count = 0
        self._null = open(os.devnull, "wb")  # noqa: SIM115 - closed by close()
        self._lock = threading.Lock()

    def write(self, data: bytes) -> int:
        with self._lock:
            self.md5.update(data)
            self._null.write(data)
            self.count += len(data)
        return len(data)

    def close(self) -> None:
        self._null.close()


def s3_client(cluster: DevCluster) -> Any:
    """boto3 as a user runs it, but one attempt per request: a hidden retry would double the bytes moved."""
    import boto3
    from botocore.config import Config

    return boto3.client("s3", endpoint_url=cluster.endpoint, aws_access_key_id=cluster.access_key,
                        aws_secret_access_key=cluster.secret_key, region_name=cluster.region,
                        config=Config(s3={"addressing_style": "path"}, retries={"total_max_attempts": 1},
                                      connect_timeout=10, read_timeout=600))


class PhaseState:
    """Bytes a phase has moved so far (boto3 callbacks come from its worker threads), or a probe that knows better."""

    def __init__(self) -> None:
        self.moved = 0
        self.probe: Callable[[], tuple[int, str]] | None = None
        self._lock = threading.Lock()

    def count(self, n: int) -> None:
        with self._lock:
            self.moved += n

    def done(self) -> tuple[int, str]:
        probe = self.probe
        return probe() if probe is not None else (self.moved, "")


class _Ticker:
    """Updates a progress bar from `done()` and the gateway's last RSS sample every 0.2 s, from a thread."""

    def __init__(self, progress: Progress, task: Any, done: Callable[[], tuple[int, str]], timeline: RssTimeline):
        self.progress, self.task, self.done, self.timeline = progress, task, done, timeline
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def _update(self) -> None:
        completed, note = self.done()
        rss = self.timeline.latest("gateway") / MB
        self.progress.update(self.task, completed=completed, rss=f"gateway RSS {rss:6.1f} MB {note}")

    def _loop(self) -> None:
        while not self._stop.wait(0.2):
            self._update()

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=2.0)
        self._update()


class PhaseRunner:
    """Runs timed phases under the RSS timeline, each with a progress bar showing bytes and the gateway's RSS."""

    def __init__(self, progress: Progress, timeline: RssTimeline, console: Console) -> None:
        self.progress, self.timeline, self.console = progress, timeline, console
        self.results: list[dict[str, Any]] = []

    def run(self, name: str, size: int, action: Callable[[PhaseState], dict[str, Any]]) -> dict[str, Any]:
        """Run `action`, which moves `size` bytes; its outcome, time, MB/s and RSS over the phase as a dict.

        An exception ends the phase, not the run: it is recorded as `error`, with ok False."""
        state = PhaseState()
        task = self.progress.add_task(name, total=size, rss="")
        with self.timeline.window(name) as record, _Ticker(self.progress, task, state.done, self.timeline):
            load0 = os.getloadavg()[0]
            began = time.perf_counter()
            try:
                outcome = action(state)
                error = ""
            except Exception as e:  # noqa: BLE001 - a failed phase is a figure too; the others still run
                outcome, error = {"ok": False}, f"{type(e).__name__}: {e}"
            seconds = time.perf_counter() - began
        record.update(outcome, seconds=round(seconds, 2), mb_per_s=round(size / seconds / MB, 1), error=error,
                      load_average=[round(load0, 2), round(os.getloadavg()[0], 2)])
        self.results.append(record)
        g = record["gateway_rss"]
        verdict = "ok" if record.get("ok") else f"FAILED {error}"
        self.console.log(f"{name}: {seconds:.1f} s, {size / seconds / MB:.1f} MB/s, gateway RSS peak "
                         f"{g['peak'] / MB:.1f} MB (start {g['start'] / MB:.1f}), client peak "
                         f"{record['client_rss_peak'] / MB:.1f} MB, {verdict}")
        return record
