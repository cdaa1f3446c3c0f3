"""Gateway memory and throughput for large streamed objects: 2 GiB PUTs and GETs under an RSS timeline, and a size table.

    .venv/bin/python -m benchmarks.gateway_bench --out benchmarks/results/2026-11-28   # about 6-8 minutes on 2 cores
    .venv/bin/python -m benchmarks.gateway_bench --phases big --size-gib 0.25          # one phase, small
    .venv/bin/python -m benchmarks.gateway_bench --redraw benchmarks/results/2026-11-28   # gateway.md and charts again

Every phase runs on its own fresh `objstore dev` (6 nodes, 3 zones, EC 4+2, fsync on), so the RSS
peaks of one do not carry over to the next.

`big`: a seeded file of --size-gib is written to a temp dir, then with boto3 (1) put_object of the
whole file in one request, (2) get_object of it in one request, streamed to /dev/null, (3) upload_file
with boto3's default TransferConfig (multipart above 8 MiB, 8 MiB parts, 10 threads), (4) get_object
of that one, and (5) download_fileobj with the default TransferConfig (ranged 8 MiB GETs, 10 threads). The single PUT's
ETag and every GET's MD5 are checked. A thread reads VmRSS of the gateway, of every node and of this
client from /proc every 0.1 s.

`sweep`: the gateway's RSS against requests in flight: a --sweep-gib file uploaded with 8 MiB parts x1,
x10 and 64 MiB parts x10, read back with 8 MiB ranges x32, then single PUTs of 32 MiB x8, x16 and x32
(benchmarks/loadgen.py) and 8 MiB parts x32, in that order (RSS kept by the allocator after one peak
is the next one's start).

`table`: PUT then GET of 4 KiB, 1 MiB and 256 MiB objects at modest concurrency with
benchmarks/loadgen.py, --reps times; medians of ops/s, MB/s and the gateway's peak RSS.

Writes OUT/gateway.json (every figure and the RSS timelines), OUT/gateway.md, OUT/gateway_rss.png and
OUT/gateway_rss_sweep.png. MB is 10^6 bytes everywhere, RSS included. Every process is stopped by pid.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.metadata
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TransferSpeedColumn,
)

from benchmarks.gateway_bench_phases import (
    MB,
    CountingFile,
    HashSink,
    PhaseRunner,
    PhaseState,
    RssTimeline,
    s3_client,
    write_payload,
)
from benchmarks.gateway_bench_report import draw_chart, write_markdown
from benchmarks.gateway_bench_table import TablePlan, run_table
from benchmarks.loadgen import run_workload
from benchmarks.s3load import S3Target
from tests.cluster import DevCluster, start_dev_cluster

__all__ = ["BIG_PHASES", "TARGET_RSS", "main", "run_big", "run_sweep"]

ROOT = Path(__file__).resolve().parents[1]
TARGET_RSS = 200_000_000  # the gateway should stay under this during a single 2 GiB PUT and GET
# The single-request PUT and GET come first, so that their RSS is not measured on top of what the
# allocator kept after the multipart PUT's ten parts in flight.
BIG_PHASES = ("single PUT", "single GET (single-part object)", "multipart PUT",
              "single GET (multipart object)", "ranged GET (boto3 download)")
MiB = 1 << 20


def _pids(cluster: DevCluster) -> dict[str, int]:
    return {"gateway": int(cluster.require_gateway()["pid"])} | {n.id: n.pid for n in cluster.nodes} | {
        "client": os.getpid()}


def _progress(console: Console) -> Progress:
    return Progress(TextColumn("{task.description:<34}"), BarColumn(), DownloadColumn(binary_units=True),
                    TransferSpeedColumn(), TimeElapsedColumn(), TextColumn("{task.fields[rss]}"), console=console)


def _single_get(s3: Any, bucket: str, key: str, size: int, md5: str) -> Callable[[PhaseState], dict[str, Any]]:
    """One get_object, its body read in 1 MiB pieces through MD5 into /dev/null."""
    def run(state: PhaseState) -> dict[str, Any]:
        sink = HashSink()
        try:
            for chunk in s3.get_object(Bucket=bucket, Key=key)["Body"].iter_chunks(MiB):
                sink.write(chunk)
                state.count(len(chunk))
        finally:
            sink.close()
        return {"ok": sink.count == size and sink.md5.hexdigest() == md5, "md5": sink.md5.hexdigest(),
                "bytes": sink.count, "requests": 1}
    return run


def _ranged_get(s3: Any, bucket: str, key: str, size: int, md5: str, config: Any) -> Callable[[PhaseState], dict[str, Any]]:
    """download_fileobj into a write-only sink: ranged GETs of the config's part size, in order through MD5."""
    def run(state: PhaseState) -> dict[str, Any]:
        sink = HashSink()
        try:
            s3.download_fileobj(bucket, key, sink, Callback=state.count, Config=config)
        finally:
            sink.close()
        return {"ok": sink.count == size and sink.md5.hexdigest() == md5, "md5": sink.md5.hexdigest(),
                "bytes": sink.count, "requests": -(-size // config.multipart_chunksize) + 1,
                "part_size": config.multipart_chunksize, "threads": config.max_concurrency}
    return run


def _multipart_put(s3: Any, bucket: str, key: str, path: Path, size: int, config: Any) -> Callable[[PhaseState], dict[str, Any]]:
    """upload_file with `config`; checked by the length HEAD reports (a multipart ETag is not an MD5)."""
    def run(state: PhaseState) -> dict[str, Any]:
        s3.upload_file(str(path), bucket, key, Callback=state.count, Config=config)
        head = s3.head_object(Bucket=bucket, Key=key)
        parts = int(head["ETag"].strip('"').rpartition("-")[2] or 0)
        return {"ok": head["ContentLength"] == size, "etag": head["ETag"].strip('"'), "requests": parts + 2,
                "parts": parts, "part_size": config.multipart_chunksize, "threads": config.max_concurrency}
    return run


def run_big(cluster: DevCluster, path: Path, size: int, md5: str, console: Console) -> dict[str, Any]:
    """PUT and GET the file at `path` every way of BIG_PHASES, under the RSS timeline."""
    from boto3.s3.transfer import TransferConfig

    s3 = s3_client(cluster)
    bucket = "gateway-bench"
    s3.create_bucket(Bucket=bucket)
    keys = {"single": "big/single-part", "multipart": "big/multipart"}
    defaults = TransferConfig()  # boto3's defaults: 8 MiB threshold and parts, 10 threads
    timeline = RssTimeline(_pids(cluster))

    def single_put(state: PhaseState) -> dict[str, Any]:
        with CountingFile(path) as body:
            def where() -> tuple[int, str]:  # botocore reads the file once per pass: checksum, hash, send
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

    with _progress(console) as progress:
        timeline.start()
        time.sleep(1.0)  # a second of idle samples before the first request
        phases = PhaseRunner(progress, timeline, console)
        phases.run(BIG_PHASES[0], size, single_put)
        phases.run(BIG_PHASES[1], size, _single_get(s3, bucket, keys["single"], size, md5))
        phases.run(BIG_PHASES[2], size, _multipart_put(s3, bucket, keys["multipart"], path, size, defaults))
        phases.run(BIG_PHASES[3], size, _single_get(s3, bucket, keys["multipart"], size, md5))
        phases.run(BIG_PHASES[4], size, _ranged_get(s3, bucket, keys["multipart"], size, md5, defaults))
        time.sleep(1.0)
        timeline.stop()
    for key in keys.values():
        s3.delete_object(Bucket=bucket, Key=key)
    return {"size": size, "md5": md5, "target_rss": TARGET_RSS, "phases": phases.results,
            "timeline": timeline.to_json(), "boto3_transfer_defaults": {
                "multipart_threshold": defaults.multipart_threshold, "multipart_chunksize": defaults.multipart_chunksize,
                "max_concurrency": defaults.max_concurrency}}


def run_sweep(cluster: DevCluster, path: Path, size: int, md5: str, console: Console) -> dict[str, Any]:
    """The gateway's RSS against requests in flight: part sizes and threads of multipart PUTs, ranged GETs, PUTs."""
    from boto3.s3.transfer import TransferConfig

    s3 = s3_client(cluster)
    bucket = "gateway-sweep"
    s3.create_bucket(Bucket=bucket)
    timeline = RssTimeline(_pids(cluster))
    target = S3Target(cluster.endpoint, bucket, cluster.access_key, cluster.secret_key, cluster.region)

    def loadgen_puts(object_size: int, concurrency: int) -> Callable[[PhaseState], dict[str, Any]]:
        def run(state: PhaseState) -> dict[str, Any]:
            results = asyncio.run(run_workload(target, ["put"], [object_size], [concurrency], max_ops=10_000,
                                               max_seconds=120.0, max_bytes=size, prefix="sweep/puts/"))
            state.moved = results[0].bytes
            return {"ok": results[0].errors == 0, "requests": results[0].ops, "errors": results[0].errors,
                    "slowdowns": results[0].slowdowns, "part_size": object_size, "threads": concurrency}
        return run

    def config(part: int, threads: int) -> Any:
        return TransferConfig(multipart_chunksize=part, max_concurrency=threads)

    with _progress(console) as progress:
        timeline.start()
        time.sleep(1.0)
        phases = PhaseRunner(progress, timeline, console)
        for part, threads in ((8, 1), (8, 10), (64, 10)):
            phases.run(f"multipart PUT {part} MiB x{threads}", size,
                       _multipart_put(s3, bucket, f"sweep/{part}x{threads}", path, size, config(part * MiB, threads)))
        phases.run("ranged GET 8 MiB x32", size, _ranged_get(s3, bucket, "sweep/8x10", size, md5, config(8 * MiB, 32)))
        for threads in (8, 16, 32):
            phases.run(f"single PUTs 32 MiB x{threads}", size, loadgen_puts(32 * MiB, threads))
        phases.run("multipart PUT 8 MiB x32", size,
                   _multipart_put(s3, bucket, "sweep/8x32", path, size, config(8 * MiB, 32)))
        time.sleep(1.0)
        timeline.stop()
    for part, threads in ((8, 1), (8, 10), (64, 10), (8, 32)):
        s3.delete_object(Bucket=bucket, Key=f"sweep/{part}x{threads}")
    return {"size": size, "md5": md5, "target_rss": TARGET_RSS, "phases": phases.results,
            "timeline": timeline.to_json()}


# ---------------------------------------------------------------------------
# the run


def _version(name: str) -> str:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return ""


def machine() -> dict[str, Any]:
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                            check=False)
    dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT, capture_output=True,
                           text=True, check=False)
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


def _payload(work: Path, name: str, size: int, seed: int, console: Console) -> tuple[Path, str]:
    path = work / name
    with _progress(console) as progress:
        task = progress.add_task(f"writing {name}", total=size, rss="")
        md5 = write_payload(path, size, seed, lambda n: progress.advance(task, n))
    console.log(f"{name}: {size / MB:.0f} MB, MD5 {md5}, seed {seed}")
    return path, md5


def _save(out: Path, data: dict[str, Any]) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "gateway.json").write_text(json.dumps(data, separators=(",", ":")) + "\n")


def _redraw(out: Path) -> None:
    data = json.loads((out / "gateway.json").read_text())
    if "big" in data:
        draw_chart(data["big"], out / "gateway_rss.png", f"streaming a {data['big']['size'] / 2**30:g} GiB object")
    if "sweep" in data:
        draw_chart(data["sweep"], out / "gateway_rss_sweep.png",
                   f"{data['sweep']['size'] / 2**30:g} GiB per phase, requests in flight swept")
    write_markdown(data, out / "gateway.md")


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt  # unwinds through every finally: the clusters stop by pid


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.gateway_bench", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / time.strftime("%Y-%m-%d"))
    ap.add_argument("--phases", default="big,sweep,table", help="any of big, sweep, table (all three)")
    ap.add_argument("--size-gib", type=float, default=2.0, help="size of the streamed object of `big` (2)")
    ap.add_argument("--sweep-gib", type=float, default=1.0, help="bytes moved by each phase of `sweep` (1)")
    ap.add_argument("--reps", type=int, default=3, help="repetitions of each table cell; medians reported (3)")
    ap.add_argument("--seed", type=int, default=20261128)
    ap.add_argument("--redraw", type=Path, metavar="DIR", help="only rewrite DIR/gateway.md and the charts")
    return ap


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.redraw:
        _redraw(args.redraw)
        return 0
    phases = [p.strip() for p in args.phases.split(",") if p.strip()]
    if not phases or set(phases) - {"big", "sweep", "table"}:
        raise SystemExit("--phases takes any of big, sweep, table")
    size, sweep_size = int(args.size_gib * 1024**3), int(args.sweep_gib * 1024**3)
    console = Console()
    signal.signal(signal.SIGTERM, _interrupt)
    work = Path(tempfile.mkdtemp(prefix="objstore-gateway-bench-"))
    # the files, the objects at 1.5x, and room for the nodes' temp files
    need = (size * 5 if "big" in phases else 0) + (sweep_size * 8 if "sweep" in phases else 0)
    if shutil.disk_usage(work).free < need:
        raise SystemExit(f"{work} has {shutil.disk_usage(work).free / 1e9:.1f} GB free; need about {need / 1e9:.1f} GB")
    data: dict[str, Any] = {"meta": machine() | {"argv": sys.argv[1:] if argv is None else argv, "seed": args.seed,
                                                "cluster": {"nodes": 6, "zones": 3, "k": 4, "m": 2, "fsync": True}}}
    started = time.monotonic()
    failed = False
    try:
        for phase in phases:
            cluster = _start(work, console, phase)
            try:
                if phase == "big":
                    path, md5 = _payload(work, "payload.bin", size, args.seed, console)
                    data["big"] = run_big(cluster, path, size, md5, console)
                    path.unlink()
                elif phase == "sweep":
                    path, md5 = _payload(work, "sweep.bin", sweep_size, args.seed + 1, console)
                    data["sweep"] = run_sweep(cluster, path, sweep_size, md5, console)
                    path.unlink()
                else:
                    data["table"] = asyncio.run(run_table(cluster, TablePlan(reps=args.reps, seed=args.seed), console))
            finally:
                cluster.stop()
            if phase in ("big", "sweep"):
                failed |= not all(p.get("ok") for p in data[phase]["phases"])
            else:
                failed |= any(r["errors"] for cell in data["table"]["cells"] for r in cell["runs"])
            _save(args.out, data)
        data["meta"]["seconds"] = round(time.monotonic() - started, 1)
        _save(args.out, data)
        _redraw(args.out)
        console.log(f"wrote gateway.json, gateway.md and the charts to {args.out} in {data['meta']['seconds']:.0f} s")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
