"""Fixtures of the chaos tests: a loopback network with a proxy in front of every node, torn down after the test."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest

from tests.chaos.netproxy import LoopbackNet, start_behind_proxies
from tests.cluster import DevCluster, DevClusterFactory


@pytest.fixture
def proxied_cluster(dev_cluster_factory: DevClusterFactory) -> Iterator[Callable[..., tuple[DevCluster, LoopbackNet]]]:
    """`proxied_cluster(**opts)` -> (cluster, net): a dev cluster whose nodes `net` can cut off (see netproxy)."""
    nets: list[LoopbackNet] = []

    def start(**opts: Any) -> tuple[DevCluster, LoopbackNet]:
        net = LoopbackNet()
        nets.append(net)
        return start_behind_proxies(net, dev_cluster_factory, **opts), net

    yield start
    for net in nets:
        net.close()
