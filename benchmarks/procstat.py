"""CPU seconds and peak memory of server processes over a benchmark run, read from /proc (Linux)."""

from __future__ import annotations

import json
import os
import resource
import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Self

__all__ = ["ProcSampler", "ProcUsage", "cpu_seconds", "machine_cpu_seconds", "memory_bytes", "parse_pids",
           "pids_from_cluster_file", "self_cpu_seconds"]

_TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float | None:
    """User plus system CPU seconds of `pid` so far, or None if it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            # fields after the parenthesised command name (which may hold spaces): utime and stime are
            # the 14th and 15th fields of the line, the 12th and 13th after it
            fields = f.read().rpartition(")")[2].split()
        return (int(fields[11]) + int(fields[12])) / _TICKS
    except (OSError, IndexError, ValueError):
        return None


def memory_bytes(pid: int) -> tuple[int, int] | None:
    """(VmRSS, VmHWM) of `pid` in bytes, or None if it is gone."""
    rss = hwm = -1
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    rss = int(line.split()[1]) * 1024
                elif line.startswith("VmHWM:"):
                    hwm = int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return (rss, hwm) if rss >= 0 and hwm >= 0 else None


def machine_cpu_seconds() -> tuple[float, float]:
    """(busy, iowait) CPU seconds of the whole machine since boot, summed over its cores (/proc/stat)."""
    with open("/proc/stat") as f:
        fields = [int(x) for x in f.readline().split()[1:]]
    idle, iowait = fields[3], fields[4]
    busy = sum(fields[:8]) - idle - iowait  # user nice system idle iowait irq softirq steal (guest is in user)
    return busy / _TICKS, iowait / _TICKS


def self_cpu_seconds() -> float:
    """CPU seconds this process has used (all threads): the load generator's own cost."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


@dataclass
class ProcUsage:
    """What one server process used during a run."""

    pid: int
    cpu_seconds: float | None = None  # user + system CPU during the run
    peak_rss_bytes: int | None = None  # highest VmRSS sampled during the run
    hwm_bytes: int | None = None  # VmHWM at the end: the peak over the process's whole life
    alive: bool = True  # False if it was gone at the end of the run
    _cpu_start: float | None = field(default=None, repr=False)


class ProcSampler:
    """Samples the given pids in a background thread: CPU at start and stop, RSS every `interval` seconds.

    A thread rather than a task so that reading /proc never runs on the event loop, and sampling goes on
    while the loop is saturated by the load itself.
    """

    def __init__(self, pids: Iterable[int], interval: float = 0.1) -> None:
        self.usage = [ProcUsage(pid) for pid in dict.fromkeys(pids)]
        self.interval = interval
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _sample_rss(self) -> None:
        for u in self.usage:
            mem = memory_bytes(u.pid)
            if mem is not None:
                u.peak_rss_bytes = max(u.peak_rss_bytes or 0, mem[0])

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            self._sample_rss()

    def start(self) -> None:
        for u in self.usage:
            u._cpu_start = cpu_seconds(u.pid)
        self._sample_rss()
        if self.usage:
            self._thread = threading.Thread(target=self._loop, name="procstat", daemon=True)
            self._thread.start()

    def stop(self) -> list[ProcUsage]:
        """Stop sampling and return the usage of each pid over the run."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5.0)
        self._sample_rss()
        for u in self.usage:
            end = cpu_seconds(u.pid)
            mem = memory_bytes(u.pid)
            u.alive = end is not None
            if end is not None and u._cpu_start is not None:
                u.cpu_seconds = round(end - u._cpu_start, 3)
            if mem is not None:
                u.hwm_bytes = mem[1]
        return self.usage

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


def pids_from_cluster_file(path: str | Path) -> list[int]:
    """The gateway and node pids in a cluster.json written by `objstore dev`."""
    info = json.loads(Path(path).read_text())
    pids: list[int] = []
    gateway = info.get("gateway") or {}
    if gateway.get("pid"):
        pids.append(int(gateway["pid"]))
    pids.extend(int(node["pid"]) for node in info.get("nodes", []) if node.get("pid"))
    return pids


def parse_pids(spec: str | Sequence[int] | None) -> list[int]:
    """Pids from '123,456', from a path to a cluster.json, or from a list; [] for None or ''."""
    if spec is None or spec == "":
        return []
    if not isinstance(spec, str):
        return [int(p) for p in spec]
    if os.path.exists(spec):
        return pids_from_cluster_file(spec)
    try:
        return [int(p) for p in spec.split(",") if p.strip()]
    except ValueError:
        raise ValueError(f"--pids takes '123,456' or a cluster.json path, not {spec!r}") from None
