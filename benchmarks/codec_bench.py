"""Codec throughput: encode, decode (data shards and degraded) and rebuild with zfec and with ISA-L,
xxh3 checksums, streaming encode.

Run: .venv/bin/python -m benchmarks.codec_bench [--mib 256] [--runs 5]. Prints the median MB/s of
each operation over the runs, on one thread and on a thread pool (zfec, ISA-L and xxh3 release the
GIL), and the ratio of ISA-L to zfec where both ran.
"""

from __future__ import annotations

import argparse
import asyncio
import ctypes
import ctypes.util
import functools
import os
import statistics
import time
from collections.abc import AsyncIterator, Callable, Sequence
from concurrent.futures import Executor, ThreadPoolExecutor

from objstore.cluster import ECProfile
from objstore.codec import StripeCodec, block_checksum, encode_stream_checked

MIB = 1024 * 1024
STREAM_CHUNK = 64 * 1024  # what an aiohttp request body typically hands over per read


def tune_malloc() -> bool:
    """Keep freed stripe-sized buffers in the heap (glibc), as MALLOC_MMAP_THRESHOLD_ would.

    Blocks of 256 KiB are above glibc's default mmap threshold: each one is then a fresh mapping
    whose pages fault in on first write, which costs more than zfec itself.
    """
    name = ctypes.util.find_library("c")
    if name is None:
        return False
    libc = ctypes.CDLL(name)
    if not hasattr(libc, "mallopt"):
        return False
    m_trim_threshold, m_mmap_threshold = -1, -3
    return bool(libc.mallopt(m_mmap_threshold, 32 * MIB) and libc.mallopt(m_trim_threshold, 512 * MIB))


def run_all(executor: Executor | None, fn: Callable[[int], object], count: int) -> None:
    """fn(0..count-1), inline or spread over the executor."""
    if executor is None:
        for i in range(count):
            fn(i)
    else:
        for _ in executor.map(fn, range(count)):
            pass


async def body(payload: memoryview) -> AsyncIterator[bytes]:
    for off in range(0, len(payload), STREAM_CHUNK):
        yield bytes(payload[off:off + STREAM_CHUNK])


async def stream_all(payload: memoryview, ec: ECProfile, executor: Executor) -> None:
    async for _ in encode_stream_checked(body(payload), ec, executor):
        pass


def measure(label: str, fn: Callable[[], None], nbytes: int, runs: int) -> float:
    speeds = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        speeds.append(nbytes / MIB / (time.perf_counter() - start))
    median = statistics.median(speeds)
    print(f"  {label:<44} {median:9.0f} MB/s   (runs: {', '.join(f'{s:.0f}' for s in speeds)})", flush=True)
    return median


def bench(ec: ECProfile, mib: int, runs: int, threads: Sequence[int]) -> dict[tuple[str, int], float]:
    codec = StripeCodec(ec)
    backends = {"zfec": StripeCodec(ec, accelerate=False)}
    if codec.backend == "isa-l":
        backends["ISA-L"] = codec
    stripes = max(1, mib * MIB // ec.stripe_size)
    payload = memoryview(os.urandom(stripes * ec.stripe_size))
    nbytes = len(payload)
    parts = [payload[s * ec.stripe_size:(s + 1) * ec.stripe_size] for s in range(stripes)]
    encoded = [codec.encode(p) for p in parts]
    data_only = [{i: blocks[i] for i in range(ec.k)} for blocks in encoded]
    # Two data shards lost: parity blocks k and k+1 stand in (needs m >= 2).
    degraded = [{i: blocks[i] for i in (*range(2, ec.k), ec.k, ec.k + 1)} for blocks in encoded]

    ops: dict[str, Callable[[int], object]] = {}
    for name, c in backends.items():
        ops[f"encode (split + {name})"] = functools.partial(lambda c, s: c.encode(parts[s]), c)
    ops["decode, all data shards (no GF work)"] = lambda s: codec.decode(data_only[s], ec.stripe_size)
    for name, c in backends.items():
        ops[f"decode, 2 data shards lost ({name})"] = functools.partial(
            lambda c, s: c.decode(degraded[s], ec.stripe_size), c)
    for name, c in backends.items():
        ops[f"rebuild 2 lost data shards ({name})"] = functools.partial(
            lambda c, s: c.rebuild(degraded[s], [0, 1]), c)
    ops["xxh3 checksums of k+m blocks"] = lambda s: [block_checksum(b) for b in encoded[s]]
    results: dict[tuple[str, int], float] = {}
    for n in threads:
        print(f"{ec.k}+{ec.m}, block {ec.block_size // 1024} KiB, {nbytes // MIB} MiB, "
              f"{'single thread' if n == 1 else f'{n}-thread pool'}:", flush=True)
        executor = None if n == 1 else ThreadPoolExecutor(n)
        try:
            for label, op in ops.items():
                results[(label, n)] = measure(label, functools.partial(run_all, executor, op, stripes), nbytes, runs)
            with ThreadPoolExecutor(n) as stream_pool:
                label = "encode_stream_checked (asyncio, 64 KiB chunks)"
                results[(label, n)] = measure(label, lambda: asyncio.run(stream_all(payload, ec, stream_pool)),
                                              nbytes, runs)
        finally:
            if executor is not None:
                executor.shutdown()
    return results


def print_table(results: dict[tuple[str, int], float], threads: Sequence[int]) -> None:
    labels = list(dict.fromkeys(label for label, _ in results))
    header = f"{'operation (median MB/s of payload)':<48}" + "".join(f"{f'{n} thread' + ('s' if n > 1 else ''):>12}" for n in threads)
    print()
    print(header)
    print("-" * len(header))
    for label in labels:
        print(f"{label:<48}" + "".join(f"{results[(label, n)]:>12.0f}" for n in threads))
    pairs = [(label, label.replace("ISA-L", "zfec")) for label in labels if "ISA-L" in label]
    if pairs:
        print()
        for fast, slow in pairs:
            print(f"{'ISA-L / zfec, ' + fast.replace(' (ISA-L)', '').replace(' + ISA-L', ''):<48}"
                  + "".join(f"{results[(fast, n)] / results[(slow, n)]:>12.2f}" for n in threads))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--k", type=int, default=4)
    parser.add_argument("--m", type=int, default=2)
    parser.add_argument("--block-kib", type=int, default=256)
    parser.add_argument("--mib", type=int, default=256, help="payload MiB per run")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--tune-malloc", action="store_true",
                        help="raise glibc's mmap and trim thresholds first (see tune_malloc)")
    args = parser.parse_args()
    if args.tune_malloc:
        print(f"glibc malloc thresholds raised: {tune_malloc()}")
    ec = ECProfile(args.k, args.m, args.block_kib * 1024)
    if ec.m < 2 or ec.k < 2:
        parser.error("the degraded decode replaces 2 data shards: needs k >= 2 and m >= 2")
    print_table(bench(ec, args.mib, args.runs, args.threads), args.threads)


if __name__ == "__main__":
    main()
