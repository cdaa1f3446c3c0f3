"""PNG charts of a benchmark report (matplotlib, headless), drawn from the report's JSON data alone."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # no display: files only
import matplotlib.pyplot as plt
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter, NullFormatter

from benchmarks.loadgen import format_size
from benchmarks.report_compare import medians

__all__ = ["COLORS", "draw_all"]

COLORS = {"objstore": "#1f77b4", "seaweedfs": "#ff7f0e", "seaweedfs-fsync": "#d62728", "swift": "#2ca02c",
          "ec2+1": "#9467bd", "ec4+2": "#1f77b4", "ec8+3": "#8c564b"}
LABELS = {"objstore": "objstore (EC 4+2, fsync)", "seaweedfs": "SeaweedFS (2 copies, no fsync)",
          "seaweedfs-fsync": "SeaweedFS (2 copies, fsync)", "swift": "Swift (EC 4+2, fsync)"}
plt.rcParams.update({"font.size": 10, "axes.grid": True, "grid.alpha": 0.3, "figure.dpi": 110})


def _legend_below(fig: Figure, ax: Any, columns: int = 4) -> None:
    """One legend for the whole figure, under the plots, where it hides no bar or line."""
    handles, labels = ax.get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=columns, fontsize=9, frameon=False)


def _save(fig: Figure, out: Path, name: str, made: list[str]) -> None:
    bottom = 0.0
    if fig.legends:  # room for the legend below: one row of four entries, two rows past that
        bottom = 0.06 if len(fig.legends[0].get_texts()) <= 4 else 0.1
    fig.tight_layout(rect=(0, bottom, 1, 1))
    fig.savefig(out / name)
    plt.close(fig)
    made.append(name)


def _systems(data: dict[str, Any]) -> list[str]:
    return list(data.get("compare", {}).get("systems", []))


def _best(med: dict[tuple[str, str, int, int], dict[str, float]], system: str, workload: str, size: int,
          field: str) -> tuple[float, int]:
    """The highest median `field` over the concurrencies measured, and the concurrency that reached it."""
    found = [(v[field], key[3]) for key, v in med.items() if key[:3] == (system, workload, size)]
    return max(found) if found else (0.0, 0)


def _bars(ax: Any, groups: Sequence[str], series: dict[str, list[float]], notes: dict[str, list[str]] | None = None,
          log: bool = False) -> None:
    width = 0.8 / max(1, len(series))
    for i, (name, values) in enumerate(series.items()):
        xs = [g + (i - (len(series) - 1) / 2) * width for g in range(len(groups))]
        bars = ax.bar(xs, values, width, label=LABELS.get(name, name), color=COLORS.get(name))
        for j, (bar, value) in enumerate(zip(bars, values)):
            text = f"{value:,.0f}" if value >= 10 else f"{value:.2g}"
            if notes:
                text += notes[name][j]
            ax.annotate(text, (bar.get_x() + bar.get_width() / 2, bar.get_height()), ha="center", va="bottom",
                        fontsize=7, rotation=90, xytext=(0, 2), textcoords="offset points")
    ax.set_xticks(range(len(groups)), groups)
    if log:
        ax.set_yscale("log")
    ax.margins(y=0.25)


def throughput_by_size(data: dict[str, Any], out: Path, made: list[str]) -> None:
    compare = data["compare"]
    med = medians(compare["cells"])
    systems, sizes = _systems(data), compare["plan"]["sizes"]
    fig, axes = plt.subplots(1, 2, figsize=(13, 5.2))
    for ax, workload in zip(axes, ("put", "get")):
        series = {s: [_best(med, s, workload, size, "mb_per_s")[0] for size in sizes] for s in systems}
        notes = {s: [f" (x{_best(med, s, workload, size, 'mb_per_s')[1]})" for size in sizes] for s in systems}
        _bars(ax, [format_size(size) for size in sizes], series, notes, log=True)
        ax.set_title(f"{workload.upper()} throughput, best concurrency (in brackets)")
        ax.set_ylabel("MB/s (10^6 bytes/s, log scale)")
        ax.set_xlabel("object size")
    _legend_below(fig, axes[0])
    _save(fig, out, "throughput_by_size.png", made)


def small_ops(data: dict[str, Any], out: Path, made: list[str]) -> None:
    compare = data["compare"]
    med = medians(compare["cells"])
    systems = _systems(data)
    workloads = [w for w in compare["plan"]["small_workloads"]]
    fig, axes = plt.subplots(1, 2, figsize=(13, 5.2))
    series = {s: [_best(med, s, w, 4096, "ops_per_s")[0] for w in workloads] for s in systems}
    _bars(axes[0], [w.upper() for w in workloads], series, log=True)
    axes[0].set_title("4 KiB operations per second, best concurrency")
    axes[0].set_ylabel("ops/s (log scale; LIST = 1000-key pages)")
    conc = compare["plan"]["headline_concurrency"]
    p99 = {s: [med.get((s, w, 4096, conc), {}).get("p99", 0.0) for w in workloads] for s in systems}
    _bars(axes[1], [w.upper() for w in workloads], p99, log=True)
    axes[1].set_title(f"4 KiB p99 latency at concurrency {conc}")
    axes[1].set_ylabel("ms (log scale)")
    _legend_below(fig, axes[0])
    _save(fig, out, "small_ops.png", made)


def concurrency_sweep(data: dict[str, Any], out: Path, made: list[str]) -> None:
    compare = data["compare"]
    med = medians(compare["cells"])
    sizes = [size for size in compare["plan"]["sizes"] if size <= 64 << 20]
    fig, axes = plt.subplots(2, len(sizes), figsize=(4.4 * len(sizes), 7.5), squeeze=False)
    for col, size in enumerate(sizes):
        for row, workload in enumerate(("put", "get")):
            ax = axes[row][col]
            for system in _systems(data):
                points = sorted((key[3], v) for key, v in med.items() if key[:3] == (system, workload, size))
                if points:
                    ax.plot([p[0] for p in points], [p[1]["ops_per_s"] for p in points], "o-",
                            color=COLORS.get(system), label=LABELS.get(system, system))
            ax.set_xscale("log", base=2)
            ax.set_yscale("log")
            sweep = sorted({key[3] for key in med if key[1:3] == (workload, size)})
            ax.set_xticks(sweep, [str(c) for c in sweep])
            ax.xaxis.set_minor_formatter(NullFormatter())
            plain = FuncFormatter(lambda value, _: f"{value:g}")  # 300, not 3 x 10^2
            ax.yaxis.set_major_formatter(plain)
            low, high = ax.get_ylim()
            # label minor ticks only where the axis spans less than a decade and has no major label
            ax.yaxis.set_minor_formatter(plain if high / max(low, 1e-9) < 8 else NullFormatter())
            ax.set_title(f"{workload.upper()} {format_size(size)}")
            ax.set_xlabel("concurrency (requests in flight)")
            ax.set_ylabel("ops/s")
    _legend_below(fig, axes[0][0])
    _save(fig, out, "concurrency_sweep.png", made)


def latency_cdfs(data: dict[str, Any], out: Path, made: list[str]) -> None:
    compare = data["compare"]
    conc = compare["plan"]["headline_concurrency"]
    panels = [(w, s) for s in (4096, 1 << 20) for w in ("put", "get")] + [("head", 4096), ("list", 4096)]
    fig, axes = plt.subplots(2, 3, figsize=(14, 8))
    for ax, (workload, size) in zip(axes.flat, panels):
        for system in _systems(data):
            cell = next((c for c in compare["cells"] if (c["system"], c["workload"], c["size"], c["concurrency"],
                                                          c["round"]) == (system, workload, size, conc, 0)), None)
            if cell and cell["cdf_ms"]:
                qs = [i / (len(cell["cdf_ms"]) - 1) for i in range(len(cell["cdf_ms"]))]
                ax.plot(cell["cdf_ms"], qs, color=COLORS.get(system), label=LABELS.get(system, system))
        ax.set_xscale("log")
        ax.xaxis.set_minor_formatter(NullFormatter())  # minor labels of a short log range overlap
        ax.set_title(f"{workload.upper()} {format_size(size)}, concurrency {conc}")
        ax.set_xlabel("latency ms (log scale)")
        ax.set_ylabel("fraction of requests")
        ax.axhline(0.99, color="grey", lw=0.7, ls="--")
    _legend_below(fig, axes[0][0])
    _save(fig, out, "latency_cdf.png", made)


def rss_by_size(data: dict[str, Any], out: Path, made: list[str]) -> None:
    compare = data["compare"]
    sizes = compare["plan"]["sizes"]
    fig, axes = plt.subplots(1, 2, figsize=(13, 5))
    labels = [format_size(size) for size in sizes]
    for ax, workload in zip(axes, ("put", "get")):
        for system in _systems(data):
            gateway, total = [], []
            for size in sizes:
                cells = [c for c in compare["cells"] if (c["system"], c["workload"], c["size"]) == (system, workload, size)]
                total.append(max((c["result"]["server"].get("peak_rss_bytes") or 0 for c in cells), default=0) / 2**20)
                gateway.append(max((c["result"]["server"].get("by_role", {}).get("gateway", {}).get("peak_rss_bytes", 0)
                                    for c in cells), default=0) / 2**20)
            ax.plot(labels, total, "o-", color=COLORS.get(system), label=f"{LABELS.get(system, system)}: all processes")
            if system == "objstore":
                ax.plot(labels, gateway, "s--", color=COLORS[system], label="objstore gateway alone")
        ax.set_ylim(bottom=0)
        ax.set_title(f"peak RSS of the servers during {workload.upper()} cells")
        ax.set_ylabel("MiB (sum of peak RSS over processes)")
        ax.set_xlabel("object size")
    _legend_below(fig, axes[0], columns=3)
    _save(fig, out, "rss_by_size.png", made)


def overhead(data: dict[str, Any], out: Path, made: list[str]) -> None:
    rows = data["compare"]["overhead"]
    sizes = sorted({r["size"] for r in rows})
    systems = _systems(data)
    fig, ax = plt.subplots(figsize=(9, 4.8))
    series = {s: [next((r["allocated_ratio"] or 0.0 for r in rows if r["system"] == s and r["size"] == size), 0.0)
                  for size in sizes] for s in systems}
    width = 0.8 / max(1, len(series))
    for i, (name, values) in enumerate(series.items()):
        xs = [g + (i - (len(series) - 1) / 2) * width for g in range(len(sizes))]
        bars = ax.bar(xs, values, width, label=LABELS.get(name, name), color=COLORS.get(name))
        ax.bar_label(bars, [f"{v:.2f}x" for v in values], fontsize=8)
    ax.set_xticks(range(len(sizes)), [f"objects of {format_size(size)}" for size in sizes])
    ax.set_ylabel("bytes allocated on disk / object bytes")
    ax.set_title("storage overhead measured (data dirs grew by, after a sync)")
    ax.margins(y=0.2)
    ax.legend(fontsize=8)
    _save(fig, out, "storage_overhead.png", made)


def _roles_sum(rss: dict[str, int]) -> tuple[float, float]:
    gateway = rss.get("gateway", 0) / 2**20
    return gateway, sum(v for k, v in rss.items() if k != "gateway") / 2**20


def scale(data: dict[str, Any], out: Path, made: list[str]) -> None:
    sc = data["scale"]
    growth, points = sc["growth"], sc["points"]
    fig, axes = plt.subplots(2, 2, figsize=(13, 8.5))
    ax = axes[0][0]
    ax.plot([g["objects"] for g in growth], [g["ops_per_s"] for g in growth], ".-",
            label=f"PUT ops/s (x{sc['plan'].get('fill_concurrency', 32)}) while growing")
    ax.set_xlabel("objects in the bucket")
    ax.set_ylabel("ops/s")
    ax.set_title("4 KiB PUT throughput as the bucket grows")
    ax2 = ax.twinx()
    ax2.plot([g["objects"] for g in growth], [g["p99"] for g in growth], ".-", color="#d62728", label="PUT p99 ms")
    ax2.set_ylabel("p99 ms", color="#d62728")
    ax.set_ylim(bottom=0)
    ax2.set_ylim(bottom=0)
    ax.legend(handles=ax.get_lines() + ax2.get_lines(), fontsize=8, loc="lower left")
    ax = axes[0][1]
    xs = [p["objects"] for p in points]
    for (workload, conc), style in {("get", 8): "o-", ("head", 8): "s-", ("put", 8): "^-"}.items():
        ax.plot(xs, [next(c["ops_per_s"] for c in p["cells"] if (c["workload"], c["concurrency"]) == (workload, conc))
                     for p in points], style, label=f"{workload.upper()} x{conc}")
    ax.set_xscale("log")
    ax.set_ylim(bottom=0)
    ax.set_title("ops/s at each checkpoint")
    ax.set_xlabel("objects in the bucket (log)")
    ax.legend(fontsize=8)
    ax = axes[1][0]
    for conc, style in ((1, "o-"), (8, "s-")):
        for q in ("p50", "p99"):
            ax.plot(xs, [next(c["latency_ms"][q] for c in p["cells"] if (c["workload"], c["concurrency"]) == ("list", conc))
                         for p in points], style, label=f"LIST x{conc} {q}", alpha=1.0 if q == "p50" else 0.6)
    ax.set_xscale("log")
    ax.set_ylim(bottom=0)
    ax.set_title("LIST: latency of one 1000-key page")
    ax.set_xlabel("objects in the bucket (log)")
    ax.set_ylabel("ms")
    ax.legend(fontsize=8)
    ax = axes[1][1]
    sums = [_roles_sum(g["rss"]) for g in growth]
    ax.plot([g["objects"] for g in growth], [s[0] for s in sums], ".-", label="gateway")
    ax.plot([g["objects"] for g in growth], [s[1] for s in sums], ".-", label="all nodes (sum)")
    ax.set_ylim(bottom=0)
    ax.set_title("RSS as the bucket grows")
    ax.set_xlabel("objects in the bucket")
    ax.set_ylabel("MiB")
    ax.legend(fontsize=8)
    _save(fig, out, "scale.png", made)


def _timeline(ax: Any, windows: list[dict[str, Any]], ylabel: str = "ops/s") -> Any:
    ts = [w["t"] for w in windows]
    ax.plot(ts, [w["ops_per_s"] for w in windows], ".-", label="client ops/s")
    ax.set_ylabel(ylabel)
    ax.set_ylim(bottom=0)
    ax2 = ax.twinx()
    ax2.plot(ts, [w["p99"] for w in windows], ".-", color="#d62728", alpha=0.7, label="p99 ms")
    ax2.set_ylabel("p99 ms", color="#d62728")
    ax2.set_ylim(bottom=0)
    return ax2


def repair(data: dict[str, Any], out: Path, made: list[str]) -> None:
    rp = data["repair"]
    fig, axes = plt.subplots(2, 1, figsize=(12, 7.5), sharex=True)
    ax = axes[0]
    ax.plot([p[0] for p in rp["timeline"]], [p[1] for p in rp["timeline"]], ".-", color="#2ca02c")
    ax.axhline(rp["tracked_objects"], color="grey", ls="--", lw=0.8)
    ax.set_ylabel("objects at full redundancy")
    ax.set_ylim(bottom=0)
    took = rp["time_to_full_redundancy_s"]
    ax.set_title(f"repair of node {rp['plan']['victim']} after a wipe: {rp['victim_bytes_rebuilt'] / 1e9:.2f} GB of shards "
                 f"rebuilt in {took} s ({rp['rebuild_mb_s']} MB/s)" if took else "repair did not finish in time")
    ax = axes[1]
    _timeline(ax, rp["windows"])
    ax.set_title(f"client load during the repair: {rp['plan']['client_concurrency']} workers, 1 MiB GET 80% / PUT 20%")
    ax.set_xlabel("seconds")
    for a in axes:
        for t, label in ((rp["wiped_at_s"], "killed + wiped"), (rp["restarted_at_s"], "restarted"),
                         (rp["repaired_at_s"], "full redundancy")):
            if t is not None:
                a.axvline(t, color="black", ls=":", lw=1)
                a.annotate(label, (t, a.get_ylim()[1]), fontsize=8, rotation=90, va="top", ha="right")
    _save(fig, out, "repair_timeline.png", made)


def chaos(data: dict[str, Any], out: Path, made: list[str]) -> None:
    ch = data["chaos"]
    fig, axes = plt.subplots(2, 1, figsize=(12, 7), sharex=True)
    _timeline(axes[0], ch["windows"])
    axes[0].set_title(f"64 KiB PUT 50% / GET 50%, {ch['plan']['concurrency']} workers, one node SIGKILLed every "
                      f"{ch['plan']['period']:g} s and restarted {ch['plan']['down']:g} s later")
    axes[1].bar([w["t"] for w in ch["windows"]], [w["errors"] for w in ch["windows"]], width=0.8, color="#d62728")
    axes[1].set_ylim(0, max([1] + [w["errors"] for w in ch["windows"]]) * 1.2)
    axes[1].set_ylabel("failed requests per window")
    axes[1].set_xlabel("seconds")
    axes[1].set_title(f"errors: {ch['overall'].get('errors', 0)} of {ch['overall'].get('ops', 0) + ch['overall'].get('errors', 0)} "
                      f"requests; acknowledged writes lost: {ch['lost_or_corrupt']} of {ch['acknowledged_keys']}")
    for ax in axes:
        for e in ch["events"]:
            ax.axvline(e["t"], color="black" if e["event"] == "kill" else "grey", ls=":" if e["event"] == "kill" else "--",
                       lw=1)
    axes[0].annotate("dotted: SIGKILL, dashed: restarted", (0.01, 0.03), xycoords="axes fraction", fontsize=8)
    _save(fig, out, "chaos_timeline.png", made)


def ec_profiles(data: dict[str, Any], out: Path, made: list[str]) -> None:
    ec = data["ec"]
    names = [f"{e['k']}+{e['m']}\n({e['nodes']} nodes)" for e in ec]
    fig, axes = plt.subplots(1, 3, figsize=(14, 4.8))
    ax = axes[0]
    xs = range(len(ec))
    ax.bar([x - 0.2 for x in xs], [e["nominal_overhead"] for e in ec], 0.4, label="(k+m)/k")
    ax.bar([x + 0.2 for x in xs], [e.get("allocated_overhead", 0) for e in ec], 0.4, label="measured (allocated, all files)")
    ax.set_xticks(list(xs), names)
    ax.set_ylim(0, 2.2)
    ax.set_title("storage overhead (bytes on disk / object bytes)")
    ax.legend(fontsize=8, loc="upper right")
    ax = axes[1]
    cells = [(c["workload"], c["size"]) for c in ec[0]["cells"]]
    width = 0.8 / len(cells)
    for i, (workload, size) in enumerate(cells):
        values = [next(c["mb_per_s"] for c in e["cells"] if (c["workload"], c["size"]) == (workload, size)) for e in ec]
        ax.bar([x + (i - (len(cells) - 1) / 2) * width for x in xs], values, width,
               label=f"{workload.upper()} {format_size(size)}")
    ax.set_xticks(list(xs), names)
    ax.set_ylabel("MB/s")
    ax.set_title("throughput (x8 for 1 MiB, x2 above)")
    ax.margins(y=0.25)
    ax.legend(fontsize=8, loc="upper left", ncol=2)
    ax = axes[2]
    bars = ax.bar(list(xs), [e.get("time_to_full_redundancy_s") or 0 for e in ec], color="#2ca02c")
    ax.bar_label(bars, [f"{e.get('rebuild_mb_s')} MB/s" for e in ec], fontsize=8)
    ax.set_xticks(list(xs), names)
    ax.set_ylabel("seconds")
    ax.set_title("time to full redundancy after a node wipe")
    ax.margins(y=0.2)
    _save(fig, out, "ec_profiles.png", made)


def draw_all(data: dict[str, Any], out: Path) -> list[str]:
    """Every chart the data has figures for; the file names written into `out`."""
    made: list[str] = []
    if data.get("compare", {}).get("cells"):
        for draw in (throughput_by_size, small_ops, concurrency_sweep, latency_cdfs, rss_by_size, overhead):
            draw(data, out, made)
    if data.get("scale", {}).get("points"):
        scale(data, out, made)
    if data.get("repair"):
        repair(data, out, made)
    if data.get("chaos"):
        chaos(data, out, made)
    if data.get("ec"):
        ec_profiles(data, out, made)
    return made
