"""Shared fixtures: real dev clusters for integration and chaos tests, markers by folder."""

from __future__ import annotations

from collections.abc import Generator, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.cluster import DevCluster, DevClusterFactory, cluster_factory


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Tests under tests/integration and tests/chaos carry their marker, so `-m "not integration"` works."""
    root = Path(__file__).parent
    for item in items:
        parts = Path(str(item.path)).relative_to(root).parts if root in Path(str(item.path)).parents else ()
        if parts and parts[0] == "integration":
            item.add_marker(pytest.mark.integration)
        elif parts and parts[0] == "chaos":
            item.add_marker(pytest.mark.integration)
            item.add_marker(pytest.mark.chaos)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Generator[None, Any, None]:
    """When a test that used a dev cluster fails, attach the tail of every process log to its report."""
    outcome = yield
    report = outcome.get_result()
    if not report.failed or call.when == "teardown":
        return
    clusters: list[DevCluster] = []
    for value in getattr(item, "funcargs", {}).values():
        if isinstance(value, DevCluster):
            clusters.append(value)
        elif isinstance(value, DevClusterFactory):
            clusters.extend(value.started)
    for i, cluster in enumerate(clusters):
        names = ["dev", *(n.id for n in cluster.nodes)] + (["gateway"] if cluster.gateway else [])
        for name in names:
            report.sections.append((f"cluster {i} {name} log (tail)", cluster.log_tail(name, lines=15)))


@pytest.fixture
def dev_cluster_factory(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DevClusterFactory]:
    """`dev_cluster_factory(nodes=, zones=, k=, m=, down_after=, fsync=, block_size=, node_settings=, data_dir=)`
    starts an `objstore dev` cluster for this test; every cluster it started is stopped at teardown."""
    with cluster_factory(lambda: tmp_path_factory.mktemp("dev")) as factory:
        yield factory


@pytest.fixture(scope="module")
def dev_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DevCluster]:
    """One 6-node, 3-zone, 4+2 cluster shared by the tests of a module (leave it as you found it)."""
    with cluster_factory(lambda: tmp_path_factory.mktemp("dev")) as factory:
        yield factory()
