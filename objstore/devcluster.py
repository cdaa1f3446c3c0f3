"""`objstore dev`: a local cluster of node processes and a gateway, generated once in a data dir and supervised.

Layout of the data dir (everything but cluster.json is created on first start and reused after):

    secret              cluster secret for the node RPC (0600)
    credentials.json    the admin user's access key and secret key (0600)
    dev.json            down_after, fsync, node settings and listen addresses of the last start (flags override them)
    map.json            the cluster map: nodes n1..nN, zones z1..zZ round-robin, ports port+1..port+N
    config/<name>.toml  one config per node and one for the gateway (rewritten on every start)
    nodes/<id>/         node data (shards and records): persists across restarts
    logs/<name>.log     stdout and stderr of every child
    cluster.json        what is running now: endpoint, credentials, pids, ports, paths (for tests and tools)

Children are started with PR_SET_PDEATHSIG=SIGTERM (Linux), so the kernel stops them when `objstore dev`
dies, even by SIGKILL: no orphan keeps a port or a data dir busy. They run in their own process group, so
Ctrl-C reaches only `objstore dev`, which then stops them in order. A child that dies is reported, not
restarted (chaos tests kill nodes on purpose); SIGHUP restarts the dead ones. A node that stops itself with
EXIT_RESTART (its data dir was wiped under it) is started again at once.
"""

from __future__ import annotations

import ctypes
import fcntl
import http.client
import importlib.util
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any

import click
from rich.console import Console
from rich.table import Table

from objstore.auth import sign
from objstore.cluster import DEFAULT_BLOCK_SIZE, EXIT_RESTART, write_file_atomic
from objstore.config import ConfigError
from objstore.devsetup import (
    DEFAULT_DATA,
    DEFAULT_DOWN_AFTER,
    REGION,
    DevError,
    DevOptions,
    DevSetup,
    parse_node_listen,
    parse_node_setting,
    prepare,
)

# Children must use the secret and credentials in the data dir, not ones leaked from the caller's shell.
_SCRUBBED_ENV = ("OBJSTORE_SECRET", "OBJSTORE_ACCESS_KEY", "OBJSTORE_SECRET_KEY")
_PR_SET_PDEATHSIG = 1


# ---------------------------------------------------------------------------
# children that die with their parent


def die_with_parent() -> Callable[[], None]:
    """A Popen preexec_fn that asks the kernel to SIGTERM the child when its parent dies.

    PR_SET_PDEATHSIG fires when the thread that forked the child exits, so spawn from the main thread.
    If the parent died between fork and prctl the signal would never come: the child checks and exits.
    """
    parent = os.getpid()
    prctl: Any = None
    if sys.platform.startswith("linux"):
        prctl = ctypes.CDLL(None, use_errno=True).prctl

    def preexec() -> None:
        if prctl is not None:
            prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
        if os.getppid() != parent:
            os._exit(1)

    return preexec


def child_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in _SCRUBBED_ENV}
    env["PYTHONUNBUFFERED"] = "1"  # so a log shows the last line before a crash
    # Two malloc arenas, not one per thread: after a burst of writes glibc would keep every encoding
    # thread's arena at its peak (the deploy kits set the same).
    env.setdefault("MALLOC_ARENA_MAX", "2")
    return env


# ---------------------------------------------------------------------------
# readiness probes (also used by the test fixture)


def _get(host: str, port: int, path: str, headers: dict[str, str], timeout: float) -> int:
    conn = http.client.HTTPConnection(host, port, timeout=timeout)
    try:
        conn.request("GET", path, headers=headers)
        resp = conn.getresponse()
        resp.read()
        return resp.status
    finally:
        conn.close()


def probe_node(address: str, secret: str, timeout: float = 1.0) -> bool:
    """True if the node at host:port answers a signed GET /health with 200."""
    host, _, port = address.rpartition(":")
    try:
        return _get(host, int(port), "/health", dict(sign(secret, "GET", "/health")), timeout) == 200
    except (OSError, http.client.HTTPException):
        return False


def probe_gateway(host: str, port: int, timeout: float = 1.0) -> bool:
    """True if the gateway answers the unauthenticated GET /_objstore/health with 200."""
    try:
        return _get(host, port, "/_objstore/health", {}, timeout) == 200
    except (OSError, http.client.HTTPException):
        return False


def module_runnable(package: str) -> str | None:
    """None if `python -m package` can run a server, else why not."""
    for name in (f"{package}.server", f"{package}.__main__"):
        try:
            if importlib.util.find_spec(name) is None:
                return f"{name} is not installed"
        except ImportError as e:
            return f"{name} cannot be imported: {e}"
    return None


# ---------------------------------------------------------------------------
# supervision


@dataclass
class Child:
    """One supervised process: a node or the gateway."""

    name: str
    kind: str  # "node" or "gateway"
    port: int
    config: Path
    log: Path
    proc: subprocess.Popen[bytes] | None = None
    reported: bool = False  # its death was printed

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def reap_if_exiting(self, timeout: float = 5.0) -> None:
        """Wait for a child that was killed but is not reapable yet.

        A multi-threaded process shows as a zombie as soon as its main thread is gone, but waitpid
        reports it (and its sockets close) only once every thread has exited.
        """
        if self.proc is None or self.proc.poll() is not None:
            return
        try:
            with open(f"/proc/{self.proc.pid}/stat") as f:
                exiting = f.read().rpartition(")")[2].split()[0] in ("Z", "X")
        except (OSError, IndexError):
            exiting = False
        if exiting:
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                pass


def _tail(path: Path, lines: int = 8) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


class Supervisor:
    """Starts the children, waits until they answer, writes cluster.json, reports deaths, stops them all."""

    def __init__(self, setup: DevSetup, console: Console, ready_timeout: float, gateway_missing: str | None) -> None:
        self.setup = setup
        self.gateway_missing = gateway_missing
        self.console = console
        self.ready_timeout = ready_timeout
        self.stop_requested = False
        self.restart_requested = False
        self.children = [
            Child(n.id, "node", int(n.address.rpartition(":")[2]), setup.node_configs[n.id], setup.log(n.id))
            for n in setup.cmap.nodes
            if n.id in setup.node_configs
        ]
        if gateway_missing is None:
            self.children.append(Child("gateway", "gateway", setup.port, setup.gateway_config, setup.log("gateway")))

    def _on_stop(self, signum: int, frame: FrameType | None) -> None:
        self.stop_requested = True

    def _on_hup(self, signum: int, frame: FrameType | None) -> None:
        self.restart_requested = True

    def install_signal_handlers(self) -> None:
        signal.signal(signal.SIGTERM, self._on_stop)
        signal.signal(signal.SIGINT, self._on_stop)
        signal.signal(signal.SIGHUP, self._on_hup)

    def spawn(self, child: Child) -> None:
        with open(child.log, "ab") as log:
            log.write(
                f"\n=== objstore dev: starting {child.name} at {time.strftime('%Y-%m-%d %H:%M:%S')} ===\n".encode()
            )
            log.flush()
            child.proc = subprocess.Popen(
                [sys.executable, "-m", child.kind, "--config", str(child.config)],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=child_env(),
                preexec_fn=die_with_parent(),
                process_group=0,
            )
        child.reported = False

    def ready(self, child: Child) -> bool:
        if child.kind == "node":  # the node itself, not what may stand at its map address
            return probe_node(self.setup.node_listen.get(child.name, f"{self.setup.host}:{child.port}"),
                              self.setup.secret)
        return probe_gateway(self.setup.host, child.port)

    def wait_ready(self, children: list[Child]) -> None:
        """Poll until every child answers; a child that exits or a timeout is a DevError."""
        deadline = time.monotonic() + self.ready_timeout
        waiting = list(children)
        while waiting:
            if self.stop_requested:
                raise DevError("interrupted while starting")
            for child in list(waiting):
                assert child.proc is not None
                if child.proc.poll() is not None:
                    raise DevError(
                        f"{child.name} exited with code {child.proc.returncode} while starting; "
                        f"last lines of {child.log}:\n{_tail(child.log)}"
                    )
                if self.ready(child):
                    waiting.remove(child)
            if waiting and time.monotonic() > deadline:
                names = ", ".join(c.name for c in waiting)
                raise DevError(
                    f"{names} not ready after {self.ready_timeout:g}s; see the logs in {self.setup.root / 'logs'}"
                )
            if waiting:
                time.sleep(0.1)

    def start(self) -> None:
        nodes = [c for c in self.children if c.kind == "node"]
        for child in nodes:
            self.spawn(child)
        self.wait_ready(nodes)
        # The gateway starts once the nodes answer, so its first requests find them.
        gateways = [c for c in self.children if c.kind == "gateway"]
        for child in gateways:
            self.spawn(child)
        self.wait_ready(gateways)

    def describe(self) -> dict[str, Any]:
        s = self.setup
        zones = {n.id: n.zone for n in s.cmap.nodes}
        gw = next((c for c in self.children if c.kind == "gateway"), None)
        return {
            "endpoint": f"http://{s.host}:{s.port}",
            "region": REGION,
            "access_key": s.access_key,
            "secret_key": s.secret_key,
            "secret_file": str(s.root / "secret"),
            "map": str(s.map_path),
            "k": s.cmap.ec.k,
            "m": s.cmap.ec.m,
            "block_size": s.cmap.ec.block_size,
            "data_dir": str(s.root),
            "dev_pid": os.getpid(),
            "gateway_missing": self.gateway_missing,
            "gateway": None
            if gw is None
            else {
                "url": f"http://{s.host}:{gw.port}",
                "pid": gw.proc.pid if gw.proc else None,
                "port": gw.port,
                "config": str(gw.config),
                "log": str(gw.log),
                "running": gw.running,
            },
            "nodes": [
                {
                    "id": c.name,
                    "zone": zones[c.name],
                    "pid": c.proc.pid if c.proc else None,
                    "port": c.port,
                    "address": f"{s.host}:{c.port}",
                    "listen": s.node_listen.get(c.name, f"{s.host}:{c.port}"),
                    "data_dir": str(s.node_dir(c.name)),
                    "config": str(c.config),
                    "log": str(c.log),
                    "running": c.running,
                }
                for c in self.children
                if c.kind == "node"
            ],
        }

    def write_cluster_file(self) -> None:
        write_file_atomic(self.setup.cluster_file, json.dumps(self.describe(), indent=2).encode())

    def supervise(self) -> None:
        """Report deaths until SIGTERM/SIGINT; SIGHUP restarts the dead children, and a node that stopped
        itself to be started again (exit code EXIT_RESTART: its data dir was wiped) is restarted at once."""
        while not self.stop_requested:
            changed = False
            dead = []
            for child in self.children:
                if child.proc is not None and child.proc.poll() is not None and not child.reported:
                    child.reported = changed = True
                    code = child.proc.returncode
                    if code == EXIT_RESTART:
                        self.console.print(f"{child.name} (pid {child.proc.pid}) asked to be started again "
                                           f"(its data dir was wiped); log: {child.log}")
                        dead.append(child)
                        continue
                    how = f"signal {signal.Signals(-code).name}" if code < 0 else f"exit code {code}"
                    self.console.print(f"[red]{child.name} (pid {child.proc.pid}) died: {how}[/red]; log: {child.log}")
            if self.restart_requested:
                self.restart_requested = False
                for child in self.children:
                    child.reap_if_exiting()
                dead = [c for c in self.children if not c.running]
                if not dead:
                    self.console.print("SIGHUP: every child is running, nothing to restart")
            if dead:
                for child in dead:
                    self.console.print(f"restarting {child.name}")
                    self.spawn(child)
                try:
                    self.wait_ready(dead)
                except DevError as e:
                    if self.stop_requested:
                        break
                    self.console.print(f"[red]restart failed: {e.message}[/red]")
                changed = changed or bool(dead)
            if changed:
                self.write_cluster_file()
            time.sleep(0.2)

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM every child (gateway first), wait up to `timeout`, SIGKILL the stragglers."""
        for child in sorted(self.children, key=lambda c: c.kind != "gateway"):
            if child.running:
                assert child.proc is not None
                child.proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + timeout
        for child in self.children:
            if child.proc is None:
                continue
            try:
                child.proc.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                self.console.print(f"[yellow]{child.name} did not stop in {timeout:g}s: SIGKILL[/yellow]")
                child.proc.kill()
                child.proc.wait()


def print_banner(sup: Supervisor, console: Console, gateway_missing: str | None) -> None:
    s = sup.setup
    endpoint = f"http://{s.host}:{s.port}"
    console.print(
        f"[bold green]objstore dev[/bold green]: {len(s.node_configs)} nodes in "
        f"{len({n.zone for n in s.cmap.nodes})} zones, {s.cmap.ec.k}+{s.cmap.ec.m}, data in {s.root}"
    )
    table = Table(show_header=True, header_style="bold")
    for col in ("node", "zone", "address", "pid", "log"):
        table.add_column(col)
    zones = {n.id: n.zone for n in s.cmap.nodes}
    for c in sup.children:
        if c.kind == "node" and c.proc is not None:
            table.add_row(c.name, zones[c.name], f"{s.host}:{c.port}", str(c.proc.pid), str(c.log))
    console.print(table)
    if gateway_missing:
        console.print(f"[yellow]No S3 gateway: {gateway_missing}. Started the nodes only.[/yellow]")
    else:
        console.print(f"S3 endpoint  [bold]{endpoint}[/bold]   region {REGION}")
        console.print(f"access key   [bold]{s.access_key}[/bold]")
        console.print(f"secret key   [bold]{s.secret_key}[/bold]")
        console.print("Try:", style="bold")
        console.print(
            f"  export AWS_ACCESS_KEY_ID={s.access_key} AWS_SECRET_ACCESS_KEY={s.secret_key}\n"
            f"  export AWS_DEFAULT_REGION={REGION}\n"
            f"  aws --endpoint-url {endpoint} s3 mb s3://demo\n"
            f"  aws --endpoint-url {endpoint} s3 cp README.md s3://demo/\n"
            f"  aws --endpoint-url {endpoint} s3 ls s3://demo/",
            highlight=False,
            soft_wrap=True,
        )
    console.print(
        f"Running ({s.cluster_file}). Ctrl-C stops the cluster and keeps the data; "
        f"`kill -HUP {os.getpid()}` restarts dead nodes."
    )


def run_dev(opts: DevOptions, console: Console | None = None) -> None:
    """Prepare the data dir, start the cluster, supervise it until SIGTERM/SIGINT, stop it."""
    console = console or Console()
    node_missing = module_runnable("node")
    if node_missing:
        raise DevError(f"the storage node cannot run: {node_missing}")
    gateway_missing = module_runnable("gateway")
    with _exclusive(opts.data):
        setup = prepare(opts)
        setup.cluster_file.unlink(missing_ok=True)  # it described processes that are gone
        sup = Supervisor(setup, console, opts.ready_timeout, gateway_missing)
        sup.install_signal_handlers()
        try:
            try:
                sup.start()
            except DevError:
                if sup.stop_requested:  # SIGTERM while starting is a normal stop, not a failure
                    return
                raise
            print_banner(sup, console, gateway_missing)
            # cluster.json appears last: once it exists, the cluster is up and the banner printed
            sup.write_cluster_file()
            sup.supervise()
            console.print("stopping")
        finally:
            sup.stop()


@contextmanager
def _exclusive(data: Path) -> Iterator[None]:
    """Hold a lock on the data dir: two supervisors of one cluster would fight over its ports and files."""
    data.mkdir(parents=True, exist_ok=True)
    with open(data / ".lock", "a+") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise DevError(f"another `objstore dev` is running on {data.resolve()}") from None
        yield


@click.command("dev")
@click.option("--nodes", type=click.IntRange(1, 64), help="Storage nodes [default: 6].")
@click.option("--zones", type=click.IntRange(1, 64), help="Zones, assigned round-robin [default: 3].")
@click.option("--k", "k", type=click.IntRange(1, 128), help="Data shards [default: 4].")
@click.option("--m", "m", type=click.IntRange(0, 128), help="Parity shards [default: 2].")
@click.option("--block-size", type=int, help=f"Bytes per shard block [default: {DEFAULT_BLOCK_SIZE}].")
@click.option("--data", type=click.Path(file_okay=False), default=DEFAULT_DATA, show_default=True, help="Data dir.")
@click.option("--port", type=click.IntRange(1, 65535), help="S3 port; nodes use the next ports [default: 9000].")
@click.option("--host", help="Address to listen on [default: 127.0.0.1].")
@click.option(
    "--down-after",
    type=click.FloatRange(min=0.1),
    help=f"Seconds before a silent peer is down [default: {DEFAULT_DOWN_AFTER:g}].",
)
@click.option("--fsync/--no-fsync", default=None, help="fsync shard files and records [default: on].")
@click.option(
    "--node-setting", "node_settings", multiple=True, metavar="KEY=VALUE", help="Any other node config field (repeat)."
)
@click.option(
    "--node-listen",
    "node_listen",
    multiple=True,
    metavar="ID=HOST:PORT",
    help="Bind node ID there instead of its map address, its outgoing calls from HOST (repeat; for a proxy).",
)
@click.option(
    "--ready-timeout",
    type=click.FloatRange(min=1),
    default=60.0,
    show_default=True,
    help="Seconds to wait for readiness.",
)
def dev_command(
    nodes: int | None,
    zones: int | None,
    k: int | None,
    m: int | None,
    block_size: int | None,
    data: str,
    port: int | None,
    host: str | None,
    down_after: float | None,
    fsync: bool | None,
    node_settings: tuple[str, ...],
    node_listen: tuple[str, ...],
    ready_timeout: float,
) -> None:
    """Run a local cluster: storage nodes in several zones and an S3 gateway, with credentials printed.

    The first start creates the data dir (secret, credentials, cluster map, configs); later starts reuse it,
    so data and credentials persist. Flags left out keep the values of the last start. Ctrl-C or SIGTERM
    stops every process and keeps the data.
    """
    opts = DevOptions(
        data=Path(data),
        nodes=nodes,
        zones=zones,
        k=k,
        m=m,
        block_size=block_size,
        port=port,
        host=host,
        down_after=down_after,
        fsync=fsync,
        node_settings=dict(parse_node_setting(s) for s in node_settings) if node_settings else None,
        node_listen=dict(parse_node_listen(s) for s in node_listen) if node_listen else None,
        ready_timeout=ready_timeout,
    )
    try:
        run_dev(opts)
    except ConfigError as e:
        raise DevError(f"generated config is invalid: {e}") from e
