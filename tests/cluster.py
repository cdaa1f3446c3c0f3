"""Integration-test cluster: a real `objstore dev` subprocess on free loopback ports, and handles to its processes.

Every process is found and stopped by pid, never by name. Every wait is bounded.
"""

from __future__ import annotations

import json
import os
import random
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import closing, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from objstore.cluster import ClusterMap
from objstore.devcluster import child_env, die_with_parent, probe_gateway, probe_node

LOOPBACK = "127.0.0.1"
START_TIMEOUT = 90.0  # seconds for `objstore dev` to have every process answering
STOP_TIMEOUT = 20.0


class ClusterError(RuntimeError):
    """The dev cluster did not start, or a process did not do what the test asked in time."""


def pid_gone(pid: int) -> bool:
    """True if no process has this pid, or only a zombie whose every thread has exited (its sockets are closed).

    The main thread of a multi-threaded process turns zombie first; its parent can reap it, and its
    listening sockets close, only once the other threads are gone too.
    """
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    try:
        with open(f"/proc/{pid}/stat") as f:
            # the state letter follows the parenthesised command name, which may itself contain spaces
            if f.read().rpartition(")")[2].split()[0] not in ("Z", "X"):
                return False
        return len(os.listdir(f"/proc/{pid}/task")) <= 1
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return True


def wait_until(predicate: Callable[[], bool], timeout: float, what: str, interval: float = 0.05) -> None:
    """Poll `predicate` until it is true; ClusterError naming `what` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise ClusterError(f"timed out after {timeout:g}s waiting for {what}")
        time.sleep(interval)


def wait_pids_gone(pids: list[int], timeout: float) -> None:
    wait_until(lambda: all(pid_gone(p) for p in pids), timeout, f"pids {pids} to exit")


def port_free(port: int, host: str = LOOPBACK) -> bool:
    with closing(socket.socket(socket.AF_INET, socket.SOCK_STREAM)) as s:
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


def free_port_range(count: int, host: str = LOOPBACK, tries: int = 200) -> int:
    """A base port such that base..base+count-1 are all free now (random, so parallel runs rarely collide)."""
    for _ in range(tries):
        base = random.randrange(20000, 60000 - count)
        if all(port_free(p, host) for p in range(base, base + count)):
            return base
    raise ClusterError(f"no {count} consecutive free ports on {host}")


def _tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return f"({path} unreadable)"


def _stop_pid(proc: subprocess.Popen[bytes], timeout: float) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout)


@dataclass
class NodeProc:
    """One storage node process of the cluster."""

    id: str
    zone: str
    pid: int
    port: int
    address: str
    data_dir: Path
    config: Path
    log: Path
    proc: subprocess.Popen[bytes] | None = None  # set when the test (not `objstore dev`) started this process
    listen: str = ""  # the address the process binds, when not `address` (a proxy holds that one)

    @property
    def alive(self) -> bool:
        return not pid_gone(self.pid)


@dataclass
class DevCluster:
    """A running `objstore dev`: endpoint, credentials, node processes, and ways to break and mend them."""

    proc: subprocess.Popen[bytes]  # the `objstore dev` process
    workdir: Path
    data_dir: Path
    dev_log: Path
    info: dict[str, Any]  # cluster.json as written by `objstore dev`
    nodes: list[NodeProc] = field(default_factory=list)
    _stopped: bool = False

    @property
    def endpoint(self) -> str:
        return str(self.info["endpoint"])

    @property
    def access_key(self) -> str:
        return str(self.info["access_key"])

    @property
    def secret_key(self) -> str:
        return str(self.info["secret_key"])

    @property
    def region(self) -> str:
        return str(self.info["region"])

    @property
    def map_path(self) -> Path:
        return Path(self.info["map"])

    @property
    def secret(self) -> str:
        return Path(self.info["secret_file"]).read_text().strip()

    @property
    def k(self) -> int:
        return int(self.info["k"])

    @property
    def m(self) -> int:
        return int(self.info["m"])

    @property
    def gateway(self) -> dict[str, Any] | None:
        """The gateway's url, pid, port, config and log; None if `objstore dev` ran without one."""
        return self.info.get("gateway")

    @property
    def dev_pid(self) -> int:
        return self.proc.pid

    def cluster_map(self) -> ClusterMap:
        return ClusterMap.load(self.map_path)

    def node(self, node_id: str) -> NodeProc:
        for n in self.nodes:
            if n.id == node_id:
                return n
        raise KeyError(node_id)

    def all_pids(self) -> list[int]:
        """Every node pid and the gateway pid (as last known)."""
        pids = [n.pid for n in self.nodes]
        if self.gateway and self.gateway.get("pid"):
            pids.append(int(self.gateway["pid"]))
        return pids

    def require_gateway(self) -> dict[str, Any]:
        """The gateway entry, or skip the calling test: the nodes alone cannot serve S3."""
        if self.gateway is None:
            pytest.skip(f"objstore dev ran without an S3 gateway: {self.info.get('gateway_missing')}")
        return self.gateway

    def s3(self, **config: Any) -> Any:
        """A boto3 S3 client for the gateway: path-style addressing, the dev region, few retries."""
        import boto3
        from botocore.config import Config

        self.require_gateway()
        options: dict[str, Any] = {
            "s3": {"addressing_style": "path"},
            "retries": {"max_attempts": 2, "mode": "standard"},
            "connect_timeout": 5,
            "read_timeout": 30,
        }
        options.update(config)
        return boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            aws_access_key_id=self.access_key,
            aws_secret_access_key=self.secret_key,
            region_name=self.region,
            config=Config(**options),
        )

    def node_client(self, **kwargs: Any) -> Any:
        """An objstore.client.NodeClient signing with the cluster secret (use it inside an event loop)."""
        from objstore.client import NodeClient

        return NodeClient(self.secret, **kwargs)

    def refresh(self) -> bool:
        """Re-read cluster.json: the pids of nodes `objstore dev` started again. True if it could be read."""
        info = _read_cluster_file(self.data_dir / "cluster.json", self.proc.pid)
        if info is None:
            return False
        self.info = info
        pids = {n["id"]: int(n["pid"]) for n in info.get("nodes", []) if n.get("pid")}
        for node in self.nodes:
            if node.proc is None and node.id in pids:
                node.pid = pids[node.id]
        return True

    def node_ready(self, node_id: str) -> bool:
        node = self.node(node_id)
        return probe_node(node.listen or node.address, self.secret)

    def gateway_ready(self) -> bool:
        gw = self.require_gateway()
        return probe_gateway(LOOPBACK, int(gw["port"]))

    def kill_node(self, node_id: str, sig: int = signal.SIGKILL, timeout: float = 15.0) -> None:
        """Send `sig` to the node's pid and wait until the process is gone."""
        node = self.node(node_id)
        if pid_gone(node.pid):
            raise ClusterError(f"node {node_id} (pid {node.pid}) is not running")
        os.kill(node.pid, sig)
        if node.proc is not None:
            try:
                node.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                raise ClusterError(f"node {node_id} (pid {node.pid}) still running {timeout:g}s after {sig}") from None
        else:
            wait_pids_gone([node.pid], timeout)

    def start_node(self, node_id: str, timeout: float = 30.0, env: dict[str, str] | None = None) -> NodeProc:
        """Start the node again with its config, as a child of the test, and wait until it answers.

        `env` adds environment variables to the node process (the fault hooks of docs/architecture.md)."""
        node = self.node(node_id)
        if not pid_gone(node.pid):
            raise ClusterError(f"node {node_id} is still running as pid {node.pid}")
        with open(node.log, "ab") as log:
            proc = subprocess.Popen(
                [sys.executable, "-m", "node", "--config", str(node.config)],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env={**child_env(), **(env or {})},
                preexec_fn=die_with_parent(),
                process_group=0,
            )
        node.proc, node.pid = proc, proc.pid
        deadline = time.monotonic() + timeout
        while not self.node_ready(node_id):
            if proc.poll() is not None:
                raise ClusterError(f"node {node_id} exited with {proc.returncode}:\n{_tail(node.log)}")
            if time.monotonic() > deadline:
                raise ClusterError(f"node {node_id} not ready after {timeout:g}s:\n{_tail(node.log)}")
            time.sleep(0.05)
        return node

    def stop(self, timeout: float = STOP_TIMEOUT) -> int | None:
        """SIGTERM `objstore dev` (it stops its children), stop the nodes the test restarted; all by pid.

        Returns the exit code of `objstore dev` (None if it had to be killed).
        """
        if self._stopped:
            return self.proc.returncode
        self._stopped = True
        code: int | None = None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                code = self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout)
        else:
            code = self.proc.returncode
        for node in self.nodes:
            if node.proc is not None:
                _stop_pid(node.proc, timeout)
        return code

    def log_tail(self, name: str = "dev", lines: int = 30) -> str:
        """Last lines of the dev log, or of a node's or the gateway's log by name."""
        if name == "dev":
            return _tail(self.dev_log, lines)
        return _tail(self.data_dir / "logs" / f"{name}.log", lines)


def _read_cluster_file(path: Path, dev_pid: int) -> dict[str, Any] | None:
    try:
        info = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    # a cluster.json left by an earlier run of the same data dir names another pid
    return info if isinstance(info, dict) and info.get("dev_pid") == dev_pid else None


def start_dev_cluster(
    workdir: Path,
    *,
    nodes: int = 6,
    zones: int = 3,
    k: int = 4,
    m: int = 2,
    down_after: float = 5.0,
    fsync: bool = False,
    block_size: int | None = None,
    node_settings: dict[str, Any] | None = None,
    node_listen: dict[str, str] | None = None,
    port: int | None = None,
    data_dir: Path | None = None,
    env: dict[str, str] | None = None,
    timeout: float = START_TIMEOUT,
    attempts: int = 3,
) -> DevCluster:
    """Run `objstore dev` in `workdir` on free loopback ports and wait for its cluster.json.

    With `data_dir` of an earlier cluster, the cluster restarts on that dir with its ports, map and
    credentials (only `down_after`, `fsync` and `node_settings` are passed again). `env` adds environment
    variables for `objstore dev` and its children. `port` fixes the S3 port (nodes on the next ones: the
    caller holds them free) instead of drawing free ports; `node_listen` binds nodes elsewhere than their
    map address (`objstore dev --node-listen`).
    """
    data_dir = data_dir or workdir / "data"
    reuse = (data_dir / "map.json").exists()
    last_error = ""
    for attempt in range(1, (1 if reuse or port is not None else attempts) + 1):
        argv = [sys.executable, "-m", "objstore.cli", "dev", "--data", str(data_dir), "--down-after", str(down_after)]
        argv += ["--fsync" if fsync else "--no-fsync", "--ready-timeout", str(timeout)]
        if not reuse:
            base = port if port is not None else free_port_range(nodes + 1)
            argv += ["--nodes", str(nodes), "--zones", str(zones), "--k", str(k), "--m", str(m)]
            argv += ["--port", str(base), "--host", LOOPBACK]
            if block_size is not None:
                argv += ["--block-size", str(block_size)]
        for key, value in (node_settings or {}).items():
            argv += ["--node-setting", f"{key}={json.dumps(value)}"]
        for node_id, address in (node_listen or {}).items():
            argv += ["--node-listen", f"{node_id}={address}"]
        dev_log = workdir / f"dev-{attempt}.log" if attempt > 1 else workdir / "dev.log"
        with open(dev_log, "ab") as log:
            proc = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env={**child_env(), "COLUMNS": "160", **(env or {})},
                preexec_fn=die_with_parent(),
                cwd=workdir,
            )
        info: dict[str, Any] | None = None
        deadline = time.monotonic() + timeout + 10
        while info is None and proc.poll() is None and time.monotonic() < deadline:
            info = _read_cluster_file(data_dir / "cluster.json", proc.pid)
            if info is None:
                time.sleep(0.05)
        if info is not None:
            return _handle(proc, workdir, data_dir, dev_log, info)
        if proc.poll() is None:
            proc.kill()
            proc.wait(STOP_TIMEOUT)
        last_error = _tail(dev_log)
        if reuse or "already in use" not in last_error.lower():
            break
        # another process took one of the ports between our check and the bind: new ports, fresh dir
        data_dir = workdir / f"data-{attempt + 1}"
    raise ClusterError(f"objstore dev did not start (exit {proc.returncode}):\n{last_error}")


def _handle(
    proc: subprocess.Popen[bytes], workdir: Path, data_dir: Path, dev_log: Path, info: dict[str, Any]
) -> DevCluster:
    nodes = [
        NodeProc(
            id=n["id"],
            zone=n["zone"],
            pid=int(n["pid"]),
            port=int(n["port"]),
            address=n["address"],
            data_dir=Path(n["data_dir"]),
            config=Path(n["config"]),
            log=Path(n["log"]),
            listen=n.get("listen", ""),
        )
        for n in info["nodes"]
    ]
    return DevCluster(proc=proc, workdir=workdir, data_dir=data_dir, dev_log=dev_log, info=info, nodes=nodes)


class DevClusterFactory:
    """Starts clusters with per-test options and stops every one of them at teardown."""

    def __init__(self, mkdir: Callable[[], Path]) -> None:
        self._mkdir = mkdir
        self.started: list[DevCluster] = []

    def __call__(self, **opts: Any) -> DevCluster:
        cluster = start_dev_cluster(self._mkdir(), **opts)
        self.started.append(cluster)
        return cluster

    def close(self) -> None:
        for cluster in reversed(self.started):
            cluster.stop()


@contextmanager
def cluster_factory(mkdir: Callable[[], Path]) -> Iterator[DevClusterFactory]:
    """A factory that starts clusters in fresh dirs from `mkdir` and stops them all on exit."""
    factory = DevClusterFactory(mkdir)
    try:
        yield factory
    finally:
        factory.close()
