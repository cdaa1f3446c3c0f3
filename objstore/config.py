"""Typed configuration of node and gateway processes: one TOML file each, secrets from the environment."""

from __future__ import annotations

import ipaddress
import os
import tomllib
from dataclasses import MISSING, dataclass, field, fields
from pathlib import Path
from typing import Any


MAX_PAUSE = 24 * 3600.0
"""The longest an operator may pause a node's background work at once (`objstore pause`): repair restores
no redundancy meanwhile, so a forgotten pause must run out by itself."""


class ConfigError(ValueError):
    """A configuration that cannot be used; the message names the bad field."""


@dataclass
class User:
    """An S3 user: access key, secret key, and whether it may use the admin endpoints."""

    access_key: str  # the AWS access key id
    secret_key: str  # the AWS secret access key
    name: str = ""  # display name (defaults to the access key)
    admin: bool = False  # may read the dashboard and admin API


@dataclass
class NodeConfig:
    """One storage node."""

    id: str  # node id, as in the cluster map
    listen: str  # host:port of the node RPC server
    data_dir: str  # where shards and records live
    secret: str  # cluster secret for the node RPC (env OBJSTORE_SECRET overrides)
    map: str = ""  # path of the cluster map JSON to start from (optional if seeds are given)
    seeds: list[str] = field(default_factory=list)  # host:port of peers to pull the newest map from
    fsync: bool = True  # fsync shard files, their directory and SQLite commits (never turn off in production)
    down_after: float = 60.0  # seconds without a heartbeat before a peer counts as down
    heartbeat_interval: float = 1.0  # seconds between pings to each peer
    repair_interval: float = 30.0  # seconds between anti-entropy passes over the partitions this node leads
    repair_concurrency: int = 2  # objects rebuilt at once by this node's repair loop
    repair_bandwidth_mb: float = 50.0  # MB/s this node's repair may read and write
    scrub_rate_mb: float = 20.0  # MB/s this node's scrub re-reads its shards at
    scrub_interval: float = 3600.0  # seconds between the starts of two scrub passes
    gc_grace: float = 600.0  # seconds before leftovers of a failed or superseded write are removed
    pending_grace: float = 86400.0  # seconds before a shard no record names (an upload never committed) is removed
    source_address: str = ""  # local address outgoing node RPC connections are bound to ("": the kernel picks)
    metrics: bool = True  # serve /metrics in Prometheus format
    log_level: str = "info"  # debug, info, warning or error


@dataclass
class GatewayConfig:
    """One S3 gateway."""

    listen: str  # host:port of the S3 endpoint
    secret: str  # cluster secret for the node RPC (env OBJSTORE_SECRET overrides)
    map: str = ""  # path of the cluster map JSON (optional if seeds are given)
    seeds: list[str] = field(default_factory=list)  # host:port of nodes to pull the newest map from
    region: str = "us-east-1"  # the region the gateway answers to in SigV4 and GetBucketLocation
    users: list[User] = field(default_factory=list)  # S3 users (env OBJSTORE_ACCESS_KEY/OBJSTORE_SECRET_KEY adds one admin)
    node_timeout: float = 10.0  # seconds before a node request counts as failed
    write_buffer_mb: float = 64.0  # MB (10^6 bytes) of bodies and shards the writes in flight may buffer; more wait
    write_wait: float = 5.0  # seconds a write may queue for its share of write_buffer_mb before 503 SlowDown
    read_buffer_mb: float = 64.0  # MB (10^6 bytes) of shard blocks and payload the GETs in flight may buffer; more wait
    read_wait: float = 5.0  # seconds a GET may queue for its share of read_buffer_mb before 503 SlowDown
    log_level: str = "info"  # debug, info, warning or error
    # DNS names that address buckets virtual-hosted style (Host: <bucket>.<domain>); *.localhost resolves to loopback
    domains: list[str] = field(default_factory=lambda: ["localhost"])


def _coerce(cls: type, raw: dict[str, Any], where: str) -> Any:
    known = {f.name: f for f in fields(cls)}
    for name in raw:
        if name not in known:
            raise ConfigError(f"{where}: unknown field {name!r}")
    values: dict[str, Any] = {}
    for name, f in known.items():
        if name not in raw:
            continue
        v = raw[name]
        typ = f.type if isinstance(f.type, str) else f.type.__name__
        try:
            if typ == "str":
                if not isinstance(v, str):
                    raise TypeError
            elif typ == "bool":
                if not isinstance(v, bool):
                    raise TypeError
            elif typ == "int":
                if isinstance(v, bool) or not isinstance(v, int):
                    raise TypeError
            elif typ == "float":
                if isinstance(v, bool) or not isinstance(v, (int, float)):
                    raise TypeError
                v = float(v)
            elif typ == "list[str]":
                if not isinstance(v, list) or not all(isinstance(x, str) for x in v):
                    raise TypeError
            elif typ == "list[User]":
                if not isinstance(v, list):
                    raise TypeError
                v = [_coerce(User, u, f"{where}.users[{i}]") for i, u in enumerate(v)]
        except TypeError:
            raise ConfigError(f"{where}: field {name!r} must be {typ}, got {type(v).__name__}") from None
        values[name] = v
    for name, f in known.items():
        if name not in values and f.default is MISSING and f.default_factory is MISSING:
            raise ConfigError(f"{where}: missing required field {name!r}")
    return cls(**values)


def _read_toml(path: str | os.PathLike[str]) -> dict[str, Any]:
    try:
        with open(path, "rb") as f:
            return tomllib.load(f)
    except FileNotFoundError:
        raise ConfigError(f"config file {path} does not exist") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"config file {path} is not valid TOML: {e}") from None


def _validate_listen(value: str, where: str) -> None:
    host, _, port = value.rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ConfigError(f"{where}: field 'listen' must be host:port, got {value!r}")


def node_config_from_dict(raw: dict[str, Any], where: str = "node") -> NodeConfig:
    raw = dict(raw)
    if os.environ.get("OBJSTORE_SECRET"):
        raw["secret"] = os.environ["OBJSTORE_SECRET"]
    cfg: NodeConfig = _coerce(NodeConfig, raw, where)
    _validate_listen(cfg.listen, where)
    if not cfg.secret:
        raise ConfigError(f"{where}: field 'secret' must not be empty (or set OBJSTORE_SECRET)")
    if not cfg.map and not cfg.seeds:
        raise ConfigError(f"{where}: set field 'map' or 'seeds'")
    for name in ("down_after", "heartbeat_interval", "repair_interval", "repair_bandwidth_mb", "scrub_rate_mb",
                 "pending_grace"):
        if getattr(cfg, name) <= 0:
            raise ConfigError(f"{where}: field {name!r} must be > 0")
    if cfg.repair_concurrency < 1:
        raise ConfigError(f"{where}: field 'repair_concurrency' must be >= 1")
    if cfg.source_address:
        try:
            ipaddress.ip_address(cfg.source_address)
        except ValueError:
            raise ConfigError(f"{where}: field 'source_address' must be an IP address, "
                              f"got {cfg.source_address!r}") from None
    return cfg


def gateway_config_from_dict(raw: dict[str, Any], where: str = "gateway") -> GatewayConfig:
    raw = dict(raw)
    if os.environ.get("OBJSTORE_SECRET"):
        raw["secret"] = os.environ["OBJSTORE_SECRET"]
    cfg: GatewayConfig = _coerce(GatewayConfig, raw, where)
    _validate_listen(cfg.listen, where)
    if not cfg.secret:
        raise ConfigError(f"{where}: field 'secret' must not be empty (or set OBJSTORE_SECRET)")
    if not cfg.map and not cfg.seeds:
        raise ConfigError(f"{where}: set field 'map' or 'seeds'")
    if cfg.write_buffer_mb < 1:
        raise ConfigError(f"{where}: field 'write_buffer_mb' must be >= 1 (one streamed write buffers about 8 MB)")
    if cfg.write_wait < 0:
        raise ConfigError(f"{where}: field 'write_wait' must be >= 0")
    if cfg.read_buffer_mb < 1:
        raise ConfigError(f"{where}: field 'read_buffer_mb' must be >= 1 (one streamed GET buffers about 8 MB)")
    if cfg.read_wait < 0:
        raise ConfigError(f"{where}: field 'read_wait' must be >= 0")
    ak, sk = os.environ.get("OBJSTORE_ACCESS_KEY"), os.environ.get("OBJSTORE_SECRET_KEY")
    if ak and sk:
        cfg.users = [u for u in cfg.users if u.access_key != ak] + [User(ak, sk, "admin", True)]
    seen = set()
    for u in cfg.users:
        if u.access_key in seen:
            raise ConfigError(f"{where}: duplicate access key {u.access_key!r} in 'users'")
        seen.add(u.access_key)
        u.name = u.name or u.access_key
    return cfg


def load_node_config(path: str | os.PathLike[str]) -> NodeConfig:
    cfg = node_config_from_dict(_read_toml(path), str(path))
    base = Path(path).parent
    if cfg.map and not os.path.isabs(cfg.map):
        cfg.map = str(base / cfg.map)
    return cfg


def load_gateway_config(path: str | os.PathLike[str]) -> GatewayConfig:
    cfg = gateway_config_from_dict(_read_toml(path), str(path))
    base = Path(path).parent
    if cfg.map and not os.path.isabs(cfg.map):
        cfg.map = str(base / cfg.map)
    return cfg
