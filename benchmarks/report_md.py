"""report.md of a benchmark run, written from the report's JSON data alone (plus OUT/findings.md if a person wrote one)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from benchmarks.loadgen import format_size
from benchmarks.report_compare import TARGETS, medians

__all__ = ["write_markdown"]

DIFFERENCES = """| | objstore | SeaweedFS | SeaweedFS fsync | Swift |
|---|---|---|---|---|
| redundancy | EC 4+2 (zfec's code; ISA-L does the arithmetic where found, see the objstore note below) over 6 node processes, 3 zones | 2 full copies (`001`) over 3 volume servers | same | EC 4+2 (ISA-L) over 6 devices of one object server |
| storage overhead (nominal) | 1.5x | 2.0x | 2.0x | 1.5x |
| losses survived | 2 nodes | 1 volume server | 1 volume server | 2 devices (one server process) |
| data fsync before the answer | yes | **no** (page cache) | yes (`fs.configure -fsync`) | yes (fragments, dirs, `.durable`) |
| metadata | records replicated on the nodes (SQLite) | one filer, leveldb2, not synced | same | account/container SQLite, 3 replicas |
| language, processes | Python (asyncio, uvloop): 6 nodes + 1 gateway | Go: master, 3 volume, filer, S3 gateway | same | Python (eventlet): proxy, account, container, object + memcached |
| background work during the run | heartbeats; repair and scrub in its own cells (paused during the others', `objstore pause`) | none measured | none | none (no replicator, reconstructor, auditor) |
"""


def _mib(n: float | None) -> str:
    return "-" if n is None else f"{n / 2**20:,.0f}"


def _num(x: float | None, digits: int = 0) -> str:
    if x is None:
        return "-"
    return f"{x:,.{digits}f}" if abs(x) >= 10 or digits == 0 else f"{x:,.{max(digits, 2)}f}"


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def _machine(m: dict[str, Any]) -> str:
    disk = m["disk"]
    rows = [
        ("CPU", f"{m['cpu_model']}, {m['cores']} cores (shared machine)"),
        ("memory", f"{m['memory_bytes'] / 2**30:.1f} GiB"),
        ("disk", (f"{disk['device']} ({disk['type']}, {disk['size_bytes'] / 1e9:,.0f} GB, "
                 f"{disk['free_bytes'] / 1e9:,.0f} GB free, rotational flag {disk['rotational_flag']}); "
                 "every store writes to this one disk")),
        ("kernel / OS", f"{m['kernel']} / {m['os']}"),
        ("python", m["python"]),
        ("packages", ", ".join(f"{k} {v}" for k, v in m["packages"].items())),
        ("SeaweedFS", m["weed_version"]),
        ("memcached (Swift's cache)", m["memcached"]),
        ("objstore commit", m["git_commit"]),
        ("load average (1, 5, 15 min)", f"start {m['load_average_start']}, end {m.get('load_average_end')}"),
        ("run", f"{m['started']} to {m.get('finished')}"),
    ]
    return _table(("", ""), rows)


def _repeated(plan: dict[str, Any]) -> str:
    targets = plan.get("targets")
    if not targets:  # a report from before the target cells: its headline cells were the repeated ones
        return (f"PUT and GET of sizes up to 1 MiB at concurrency {plan['headline_concurrency']} ran "
                f"{plan['rounds']} times (alternated); the figures are medians over those rounds.")
    cells = ", ".join(f"{format_size(int(size))} x{c}" for size, c in targets.items())
    return (f"PUT and GET at the target cells ({cells}) ran {plan['rounds']} times (alternated); the figures are "
            "medians over those rounds.")


def _targets(plan: dict[str, Any], med: dict[tuple[str, str, int, int], dict[str, float]], peers: list[str]) -> str:
    """Issue #5's targets table: objstore against SeaweedFS at the concurrency the targets were set at."""
    conc = {int(size): c for size, c in (plan.get("targets") or {}).items()}
    if not conc or "seaweedfs" not in peers:
        return ""
    head = ["cell", "objstore", *peers, "objstore/seaweedfs", "target", "met"]
    body = []
    for workload, size, least in TARGETS:
        c = conc.get(size)
        if c is None or size not in plan["sizes"]:
            continue
        ours = med.get(("objstore", workload, size, c))
        theirs = {p: med.get((p, workload, size, c)) for p in peers}
        sw = theirs.get("seaweedfs")

        def shown(v: dict[str, float] | None) -> str:
            if not v:
                return "-"
            return f"{_num(v['ops_per_s'])} ops/s" if size == 4096 else f"{_num(v['mb_per_s'])} MB/s"

        ratio = ours["ops_per_s"] / sw["ops_per_s"] if ours and sw and sw["ops_per_s"] else None
        body.append([f"{workload.upper()} {format_size(size)} x{c}", shown(ours), *(shown(theirs[p]) for p in peers),
                     f"{ratio:.2f}" if ratio is not None else "-", f">= {least:g}x",
                     "-" if ratio is None else ("yes" if ratio >= least else "**no**")])
    return ("### Targets of issue #5\n\nobjstore against SeaweedFS (no fsync, as configured for the targets) at the "
            "concurrency each target was set at.\n\n" + _table(head, body))


def _held(rows: Sequence[dict[str, Any]]) -> str:
    """The paragraph on the stores whose background work was paused during the others' cells, and the cores
    each still used in them (its heartbeats); "" when none was."""
    held = sorted({name for r in rows for name in r.get("held", [])})
    if not held:
        return ""
    used = []
    for name in held:
        cores = sorted(r["machine"]["other_stores_cores"][name] for r in rows
                       if name in r.get("held", []) and name in r.get("machine", {}).get("other_stores_cores", {}))
        if cores:
            used.append(f"{name} used a median of {cores[len(cores) // 2]:.2f} cores in them, at most "
                        f"{cores[-1]:.2f} ({len(cores)} cells)")
    return (f"During every cell of another store, {', '.join(held)} had its background work (repair, scrub) "
            "paused with `objstore pause`; it ran again from the start of its own cells, so what it does in the "
            "background counts in its own figures, not in the others'" + (": " + "; ".join(used) if used else "")
            + ".\n")


def _compare(data: dict[str, Any]) -> str:
    compare = data["compare"]
    plan, rows = compare["plan"], compare["cells"]
    systems = compare["systems"]
    peers = [s for s in systems if s != "objstore"]
    med = medians(rows)
    out = [(f"Every cell (workload, size, concurrency) ran on every store in turn, the order rotated by one store "
           f"from cell to cell; each cell is bounded by {plan['seconds']:g} s, {plan['max_ops']:,} operations and "
           f"{plan['max_bytes'] / 2**30:g} GiB ({', '.join(plan.get('bytes_bound', ['put', 'get', 'mixed']))} "
           f"only), in a fresh connection pool. Every GET body was compared byte for byte "
           f"with what was written. {_repeated(plan)} MB = 10^6 bytes. "
           "Ratio = objstore / peer (above 1: objstore faster).\n")]
    targets = _targets(plan, med, peers)
    if targets:
        out.append(targets)
    conc = plan["headline_concurrency"]
    head = ["cell"] + [f"{s} ops/s" for s in systems] + [f"objstore/{p}" for p in peers]
    body = []
    for size in plan["sizes"]:
        workloads = plan["small_workloads"] if size == 4096 else ["put", "get"]
        for workload in workloads:
            cells = sorted({key[3] for key in med if key[1:3] == (workload, size)})
            c = conc if conc in cells else (cells[-1] if cells else conc)
            values = [med.get((s, workload, size, c)) for s in systems]
            base = values[0]["ops_per_s"] if values and values[0] else 0.0
            ratio = [f"{base / v['ops_per_s']:.2f}" if v and v["ops_per_s"] else "-" for v in values[1:]]
            shown = [(_num(v["ops_per_s"]) + (f" ({_num(v['mb_per_s'])} MB/s)" if size > 4096 else "")) if v else "-"
                     for v in values]
            body.append([f"{workload.upper()} {format_size(size)} x{c}"] + shown + ratio)
    out.append(f"### Headline: concurrency {conc}\n\n" + _table(head, body))
    for size in plan["sizes"]:
        head = ["workload", "conc"] + [f"{s}: ops/s, MB/s, p50/p99 ms" for s in systems]
        body = []
        workloads = plan["small_workloads"] if size == 4096 else ["put", "get"]
        for workload in workloads:
            for c in sorted({key[3] for key in med if key[1:3] == (workload, size)}):
                entries: list[str] = []
                for s in systems:
                    v = med.get((s, workload, size, c))
                    if not v:
                        entries.append("-")
                        continue
                    err = f", **{v['errors']} errors**" if v["errors"] else ""
                    entries.append(f"{_num(v['ops_per_s'])}, {_num(v['mb_per_s'], 1)}, "
                                   f"{_num(v['p50'], 1)}/{_num(v['p99'], 1)}{err}")
                body.append([workload.upper(), str(c), *entries])
        out.append(f"### {format_size(size)} objects\n\n" + _table(head, body))
    cpu_head = ["cell"] + [f"{s} CPU ms/op" for s in systems] + [f"{s} peak RSS MiB" for s in systems]
    cpu_body = []
    for size in plan["sizes"]:
        for workload in ("put", "get"):
            values = [med.get((s, workload, size, conc if size < 64 << 20 else plan["big_concurrency"][-1]))
                      for s in systems]
            cpu_body.append([f"{workload.upper()} {format_size(size)}"]
                            + [_num(v["server_cpu_s_per_op"] * 1000, 2) if v else "-" for v in values]
                            + [_mib(v["peak_rss"]) if v else "-" for v in values])
    out.append("### Server CPU per operation and memory\n\nCPU seconds of every server process (utime + stime from "
               "/proc) divided by the operations of the cell; peak RSS summed over the processes, sampled every "
               "0.1 s. On 2 cores the load generator competes with the servers for the same CPUs.\n\n"
               + _table(cpu_head, cpu_body))
    split = []
    for size in plan["sizes"]:
        for workload in (plan["small_workloads"] if size == 4096 else ["put", "get"]):
            cell = next((r for r in rows if (r["system"], r["workload"], r["size"], r["concurrency"], r["round"])
                         == ("objstore", workload, size, conc, 0)), None)
            roles = (cell or {}).get("result", {}).get("server", {}).get("by_role")
            if cell is None or not roles or not cell["result"]["ops"]:
                continue
            ops = cell["result"]["ops"]
            gateway = roles.get("gateway", {}).get("cpu_seconds", 0.0)
            nodes = sum(v["cpu_seconds"] for k, v in roles.items() if k != "gateway")
            split.append([f"{workload.upper()} {format_size(size)} x{conc}", _num(gateway / ops * 1000, 2),
                          _num(nodes / ops * 1000, 2), _num(cell["result"]["client_cpu_seconds"] / ops * 1000, 2)])
    if split:
        out.append("objstore's CPU per operation split between the gateway and the 6 nodes (first round), and the load "
                   "generator's own:\n\n" + _table(["cell", "gateway ms/op", "nodes ms/op (sum)", "generator ms/op"],
                                                   split))
    idle = compare.get("idle_cpu_cores")
    if idle:
        out.append(f"CPU used at rest, all stores idle over the same {plan.get('idle_seconds', 5):g} s (heartbeats, "
                   "background loops), in cores: " + ", ".join(f"{k} {v:.3f}" for k, v in idle.items()) + ".\n")
    loads = sorted(r["result"].get("load_average", 0.0) for r in rows)
    if loads:
        out.append(f"Machine load (1-minute load average at the end of each cell, {len(loads)} cells): median "
                   f"{loads[len(loads) // 2]:.1f}, max {loads[-1]:.1f} on {data['machine']['cores']} cores. The load "
                   "counts the run's own processes too (4 stores' worth of servers, up to 32 requests in flight, the "
                   "generator), so it is above the core count by design; any other work on the machine hit every "
                   "store alike, since the stores took turns cell by cell.\n")
    settled = sorted(r["settle_s"] for r in rows if "settle_s" in r)
    others = sorted(r["machine"]["other_cores"] for r in rows if "machine" in r)
    if settled and others:
        out.append(f"Before each cell the run flushed dirty pages (`sync`) and waited for the machine to fall below "
                   f"{plan.get('quiet_cores', 0.3):g} busy cores, at most {plan.get('settle_seconds', 15):g} s "
                   f"(median wait {settled[len(settled) // 2]:.1f} s, longest {settled[-1]:.1f} s), so that no cell "
                   "paid for the writeback or background work of the one before. During the cells, work other than "
                   "the store measured and the generator (other stores' leftovers, the kernel's writeback, other "
                   f"tenants) took a median of {others[len(others) // 2]:.2f} cores, at most {others[-1]:.2f}; "
                   "report.json has it per cell (`machine`).\n")
    held = _held(rows)
    if held:
        out.append(held)
    errors = [r for r in rows if r["result"]["errors"]]
    if errors:
        out.append("### Errors\n\n" + _table(
            ["system", "cell", "errors", "kinds", "first"],
            [[r["system"], f"{r['workload']} {format_size(r['size'])} x{r['concurrency']}", str(r["result"]["errors"]),
              str(r["result"]["errors_by_kind"]), r["result"]["first_error"][:120].replace("|", "/")] for r in errors]))
    else:
        out.append("No cell counted an error: every request of every store answered as expected, every GET byte matched.\n")
    over = compare["overhead"]
    out.append("### Storage overhead, measured\n\nA fresh set of objects written into each store; the growth of its "
               "data directories (after a sync) divided by the object bytes written. Allocated = filesystem blocks "
               "(4 KiB units on ext4), apparent = file sizes.\n\n" + _table(
                   ["system", "objects", "object bytes", "allocated", "apparent"],
                   [[r["system"], f"{r['objects']} x {format_size(r['size'])}", f"{r['logical_bytes'] / 2**20:,.1f} MiB",
                     f"{r['allocated_ratio']}x", f"{r['apparent_ratio']}x"] for r in over]))
    return "\n".join(out)


def _scale(sc: dict[str, Any]) -> str:
    out = [(f"objstore alone (fsync on), one prefix of {format_size(sc['plan']['size'])} objects grown by PUTs at "
           f"concurrency {sc['plan']['fill_concurrency']}; at each checkpoint GET/HEAD/PUT x8 and LIST of 1000-key "
           f"pages (x1 and x8, each worker walking the prefix from its start) for {sc['plan']['seconds']:g} s each.\n")]
    rows = []
    for p in sc["points"]:
        cells = {(c["workload"], c["concurrency"]): c for c in p["cells"]}
        gw = p["rss"].get("gateway", 0)
        nodes = sum(v for k, v in p["rss"].items() if k != "gateway")
        rows.append([f"{p['objects']:,}"] + [
            f"{_num(cells[key]['ops_per_s'])} / {_num(cells[key]['latency_ms']['p99'], 1)}"
            for key in (("put", 8), ("get", 8), ("head", 8), ("list", 1), ("list", 8))] + [
            f"{_num(cells[('list', 1)]['latency_ms']['p50'], 1)}", _mib(gw), _mib(nodes),
            f"{p['disk']['all_allocated'] / p['objects'] / 1024:,.1f}" if p.get("disk") else "-"])
    out.append(_table(["objects", "PUT x8 ops/s / p99 ms", "GET x8", "HEAD x8", "LIST x1 pages/s / p99", "LIST x8",
                       "LIST page p50 ms", "gateway RSS MiB", "nodes RSS MiB (sum of 6)",
                       "disk KiB per object (6 nodes, allocated)"], rows))
    reached = sc["reached"]
    proj = sc.get("projected_1m_s")
    out.append(f"Reached **{reached:,} objects** in {sc['elapsed_s']:,.0f} s of growth. "
               + (f"{sc['stopped']}. " if sc.get("stopped") else "")
               + (f"At the last measured rate ({sc['recent_put_rate']:,.0f} PUT/s at concurrency "
                  f"{sc['plan']['fill_concurrency']}) 1,000,000 objects would take about {proj / 3600:.1f} h from empty "
                  f"({sc['projected_1m_remaining_s'] / 3600:.1f} h more from here): not run on this machine."
                  if proj and reached < 1_000_000 else "") + "\n")
    return "\n".join(out)


def _repair(rp: dict[str, Any]) -> str:
    def line(name: str, s: dict[str, Any]) -> list[str]:
        if not s.get("windows"):
            return [name, "-", "-", "-", "-", "-"]
        return [name, str(s["windows"]), _num(s["ops_per_s"]), _num(s["mb_per_s"], 1), _num(s["p99_ms"], 1),
                f"{s['errors']} of {s['ops'] + s['errors']}"]

    took = rp["time_to_full_redundancy_s"]
    bad = sum(rp["verify_failures"]["big"].values()) + sum(rp["verify_failures"]["client"].values())
    return (
        f"objstore EC {rp['k']}+{rp['m']}, fsync on, target {rp['plan']['gib']:g} GiB of shards on the wiped node: "
        f"{rp['objects']} x {format_size(rp['object_bytes'])} written ({rp['write_mb_s']} MB/s), node "
        f"{rp['plan']['victim']} held {rp['victim_bytes_before'] / 1e9:.2f} GB of shards. It was SIGKILLed, its data "
        f"dir deleted, and it was started again empty while {rp['plan']['client_concurrency']} clients ran 1 MiB GET 80% "
        f"/ PUT 20% in 1-second windows.\n\n"
        + (f"- **time to full redundancy: {took} s** from the kill for {rp['tracked_objects']} objects; "
           f"{rp['victim_bytes_rebuilt'] / 1e9:.2f} GB of shards rebuilt on the wiped node, "
           f"**{rp['rebuild_mb_s']} MB/s** from its restart\n" if took else
           f"- **repair did not reach full redundancy within {rp['plan']['timeout_s']:g} s**\n")
        + f"- afterwards every object was read back and compared: {bad} failures "
          f"({rp['big_objects_verified']} large, {rp['client_objects_verified']} client objects)\n\n"
        + _table(["client load", "windows", "ops/s (median)", "MB/s", "p99 ms (median)", "errors"],
                 [line("before the wipe", rp["client_before"]), line("during repair", rp["client_during"]),
                  line("after", rp["client_after"])])
    )


def _chaos(ch: dict[str, Any]) -> str:
    o = ch["overall"]
    kills = [e for e in ch["events"] if e["event"] == "kill"]
    return (
        f"{ch['plan']['concurrency']} clients ran {format_size(ch['plan']['size'])} PUT 50% / GET 50% for "
        f"{ch['plan']['seconds']:g} s; every {ch['plan']['period']:g} s one node was SIGKILLed by pid and started again "
        f"{ch['plan']['down']:g} s later with the fixture's start_node ({len(kills)} kills: "
        f"{', '.join(e['node'] for e in kills)}).\n\n"
        f"- requests: {o.get('ops', 0) + o.get('errors', 0):,}, failed: {o.get('errors', 0)} "
        f"(error rate {o.get('error_rate', 0):.3%}); median p99 per window {_num(o.get('p99_ms'), 1)} ms, "
        f"worst window p99 {_num(o.get('worst_p99_ms'), 1)} ms\n"
        f"- **acknowledged writes lost or corrupt: {ch['lost_or_corrupt']} of {ch['acknowledged_keys']:,}** "
        f"(every key whose PUT was answered 200 was read back and compared byte for byte after the last restart"
        f"{'; failures: ' + str(ch['verify_failures']) if ch['verify_failures'] else ''})\n"
        + ("- errors by kind: " + str(_error_kinds(ch["windows"])) + "\n" if o.get("errors") else "")
    )


def _error_kinds(windows: Sequence[dict[str, Any]]) -> dict[str, int]:
    kinds: dict[str, int] = {}
    for w in windows:
        for kind, n in w["errors_by_kind"].items():
            kinds[kind] = kinds.get(kind, 0) + n
    return kinds


def _ec(ec: Sequence[dict[str, Any]]) -> str:
    sizes = [(c["workload"], c["size"], c["concurrency"]) for c in ec[0]["cells"]]
    head = ["profile", "nodes/zones", "(k+m)/k", "shard bytes / object bytes", "allocated (all files) / object bytes"]
    head += [f"{w.upper()} {format_size(s)} x{c} MB/s" for w, s, c in sizes]
    head += ["repair: time to full redundancy", "rebuilt"]
    rows = []
    for e in ec:
        cells = {(c["workload"], c["size"]): c for c in e["cells"]}
        rows.append([f"{e['k']}+{e['m']}", f"{e['nodes']}/{e['zones']}", f"{e['nominal_overhead']}x",
                     f"{e.get('shard_overhead')}x", f"{e.get('allocated_overhead')}x"]
                    + [_num(cells[(w, s)]["mb_per_s"], 1) for w, s, _ in sizes]
                    + [f"{e.get('time_to_full_redundancy_s')} s ({e['repair_objects']} objects)",
                       f"{e['victim_bytes_rebuilt'] / 1e6:,.0f} MB at {e.get('rebuild_mb_s')} MB/s"])
    return ("Each profile on a fresh objstore dev cluster (fsync on); bytes measured in the node data dirs after a sync, "
            "over the logical bytes of the objects stored; then node n2 wiped and the time to full redundancy of "
            "every object measured.\n\n" + _table(head, rows))


def write_markdown(data: dict[str, Any], out: Path) -> Path:
    """Write OUT/report.md from `data` (report.json) and return its path."""
    charts = set(data.get("charts", []))
    parts = [f"# objstore benchmark report ({data['mode']} run, {data['machine']['started'][:10]})\n",
             "Produced by `python -m benchmarks.report" + (" --quick" if data["mode"] == "quick" else "")
             + "`; raw figures in `report.json` (same folder). How to reproduce: benchmarks/README.md.\n"]
    findings = out / "findings.md"
    if findings.exists():
        parts.append(findings.read_text())
    parts.append("## Machine\n\n" + _machine(data["machine"]))
    if "compare" in data:
        parts.append("## What differs between the stores\n\n" + DIFFERENCES)
        for name, info in data.get("systems", {}).items():
            parts.append(f"- **{name}**: {info['notes']}")
        parts.append("\n## Side by side\n\n" + _compare(data))
        for chart, caption in (("throughput_by_size.png", "PUT and GET MB/s by object size"),
                               ("small_ops.png", "4 KiB operations"),
                               ("concurrency_sweep.png", "ops/s over the concurrency sweep"),
                               ("latency_cdf.png", "latency CDFs"), ("rss_by_size.png", "server memory"),
                               ("storage_overhead.png", "storage overhead")):
            if chart in charts:
                parts.append(f"![{caption}]({chart})\n")
    if "scale" in data:
        parts.append("## Scale: a bucket of many small objects\n\n" + _scale(data["scale"]))
        if "scale.png" in charts:
            parts.append("![scale curves](scale.png)\n")
    if "repair" in data:
        parts.append("## Repair under client load\n\n" + _repair(data["repair"]))
        if "repair_timeline.png" in charts:
            parts.append("![repair timeline](repair_timeline.png)\n")
    if "chaos" in data:
        parts.append("## Chaos: nodes killed under load\n\n" + _chaos(data["chaos"]))
        if "chaos_timeline.png" in charts:
            parts.append("![chaos timeline](chaos_timeline.png)\n")
    if data.get("ec"):
        parts.append("## EC profiles\n\n" + _ec(data["ec"]))
        if "ec_profiles.png" in charts:
            parts.append("![EC profiles](ec_profiles.png)\n")
    notes = list(data.get("notes", [])) + [
        ("Repair and chaos were measured on objstore only: the peers here run without their background repair "
        "(SeaweedFS needs `volume.fix.replication` from `weed shell`; Swift's reconstructor is not started), "
        "so there is no like-for-like figure to compare."),
        "The scale phase grows objstore alone; the peers' behaviour with many objects was not measured.",
        ("One machine, one disk, 2 shared cores: the load generator, every server process and the page cache compete "
        "for the same CPUs and disk, so absolute figures are far below what any of these stores does on real "
        "hardware; the ratios measured in the same run are the meaningful part."),
    ]
    parts.append("## Not measured, and caveats\n\n" + "\n".join(f"- {n}" for n in notes) + "\n")
    path = out / "report.md"
    path.write_text("\n".join(parts))
    return path
