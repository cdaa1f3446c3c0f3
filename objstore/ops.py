"""Operator commands that talk to a running cluster: status, repair --once, pause and resume of the nodes'
background work, and cluster map changes."""

from __future__ import annotations

import asyncio
import json
import os
from collections import Counter
from dataclasses import fields, replace
from pathlib import Path
from typing import Any

import click
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from objstore.client import NodeClient
from objstore.cluster import ClusterMap, ClusterMapError
from objstore.config import MAX_PAUSE, ConfigError, load_node_config
from objstore.repair import RepairStats, summarize

STATUS_TIMEOUT = 3.0


def open_cluster(path: str) -> tuple[ClusterMap, str, Path | None]:
    """Map, cluster secret, and the map file, from a node config (TOML) or a dev cluster.json."""
    p = Path(path)
    if p.suffix == ".toml":
        cfg = load_node_config(p)
        if not cfg.map:
            raise ConfigError(f"{p}: this command needs a node config with 'map' set")
        return ClusterMap.load(cfg.map), cfg.secret, Path(cfg.map)
    try:
        doc = json.loads(p.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise ClusterMapError(f"{p} is not valid JSON: {e}") from None
    if not isinstance(doc, dict) or "map" not in doc:
        raise ClusterMapError(f"{p} is neither a node config (.toml) nor a cluster.json from `objstore dev`")
    secret = os.environ.get("OBJSTORE_SECRET") or Path(doc["secret_file"]).read_text().strip()
    map_path = Path(doc["map"]) if os.path.isabs(doc["map"]) else p.parent / doc["map"]
    return ClusterMap.load(map_path), secret, map_path


async def _newest_map(client: NodeClient, cmap: ClusterMap) -> ClusterMap:
    results = await asyncio.gather(*(asyncio.wait_for(client.get_map(n), STATUS_TIMEOUT) for n in cmap.nodes
                                     if n.state != "removed"), return_exceptions=True)
    maps = [m for m in results if isinstance(m, ClusterMap)] + [cmap]
    return max(maps, key=lambda m: m.epoch)


async def collect_status(cmap: ClusterMap, secret: str) -> dict[str, Any]:
    """The cluster as its nodes see it: map epoch, node states by every observer, object health, repair."""
    async with NodeClient(secret, timeout=STATUS_TIMEOUT, connect_timeout=STATUS_TIMEOUT) as client:
        cmap = await _newest_map(client, cmap)
        nodes = [n for n in cmap.nodes if n.state != "removed"]
        results = await asyncio.gather(*(asyncio.wait_for(client.health(n), STATUS_TIMEOUT) for n in nodes),
                                       return_exceptions=True)
    health = {n.id: r for n, r in zip(nodes, results) if isinstance(r, dict)}
    out_nodes = []
    for n in nodes:
        seen_by = {obs: h.get("peers", {}).get(n.id, "?") for obs, h in health.items()}
        votes = Counter(s for obs, s in seen_by.items() if obs != n.id)
        if n.id in health:
            state = "up" if votes.get("down", 0) <= len(votes) // 2 else "suspect"
        else:
            state = votes.most_common(1)[0][0] if votes and votes.most_common(1)[0][0] != "up" else "down"
        h = health.get(n.id, {})
        out_nodes.append({
            "id": n.id, "zone": n.zone, "address": n.address, "labels": n.labels, "weight": n.weight,
            "map_state": n.state, "state": state, "reachable": n.id in health, "seen_by": seen_by,
            "records": h.get("records"), "blobs": h.get("blobs"), "blob_bytes": h.get("blob_bytes"),
            "disk_free": h.get("disk_free"), "disk_total": h.get("disk_total"),
            "corrupt_found": h.get("corrupt_found"), "epoch": h.get("epoch"),
            "paused_for": h.get("paused_for"),
        })
    names = {f.name for f in fields(RepairStats)}
    repair = summarize(RepairStats(**{k: v for k, v in h.get("repair", {}).items() if k in names})
                       for h in health.values())
    running = any(h.get("repair", {}).get("running") for h in health.values())
    return {
        "epoch": cmap.epoch, "k": cmap.ec.k, "m": cmap.ec.m, "nodes": out_nodes,
        "objects_total": repair.objects_total, "objects_degraded": repair.objects_degraded,
        "objects_unreadable": repair.objects_unreadable,
        "objects_at_risk": repair.objects_degraded + repair.objects_unreadable,
        "repair": {"running": running, "partitions_scanned": repair.partitions_scanned,
                   "objects_scanned": repair.objects_scanned, "bytes_scanned": repair.bytes_scanned,
                   "objects_rebuilt": repair.objects_rebuilt, "shards_rebuilt": repair.shards_rebuilt,
                   "bytes_rebuilt": repair.bytes_rebuilt, "objects_remaining": repair.objects_remaining,
                   "bytes_remaining": repair.bytes_remaining, "kv_copied": repair.kv_copied,
                   "kv_forgotten": repair.kv_forgotten,
                   "failures": repair.failures},
        "scrub": {"corrupt_found": sum((h.get("scrub") or {}).get("corrupt", 0) for h in health.values())},
    }


def render_status(status: dict[str, Any], console: Console) -> None:
    console.print(f"[bold]epoch[/] {status['epoch']}   [bold]EC[/] {status['k']}+{status['m']}   "
                  f"[bold]objects[/] {status['objects_total']}   [bold]degraded[/] {status['objects_degraded']}   "
                  f"[bold]unreadable[/] {status['objects_unreadable']}")
    observers = [n["id"] for n in status["nodes"]]
    table = Table(title="nodes (state as each node sees it)")
    for col in ("node", "zone", "state", "records", "blobs", "corrupt", *observers):
        table.add_column(col)
    colors = {"up": "green", "suspect": "yellow", "down": "red"}
    for n in status["nodes"]:
        table.add_row(n["id"], n["zone"], f"[{colors.get(n['state'], 'white')}]{n['state']}[/]",
                      str(n["records"] if n["records"] is not None else "-"),
                      str(n["blobs"] if n["blobs"] is not None else "-"),
                      str(n["corrupt_found"] if n["corrupt_found"] is not None else "-"),
                      *(n["seen_by"].get(o, "-") for o in observers))
    console.print(table)
    r = status["repair"]
    console.print(f"[bold]repair[/] {'running' if r['running'] else 'idle'}: scanned {r['objects_scanned']} objects, "
                  f"rebuilt {r['objects_rebuilt']} ({r['bytes_rebuilt']} bytes), remaining {r['objects_remaining']} "
                  f"({r['bytes_remaining']} bytes), failures {r['failures']}")
    paused = [f"{n['id']} ({n['paused_for']:.0f} s left)" for n in status["nodes"] if n.get("paused_for")]
    if paused:
        console.print(f"[bold yellow]background work paused[/] (repair, scrub, pending-shard collection) on "
                      f"{', '.join(paused)}; `objstore resume` lifts it")


@click.command("status")
@click.option("--cluster", "cluster_path", required=True, type=click.Path(exists=True, dir_okay=False),
              help="A node config (TOML) or the cluster.json written by `objstore dev`.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
def status_command(cluster_path: str, as_json: bool) -> None:
    """Show each node's state as every node sees it, object health, and repair progress."""
    cmap, secret, _ = open_cluster(cluster_path)
    status = asyncio.run(collect_status(cmap, secret))
    if not any(n["reachable"] for n in status["nodes"]):
        tried = ", ".join(n["address"] for n in status["nodes"])
        raise click.ClickException(f"no node of the cluster answered (tried {tried})")
    if as_json:
        click.echo(json.dumps(status, indent=2, sort_keys=True))
    else:
        render_status(status, Console())


class Duration(click.ParamType):
    """Seconds, or a number with a unit: 90, 90s, 10m, 2h."""

    name = "duration"
    UNITS = {"s": 1.0, "m": 60.0, "h": 3600.0}

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> float:
        if isinstance(value, (int, float)):
            return float(value)
        text = str(value).strip().lower()
        unit = self.UNITS.get(text[-1:], None)
        try:
            seconds = float(text[:-1] if unit else text) * (unit or 1.0)
        except ValueError:
            self.fail(f"{value!r} is not a duration (examples: 90, 90s, 10m, 2h)", param, ctx)
        if not seconds > 0:
            self.fail(f"{value!r}: a pause lasts more than 0 s", param, ctx)
        if seconds > MAX_PAUSE:
            self.fail(f"{value!r}: a pause lasts {MAX_PAUSE / 3600:.0f}h at most", param, ctx)
        return seconds


async def set_pause(cmap: ClusterMap, secret: str, seconds: float) -> dict[str, float | str]:
    """Ask every node of the map to pause (seconds > 0) or resume (0) its background work: node id -> the
    seconds left of its pause, or why it did not answer."""
    async with NodeClient(secret, timeout=STATUS_TIMEOUT, connect_timeout=STATUS_TIMEOUT) as client:
        cmap = await _newest_map(client, cmap)
        nodes = [n for n in cmap.nodes if n.state != "removed"]
        results = await asyncio.gather(*(client.pause(n, seconds) for n in nodes), return_exceptions=True)
    return {n.id: r if isinstance(r, float) else str(r) for n, r in zip(nodes, results)}


def _report_pause(answers: dict[str, float | str], what: str) -> None:
    console = Console()
    for node_id, answer in answers.items():
        if isinstance(answer, float):
            console.print(f"{node_id}: {what}" + (f" ({answer:.0f} s left)" if answer else ""))
        else:
            console.print(f"[red]{node_id}: failed[/] ({answer})")
    failed = [n for n, a in answers.items() if not isinstance(a, float)]
    if failed:
        raise click.ClickException(f"{len(failed)} of {len(answers)} nodes failed: {', '.join(failed)}")


@click.command("pause")
@click.option("--cluster", "cluster_path", required=True, type=click.Path(exists=True, dir_okay=False),
              help="A node config (TOML) or the cluster.json written by `objstore dev`.")
@click.option("--for", "seconds", required=True, type=Duration(),
              help="How long: seconds, or with a unit (90s, 10m, 2h); 24h at most.")
def pause_command(cluster_path: str, seconds: float) -> None:
    """Hold every node's repair, scrub and pending-shard collection for a while (maintenance, benchmarks).

    Heartbeats go on, so failures are still detected, but nothing is rebuilt until the pause runs out
    or `objstore resume` lifts it. A node restarted meanwhile runs its background work again.
    """
    cmap, secret, _ = open_cluster(cluster_path)
    _report_pause(asyncio.run(set_pause(cmap, secret, seconds)), "background work paused")


@click.command("resume")
@click.option("--cluster", "cluster_path", required=True, type=click.Path(exists=True, dir_okay=False),
              help="A node config (TOML) or the cluster.json written by `objstore dev`.")
def resume_command(cluster_path: str) -> None:
    """Lift a pause: every node's repair, scrub and pending-shard collection run again."""
    cmap, secret, _ = open_cluster(cluster_path)
    _report_pause(asyncio.run(set_pause(cmap, secret, 0.0)), "background work running")


@click.command("repair")
@click.option("--cluster", "cluster_path", required=True, type=click.Path(exists=True, dir_okay=False),
              help="A node config (TOML) or the cluster.json written by `objstore dev`.")
@click.option("--once", is_flag=True, required=True, help="Run one full pass over every partition, then exit.")
@click.option("--bandwidth-mb", default=100.0, show_default=True, help="MB/s the pass may read and write.")
@click.option("--concurrency", default=4, show_default=True, help="Objects rebuilt at once.")
def repair_command(cluster_path: str, once: bool, bandwidth_mb: float, concurrency: int) -> None:
    """Run one anti-entropy pass by hand over the whole cluster, with a progress bar."""
    from objstore.objects import ObjectIO
    from objstore.repair import Repairer
    from objstore.view import ClusterView

    cmap, secret, _ = open_cluster(cluster_path)

    async def run() -> RepairStats:
        async with NodeClient(secret, timeout=30.0) as client:
            cmap2 = await _newest_map(client, cmap)
            view = ClusterView(cmap2)
            reachable = await asyncio.gather(*(asyncio.wait_for(client.health(n), STATUS_TIMEOUT)
                                               for n in view.all_nodes()), return_exceptions=True)
            up = {n.id for n, r in zip(view.all_nodes(), reachable) if isinstance(r, dict)}
            repairer = Repairer(view, client, ObjectIO(view, client), alive=lambda n: n.id in up,
                                concurrency=concurrency, bandwidth_mb=bandwidth_mb, gc_grace=600.0)
            with Progress(TextColumn("{task.description}"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
                          TimeElapsedColumn()) as progress:
                scan = progress.add_task("scanning partitions", total=None)
                fix = progress.add_task("rebuilding objects", total=None)

                def update(s: RepairStats) -> None:
                    progress.update(scan, completed=s.partitions_scanned, total=s.partitions_total or None)
                    todo = s.objects_rebuilt + s.objects_remaining + s.failures
                    progress.update(fix, completed=todo - s.objects_remaining, total=todo or None)

                return await repairer.run_pass(update)

    stats = asyncio.run(run())
    click.echo(f"scanned {stats.partitions_scanned} partitions, {stats.objects_scanned} objects; "
               f"rebuilt {stats.shards_rebuilt} shards of {stats.objects_rebuilt} objects ({stats.bytes_rebuilt} bytes); "
               f"removed {stats.handoffs_removed} handoff copies and {stats.garbage_removed} garbage versions; "
               f"copied {stats.kv_copied} bucket/user/upload records back, removed {stats.kv_forgotten} of their "
               f"tombstones; "
               f"{stats.failures} failures")
    if stats.failures:
        raise SystemExit(1)


# -- cluster map changes ---------------------------------------------------------------------------


def _publish(cmap: ClusterMap, secret: str, map_path: Path | None) -> int:
    """Write the new map where it came from and push it to every node; returns how many nodes took it."""
    if map_path is not None:
        cmap.save(map_path)

    async def push() -> int:
        async with NodeClient(secret, timeout=STATUS_TIMEOUT, connect_timeout=STATUS_TIMEOUT) as client:
            results = await asyncio.gather(*(client.put_map(n, cmap) for n in cmap.nodes if n.state != "removed"),
                                           return_exceptions=True)
        return sum(isinstance(r, dict) for r in results)

    return asyncio.run(push())


def _change(cluster_path: str, change: Any) -> None:
    cmap, secret, map_path = open_cluster(cluster_path)

    async def newest() -> ClusterMap:
        async with NodeClient(secret, timeout=STATUS_TIMEOUT, connect_timeout=STATUS_TIMEOUT) as client:
            return await _newest_map(client, cmap)
    current = asyncio.run(newest())
    new = change(current)
    reached = _publish(new, secret, map_path)
    click.echo(f"cluster map epoch {current.epoch} -> {new.epoch}; {reached} nodes took it (the rest learn it by gossip)")


_cluster_opt = click.option("--cluster", "cluster_path", required=True, type=click.Path(exists=True, dir_okay=False),
                            help="A node config (TOML) or the cluster.json written by `objstore dev`.")


def _with_node(cmap: ClusterMap, node_id: str, **changes: Any) -> ClusterMap:
    try:
        cmap.node(node_id)
    except KeyError:
        raise ClusterMapError(f"no node {node_id!r} in the cluster map") from None
    return cmap.with_changes(nodes=tuple(replace(n, **changes) if n.id == node_id else n for n in cmap.nodes))


@click.command("add-node")
@_cluster_opt
@click.argument("spec")
@click.option("--weight", default=1.0, show_default=True, help="Relative share of data.")
def add_node_command(cluster_path: str, spec: str, weight: float) -> None:
    """Add a node, SPEC = ID=HOST:PORT@ZONE[,label=value...]; repair then moves its share of data to it."""
    from objstore.cli import parse_node_spec

    node = replace(parse_node_spec(spec), weight=weight)

    def change(cmap: ClusterMap) -> ClusterMap:
        if any(n.id == node.id and n.state != "removed" for n in cmap.nodes):
            raise ClusterMapError(f"node {node.id!r} is already in the cluster map")
        return cmap.with_changes(nodes=tuple(n for n in cmap.nodes if n.id != node.id) + (node,))
    _change(cluster_path, change)


@click.command("remove-node")
@_cluster_opt
@click.argument("node_id")
def remove_node_command(cluster_path: str, node_id: str) -> None:
    """Remove a node (dead or drained); repair rebuilds its shards on the remaining nodes."""
    _change(cluster_path, lambda cmap: _with_node(cmap, node_id, state="removed"))


@click.command("drain")
@_cluster_opt
@click.argument("node_id")
def drain_command(cluster_path: str, node_id: str) -> None:
    """Stop placing data on a node and move what it holds to the other nodes."""
    _change(cluster_path, lambda cmap: _with_node(cmap, node_id, state="draining"))


@click.command("set-weight")
@_cluster_opt
@click.argument("node_id")
@click.argument("weight", type=float)
def set_weight_command(cluster_path: str, node_id: str, weight: float) -> None:
    """Change a node's share of data (relative to the others' weights)."""
    if weight <= 0:
        raise click.BadParameter("weight must be > 0", param_hint="WEIGHT")
    _change(cluster_path, lambda cmap: _with_node(cmap, node_id, weight=weight))

