"""The data dir of `objstore dev`: secret, credentials, cluster map and the generated node and gateway configs.

Everything here is created on the first start and reused after, except the configs, which are rewritten on
every start from the map, the secret and the flags (edit flags, not the TOML files).
"""

from __future__ import annotations

import json
import secrets
import tomllib
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import click

from objstore.cluster import DEFAULT_BLOCK_SIZE, ClusterMap, ECProfile, NodeInfo, write_file_atomic
from objstore.config import NodeConfig, gateway_config_from_dict, node_config_from_dict

DEFAULT_DATA = ".objstore-dev"
DEFAULTS: dict[str, Any] = {"nodes": 6, "zones": 3, "k": 4, "m": 2, "port": 9000, "host": "127.0.0.1"}
DEFAULT_DOWN_AFTER = 10.0  # seconds: short, so that a killed node is repaired while you watch
REGION = "us-east-1"
# Fields of a node config that `objstore dev` owns; --node-setting may set any other NodeConfig field.
_GENERATED_FIELDS = {"id", "listen", "data_dir", "secret", "map", "seeds", "down_after", "fsync"}


class DevError(click.ClickException):
    """`objstore dev` cannot go on; the message says why and what to do."""


def _toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, str):
        return json.dumps(v)  # a JSON string is a valid TOML basic string
    if isinstance(v, list):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    raise TypeError(f"cannot write {type(v).__name__} to TOML")


def to_toml(doc: dict[str, Any]) -> str:
    """TOML for a flat table whose only nested values are lists of flat tables (the gateway's users)."""
    lines = [
        f"{k} = {_toml_value(v)}" for k, v in doc.items() if not (isinstance(v, list) and v and isinstance(v[0], dict))
    ]
    for k, v in doc.items():
        if isinstance(v, list) and v and isinstance(v[0], dict):
            for item in v:
                lines += ["", f"[[{k}]]"] + [f"{ik} = {_toml_value(iv)}" for ik, iv in item.items()]
    return "\n".join(lines) + "\n"


def parse_node_listen(spec: str) -> tuple[str, str]:
    """`ID=HOST:PORT` -> (node id, the address that node binds to instead of its map address)."""
    node_id, sep, address = spec.partition("=")
    host, _, port = address.rpartition(":")
    if not sep or not node_id or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise click.BadParameter(f"{spec!r}: expected ID=HOST:PORT", param_hint="--node-listen")
    return node_id, address


def parse_node_setting(spec: str) -> tuple[str, Any]:
    """`key=value` with a TOML value (`repair_interval=2`, `log_level=debug`) -> (key, value)."""
    key, sep, raw = spec.partition("=")
    known = {f.name for f in fields(NodeConfig)}
    if not sep or key not in known:
        raise click.BadParameter(
            f"{spec!r}: expected KEY=VALUE with KEY a node config field", param_hint="--node-setting"
        )
    if key in _GENERATED_FIELDS:
        raise click.BadParameter(f"{key!r} is set by objstore dev itself", param_hint="--node-setting")
    try:
        return key, tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        return key, raw  # a bare word is a string


@dataclass
class DevOptions:
    """The flags of `objstore dev`; None means "as on the last start, or the default"."""

    data: Path
    nodes: int | None = None
    zones: int | None = None
    k: int | None = None
    m: int | None = None
    block_size: int | None = None
    port: int | None = None
    host: str | None = None
    down_after: float | None = None
    fsync: bool | None = None
    node_settings: dict[str, Any] | None = None
    # node id -> host:port it listens on when a proxy holds its map address (tests that cut the network)
    node_listen: dict[str, str] | None = None
    ready_timeout: float = 60.0


@dataclass
class DevSetup:
    """Everything generated or reused in the data dir, ready to start."""

    root: Path
    secret: str
    access_key: str
    secret_key: str
    cmap: ClusterMap
    host: str
    port: int
    node_configs: dict[str, Path]
    gateway_config: Path
    node_listen: dict[str, str] = field(default_factory=dict)  # node id -> the address it binds (its map address
    # unless --node-listen said otherwise)

    @property
    def map_path(self) -> Path:
        return self.root / "map.json"

    @property
    def cluster_file(self) -> Path:
        return self.root / "cluster.json"

    def node_dir(self, node_id: str) -> Path:
        return self.root / "nodes" / node_id

    def log(self, name: str) -> Path:
        return self.root / "logs" / f"{name}.log"


def _read_or_create(path: Path, make: Callable[[], bytes]) -> bytes:
    if not path.exists():
        write_file_atomic(path, make())  # mkstemp makes it 0600: secrets stay private
    return path.read_bytes()


def _new_map(opts: DevOptions) -> ClusterMap:
    n, zones = opts.nodes or DEFAULTS["nodes"], opts.zones or DEFAULTS["zones"]
    k, m = opts.k or DEFAULTS["k"], opts.m if opts.m is not None else DEFAULTS["m"]
    host, port = opts.host or DEFAULTS["host"], opts.port or DEFAULTS["port"]
    if not 1 <= zones <= n:
        raise DevError(f"--zones must be between 1 and --nodes ({n}), got {zones}")
    if n < k + m:
        raise DevError(f"{k}+{m} needs at least {k + m} nodes, got --nodes {n}")
    if port + n > 65535:
        raise DevError(f"--port {port} leaves no room for {n} node ports above it")
    nodes = tuple(
        NodeInfo(id=f"n{i}", address=f"{host}:{port + i}", zone=f"z{(i - 1) % zones + 1}") for i in range(1, n + 1)
    )
    return ClusterMap(epoch=1, ec=ECProfile(k=k, m=m, block_size=opts.block_size or DEFAULT_BLOCK_SIZE), nodes=nodes)


def _check_flags(opts: DevOptions, cmap: ClusterMap, host: str, port: int) -> None:
    """Flags must agree with the cluster already in the data dir: its data was placed for that map."""
    live = [n for n in cmap.nodes if n.state != "removed"]
    existing = {
        "nodes": len(live),
        "zones": len({n.zone for n in live}),
        "k": cmap.ec.k,
        "m": cmap.ec.m,
        "block_size": cmap.ec.block_size,
        "port": port,
        "host": host,
    }
    for flag, have in existing.items():
        wanted = getattr(opts, flag)
        if wanted is not None and wanted != have:
            raise DevError(
                f"{opts.data} holds a cluster with {flag.replace('_', '-')} {have}, but --{flag.replace('_', '-')} "
                f"{wanted} was given: drop the flag, or use another --data for a new cluster"
            )


def prepare(opts: DevOptions) -> DevSetup:
    """Create the data dir on first start, reuse it after; write every config; return what to start."""
    root = opts.data.resolve()
    root.mkdir(parents=True, exist_ok=True)
    for sub in ("config", "nodes", "logs"):
        (root / sub).mkdir(exist_ok=True)
    secret = _read_or_create(root / "secret", lambda: secrets.token_hex(32).encode()).decode().strip()
    creds_raw = _read_or_create(
        root / "credentials.json",
        lambda: json.dumps(
            {"access_key": "OBJ" + secrets.token_hex(9).upper()[:17], "secret_key": secrets.token_urlsafe(30)}
        ).encode(),
    )
    creds = json.loads(creds_raw)

    map_path, gw_path = root / "map.json", root / "config" / "gateway.toml"
    if map_path.exists():
        cmap = ClusterMap.load(map_path)
        if gw_path.exists():
            listen = tomllib.loads(gw_path.read_text())["listen"]
            host, _, port_s = listen.rpartition(":")
            port = int(port_s)
        else:
            first = cmap.nodes[0].address
            host, port = first.rpartition(":")[0], int(first.rpartition(":")[2]) - 1
        _check_flags(opts, cmap, host, port)
    else:
        cmap = _new_map(opts)
        host, port = opts.host or DEFAULTS["host"], opts.port or DEFAULTS["port"]
        cmap.save(map_path)

    # Settings that are not in the map persist in dev.json: a bare `objstore dev` restarts the same cluster.
    dev_path = root / "dev.json"
    saved = json.loads(dev_path.read_text()) if dev_path.exists() else {}
    down_after = opts.down_after if opts.down_after is not None else saved.get("down_after", DEFAULT_DOWN_AFTER)
    fsync = opts.fsync if opts.fsync is not None else saved.get("fsync", True)
    settings = opts.node_settings if opts.node_settings is not None else saved.get("node_settings", {})
    listen_at = opts.node_listen if opts.node_listen is not None else saved.get("node_listen", {})
    unknown = set(listen_at) - {n.id for n in cmap.nodes}
    if unknown:
        raise DevError(f"--node-listen names nodes that are not in the map: {', '.join(sorted(unknown))}")
    write_file_atomic(
        dev_path,
        json.dumps(
            {"down_after": down_after, "fsync": fsync, "node_settings": settings, "node_listen": listen_at}, indent=2
        ).encode(),
    )

    node_configs: dict[str, Path] = {}
    node_listen: dict[str, str] = {}
    for n in cmap.nodes:
        if n.state == "removed":
            continue
        doc: dict[str, Any] = {
            "id": n.id,
            "listen": listen_at.get(n.id, n.address),
            "data_dir": str(root / "nodes" / n.id),
            "secret": secret,
            "map": str(map_path),
            "fsync": fsync,
            "down_after": float(down_after),
            **settings,
        }
        if n.id in listen_at:
            # Its calls leave from the address it listens on, so what holds its map address can tell who calls.
            doc["source_address"] = listen_at[n.id].rpartition(":")[0]
        node_listen[n.id] = doc["listen"]
        node_config_from_dict(doc, f"node {n.id}")  # a bad --node-setting fails here, not in a child's log
        (root / "nodes" / n.id).mkdir(exist_ok=True)
        path = root / "config" / f"{n.id}.toml"
        write_file_atomic(path, to_toml(doc).encode())
        node_configs[n.id] = path
    gw_doc: dict[str, Any] = {
        "listen": f"{host}:{port}",
        "secret": secret,
        "map": str(map_path),
        "region": REGION,
        "users": [
            {"access_key": creds["access_key"], "secret_key": creds["secret_key"], "name": "admin", "admin": True}
        ]
        # more (non-admin) users may be listed in credentials.json: tests of access between users need them
        + [
            {"access_key": u["access_key"], "secret_key": u["secret_key"], "name": u.get("name", u["access_key"])}
            for u in creds.get("users", [])
        ],
    }
    gateway_config_from_dict(gw_doc)
    write_file_atomic(gw_path, to_toml(gw_doc).encode())
    return DevSetup(
        root, secret, creds["access_key"], creds["secret_key"], cmap, host, port, node_configs, gw_path, node_listen
    )
