"""The benchmark report's plan and its targets table, on made-up figures (the report itself is a benchmark)."""

from __future__ import annotations

import subprocess
import sys
import time

from benchmarks.report_compare import HOLD_MARGIN, ComparePlan, hold_others, machine_share, settle
from benchmarks.report_md import _held, _targets

MIB = 1 << 20


def test_the_target_cells_run_every_round_and_join_the_sweep() -> None:
    plan = ComparePlan(sizes=[4096, MIB, 16 * MIB], concurrency=[1, 8, 32], big_concurrency=[1, 8], rounds=3)
    assert plan.cells(MIB) == [("put", 1, 0), ("put", 8, 0), *(("put", 16, r) for r in range(3)), ("put", 32, 0),
                               ("get", 1, 0), ("get", 8, 0), *(("get", 16, r) for r in range(3)), ("get", 32, 0)]
    big = plan.cells(16 * MIB)
    assert {c for _, c, _ in big} == {1, 4, 8} and big.count(("put", 4, 2)) == 1
    small = plan.cells(4096)
    assert ("put", 32, 2) in small and ("head", 32, 0) in small and ("head", 32, 1) not in small


def test_the_targets_table_gives_each_ratio_and_whether_it_is_met() -> None:
    plan = {"sizes": [4096, MIB], "targets": {"4096": 32, str(MIB): 16}}
    med = {("objstore", "put", 4096, 32): {"ops_per_s": 1200.0, "mb_per_s": 4.9},
           ("seaweedfs", "put", 4096, 32): {"ops_per_s": 1000.0, "mb_per_s": 4.1},
           ("objstore", "get", MIB, 16): {"ops_per_s": 300.0, "mb_per_s": 314.6},
           ("seaweedfs", "get", MIB, 16): {"ops_per_s": 500.0, "mb_per_s": 524.3}}
    rows = {line.split(" | ")[0].strip("| "): line for line in _targets(plan, med, ["seaweedfs"]).splitlines()
            if line.startswith("| ") and "x" in line.split(" | ")[0]}
    assert rows["PUT 4 KiB x32"].endswith("| 1.20 | >= 1x | yes |")
    assert "315 MB/s" in rows["GET 1 MiB x16"] and rows["GET 1 MiB x16"].endswith("| 0.60 | >= 0.8x | **no** |")
    assert rows["GET 4 KiB x32"].endswith("| - | >= 1x | - |")  # not measured: no verdict
    assert "16 MiB" not in " ".join(rows)  # not in the plan's sizes
    assert _targets(plan, med, ["swift"]) == ""  # no SeaweedFS, no targets table


def test_machine_share_leaves_out_the_store_measured_and_the_generator() -> None:
    result = {"server": {"cpu_seconds": 4.0}, "client_cpu_seconds": 1.0}
    share = machine_share((100.0, 7.0), (107.0, 8.0), 5.0, result)
    assert share == {"busy_cores": 1.4, "iowait_cores": 0.2, "other_cores": 0.4}
    assert machine_share((0.0, 0.0), (1.0, 0.0), 2.0, result)["other_cores"] == 0.0  # never below zero


async def test_settle_waits_for_a_busy_machine_but_not_past_its_bound() -> None:
    assert await settle(0, 0.3) == 0.0
    spin = subprocess.Popen([sys.executable, "-c", "import time\nt = time.time()\nwhile time.time() - t < 10: pass"])
    try:
        time.sleep(0.3)
        waited = await settle(1.5, quiet_cores=0.5)
        assert 1.4 <= waited < 3.0  # a core spinning: busy all along, so it gives up at its bound
    finally:
        spin.kill()
        spin.wait()
    waited = await settle(10.0, quiet_cores=1.5)  # one core at most is busy now, and that is quiet enough
    assert waited < 3.0


class Store:
    """A store's pause control, recorded: `control` False is a store without one (the peers)."""

    def __init__(self, name: str, control: bool) -> None:
        self.name, self.control, self.calls = name, control, []

    async def hold_background(self, seconds: float) -> bool:
        self.calls.append(seconds)
        return self.control


async def test_a_cell_runs_with_the_other_stores_background_paused() -> None:
    plan = ComparePlan(sizes=[4096], concurrency=[1], big_concurrency=[1], seconds=5.0, settle_seconds=15.0)
    ours, peer, other = Store("objstore", True), Store("seaweedfs", False), Store("objstore-b", True)
    assert await hold_others(peer, [ours, other], plan) == ["objstore", "objstore-b"]
    assert ours.calls == other.calls == [5.0 + 15.0 + HOLD_MARGIN] and peer.calls == [0]
    assert await hold_others(ours, [peer, other], plan) == ["objstore-b"]  # its own cell: running again
    assert ours.calls[-1] == 0 and peer.calls[-1] > 0


def test_the_report_says_what_a_paused_store_still_used_in_the_others_cells() -> None:
    def row(system: str, held: list[str], cores: float) -> dict[str, object]:
        return {"system": system, "held": held, "machine": {"other_stores_cores": {"objstore": cores, "peer": 0.0}}}

    rows = [row("peer", ["objstore"], c) for c in (0.08, 0.07, 0.11)] + [row("objstore", [], 0.0)]
    text = _held(rows)
    assert "objstore had its background work" in text and "median of 0.08 cores" in text and "at most 0.11" in text
    assert "(3 cells)" in text
    assert _held([row("peer", [], 0.5)]) == ""  # nothing paused: no paragraph
