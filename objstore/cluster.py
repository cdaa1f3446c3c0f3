"""The cluster map: epoch, erasure-coding profile, nodes and placement pools."""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

NodeState = Literal["active", "draining", "removed"]
NODE_STATES: tuple[str, ...] = ("active", "draining", "removed")

DEFAULT_PARTITION_BITS = 12
DEFAULT_BLOCK_SIZE = 256 * 1024


class ClusterMapError(ValueError):
    """A cluster map that cannot be used, with the offending field named."""


@dataclass(frozen=True)
class ECProfile:
    """How an object is cut: k data blocks and m parity blocks per stripe of k*block_size bytes."""

    k: int = 4
    m: int = 2
    block_size: int = DEFAULT_BLOCK_SIZE

    def __post_init__(self) -> None:
        if not 1 <= self.k <= 128:
            raise ClusterMapError(f"ec.k must be in 1..128, got {self.k}")
        if not 0 <= self.m <= 128 or self.k + self.m > 256:
            raise ClusterMapError(f"ec.m must be in 0..128 with k+m <= 256, got {self.m}")
        if self.block_size < 512 or self.block_size % 64:
            raise ClusterMapError(f"ec.block_size must be >= 512 and a multiple of 64, got {self.block_size}")

    @property
    def width(self) -> int:
        """Shards per object: k + m."""
        return self.k + self.m

    @property
    def stripe_size(self) -> int:
        """Payload bytes in one full stripe."""
        return self.k * self.block_size

    def to_dict(self) -> dict[str, int]:
        return {"k": self.k, "m": self.m, "block_size": self.block_size}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ECProfile:
        return cls(k=int(d["k"]), m=int(d["m"]), block_size=int(d.get("block_size", DEFAULT_BLOCK_SIZE)))


@dataclass(frozen=True)
class NodeInfo:
    """One storage node as the map knows it."""

    id: str
    address: str  # "host:port" of the node RPC server
    zone: str
    labels: dict[str, str] = field(default_factory=dict)
    weight: float = 1.0
    state: NodeState = "active"

    def __post_init__(self) -> None:
        if not self.id:
            raise ClusterMapError("node.id must not be empty")
        if self.weight <= 0 and self.state == "active":
            raise ClusterMapError(f"node {self.id}: weight must be > 0, got {self.weight}")
        if self.state not in NODE_STATES:
            raise ClusterMapError(f"node {self.id}: state must be one of {NODE_STATES}, got {self.state!r}")

    def __hash__(self) -> int:
        return hash(self.id)

    @property
    def url(self) -> str:
        return f"http://{self.address}"

    def matches(self, selector: dict[str, str]) -> bool:
        """True if every label of the selector is set to the same value on this node."""
        return all(self.labels.get(k) == v for k, v in selector.items())

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "address": self.address,
            "zone": self.zone,
            "labels": dict(self.labels),
            "weight": self.weight,
            "state": self.state,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> NodeInfo:
        try:
            return cls(
                id=str(d["id"]),
                address=str(d["address"]),
                zone=str(d.get("zone", "default")),
                labels={str(k): str(v) for k, v in (d.get("labels") or {}).items()},
                weight=float(d.get("weight", 1.0)),
                state=d.get("state", "active"),
            )
        except KeyError as e:
            raise ClusterMapError(f"node entry is missing field {e.args[0]!r}") from None


@dataclass(frozen=True)
class Pool:
    """A placement pool: the nodes whose labels match `selector`, with their own EC profile."""

    name: str
    selector: dict[str, str]
    ec: ECProfile

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "selector": dict(self.selector), "ec": self.ec.to_dict()}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Pool:
        return cls(name=str(d["name"]), selector=dict(d.get("selector") or {}), ec=ECProfile.from_dict(d["ec"]))


DEFAULT_POOL = "default"
EXIT_RESTART = 75
"""Exit code of a node that stopped itself to be started again (its data dir was wiped under it): `objstore dev`
restarts such a node at once, systemd (Restart=on-failure) and Kubernetes do anyway."""


@dataclass(frozen=True)
class ClusterMap:
    """The whole placement input. The ring is a pure function of this document."""

    epoch: int
    ec: ECProfile
    nodes: tuple[NodeInfo, ...]
    partition_bits: int = DEFAULT_PARTITION_BITS
    pools: tuple[Pool, ...] = ()

    def __post_init__(self) -> None:
        ids = [n.id for n in self.nodes]
        if len(ids) != len(set(ids)):
            raise ClusterMapError("node ids must be unique")
        if not 1 <= self.partition_bits <= 20:
            raise ClusterMapError(f"partition_bits must be in 1..20, got {self.partition_bits}")
        names = [p.name for p in self.pools]
        if len(names) != len(set(names)) or DEFAULT_POOL in names:
            raise ClusterMapError("pool names must be unique and not 'default'")

    def node(self, node_id: str) -> NodeInfo:
        for n in self.nodes:
            if n.id == node_id:
                return n
        raise KeyError(node_id)

    def pool(self, name: str | None) -> Pool:
        """The pool by name; None or 'default' is every node with the map's EC profile."""
        if name is None or name == DEFAULT_POOL:
            return Pool(DEFAULT_POOL, {}, self.ec)
        for p in self.pools:
            if p.name == name:
                return p
        raise ClusterMapError(f"unknown pool {name!r}")

    def pool_nodes(self, name: str | None) -> tuple[NodeInfo, ...]:
        """Nodes of a pool (any state); a pool never names a node outside its selector."""
        sel = self.pool(name).selector
        return tuple(n for n in self.nodes if n.matches(sel))

    def with_changes(self, **changes: Any) -> ClusterMap:
        """A copy with fields replaced and the epoch bumped."""
        return replace(self, epoch=self.epoch + 1, **changes)

    def to_dict(self) -> dict[str, Any]:
        return {
            "epoch": self.epoch,
            "ec": self.ec.to_dict(),
            "partition_bits": self.partition_bits,
            "nodes": [n.to_dict() for n in self.nodes],
            "pools": [p.to_dict() for p in self.pools],
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ClusterMap:
        try:
            return cls(
                epoch=int(d["epoch"]),
                ec=ECProfile.from_dict(d["ec"]),
                nodes=tuple(NodeInfo.from_dict(n) for n in d["nodes"]),
                partition_bits=int(d.get("partition_bits", DEFAULT_PARTITION_BITS)),
                pools=tuple(Pool.from_dict(p) for p in d.get("pools") or ()),
            )
        except KeyError as e:
            raise ClusterMapError(f"cluster map is missing field {e.args[0]!r}") from None

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> ClusterMap:
        with open(path, encoding="utf-8") as f:
            return cls.from_dict(json.load(f))

    def save(self, path: str | os.PathLike[str]) -> None:
        write_file_atomic(Path(path), self.to_json().encode())


def write_file_atomic(path: Path, data: bytes, fsync: bool = True) -> None:
    """Write a small file the one safe way: temp name, write, fsync, rename, fsync the directory."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            if fsync:
                f.flush()
                os.fsync(f.fileno())
        os.replace(tmp, path)
        if fsync:
            dfd = os.open(path.parent, os.O_RDONLY)
            try:
                os.fsync(dfd)
            finally:
                os.close(dfd)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
