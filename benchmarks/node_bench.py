"""Storage node shard throughput: PUT and GET of 64 KiB, 1 MiB and 64 MiB shards through the real client.

Run: .venv/bin/python -m benchmarks.node_bench [--runs 5] [--sizes 64K,1M,64M] [--concurrency 1] [--dir PATH]
     [--no-fsync]

Starts one node in this process on 127.0.0.1 (fsync on unless --no-fsync, which the table then says),
streams shards to it with NodeClient.put_blob and reads them back with open_blob (every block verified
by the node), and prints the median MB/s and shards/s over the runs. Client and node share one event
loop and the machine's cores, so the numbers are a floor for a node with a remote client.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import statistics
import tempfile
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import xxhash
from aiohttp import web

from node.server import build_app
from objstore.client import NodeClient
from objstore.cluster import DEFAULT_BLOCK_SIZE, ClusterMap, ECProfile, NodeInfo
from objstore.config import NodeConfig

KIB, MIB = 1024, 1024 * 1024
SECRET = "bench-secret"
SEND_CHUNK = 256 * KIB  # what a gateway hands the client per stripe block
BYTES_PER_RUN = 64 * MIB  # small shards are repeated until a run moves about this much
MAX_SHARDS_PER_RUN = 512


@dataclass
class Result:
    size: int
    shards: int
    put_mbps: list[float]
    get_mbps: list[float]

    def row(self) -> list[str]:
        put, get = statistics.median(self.put_mbps), statistics.median(self.get_mbps)
        mb = self.size / 1e6
        return [human(self.size), str(self.shards), f"{put:8.1f}", f"{put / mb:8.1f}", f"{get:8.1f}", f"{get / mb:8.1f}"]


def human(n: int) -> str:
    return f"{n // MIB} MiB" if n >= MIB else f"{n // KIB} KiB"


def parse_size(text: str) -> int:
    text = text.strip().upper().removesuffix("IB").removesuffix("B")
    unit = {"K": KIB, "M": MIB}.get(text[-1:], 1)
    return int(text.rstrip("KM")) * unit


async def body(chunks: Sequence[bytes]) -> AsyncIterator[bytes]:
    for c in chunks:
        yield c


async def start_node(data_dir: Path, fsync: bool) -> tuple[web.AppRunner, NodeInfo]:
    cfg = NodeConfig(id="bench", listen="127.0.0.1:0", data_dir=str(data_dir), secret=SECRET, map="x", fsync=fsync)
    cmap = ClusterMap(epoch=1, ec=ECProfile(4, 2, DEFAULT_BLOCK_SIZE), nodes=(NodeInfo("bench", "127.0.0.1:1", "z"),))
    runner = web.AppRunner(build_app(cfg, cmap, loops=False), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    return runner, NodeInfo("bench", f"127.0.0.1:{port}", "z")


async def one_run(client: NodeClient, node: NodeInfo, run: int, size: int, count: int, chunks: list[bytes],
                  expect: list[int], concurrency: int) -> tuple[float, float]:
    """PUT then GET `count` shards of `size` bytes; returns (PUT MB/s, GET MB/s)."""
    sem = asyncio.Semaphore(concurrency)
    ids = [f"r{run}s{size}n{i}" for i in range(count)]

    async def put(blob: str) -> None:
        async with sem:
            sums = await client.put_blob(node, blob, 0, 1, DEFAULT_BLOCK_SIZE, body(chunks))
            if sums != expect:
                raise AssertionError(f"{blob}: the node computed other checksums")

    async def get(blob: str) -> None:
        async with sem:
            got = 0
            async with client.open_blob(node, blob, 0) as reader:
                async for chunk in reader.iter_chunks():
                    got += len(chunk)
            if got != size:
                raise AssertionError(f"{blob}: read {got} of {size} bytes")

    t0 = time.perf_counter()
    await asyncio.gather(*(put(b) for b in ids))
    t1 = time.perf_counter()
    await asyncio.gather(*(get(b) for b in ids))
    t2 = time.perf_counter()
    async def delete(blob: str) -> None:
        async with sem:
            await client.delete_blob(node, blob, 0)

    await asyncio.gather(*(delete(b) for b in ids))
    total = size * count / 1e6
    return total / (t1 - t0), total / (t2 - t1)


async def bench(sizes: list[int], runs: int, concurrency: int, root: Path, fsync: bool) -> list[Result]:
    runner, node = await start_node(root / "node", fsync)
    results = []
    try:
        async with NodeClient(SECRET, timeout=60.0) as client:
            for size in sizes:
                data = os.urandom(size)
                chunks = [data[i:i + SEND_CHUNK] for i in range(0, size, SEND_CHUNK)]
                expect = [xxhash.xxh3_64_intdigest(data[i:i + DEFAULT_BLOCK_SIZE])
                          for i in range(0, size, DEFAULT_BLOCK_SIZE)]
                count = max(1, min(MAX_SHARDS_PER_RUN, BYTES_PER_RUN // size))
                await one_run(client, node, -1, size, min(count, 4), chunks, expect, concurrency)  # warm-up
                res = Result(size, count, [], [])
                for run in range(runs):
                    put, get = await one_run(client, node, run, size, count, chunks, expect, concurrency)
                    res.put_mbps.append(put)
                    res.get_mbps.append(get)
                results.append(res)
    finally:
        await runner.cleanup()
    return results


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=5, help="runs per size; the median is printed")
    ap.add_argument("--sizes", default="64K,1M,64M", help="comma-separated shard sizes (K and M suffixes)")
    ap.add_argument("--concurrency", type=int, default=1, help="shards in flight at once")
    ap.add_argument("--dir", default=None, help="where the node's data dir goes (default: a temp dir)")
    ap.add_argument("--no-fsync", action="store_true", help="turn fsync off (not how a node runs)")
    args = ap.parse_args()
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    root = Path(tempfile.mkdtemp(prefix="node-bench-", dir=args.dir))
    fsync = not args.no_fsync
    try:
        results = asyncio.run(bench([parse_size(s) for s in args.sizes.split(",")], args.runs, args.concurrency,
                                    root, fsync))
    finally:
        shutil.rmtree(root, ignore_errors=True)
    print(f"node shard throughput: fsync {'on' if fsync else 'OFF'}, {args.concurrency} in flight, "
          f"block size {human(DEFAULT_BLOCK_SIZE)}, median of {args.runs} runs, data dir under {root.parent}")
    header = ["shard", "shards/run", "PUT MB/s", "PUT /s", "GET MB/s", "GET /s"]
    rows = [header] + [r.row() for r in results]
    widths = [max(len(row[i].strip()) for row in rows) for i in range(len(header))]
    for row in rows:
        print("  ".join(cell.strip().rjust(w) for cell, w in zip(row, widths, strict=True)))


if __name__ == "__main__":
    main()
