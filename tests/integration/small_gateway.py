"""A second gateway on the shared dev cluster's nodes with a tiny read or write budget, for the budget tests."""

from __future__ import annotations

import re
import subprocess
import sys
import tomllib
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from objstore.devcluster import child_env, die_with_parent, probe_gateway
from objstore.devsetup import to_toml
from tests.cluster import LOOPBACK, DevCluster, free_port_range, wait_until


@dataclass
class SmallGateway:
    """The gateway's endpoint and credentials, and its budget (`kind` read or write) of two shares."""

    endpoint: str
    access_key: str
    secret_key: str
    region: str
    kind: str  # "read" or "write"
    share: int  # bytes one request of the test reserves
    capacity: int  # bytes of the budget, as the gateway rounds it
    clients: int  # requests a test runs at once

    def metrics(self) -> dict[str, float]:
        """The gateway's objstore_gateway_<kind>_budget* samples."""
        with urllib.request.urlopen(self.endpoint + "/_objstore/metrics", timeout=10) as resp:
            text = resp.read().decode()
        pattern = rf"^(objstore_gateway_{self.kind}_budget\w*) (\S+)$"
        return {m.group(1): float(m.group(2)) for m in re.finditer(pattern, text, re.MULTILINE)}

    def s3(self):  # type: ignore[no-untyped-def]
        """boto3 as an application uses it: default retries (SlowDown is retried with backoff)."""
        import boto3
        from botocore.config import Config

        return boto3.client("s3", endpoint_url=self.endpoint, aws_access_key_id=self.access_key,
                            aws_secret_access_key=self.secret_key, region_name=self.region,
                            config=Config(s3={"addressing_style": "path"}, max_pool_connections=self.clients + 2))


@contextmanager
def small_gateway(dev_cluster: DevCluster, work: Path, kind: str, share: int, wait: float,
                  clients: int) -> Iterator[SmallGateway]:
    """Run a gateway with the cluster gateway's config but a `kind` budget of two `share`s and `wait` seconds
    of queueing; stopped by pid on exit."""
    doc = tomllib.loads(Path(dev_cluster.require_gateway()["config"]).read_text())
    port = free_port_range(1)
    doc.update({"listen": f"{LOOPBACK}:{port}", f"{kind}_buffer_mb": 2 * share / 1e6, f"{kind}_wait": wait})
    config = work / "gateway.toml"
    config.write_text(to_toml(doc))
    with open(work / "gateway.log", "ab") as log:
        proc = subprocess.Popen([sys.executable, "-m", "objstore.cli", "gateway", "--config", str(config)],
                                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, env=child_env(),
                                preexec_fn=die_with_parent(), cwd=work)
    try:
        wait_until(lambda: proc.poll() is not None or probe_gateway(LOOPBACK, port), 60, "the small gateway")
        assert proc.poll() is None, (work / "gateway.log").read_text()[-3000:]
        yield SmallGateway(f"http://{LOOPBACK}:{port}", dev_cluster.access_key, dev_cluster.secret_key,
                           dev_cluster.region, kind, share, int(2 * share / 1e6 * 1e6), clients)
    finally:
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
