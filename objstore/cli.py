"""The `objstore` command: one click group, one-line errors, subcommands that may live in other modules."""

from __future__ import annotations

import importlib
import json
import re
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NoReturn

import click
from rich.console import Console
from rich.table import Table

from objstore.cluster import (
    DEFAULT_BLOCK_SIZE,
    DEFAULT_PARTITION_BITS,
    ClusterMap,
    ClusterMapError,
    ECProfile,
    NodeInfo,
)
from objstore.config import ConfigError

CONTEXT_SETTINGS: dict[str, Any] = {"help_option_names": ["-h", "--help"], "max_content_width": 100}

# Commands that live in their own module, imported only when invoked (or listed by --help), so that
# `objstore node` does not pay for rich tables and `objstore --help` works while a module is broken.
# A new command module adds one line here: name -> "module:attribute" of a click command or group.
ROOT_COMMANDS: dict[str, str] = {
    "dev": "objstore.devcluster:dev_command",
    "status": "objstore.ops:status_command",
    "repair": "objstore.ops:repair_command",
    "pause": "objstore.ops:pause_command",
    "resume": "objstore.ops:resume_command",
    "user": "objstore.users:user_group",
    "bench": "objstore.bench:bench_command",
}
CLUSTER_COMMANDS: dict[str, str] = {
    "add-node": "objstore.ops:add_node_command",
    "remove-node": "objstore.ops:remove_node_command",
    "drain": "objstore.ops:drain_command",
    "set-weight": "objstore.ops:set_weight_command",
}

# Errors that are the user's to fix (bad config, missing file, node unreachable): one line, no traceback.
_USER_ERRORS: tuple[type[BaseException], ...] = (ConfigError, ClusterMapError, OSError, json.JSONDecodeError)


def describe_error(e: BaseException) -> str:
    """One line for an error the user can act on."""
    if isinstance(e, OSError) and e.strerror and e.filename:
        return f"{e.filename}: {e.strerror}"
    if isinstance(e, OSError) and e.strerror:
        return e.strerror
    text = str(e).strip().splitlines()
    return text[0] if text else type(e).__name__


def _is_user_error(e: BaseException) -> bool:
    if isinstance(e, _USER_ERRORS):
        return True
    # aiohttp is imported only by commands that talk to nodes; never import it just to test a type.
    aiohttp = sys.modules.get("aiohttp")
    if aiohttp is not None and isinstance(e, aiohttp.ClientError):
        return True
    records = sys.modules.get("objstore.records")
    return records is not None and isinstance(e, records.RecordError)


def fail(message: str) -> NoReturn:
    """Stop the command with `Error: message` on stderr and exit code 1."""
    raise click.ClickException(message)


class LazyGroup(click.Group):
    """A click group whose commands may be defined in other modules and imported on first use."""

    def __init__(self, *args: Any, lazy: dict[str, str] | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.lazy = lazy if lazy is not None else {}

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(set(super().list_commands(ctx)) | set(self.lazy))

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name in self.commands or cmd_name not in self.lazy:
            return super().get_command(ctx, cmd_name)
        module_name, _, attr = self.lazy[cmd_name].partition(":")
        command = getattr(importlib.import_module(module_name), attr)
        if not isinstance(command, click.Command):
            raise TypeError(f"{self.lazy[cmd_name]} is not a click command")
        return command


class RootGroup(LazyGroup):
    """The root group: turns user errors raised by any subcommand into `Error: ...` and exit code 1."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except (click.ClickException, click.exceptions.Exit, click.Abort):
            raise
        except Exception as e:
            if _is_user_error(e):
                raise click.ClickException(describe_error(e)) from e
            raise


@click.group(cls=RootGroup, lazy=ROOT_COMMANDS, context_settings=CONTEXT_SETTINGS)
@click.version_option(package_name="objstore", prog_name="objstore")
def cli() -> None:
    """objstore: an erasure-coded object store with an S3 gateway.

    Start a local cluster with `objstore dev`; run one storage node or gateway per
    config file with `objstore node` and `objstore gateway`; manage the cluster map
    with `objstore cluster`.
    """


# ---------------------------------------------------------------------------
# node and gateway processes


def _import_server(package: str) -> Any:
    try:
        return importlib.import_module(f"{package}.server")
    except ModuleNotFoundError as e:
        if e.name is not None and e.name.startswith(package):
            fail(f"the {package} server is not installed ({e.name} is missing)")
        raise


@cli.command("node")
@click.option("--config", "config_path", required=True, type=click.Path(dir_okay=False), help="Node TOML config.")
def node_command(config_path: str) -> None:
    """Run one storage node (the signed node RPC server) until SIGTERM."""
    from objstore.config import load_node_config

    cfg = load_node_config(config_path)
    code = _import_server("node").run(cfg)
    if code:
        sys.exit(code)


@cli.command("gateway")
@click.option("--config", "config_path", required=True, type=click.Path(dir_okay=False), help="Gateway TOML config.")
def gateway_command(config_path: str) -> None:
    """Run one S3 gateway until SIGTERM."""
    from objstore.config import load_gateway_config

    cfg = load_gateway_config(config_path)
    _import_server("gateway").run(cfg)


# ---------------------------------------------------------------------------
# cluster map


def load_cluster_map(path: str | Path) -> ClusterMap:
    """Load a cluster map, from its JSON or from a dev cluster's cluster.json (which names the map)."""
    path = Path(path)
    with open(path, encoding="utf-8") as f:
        try:
            doc = json.load(f)
        except json.JSONDecodeError as e:
            raise ClusterMapError(f"{path} is not valid JSON: {e}") from None
    if isinstance(doc, dict) and "endpoint" in doc and isinstance(doc.get("map"), str):
        return ClusterMap.load(Path(path).parent / doc["map"])
    if not isinstance(doc, dict):
        raise ClusterMapError(f"{path}: a cluster map must be a JSON object")
    return ClusterMap.from_dict(doc)


_NODE_SPEC = re.compile(r"^(?P<id>[A-Za-z0-9_.-]+)=(?P<host>[^\s:@,]+|\[[0-9a-fA-F:]+\]):(?P<port>\d+)@(?P<rest>.+)$")


def parse_node_spec(spec: str) -> NodeInfo:
    """`ID=HOST:PORT@ZONE[,label=value...]` -> NodeInfo (active, weight 1)."""
    m = _NODE_SPEC.match(spec.strip())
    if m is None:
        raise click.BadParameter(f"{spec!r} is not ID=HOST:PORT@ZONE[,label=value...]", param_hint="--node")
    port = int(m["port"])
    if not 0 < port < 65536:
        raise click.BadParameter(f"{spec!r}: port {port} is out of range", param_hint="--node")
    zone, *label_specs = m["rest"].split(",")
    if not zone:
        raise click.BadParameter(f"{spec!r}: the zone must not be empty", param_hint="--node")
    labels: dict[str, str] = {}
    for item in label_specs:
        name, sep, value = item.partition("=")
        if not sep or not name:
            raise click.BadParameter(f"{spec!r}: label {item!r} is not label=value", param_hint="--node")
        labels[name] = value
    return NodeInfo(id=m["id"], address=f"{m['host']}:{port}", zone=zone, labels=labels)


@click.group("cluster", cls=LazyGroup, lazy=CLUSTER_COMMANDS, context_settings=CONTEXT_SETTINGS)
def cluster_group() -> None:
    """Create and inspect the cluster map (epoch, EC profile, nodes)."""


cli.add_command(cluster_group)


@cluster_group.command("init")
@click.option("--out", "out", required=True, type=click.Path(dir_okay=False), help="Where to write the map JSON.")
@click.option("--k", "k", default=4, show_default=True, type=int, help="Data shards per stripe.")
@click.option("--m", "m", default=2, show_default=True, type=int, help="Parity shards per stripe.")
@click.option("--block-size", default=DEFAULT_BLOCK_SIZE, show_default=True, type=int, help="Bytes per shard block.")
@click.option("--partition-bits", default=DEFAULT_PARTITION_BITS, show_default=True, type=int, help="2^P partitions.")
@click.option(
    "--node",
    "node_specs",
    multiple=True,
    required=True,
    metavar="ID=HOST:PORT@ZONE[,label=value...]",
    help="A storage node (repeat for each node).",
)
@click.option("--force", is_flag=True, help="Overwrite an existing map file.")
def cluster_init(
    out: str, k: int, m: int, block_size: int, partition_bits: int, node_specs: Sequence[str], force: bool
) -> None:
    """Write a new cluster map (epoch 1)."""
    if Path(out).exists() and not force:
        fail(f"{out} already exists (use --force to overwrite; a running cluster needs `cluster` edits instead)")
    nodes = tuple(parse_node_spec(s) for s in node_specs)
    cmap = ClusterMap(
        epoch=1,
        ec=ECProfile(k=k, m=m, block_size=block_size),
        nodes=nodes,
        partition_bits=partition_bits,
    )
    zones = {n.zone for n in nodes}
    if len(nodes) < k + 1:
        click.echo(f"Warning: {len(nodes)} nodes for {k}+{m}: writes need at least {k + 1} and will be refused.",
                   err=True)
    elif len(nodes) < cmap.ec.width:
        click.echo(f"Warning: {len(nodes)} nodes for {k}+{m}: some nodes will hold two shards of an object, "
                   f"so losing one costs two.", err=True)
    cmap.save(out)
    click.echo(f"Wrote {out}: epoch 1, {k}+{m}, {len(nodes)} nodes in {len(zones)} zones.")


def render_map(cmap: ClusterMap, console: Console) -> None:
    """Print the map: a summary line, the pools, and one table row per node."""
    ec = cmap.ec
    console.print(
        f"[bold]epoch[/bold] {cmap.epoch}   [bold]EC[/bold] {ec.k}+{ec.m} "
        f"(block {ec.block_size} B, stripe {ec.stripe_size} B)   "
        f"[bold]partitions[/bold] 2^{cmap.partition_bits}   "
        f"[bold]zones[/bold] {len({n.zone for n in cmap.nodes})}"
    )
    for pool in cmap.pools:
        selector = ",".join(f"{k}={v}" for k, v in sorted(pool.selector.items()))
        members = len(cmap.pool_nodes(pool.name))
        console.print(f"[bold]pool[/bold] {pool.name}: {selector}  {pool.ec.k}+{pool.ec.m}  {members} nodes")
    table = Table(show_header=True, header_style="bold")
    for column in ("id", "address", "zone", "labels", "weight", "state"):
        table.add_column(column, justify="right" if column == "weight" else "left")
    style = {"active": "green", "draining": "yellow", "removed": "red"}
    for n in cmap.nodes:
        labels = ",".join(f"{k}={v}" for k, v in sorted(n.labels.items())) or "-"
        table.add_row(n.id, n.address, n.zone, labels, f"{n.weight:g}", f"[{style[n.state]}]{n.state}[/]")
    console.print(table)


@cluster_group.command("show")
@click.option(
    "--cluster",
    "cluster_path",
    required=True,
    type=click.Path(dir_okay=False),
    help="The cluster map JSON (or a dev cluster's cluster.json).",
)
def cluster_show(cluster_path: str) -> None:
    """Show the cluster map: epoch, EC profile, and the nodes with zone, labels, weight and state."""
    render_map(load_cluster_map(cluster_path), Console())


def main(argv: Sequence[str] | None = None) -> None:
    """Console-script entry point."""
    cli.main(args=list(argv) if argv is not None else None, prog_name="objstore")


if __name__ == "__main__":
    main()
