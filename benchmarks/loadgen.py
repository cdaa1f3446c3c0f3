"""S3 load generator: PUT/GET/HEAD/LIST/DELETE/mixed workloads over sizes and concurrencies, against any S3 endpoint.

    python -m benchmarks.loadgen --endpoint http://127.0.0.1:9000 --access-key AK --secret-key SK \\
        --workloads put,get,list,mixed --sizes 4KiB,1MiB --concurrency 1,16,64 \\
        --max-ops 20000 --duration 30 --mix get=70,put=20,list=5,delete=5 --json results.json
    python -m benchmarks.loadgen --cluster data/cluster.json ...   # an `objstore dev` cluster: endpoint,
                                                                   # credentials and server pids from it
    python -m benchmarks.loadgen --against-sink                    # the generator's own ceiling

Each (workload, size, concurrency) cell runs `concurrency` workers until `--max-ops` operations were
started, `--duration` seconds passed or `--max-bytes` were moved, whichever comes first: every run is
bounded. Workloads run in the order given, per size; the keys of a size carry over from one workload to
the next (PUT adds, DELETE removes), and GET/HEAD/LIST/DELETE/mixed first write `--objects` keys if fewer
exist (not timed). Every GET body is compared byte for byte with what was written (bodies are windows of
one seeded stream, see benchmarks/s3load.py); a mismatch, a short body, a wrong HEAD length, an HTTP error
or a timeout counts as an error, not as an operation; a PUT answered 503 SlowDown is retried with
backoff up to 4 times, as the AWS SDKs do, and counted (`slowdowns` in the JSON). At the end the run's
keys are deleted (`--keep` keeps them).

Per cell: ops/s, MB/s (10^6 bytes of object bodies per second), p50/p90/p99/max latency of successful
operations, errors by kind, the generator's own CPU seconds and, with `--pids 123,456` or `--pids
cluster.json`, the CPU seconds and peak RSS (VmRSS sampled every 0.1 s) of those server processes. A rich
table is printed; `--json PATH` writes {"meta": ..., "results": [...]} after every cell. The exit code is 0
if no cell counted an error, 1 if some did, 2 if the endpoint could not be used at all.

`--against-sink` starts benchmarks/sink.py (an in-memory S3 endpoint) in its own process and runs PUT and
GET of 4 KiB and 1 MiB at concurrency 16 and 64 against it (flags override): the ops/s and MB/s it reaches
are the most the generator can measure on this machine.
"""

from __future__ import annotations

import argparse
import asyncio
import inspect
import json
import os
import random
import re
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import aiohttp
from rich.console import Console
from rich.table import Table

from benchmarks.loadcell import WORKLOADS, CellResult, KeySpace, run_cell
from benchmarks.procstat import parse_pids
from benchmarks.s3load import (
    DEFAULT_SEED,
    OpError,
    PayloadStream,
    S3LoadClient,
    S3Target,
)

__all__ = ["DEFAULT_MIX", "WORKLOADS", "CellResult", "S3Target", "main", "parse_mix", "parse_size",
           "run_workload", "start_sink_process"]

DEFAULT_MIX = {"get": 70.0, "put": 20.0, "list": 5.0, "delete": 5.0}
_UNITS = {"": 1, "b": 1, "k": 1 << 10, "kb": 1 << 10, "kib": 1 << 10, "m": 1 << 20, "mb": 1 << 20,
          "mib": 1 << 20, "g": 1 << 30, "gb": 1 << 30, "gib": 1 << 30}
_SETUP_CONCURRENCY = 16  # for writing the working set and deleting the run's keys: not measured


def parse_size(text: str) -> int:
    """'4KiB', '4k', '1MiB', '256m', '4096' -> bytes (binary units)."""
    found = re.fullmatch(r"\s*(\d+)\s*([a-zA-Z]*)\s*", text)
    if not found or found.group(2).lower() not in _UNITS:
        raise ValueError(f"not a size: {text!r} (try 4KiB, 1MiB, 256MiB)")
    return int(found.group(1)) * _UNITS[found.group(2).lower()]


def format_size(size: int) -> str:
    for unit, scale in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if size >= scale and size % scale == 0:
            return f"{size // scale} {unit}"
    return f"{size} B"


def parse_mix(text: str) -> dict[str, float]:
    """'get=70,put=20,list=5,delete=5' -> weights (any of get, put, head, list, delete; need not sum to 100)."""
    mix: dict[str, float] = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        name, _, weight = part.partition("=")
        if name not in ("get", "put", "head", "list", "delete") or not weight:
            raise ValueError(f"bad mix entry {part!r}: use get=70,put=20,list=5,delete=5")
        mix[name] = float(weight)
    if not mix or min(mix.values()) < 0 or sum(mix.values()) <= 0:
        raise ValueError(f"mix {text!r} has no positive weight")
    return mix


def default_objects(size: int) -> int:
    """Working set of a size when --objects is not given: about 1 GiB, between 4 and 1000 keys."""
    return max(4, min(1000, (1 << 30) // size))


def _session(timeout: float) -> aiohttp.ClientSession:
    # no connection limit: the workers bound concurrency. No Accept-Encoding: a store must send the
    # bytes as stored, and a compressed answer would fail the byte check
    return aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=0, force_close=False),
        timeout=aiohttp.ClientTimeout(total=timeout, sock_connect=10),
        auto_decompress=False,
        skip_auto_headers=("Accept-Encoding",),
    )


async def _bounded_each(items: Sequence[str], concurrency: int, action: Callable[[str], Any]) -> list[str]:
    """Run `action` on each item with at most `concurrency` at once; the kinds of the failures."""
    queue = iter(items)
    failures: list[str] = []

    async def worker() -> None:
        for item in queue:
            try:
                await action(item)
            except (TimeoutError, OpError, aiohttp.ClientError, OSError) as err:
                failures.append(getattr(err, "kind", type(err).__name__))

    async with asyncio.TaskGroup() as group:
        for _ in range(concurrency):
            group.create_task(worker())
    return failures


async def _fill(client: S3LoadClient, keys: KeySpace, count: int) -> None:
    """Write keys until `keys` holds `count` of them."""
    fresh = [keys.new_key() for _ in range(count - len(keys))]

    async def put(key: str) -> None:
        await client.put(key, keys.size)
        keys.add(key)

    failures = await _bounded_each(fresh, _SETUP_CONCURRENCY, put)
    if failures and not len(keys):
        raise OpError("setup", f"could not write any of {len(fresh)} objects: {Counter(failures).most_common(3)}")


async def preflight(client: S3LoadClient, prefix: str) -> None:
    """Create the bucket, then PUT, GET and DELETE one object: a wrong endpoint or key fails here, once."""
    await client.create_bucket()
    key = f"{prefix}preflight"
    await client.payloads.ensure(4096)
    await client.put(key, 4096)
    await client.get(key, 4096)
    await client.delete(key)


async def warm_up(client: S3LoadClient, key: str, size: int) -> None:
    """One untimed PUT, GET and DELETE of a new size: first-use costs (a store growing volumes, the sink
    generating its stream) stay out of the first cell. Failures are left for the cells to count."""
    try:
        await client.put(key, size)
        await client.get(key, size)
    except (TimeoutError, OpError, aiohttp.ClientError, OSError):
        pass
    finally:
        await _bounded_each([key], 1, client.delete)


async def run_workload(
    target: S3Target,
    workloads: Sequence[str] = ("put", "get"),
    sizes: Sequence[int] = (4096,),
    concurrencies: Sequence[int] = (16,),
    *,
    max_ops: int = 10_000,
    max_seconds: float = 30.0,
    max_bytes: int = 4 << 30,
    objects: int | None = None,
    mix: dict[str, float] | None = None,
    pids: Sequence[int] = (),
    seed: int = DEFAULT_SEED,
    timeout: float = 120.0,
    prefix: str | None = None,
    keep: bool = False,
    on_result: Callable[[CellResult], Any] | None = None,
) -> list[CellResult]:
    """Run every (workload, size, concurrency) cell against `target`, in that nesting order per size.

    `objects` is the working set per size (default: `default_objects`); `pids` are server processes to
    measure; `on_result` is called after each cell. Raises OpError if the preflight fails.
    """
    for name in workloads:
        if name not in WORKLOADS:
            raise ValueError(f"unknown workload {name!r}; choose from {', '.join(WORKLOADS)}")
    if max_ops <= 0 or max_seconds <= 0 or max_bytes <= 0:
        raise ValueError("max_ops, max_seconds and max_bytes must be positive: every run is bounded")
    prefix = prefix if prefix is not None else f"loadgen/{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}/"
    payloads = PayloadStream(seed)
    results: list[CellResult] = []
    async with _session(timeout) as session:
        setup = S3LoadClient(session, target, payloads)
        await preflight(setup, prefix)
        spaces: list[KeySpace] = []
        try:
            for size in sizes:
                await payloads.ensure(size)
                await warm_up(setup, f"{prefix}warm-up/{size}", size)
                keys = KeySpace(prefix, size)
                spaces.append(keys)
                working_set = objects if objects is not None else default_objects(size)
                for workload in workloads:
                    for concurrency in concurrencies:
                        if workload != "put":
                            await _fill(setup, keys, working_set)
                        ops_bound, bound_name = max_ops, "max_ops"
                        if workload in ("put", "get", "mixed") and max_bytes // size < max_ops:
                            ops_bound, bound_name = max(1, max_bytes // size), "max_bytes"
                        async with _session(timeout) as cell_session:
                            client = S3LoadClient(cell_session, target, payloads)
                            result = await run_cell(
                                client, keys, workload, concurrency, max_ops=ops_bound, max_seconds=max_seconds,
                                mix=mix or DEFAULT_MIX, rng=random.Random(seed), pids=pids, ops_bound_name=bound_name,
                            )
                        results.append(result)
                        if on_result is not None:
                            reported = on_result(result)
                            if inspect.isawaitable(reported):
                                await reported
        finally:
            if not keep:
                for keys in spaces:
                    await _bounded_each(keys.all(), _SETUP_CONCURRENCY, setup.delete)
    return results


def results_table(results: Sequence[CellResult], title: str = "S3 load") -> Table:
    table = Table(title=title)
    for name in ("workload", "size", "conc", "ops", "errors", "ops/s", "MB/s", "p50 ms", "p99 ms", "max ms",
                 "gen CPU", "srv CPU s", "srv RSS MiB"):
        table.add_column(name, justify="left" if name in ("workload", "size") else "right")
    for r in results:
        lat = r.latency_ms
        server_cpu = r.server.get("cpu_seconds")
        server_rss = r.server.get("peak_rss_bytes")
        table.add_row(
            r.workload, format_size(r.size), str(r.concurrency), str(r.ops),
            f"[red]{r.errors}[/red]" if r.errors else "0",
            f"{r.ops_per_s:,.0f}", f"{r.mb_per_s:,.1f}", f"{lat['p50']:.2f}", f"{lat['p99']:.2f}", f"{lat['max']:.2f}",
            f"{r.client_cpu_seconds / r.seconds:.0%}" if r.seconds else "-",
            "-" if server_cpu is None else f"{server_cpu:.2f}",
            "-" if server_rss is None else f"{server_rss / (1 << 20):,.0f}",
        )
    return table


def write_json(path: Path, meta: dict[str, Any], results: Sequence[CellResult]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps({"meta": meta, "results": [r.to_json() for r in results]}, indent=2))
    tmp.replace(path)  # a reader never sees half a file; losing the last cell in a crash is acceptable


def start_sink_process(seed: int = DEFAULT_SEED, timeout: float = 20.0) -> tuple[subprocess.Popen[str], str]:
    """Start benchmarks/sink.py in its own process on a free port; (process, endpoint URL)."""
    root = Path(__file__).resolve().parents[1]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(root), os.environ.get("PYTHONPATH")])))
    proc = subprocess.Popen([sys.executable, "-m", "benchmarks.sink", "--seed", str(seed)], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, env=env, cwd=root)
    assert proc.stdout is not None
    deadline = time.monotonic() + timeout
    # readline blocks, but the sink prints its URL within a second or exits (closing the pipe)
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if line.startswith("listening on "):
            return proc, line.split()[-1]
        if not line and proc.poll() is not None:
            break
    stop_process(proc)
    raise RuntimeError("the sink did not start")


def stop_process(proc: subprocess.Popen[str], grace: float = 5.0) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(grace)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(grace)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m benchmarks.loadgen", description=__doc__.splitlines()[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    t = p.add_argument_group("target")
    t.add_argument("--endpoint", help="S3 endpoint, path-style (default: $AWS_ENDPOINT_URL)")
    t.add_argument("--access-key", help="default: $AWS_ACCESS_KEY_ID")
    t.add_argument("--secret-key", help="default: $AWS_SECRET_ACCESS_KEY")
    t.add_argument("--region", help="default: $AWS_REGION or us-east-1")
    t.add_argument("--bucket", default="loadgen", help="created if missing (default: loadgen)")
    t.add_argument("--cluster", metavar="PATH", help="cluster.json of `objstore dev`: endpoint, credentials, pids")
    t.add_argument("--against-sink", action="store_true", help="start benchmarks/sink.py and measure the generator")
    w = p.add_argument_group("workload")
    w.add_argument("--workloads", help=f"comma list of {','.join(WORKLOADS)} (default: put,get)")
    w.add_argument("--mix", default="get=70,put=20,list=5,delete=5", help="ratios of the mixed workload")
    w.add_argument("--sizes", help="object sizes, 4KiB to 256MiB (default: 4KiB; sink: 4KiB,1MiB)")
    w.add_argument("--concurrency", help="concurrency sweep, e.g. 1,4,16,64 (default: 16; sink: 16,64)")
    w.add_argument("--objects", type=int, help="keys per size for GET/HEAD/LIST/DELETE/mixed (default: ~1 GiB)")
    w.add_argument("--seed", type=int, default=DEFAULT_SEED, help="payload and mix seed")
    b = p.add_argument_group("bounds (per cell; the first reached ends it)")
    b.add_argument("--max-ops", type=int, help="operations started (default: 10000; sink: 50000)")
    b.add_argument("--duration", type=float, help="seconds (default: 30; sink: 5)")
    b.add_argument("--max-bytes", default="4GiB", help="object bytes moved (default: 4GiB)")
    b.add_argument("--timeout", type=float, default=120.0, help="seconds for one request (default: 120)")
    o = p.add_argument_group("output")
    o.add_argument("--pids", help="server pids to measure: 123,456 or a cluster.json path")
    o.add_argument("--json", type=Path, metavar="PATH", help="write the results as JSON")
    o.add_argument("--prefix", help="key prefix of this run (default: loadgen/<time>-<pid>/)")
    o.add_argument("--keep", action="store_true", help="leave the run's objects in the bucket")
    return p


def _target(args: argparse.Namespace) -> tuple[S3Target, list[int]]:
    info: dict[str, Any] = json.loads(Path(args.cluster).read_text()) if args.cluster else {}
    endpoint = args.endpoint or info.get("endpoint") or os.environ.get("AWS_ENDPOINT_URL")
    access = args.access_key or info.get("access_key") or os.environ.get("AWS_ACCESS_KEY_ID")
    secret = args.secret_key or info.get("secret_key") or os.environ.get("AWS_SECRET_ACCESS_KEY")
    region = args.region or info.get("region") or os.environ.get("AWS_REGION") or "us-east-1"
    if not (endpoint and access and secret):
        raise ValueError("give --endpoint, --access-key and --secret-key (or --cluster, or $AWS_* variables)")
    pids = parse_pids(args.pids if args.pids else args.cluster)
    return S3Target(endpoint.rstrip("/"), args.bucket, access, secret, region), pids


def _sink_summary(results: Sequence[CellResult]) -> list[str]:
    """The best ops/s (4 KiB) and MB/s (1 MiB) reached, and what the generator's CPU per operation allows.

    On a machine busy with other work both processes wait for a core, and the rates measure that; the
    CPU the generator spent per operation does not depend on waiting, so 1 / (CPU per op) is its ceiling
    on one free core.
    """
    lines = []
    for workload in ("put", "get"):
        for size, unit in ((4096, "ops/s"), (1 << 20, "MB/s")):
            cells = [r for r in results if r.workload == workload and r.size == size and r.ops]
            if not cells:
                continue
            best = max(cells, key=lambda r: r.ops_per_s)
            cpu_per_op = min(r.client_cpu_seconds / r.ops for r in cells)
            rate, free_core = (best.ops_per_s, 1 / cpu_per_op) if unit == "ops/s" else (
                best.mb_per_s, size / cpu_per_op / 1e6)
            lines.append(
                f"generator ceiling {workload.upper()} {format_size(size)}: {rate:,.0f} {unit} reached "
                f"(x{best.concurrency}, generator at {best.client_cpu_seconds / best.seconds:.0%} of a core); "
                f"{cpu_per_op * 1e6:,.0f} us CPU per op: {free_core:,.0f} {unit} on one free core"
            )
    return lines


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    console = Console()
    if not console.is_terminal:
        console = Console(width=160)  # a file or a pipe gets the whole table, not 80 squeezed columns
    sink = args.against_sink
    sink_proc: subprocess.Popen[str] | None = None
    try:
        workloads = (args.workloads or "put,get").split(",")
        sizes = [parse_size(s) for s in (args.sizes or ("4KiB,1MiB" if sink else "4KiB")).split(",")]
        concurrencies = [int(c) for c in (args.concurrency or ("16,64" if sink else "16")).split(",")]
        mix = parse_mix(args.mix)
        max_bytes = parse_size(args.max_bytes)
        if sink:
            sink_proc, url = start_sink_process(args.seed)
            target, pids = S3Target(url, args.bucket, "sink", "sink"), [sink_proc.pid]
        else:
            target, pids = _target(args)
    except (ValueError, OSError, RuntimeError) as err:
        console.print(f"[red]error:[/red] {err}")
        return 2
    meta = {"endpoint": target.endpoint, "bucket": target.bucket, "region": target.region, "pids": pids,
            "against_sink": sink, "seed": args.seed, "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "argv": list(sys.argv[1:] if argv is None else argv), "python": sys.version.split()[0],
            "cpus": os.cpu_count(), "loop": "uvloop" if _uvloop() else "asyncio",
            "load_average": round(os.getloadavg()[0], 2)}
    if meta["load_average"] > (os.cpu_count() or 1):
        console.print(f"[yellow]this machine is busy (load average {meta['load_average']} on {os.cpu_count()} "
                      "cores): the figures will be noisy[/yellow]")
    results: list[CellResult] = []

    async def report(result: CellResult) -> None:
        results.append(result)
        console.print(
            f"{result.workload} {format_size(result.size)} x{result.concurrency}: {result.ops_per_s:,.0f} ops/s, "
            f"{result.mb_per_s:,.1f} MB/s, p99 {result.latency_ms['p99']:.2f} ms, {result.errors} errors"
        )
        if args.json:
            await asyncio.to_thread(write_json, args.json, meta, results)

    try:
        with _runner() as runner:
            runner.run(run_workload(
                target, workloads, sizes, concurrencies, max_ops=args.max_ops or (50_000 if sink else 10_000),
                max_seconds=args.duration or (5.0 if sink else 30.0), max_bytes=max_bytes, objects=args.objects,
                mix=mix, pids=pids, seed=args.seed, timeout=args.timeout, prefix=args.prefix, keep=args.keep,
                on_result=report,
            ))
    except (TimeoutError, OpError, aiohttp.ClientError, OSError, ValueError) as err:
        console.print(f"[red]error:[/red] {err}")
        return 2
    except KeyboardInterrupt:
        console.print("[yellow]interrupted[/yellow]")
    finally:
        if sink_proc is not None:
            stop_process(sink_proc)
    console.print(results_table(results, title=f"S3 load against {target.endpoint}"))
    if sink:
        for line in _sink_summary(results):
            console.print(line)
    return 1 if any(r.errors for r in results) else 0


def _uvloop() -> Any:
    try:
        import uvloop
    except ImportError:
        return None
    return uvloop


def _runner() -> asyncio.Runner:
    uvloop = _uvloop()
    return asyncio.Runner(loop_factory=uvloop.new_event_loop) if uvloop else asyncio.Runner()


if __name__ == "__main__":
    sys.exit(main())
