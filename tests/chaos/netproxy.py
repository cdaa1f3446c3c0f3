"""A loopback network that can be partitioned without privileges: one TCP proxy in front of every node.

Every node listens on a loopback address of its own (127.0.0.11, .12, ...) and binds its outgoing
connections to it (`source_address`); the map advertises 127.0.0.1:<port>, where a proxy forwards to the
node. Cutting a node off then stops its traffic both ways:

- inbound: the cut node's proxy stops forwarding everything, from the gateway and from the other nodes;
- outbound: the other nodes' proxies stop forwarding connections whose source is the cut node's address.

Two ways to cut, as real partitions look from the outside:

- `blackhole`: packets vanish. New connections are accepted and never answered, connections already
  open stop moving (nothing is read any more, so a sender blocks once the socket buffers are full).
- `refuse`: the cut node's port refuses connections and every open connection to or from it is reset;
  the other proxies reset connections from it (a firewall rejecting with TCP resets).

Healing resets the connections held during the cut (as TCP gives up on a long partition) and forwards
everything again. The proxies run on an event loop in a thread of their own; every control call waits
until the change is in effect.
"""

from __future__ import annotations

import asyncio
import socket
import threading
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any, Literal, Self

from tests.cluster import LOOPBACK, DevCluster, free_port_range

Mode = Literal["blackhole", "refuse"]
CHUNK = 64 * 1024
CONTROL_TIMEOUT = 10.0  # seconds a control call may take before the test fails


def node_address(index: int) -> str:
    """The loopback address of the node at 1-based `index` (127.0.0.11 for the first)."""
    if not 1 <= index <= 200:
        raise ValueError(f"node index {index} outside 1..200")
    return f"127.0.0.{10 + index}"


def free_port(host: str) -> int:
    """A port free on `host` now (the kernel's pick)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


@dataclass(eq=False)
class _Link:
    """One proxied connection: the client side, the node side (None while held), and where it came from."""

    source: str
    client: asyncio.StreamWriter
    upstream: asyncio.StreamWriter | None = None
    tasks: list[asyncio.Task[None]] = field(default_factory=list)

    def abort(self) -> None:
        for w in (self.client, self.upstream):
            if w is not None and not w.is_closing():
                w.transport.abort()
        for t in self.tasks:
            t.cancel()


class _Proxy:
    """The proxy in front of one node: listens on the advertised address, forwards to the node's own."""

    def __init__(self, net: LoopbackNet, node_id: str, listen: tuple[str, int], target: tuple[str, int]) -> None:
        self.net, self.node_id, self.listen, self.target = net, node_id, listen, target
        self.server: asyncio.Server | None = None
        self.links: set[_Link] = set()

    async def start(self) -> None:
        self.server = await asyncio.start_server(self._accept, *self.listen, reuse_address=True, backlog=128)

    async def stop(self) -> None:
        """Stop listening (the port refuses connections) and reset every connection through this proxy."""
        server, self.server = self.server, None
        if server is not None:
            server.close()
        for link in list(self.links):
            link.abort()
        if server is not None:
            await server.wait_closed()

    def blocked(self, source: str) -> Mode | None:
        """How a connection from `source` to this node is treated now: None forwards it."""
        if self.node_id in self.net.cut:
            return self.net.cut[self.node_id]
        for cut_id, mode in self.net.cut.items():
            if self.net.sources.get(cut_id) == source:
                return mode
        return None

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        source = str(writer.get_extra_info("peername")[0])
        link = _Link(source, writer)
        self.links.add(link)
        try:
            mode = self.blocked(source)
            if mode == "refuse":
                return  # reset in `finally`
            if mode == "blackhole":
                await self.net.healed.wait()  # held unanswered; healing resets it
                return
            try:
                up_reader, link.upstream = await asyncio.open_connection(*self.target)
            except OSError:
                return  # the node is down: the client sees its connection reset
            link.tasks = [asyncio.ensure_future(self._pipe(link, reader, link.upstream)),
                          asyncio.ensure_future(self._pipe(link, up_reader, writer))]
            await asyncio.gather(*link.tasks, return_exceptions=True)
        finally:
            self.links.discard(link)
            link.abort()

    async def _pipe(self, link: _Link, src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
        try:
            while True:
                await self._gate(link)
                data = await src.read(CHUNK)
                await self._gate(link)  # bytes read just before a cut are held like the rest
                if not data:
                    if dst.can_write_eof():
                        dst.write_eof()
                    return
                dst.write(data)
                await dst.drain()
        except (ConnectionError, OSError):
            link.abort()

    async def _gate(self, link: _Link) -> None:
        """Return while the link may move; block (reading nothing) while it is blackholed."""
        if self.blocked(link.source) == "blackhole":
            await self.net.healed.wait()
            raise ConnectionResetError("partition healed: held connection reset")


class LoopbackNet:
    """Proxies for a set of nodes, and the partitions among them. Use as a context manager (stops by itself)."""

    def __init__(self) -> None:
        self.cut: dict[str, Mode] = {}
        self.sources: dict[str, str] = {}  # node id -> the source address of its outgoing connections
        self._proxies: dict[str, _Proxy] = {}
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="loopback-net", daemon=True)
        self._thread.start()
        self.healed = self._call(self._new_event())

    @staticmethod
    async def _new_event() -> asyncio.Event:
        e = asyncio.Event()
        e.set()
        return e

    def _call(self, coro: Coroutine[Any, Any, Any]) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(CONTROL_TIMEOUT)

    def add_node(self, node_id: str, advertised: str, listen: str) -> None:
        """Forward `advertised` (host:port the map names) to `listen`, whose host is the node's source address."""
        ahost, _, aport = advertised.rpartition(":")
        lhost, _, lport = listen.rpartition(":")
        proxy = _Proxy(self, node_id, (ahost, int(aport)), (lhost, int(lport)))
        self._call(proxy.start())
        self._proxies[node_id] = proxy
        self.sources[node_id] = lhost

    def cut_off(self, node_id: str, mode: Mode = "blackhole") -> None:
        """Partition `node_id` from everything else (the other nodes, the gateway, the test's own clients)."""
        if node_id not in self._proxies:
            raise KeyError(node_id)

        async def apply() -> None:
            self.healed.clear()
            self.cut[node_id] = mode
            if mode == "refuse":
                await self._proxies[node_id].stop()
                for proxy in self._proxies.values():
                    for link in list(proxy.links):
                        if proxy.blocked(link.source) == "refuse":
                            link.abort()
            # blackholed links stop at their next read or write: their gate now blocks

        self._call(apply())

    def heal(self) -> None:
        """End every partition: held connections are reset, refused ports listen again."""

        async def apply() -> None:
            refused = [nid for nid, mode in self.cut.items() if mode == "refuse"]
            self.cut.clear()
            self.healed.set()
            for nid in refused:
                await self._proxies[nid].start()

        self._call(apply())

    def close(self) -> None:
        async def shutdown() -> None:
            self.cut.clear()
            self.healed.set()
            for proxy in self._proxies.values():
                await proxy.stop()
            # connection handlers still unwinding finish here, not as tasks destroyed with the loop
            rest = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for t in rest:
                t.cancel()
            await asyncio.gather(*rest, return_exceptions=True)

        try:
            self._call(shutdown())
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(CONTROL_TIMEOUT)
            self._loop.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def start_behind_proxies(net: LoopbackNet, factory: Callable[..., DevCluster], nodes: int = 6,
                         **opts: Any) -> DevCluster:
    """Start a dev cluster whose node `i` listens on 127.0.0.(10+i) behind a proxy of `net` at its map address.

    `objstore dev` names its nodes n1..nN and puts them on the ports after the S3 port: the proxies hold
    those ports from the start, so no process ever reaches a node but through them.
    """
    base = free_port_range(nodes + 1)
    listen = {}
    for i in range(1, nodes + 1):
        host = node_address(i)
        listen[f"n{i}"] = f"{host}:{free_port(host)}"
        net.add_node(f"n{i}", f"{LOOPBACK}:{base + i}", listen[f"n{i}"])
    return factory(nodes=nodes, port=base, node_listen=listen, **opts)
