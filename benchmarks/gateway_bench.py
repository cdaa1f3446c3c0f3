"""Gateway memory and throughput for large streamed objects: 2 GiB PUTs and GETs under an RSS timeline, and a size table.

    .venv/bin/python -m benchmarks.gateway_bench                         # about 6-8 minutes on 2 cores
    .venv/bin/python -m benchmarks.gateway_bench --out benchmarks/results/2026-11-28 --size-gib 2 --reps 3
    .venv/bin/python -m benchmarks.gateway_bench --phases big --size-gib 0.5     # the streaming phase alone
    .venv/bin/python -m benchmarks.gateway_bench --redraw benchmarks/results/2026-11-28   # gateway.md and the chart again

Phase `big`, on a fresh `objstore dev` (6 nodes, 3 zones, EC 4+2, fsync on): a seeded file of --size-gib
is written to a temp dir, then with boto3 (1) put_object of the whole file in one request, (2)
upload_file with boto3's default TransferConfig (multipart above 8 MiB, 8 MiB parts, 10 threads),
(3) get_object of each object in one request, streamed to /dev/null, and (4) download_fileobj with the
default TransferConfig (ranged 8 MiB GETs, 10 threads). Every GET is checked against the file's MD5.
A thread reads VmRSS of the gateway, of every node and of this client from /proc every 0.1 s.

Phase `table`, on another fresh cluster (so the peaks of `big` do not carry over): PUT then GET of
4 KiB, 1 MiB and 256 MiB objects at modest concurrency with benchmarks/loadgen.py, --reps times;
medians of ops/s, MB/s and the gateway's peak RSS.

Writes OUT/gateway.json (every figure and the RSS timeline), OUT/gateway.md and OUT/gateway_rss.png.
MB is 10^6 bytes everywhere, RSS included. Every process is stopped by pid at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import importlib.metadata
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TransferSpeedColumn,
)

from benchmarks.gateway_bench_report import draw_chart, write_markdown
from benchmarks.gateway_bench_table import TablePlan, run_table
from benchmarks.procstat import memory_bytes
from tests.cluster import DevCluster, start_dev_cluster

__all__ = ["BIG_PHASES", "RssTimeline", "main", "write_payload"]

ROOT = Path(__file__).resolve().parents[1]
BLOCK = 64 * 1024 * 1024  # the random block the payload repeats, each copy XORed with its own 64-bit word
TARGET_RSS = 200_000_000  # the gateway should stay under this during a single 2 GiB PUT and GET
BIG_PHASES = ("single PUT", "multipart PUT", "single GET (single-part object)",
              "single GET (multipart object)", "ranged GET (boto3 download)")
MB = 1_000_000


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

    def _sample(self) -> None:
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
            last = len(self.t)
            record["t1"] = round(time.monotonic() - self._t0, 3)
            nodes = [role for role in self.pids if role not in ("gateway", "client")]
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

    def read(self, size: int = -1, /) -> bytes:
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


# ---------------------------------------------------------------------------
# phase `big`


def s3_client(cluster: DevCluster) -> Any:
    """boto3 as a user runs it, but one attempt per request: a hidden retry would double the bytes moved."""
    import boto3
    from botocore.config import Config

    return boto3.client("s3", endpoint_url=cluster.endpoint, aws_access_key_id=cluster.access_key,
                        aws_secret_access_key=cluster.secret_key, region_name=cluster.region,
                        config=Config(s3={"addressing_style": "path"}, retries={"total_max_attempts": 1},
                                      connect_timeout=10, read_timeout=600))


class _PhaseState:
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

    def __enter__(self) -> _Ticker:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=2.0)
        self._update()


def run_big(cluster: DevCluster, size: int, seed: int, work: Path, console: Console) -> dict[str, Any]:
    """PUT and GET one file of `size` bytes every way of BIG_PHASES, under the RSS timeline."""
    from boto3.s3.transfer import TransferConfig

    s3 = s3_client(cluster)
    bucket = "gateway-bench"
    s3.create_bucket(Bucket=bucket)
    pids = {"gateway": int(cluster.require_gateway()["pid"])} | {n.id: n.pid for n in cluster.nodes}
    pids["client"] = os.getpid()
    path = work / "payload.bin"
    columns = (TextColumn("{task.description:<34}"), BarColumn(), DownloadColumn(binary_units=True),
               TransferSpeedColumn(), TimeElapsedColumn(), TextColumn("{task.fields[rss]}"))
    results: list[dict[str, Any]] = []
    timeline = RssTimeline(pids)
    with Progress(*columns, console=console) as progress:
        task = progress.add_task("writing the payload file", total=size, rss="")
        md5 = write_payload(path, size, seed, lambda n: progress.advance(task, n))
        console.log(f"payload: {size / MB:.0f} MB, MD5 {md5}, seed {seed}")
        timeline.start()
        time.sleep(1.0)  # a second of idle samples before the first request
        keys = {"single": "big/single-part", "multipart": "big/multipart"}
        defaults = TransferConfig()  # boto3's defaults: 8 MiB threshold and parts, 10 threads

        def phase(name: str, action: Callable[[_PhaseState], dict[str, Any]]) -> None:
            state = _PhaseState()
            task = progress.add_task(name, total=size, rss="")
            with timeline.window(name) as record, _Ticker(progress, task, state.done, timeline):
                load0 = os.getloadavg()[0]
                began = time.perf_counter()
                try:
                    outcome = action(state)
                    error = ""
                except Exception as e:  # noqa: BLE001 - a failed phase is a figure too; the others still run
                    outcome, error = {"ok": False}, f"{type(e).__name__}: {e}"
                seconds = time.perf_counter() - began
            record.update(outcome, seconds=round(seconds, 2), mb_per_s=round(size / seconds / MB, 1),
                          error=error, load_average=[round(load0, 2), round(os.getloadavg()[0], 2)])
            results.append(record)
            verdict = "ok" if record.get("ok") else f"FAILED {error}"
            console.log(f"{name}: {seconds:.1f} s, {size / seconds / MB:.1f} MB/s, gateway RSS peak "
                        f"{record['gateway_rss']['peak'] / MB:.1f} MB (start {record['gateway_rss']['start'] / MB:.1f}), "
                        f"client peak {record['client_rss_peak'] / MB:.1f} MB, {verdict}")

        def single_put(state: _PhaseState) -> dict[str, Any]:
            with CountingFile(path) as body:
                def where() -> tuple[int, str]:  # botocore reads the file once per pass: hash, checksum, send
                    try:
                        return body.tell(), f"client read pass {body.passes}"
                    except ValueError:  # closed
                        return size, ""
                state.probe = where
                answer = s3.put_object(Bucket=bucket, Key=keys["single"], Body=body)
                passes = body.passes
            state.probe = None
            state.moved = size
            etag = answer["ETag"].strip('"')
            return {"ok": etag == md5, "etag": etag, "client_read_passes": passes, "requests": 1}

        def multipart_put(state: _PhaseState) -> dict[str, Any]:
            s3.upload_file(str(path), bucket, keys["multipart"], Callback=state.count, Config=defaults)
            head = s3.head_object(Bucket=bucket, Key=keys["multipart"])
            parts = int(head["ETag"].strip('"').rpartition("-")[2] or 0)
            return {"ok": head["ContentLength"] == size, "etag": head["ETag"].strip('"'), "requests": parts + 2,
                    "parts": parts, "part_size": defaults.multipart_chunksize}

        def single_get(key: str) -> Callable[[_PhaseState], dict[str, Any]]:
            def run(state: _PhaseState) -> dict[str, Any]:
                sink = HashSink()
                try:
                    body = s3.get_object(Bucket=bucket, Key=key)["Body"]
                    for chunk in body.iter_chunks(1024 * 1024):
                        sink.write(chunk)
                        state.count(len(chunk))
                finally:
                    sink.close()
                return {"ok": sink.count == size and sink.md5.hexdigest() == md5, "md5": sink.md5.hexdigest(),
                        "bytes": sink.count, "requests": 1}
            return run

        def ranged_get(state: _PhaseState) -> dict[str, Any]:
            sink = HashSink()
            try:
                s3.download_fileobj(bucket, keys["multipart"], sink, Callback=state.count, Config=defaults)
            finally:
                sink.close()
            return {"ok": sink.count == size and sink.md5.hexdigest() == md5, "md5": sink.md5.hexdigest(),
                    "bytes": sink.count, "requests": -(-size // defaults.multipart_chunksize) + 1}

        phase(BIG_PHASES[0], single_put)
        phase(BIG_PHASES[1], multipart_put)
        phase(BIG_PHASES[2], single_get(keys["single"]))
        phase(BIG_PHASES[3], single_get(keys["multipart"]))
        phase(BIG_PHASES[4], ranged_get)
        time.sleep(1.0)
        timeline.stop()
    for key in keys.values():
        s3.delete_object(Bucket=bucket, Key=key)
    path.unlink()
    return {"size": size, "seed": seed, "md5": md5, "target_rss": TARGET_RSS, "phases": results,
            "timeline": timeline.to_json(), "boto3_transfer_defaults": {
                "multipart_threshold": defaults.multipart_threshold, "multipart_chunksize": defaults.multipart_chunksize,
                "max_concurrency": defaults.max_concurrency}}


# ---------------------------------------------------------------------------
# the run


def _version(name: str) -> str:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return ""


def machine() -> dict[str, Any]:
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True)
    dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT, capture_output=True,
                           text=True)
    return {"cpus": os.cpu_count(), "python": sys.version.split()[0], "boto3": _version("boto3"),
            "botocore": _version("botocore"), "aiohttp": _version("aiohttp"), "git_commit": commit.stdout.strip(),
            "git_dirty_files": len(dirty.stdout.splitlines()), "date": time.strftime("%Y-%m-%d %H:%M:%S %Z")}


def _start(work: Path, console: Console, name: str) -> DevCluster:
    console.log(f"starting objstore dev ({name}): 6 nodes, 3 zones, EC 4+2, fsync on")
    (work / name).mkdir()
    cluster = start_dev_cluster(work / name, nodes=6, zones=3, k=4, m=2, fsync=True)
    console.log(f"  gateway pid {cluster.require_gateway()['pid']} at {cluster.endpoint}, node pids "
                f"{', '.join(str(n.pid) for n in cluster.nodes)}")
    return cluster


def _save(out: Path, data: dict[str, Any]) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "gateway.json").write_text(json.dumps(data, separators=(",", ":")) + "\n")


def _redraw(out: Path) -> None:
    data = json.loads((out / "gateway.json").read_text())
    if "big" in data:
        draw_chart(data["big"], out / "gateway_rss.png")
    write_markdown(data, out / "gateway.md")


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt  # unwinds through every finally: the clusters stop by pid


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.gateway_bench", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / time.strftime("%Y-%m-%d"))
    ap.add_argument("--phases", default="big,table", help="big, table or both (big,table)")
    ap.add_argument("--size-gib", type=float, default=2.0, help="size of the streamed object (2)")
    ap.add_argument("--reps", type=int, default=3, help="repetitions of each table cell; medians reported (3)")
    ap.add_argument("--seed", type=int, default=20261128)
    ap.add_argument("--redraw", type=Path, metavar="DIR", help="only rewrite DIR/gateway.md and the chart")
    return ap


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.redraw:
        _redraw(args.redraw)
        return 0
    phases = [p.strip() for p in args.phases.split(",") if p.strip()]
    if not phases or set(phases) - {"big", "table"}:
        raise SystemExit("--phases takes big, table or big,table")
    size = int(args.size_gib * 1024**3)
    console = Console()
    signal.signal(signal.SIGTERM, _interrupt)
    work = Path(tempfile.mkdtemp(prefix="objstore-gateway-bench-"))
    free = shutil.disk_usage(work).free
    if "big" in phases and free < size * 5:  # the file, two objects at 1.5x, and room for the nodes' temp files
        raise SystemExit(f"{work} has {free / 1e9:.1f} GB free; phase big needs about {size * 5 / 1e9:.1f} GB")
    data: dict[str, Any] = {"meta": machine() | {"argv": sys.argv[1:] if argv is None else argv, "workdir": str(work),
                                                "cluster": {"nodes": 6, "zones": 3, "k": 4, "m": 2, "fsync": True}}}
    started = time.monotonic()
    failed = False
    try:
        if "big" in phases:
            cluster = _start(work, console, "big")
            try:
                data["big"] = run_big(cluster, size, args.seed, work, console)
            finally:
                cluster.stop()
            failed |= not all(p.get("ok") for p in data["big"]["phases"])
            _save(args.out, data)
        if "table" in phases:
            cluster = _start(work, console, "table")
            try:
                data["table"] = asyncio.run(run_table(cluster, TablePlan(reps=args.reps, seed=args.seed), console))
            finally:
                cluster.stop()
            failed |= any(r["errors"] for cell in data["table"]["cells"] for r in cell["runs"])
        data["meta"]["seconds"] = round(time.monotonic() - started, 1)
        _save(args.out, data)
        _redraw(args.out)
        console.log(f"wrote {args.out}/gateway.json, gateway.md"
                    f"{', gateway_rss.png' if 'big' in data else ''} in {data['meta']['seconds']:.0f} s")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
