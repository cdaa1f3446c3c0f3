"""The gateway benchmark's outputs from its JSON: the RSS timeline chart and gateway.md."""

from __future__ import annotations

from pathlib import Path
from typing import Any

__all__ = ["draw_chart", "write_markdown"]

MB = 1_000_000
_PHASE_COLOURS = ("#4c72b0", "#dd8452", "#55a868", "#c44e52", "#8172b3", "#937860")


def draw_chart(big: dict[str, Any], path: Path, subtitle: str) -> None:
    """Gateway RSS over time during the phases of `big` or `sweep` (shaded), and the nodes' and client's below."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    timeline = big["timeline"]
    t = timeline["t"]
    rss = timeline["rss"]
    nodes = [role for role in rss if role not in ("gateway", "client")]
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(11, 7.5), sharex=True, height_ratios=(3, 2))
    for axis in (top, bottom):
        for i, phase in enumerate(big["phases"]):
            axis.axvspan(phase["t0"], phase["t1"], color=_PHASE_COLOURS[i % len(_PHASE_COLOURS)], alpha=0.12,
                         label=phase["name"] if axis is top else None)
    top.plot(t, [v / MB for v in rss["gateway"]], color="black", linewidth=1.2, label="gateway RSS")
    top.axhline(big["target_rss"] / MB, color="red", linestyle="--", linewidth=1,
                label=f"target {big['target_rss'] / MB:.0f} MB")
    peak = max(rss["gateway"]) / MB
    top.set_ylim(0, max(peak, big["target_rss"] / MB) * 1.15)
    top.set_ylabel("gateway RSS (MB)")
    top.set_title(f"objstore gateway RSS, {subtitle}\n(EC 4+2, 6 nodes, fsync on; VmRSS every "
                  f"{timeline['interval']:g} s)", fontsize=11)
    top.legend(loc="upper center", bbox_to_anchor=(0.5, -0.02), ncol=4, fontsize=8, frameon=False)
    for i, role in enumerate(nodes):
        bottom.plot(t, [v / MB for v in rss[role]], color="grey", linewidth=0.7, alpha=0.8,
                    label="nodes n1..n6" if i == 0 else None)
    bottom.plot(t, [v / MB for v in rss["client"]], color="#1f77b4", linewidth=1.0, label="client (boto3)")
    bottom.set_ylabel("RSS (MB)")
    bottom.set_xlabel("seconds")
    bottom.set_ylim(bottom=0)
    bottom.legend(loc="upper left", fontsize=8)
    for axis in (top, bottom):
        axis.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _mb(value: float | None) -> str:
    return "-" if value is None else f"{value / MB:.1f}"


def _size(size: int) -> str:
    for unit, scale in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if size >= scale:
            return f"{size / scale:g} {unit}"
    return f"{size} B"


def _phase_row(p: dict[str, Any], target: int, checked: str) -> str:
    g = p["gateway_rss"]
    verdict = "ok" if p.get("ok") else f"FAILED {p.get('error', '')}"
    return (f"| {p['name']} | {p.get('requests', '-')} | {p['seconds']:.1f} | {p['mb_per_s']:.1f} | "
            f"{_mb(g['start'])} / **{_mb(g['peak'])}** / {_mb(g['end'])} | {'yes' if g['peak'] < target else 'NO'} | "
            f"{_mb(p['node_rss_peak_max'])} | {_mb(p['client_rss_peak'])} | {checked}: {verdict} | "
            f"{p['load_average'][0]} -> {p['load_average'][1]} |")


_PHASE_HEADER = [("| phase | requests | seconds | MB/s | gateway RSS start / peak / end (MB) | < target | "
                  "node peak (max of 6, MB) | client peak (MB) | checked | load avg |"),
                 "|---|---|---|---|---|---|---|---|---|---|"]


def _checked(p: dict[str, Any]) -> str:
    if "client_read_passes" in p:
        return "ETag = MD5"
    if "md5" in p:
        return "MD5"
    if p.get("slowdowns"):
        return f"status ({p['slowdowns']} SlowDown retried)"
    return "length" if "parts" in p else "status"


def _big_section(big: dict[str, Any], seed: int) -> list[str]:
    target = big["target_rss"]
    lines = [
        f"## {_size(big['size'])} streamed through the gateway", "",
        (f"One file of {_size(big['size'])} (seed {seed}, MD5 `{big['md5']}`), PUT and GET with boto3. "
         f"The target is a gateway RSS below {target / MB:.0f} MB. RSS is VmRSS from /proc every "
         f"{big['timeline']['interval']:g} s; \"start\" is the gateway just before the phase."), "",
        *_PHASE_HEADER,
    ]
    lines += [_phase_row(p, target, _checked(p)) for p in big["phases"]]
    d = big["boto3_transfer_defaults"]
    single = next((p for p in big["phases"] if p["name"] == "single PUT"), None)
    passes = single.get("client_read_passes", "?") if single else "?"
    lines += ["",
              ("- single PUT: `put_object(Body=<open file>)`, one request of the whole object with "
               "`Content-Length`; over plain HTTP botocore signs the payload, so it reads the file "
               f"{passes} times (CRC32 checksum, SHA-256 for the signature, send) "
               "and the gateway verifies both as the body streams."),
              (f"- multipart PUT: `upload_file` with boto3's defaults (threshold {_size(d['multipart_threshold'])}, "
               f"parts of {_size(d['multipart_chunksize'])}, {d['max_concurrency']} threads); requests = parts + "
               "create + complete."),
              "- single GET: one `get_object`, the body streamed in 1 MiB reads to /dev/null through MD5.",
              (f"- ranged GET: `download_fileobj` with the same defaults (ranged GETs of "
               f"{_size(d['multipart_chunksize'])}, {d['max_concurrency']} threads) into a write-only MD5 sink."),
              "", "![gateway RSS over time](gateway_rss.png)", ""]
    return lines


def _sweep_section(sweep: dict[str, Any]) -> list[str]:
    lines = [
        "## Gateway RSS against requests in flight", "",
        (f"{_size(sweep['size'])} per phase on a fresh cluster, in the order shown: the RSS the allocator keeps "
         "after one peak is the next phase's start, so a peak says something only where it is above that start. "
         "The first phase also carries the gateway's first-use costs (connections to the nodes, thread-pool "
         "threads). \"per request\" is (peak - start) / threads. Multipart PUTs and ranged GETs by boto3 "
         "(TransferConfig part size and threads); single PUTs by benchmarks/loadgen.py (its time includes its "
         "warm-up and the deletes of its keys; a PUT answered 503 SlowDown is retried with backoff, as SDKs do, "
         "and counted)."), "",
        ("| phase | requests | seconds | MB/s | gateway RSS start / peak / end (MB) | < target | "
         "node peak (max of 6, MB) | client peak (MB) | checked | load avg | per request (MB) |"),
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for p in sweep["phases"]:
        g = p["gateway_rss"]
        per = (g["peak"] - g["start"]) / p["threads"] / MB if p.get("threads") else 0.0
        lines.append(_phase_row(p, sweep["target_rss"], _checked(p)) + f" {per:.1f} |")
    return lines + ["", "![gateway RSS against requests in flight](gateway_rss_sweep.png)", ""]


def _spread(cell: dict[str, Any], key: str, scale: float = 1.0) -> str:
    """The median of a table cell's runs, then their min-max in brackets."""
    values = [r[key] / scale for r in cell["runs"] if r.get(key) is not None]
    if not values or cell["median"].get(key) is None:
        return "-"
    return f"{cell['median'][key] / scale:.1f} ({min(values):.1f}-{max(values):.1f})"


def _table_section(table: dict[str, Any]) -> list[str]:
    reps = table["plan"]["reps"]
    lines = [
        "## PUT and GET by object size", "",
        (f"benchmarks/loadgen.py cells (SigV4 with UNSIGNED-PAYLOAD, every GET compared byte for byte) on a fresh "
         f"cluster, sizes in ascending order; each cell run {reps} times, **medians** shown (min-max in brackets). "
         "Gateway RSS is the peak VmRSS sampled every 0.1 s during the cell."), "",
        ("| size | op | concurrency | ops/s | MB/s | p50 / p99 ms | gateway peak RSS (MB) | gateway RSS before (MB) "
         "| node peak (max, MB) | errors | load avg |"),
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for cell in table["cells"]:
        med, runs = cell["median"], cell["runs"]
        lines.append(
            f"| {_size(cell['size'])} | {cell['workload'].upper()} | {cell['concurrency']} | "
            f"{_spread(cell, 'ops_per_s')} | {_spread(cell, 'mb_per_s')} | {med['p50_ms']:.1f} / {med['p99_ms']:.1f} | "
            f"{_spread(cell, 'gateway_rss_peak', MB)} | {_mb(med['gateway_rss_before'])} | "
            f"{_mb(med['node_rss_peak_max'])} | {sum(r['errors'] for r in runs)} | {med['load_average']:.1f} |")
    sizes = ", ".join(f"{_size(s['size'])}: x{s['concurrency']}, {s['max_seconds']:g} s or {_size(s['max_bytes'])} "
                      f"per cell, {s['objects']} keys read" for s in table["plan"]["sizes"])
    return lines + ["", f"Bounds: {sizes}.", ""]


def write_markdown(data: dict[str, Any], path: Path) -> None:
    """gateway.md: how it ran, the big-object phases and the size table; a findings.md beside it goes first."""
    meta = data["meta"]
    lines = ["# Gateway memory and throughput", ""]
    notes = path.parent / "gateway_findings.md"
    if notes.exists():
        lines += [notes.read_text().rstrip(), ""]
    lines += [
        (f"Run {meta['date']} at commit `{meta['git_commit']}` ({meta['git_dirty_files']} tracked files modified "
         f"in the working tree by work in progress), `objstore dev`: {meta['cluster']['nodes']} nodes, "
         f"{meta['cluster']['zones']} zones, EC {meta['cluster']['k']}+{meta['cluster']['m']}, fsync on, on "
         f"{meta['cpus']} cores; Python {meta['python']}, boto3 {meta['boto3']}, botocore {meta['botocore']}. "
         f"Total {meta.get('seconds', 0):.0f} s."), "",
        f"Command: `.venv/bin/python -m benchmarks.gateway_bench {' '.join(meta['argv'])}`", "",
        ("MB is 10^6 bytes, RSS included. The machine's 1-minute load average is given per phase: above "
         f"{meta['cpus']} other work competed for the CPU, and throughput figures are noisy; RSS figures depend "
         "much less on it."), "",
    ]
    if "big" in data:
        lines += _big_section(data["big"], meta["seed"])
    if "sweep" in data:
        lines += _sweep_section(data["sweep"])
    if "table" in data:
        lines += _table_section(data["table"])
    path.write_text("\n".join(lines))
