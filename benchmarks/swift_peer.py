"""OpenStack Swift as a benchmark peer: EC 4+2 storage policy, s3api over tempauth, one of each server on loopback.

Layout under the workdir: etc/ (swift.conf, the four server configs, rings), srv/d1..d6 (six
devices, plain directories, mount_check off), logs/. The account and container rings keep 3
replicas; objects go to the default policy `ec42` (4 data + 2 parity fragments, one per device,
1.5x storage overhead). Replicators, reconstructor, auditors and updaters are not started: a
benchmark measures the request path, and nothing fails during it.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import pwd
import shutil
import socket
import sys
from collections.abc import Callable
from pathlib import Path

from benchmarks.peers import LOOPBACK, Peer, PeerError, free_ports, http_status

DEVICES = 6
EC_DATA, EC_PARITY = 4, 2
# ISA-L ships inside the pyeclib wheel (pyeclib.libs); Cauchy matrices are its recommended RS flavour.
EC_TYPE = "isa_l_rs_cauchy"
EC_SEGMENT = 1024 * 1024
PART_POWER = 10
META_REPLICAS = 3
SERVERS = ("account", "container", "object", "proxy")
# The console scripts' entry points (see swift's entry_points.txt), wrapped by `serve` below.
SERVER_MAINS = {
    "account": "swift.account.server",
    "container": "swift.container.server",
    "object": "swift.obj.server",
    "proxy": "swift.proxy.server",
}
REPO_ROOT = Path(__file__).resolve().parents[1]


class Swift(Peer):
    """Proxy (s3api + tempauth), account, container and object servers and memcached on loopback."""

    kind = "swift"
    ACCOUNT, USER = "bench", "tester"

    def __init__(self, workers: int = 0, memcached: str | bool = True) -> None:
        """`workers` 0 runs the proxy and the object server in one process each, N forks N workers
        each; `memcached` is the binary for the proxy's account/container/auth cache (True: the one on
        PATH if there is one, Debian's `memcached` package; False: run without a cache)."""
        super().__init__()
        self.workers = workers
        self.memcached: str | None = (
            memcached if isinstance(memcached, str) else shutil.which("memcached") if memcached else None
        )
        self._secret_key = os.urandom(20).hex()
        self._ports: dict[str, int] = {}

    @property
    def endpoint(self) -> str:
        return f"http://{LOOPBACK}:{self._ports['proxy']}"

    @property
    def access_key(self) -> str:
        # s3api hands tempauth "account:user" as the access key id
        return f"{self.ACCOUNT}:{self.USER}"

    @property
    def secret_key(self) -> str:
        return self._secret_key

    def notes(self) -> str:
        cache = (
            "memcached" if self.memcached else "no memcached (every request re-reads account/container info)"
        )
        return (
            f"EC {EC_DATA}+{EC_PARITY} ({EC_TYPE}, {EC_SEGMENT // 1024} KiB segments): storage overhead "
            f"{(EC_DATA + EC_PARITY) / EC_DATA:.1f}x; account/container DBs {META_REPLICAS} replicas; "
            f"object servers fsync every fragment before answering; proxy and object workers={self.workers}; {cache}"
        )

    def _launch(self, deadline: float) -> None:
        if importlib.util.find_spec("swift") is None or importlib.util.find_spec("pyeclib") is None:
            raise PeerError(
                "swift: the swift and pyeclib packages are missing: pip install the `bench` extra"
            )
        names = (*SERVERS, "memcached")
        self._ports = dict(zip(names, free_ports(len(names)), strict=True))
        etc, srv = self._path("etc"), self._path("srv")
        etc.mkdir(exist_ok=True)
        for i in range(1, DEVICES + 1):
            (srv / f"d{i}").mkdir(parents=True, exist_ok=True)
        self._write_configs(etc, srv)
        build_rings(etc, self._ports)

        if self.memcached:
            port = self._ports["memcached"]
            # -u: memcached refuses to run as root unless told which user to stay
            user = pwd.getpwuid(os.getuid()).pw_name
            self._spawn(
                "memcached",
                [self.memcached, "-l", LOOPBACK, "-p", str(port), "-U", "0", "-m", "256", "-u", user],
            )
            self._wait(lambda: tcp_open(port), deadline, "memcached")
        self._env["PYTHONPATH"] = os.pathsep.join(
            filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")])
        )
        for name in SERVERS:
            conf = str(etc / f"{name}-server.conf")
            self._spawn(name, [sys.executable, "-m", "benchmarks.swift_peer", "serve", name, str(etc), conf])
        for name in SERVERS[:-1]:  # the backends; then the proxy, through its own health check
            self._wait(self._answers(self._ports[name]), deadline, f"the {name} server")
        self._wait(
            lambda: http_status(f"{self.endpoint}/healthcheck") == 200, deadline, "the proxy /healthcheck"
        )

    @staticmethod
    def _answers(port: int) -> Callable[[], bool]:
        """A readiness probe: the server on `port` answers HTTP at all (backends have no health URL)."""
        return lambda: http_status(f"http://{LOOPBACK}:{port}/") is not None

    def _write_configs(self, etc: Path, srv: Path) -> None:
        suffix, prefix = os.urandom(8).hex(), os.urandom(8).hex()
        (etc / "swift.conf").write_text(
            f"""[swift-hash]
swift_hash_path_suffix = {suffix}
swift_hash_path_prefix = {prefix}

[storage-policy:0]
name = replicated
policy_type = replication

[storage-policy:1]
name = ec{EC_DATA}{EC_PARITY}
policy_type = erasure_coding
ec_type = {EC_TYPE}
ec_num_data_fragments = {EC_DATA}
ec_num_parity_fragments = {EC_PARITY}
ec_object_segment_size = {EC_SEGMENT}
default = yes
"""
        )
        user = pwd.getpwuid(os.getuid()).pw_name
        common = f"""[DEFAULT]
bind_ip = {LOOPBACK}
workers = {{workers}}
user = {user}
swift_dir = {etc}
devices = {srv}
mount_check = false
disable_fallocate = true
log_level = WARNING
"""
        for name in ("account", "container", "object"):
            workers = self.workers if name == "object" else 0
            body = common.format(workers=workers) + f"bind_port = {self._ports[name]}\n"
            body += f"\n[pipeline:main]\npipeline = {name}-server\n\n[app:{name}-server]\nuse = egg:swift#{name}\n"
            (etc / f"{name}-server.conf").write_text(body)
        cache = "cache " if self.memcached else ""
        proxy = common.format(workers=self.workers) + f"bind_port = {self._ports['proxy']}\n"
        proxy += f"""
[pipeline:main]
pipeline = catch_errors gatekeeper healthcheck proxy-logging {cache}listing_formats s3api tempauth copy slo dlo proxy-logging proxy-server

[app:proxy-server]
use = egg:swift#proxy
account_autocreate = true
allow_account_management = true

[filter:s3api]
use = egg:swift#s3api
location = us-east-1

[filter:tempauth]
use = egg:swift#tempauth
user_{self.ACCOUNT}_{self.USER} = {self._secret_key} .admin

[filter:cache]
use = egg:swift#memcache
memcache_servers = {LOOPBACK}:{self._ports["memcached"]}

[filter:catch_errors]
use = egg:swift#catch_errors

[filter:gatekeeper]
use = egg:swift#gatekeeper

[filter:healthcheck]
use = egg:swift#healthcheck

[filter:proxy-logging]
use = egg:swift#proxy_logging

[filter:listing_formats]
use = egg:swift#listing_formats

[filter:copy]
use = egg:swift#copy

[filter:slo]
use = egg:swift#slo

[filter:dlo]
use = egg:swift#dlo
"""
        (etc / "proxy-server.conf").write_text(proxy)


def build_rings(etc: Path, ports: dict[str, int]) -> None:
    """Account and container rings (3 replicas) and object rings for both policies over the six devices.

    Each device gets its own zone so that the builder spreads the 6 EC fragments one per device.
    """
    # Swift imports eventlet; keep that out of processes that only start SeaweedFS.
    from swift.common.ring import RingBuilder

    rings = {
        "account": ("account", META_REPLICAS),
        "container": ("container", META_REPLICAS),
        "object": ("object", META_REPLICAS),
        "object-1": ("object", EC_DATA + EC_PARITY),
    }
    for ring_name, (server, replicas) in rings.items():
        builder = RingBuilder(PART_POWER, replicas, 1)
        for i in range(DEVICES):
            builder.add_dev(
                {
                    "id": i,
                    "region": 1,
                    "zone": i + 1,
                    "ip": LOOPBACK,
                    "port": ports[server],
                    "device": f"d{i + 1}",
                    "weight": 100.0,
                    "meta": "",
                }
            )
        builder.rebalance(seed=1)
        builder.get_ring().save(str(etc / f"{ring_name}.ring.gz"))


def tcp_open(port: int, host: str = LOOPBACK) -> bool:
    try:
        with socket.create_connection((host, port), timeout=1.0):
            return True
    except OSError:
        return False


def serve(server: str, swift_dir: str, conf: str) -> None:
    """Run one Swift server with swift.conf read from `swift_dir`.

    Swift reads storage policies and the hash path salt from /etc/swift/swift.conf at import time,
    and a server's `swift_dir` setting moves only the salt, not the policies; this points both at
    the workdir before the server's own main() runs, so nothing is written outside the workdir.
    """
    from swift.common import constraints, storage_policy, utils

    utils.set_swift_dir(swift_dir)
    storage_policy.reload_storage_policies()
    constraints.reload_constraints()
    # -v copies the log to stdout, which is the log file (without /dev/log, syslog reaches no one)
    sys.argv = [f"swift-{server}-server", conf, "-v"]
    importlib.import_module(SERVER_MAINS[server]).main()


if __name__ == "__main__":
    if len(sys.argv) != 5 or sys.argv[1] != "serve" or sys.argv[2] not in SERVER_MAINS:
        sys.exit(f"usage: python -m benchmarks.swift_peer serve {{{','.join(SERVER_MAINS)}}} SWIFT_DIR CONF")
    serve(sys.argv[2], sys.argv[3], sys.argv[4])
