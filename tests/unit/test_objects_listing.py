"""Cluster-wide listing on six in-process nodes: which nodes are asked, the node left in reserve and when it is
called in, page sizes, and keys with many versions."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from objstore.cluster import ClusterMap, ECProfile, NodeInfo
from objstore.listing import MergedListing, listing_nodes, node_page
from objstore.view import ClusterView
from tests.unit.objects_harness import BUCKET, MiniCluster, payload, put, start_cluster


@pytest.fixture
async def cluster(tmp_path: Path) -> AsyncIterator[MiniCluster]:
    c = await start_cluster(tmp_path)
    yield c
    await c.close()


async def listed(c: MiniCluster, prefix: str = "", page: int = 1000, versions: bool = True
                 ) -> dict[str, list[str]]:
    nodes, reserve = listing_nodes(c.view, c.ring)
    merged = MergedListing(c.client, nodes, BUCKET, c.ring.ec.k, prefix=prefix, versions=versions, page=page,
                           reserve=reserve)
    return {key: [v.version for v in versions] async for key, versions in merged.keys()}


def list_calls(c: MiniCluster) -> dict[str, int]:
    return {node: n for (node, call), n in c.client.by_node.items() if call == "GET /list"}


def test_every_node_but_one_is_asked_and_one_kept_in_reserve() -> None:
    nodes = tuple(NodeInfo(f"n{i}", f"127.0.0.1:{i}", f"z{i % 3}") for i in range(1, 7))
    view = ClusterView(ClusterMap(epoch=1, ec=ECProfile(4, 2, 4096), nodes=nodes))
    ring = view.ring(None)
    asked, reserve = listing_nodes(view, ring)
    assert len(asked) == 5 and len(reserve) == 1 and set(asked) | set(reserve) == set(nodes)
    for _ in range(3):
        view.record_failure(nodes[2])
    asked, reserve = listing_nodes(view, ring)
    assert reserve == [nodes[2]] and len(asked) == 5  # the node out of rotation is the one left out
    for _ in range(3):
        view.record_failure(nodes[4])
    asked, reserve = listing_nodes(view, ring)
    assert reserve == [nodes[2], nodes[4]] and len(asked) == 4
    small = ClusterView(ClusterMap(epoch=1, ec=ECProfile(4, 2, 4096), nodes=nodes[:4]))
    assert listing_nodes(small, small.ring(None)) == (list(nodes[:4]), [])  # a node holds several shards


async def test_a_healthy_listing_never_calls_the_reserve(cluster: MiniCluster) -> None:
    for i in range(30):
        await put(cluster, f"a/{i:02d}", payload(10, i))
    await put(cluster, "b/0", payload(10))
    cluster.client.calls.clear()
    cluster.client.by_node.clear()
    got = await listed(cluster, prefix="a/", page=7)
    assert list(got) == [f"a/{i:02d}" for i in range(30)]
    _, reserve = listing_nodes(cluster.view, cluster.ring)
    calls = list_calls(cluster)
    assert len(calls) == 5 and reserve[0].id not in calls


async def test_a_version_short_of_k_shards_calls_the_reserve_in(cluster: MiniCluster) -> None:
    for i in range(10):
        await put(cluster, f"d/{i}", payload(10, i))
    _, [spare] = listing_nodes(cluster.view, cluster.ring)
    # d/5 lost two shards, not the reserve's: the nodes asked show k-1 of them, the reserve the k-th
    holders = [n for n in cluster.nodes if n.id != spare.id]
    for n in holders[:2]:
        version = cluster.store(n.id).get_record(BUCKET, "d/5")[0].version
        cluster.store(n.id).delete_record(BUCKET, "d/5", version)
    cluster.client.by_node.clear()
    got = await listed(cluster, prefix="d/", page=3)
    assert list(got) == [f"d/{i}" for i in range(10)]
    assert list_calls(cluster).get(spare.id, 0) >= 1
    # and a version left on fewer than k nodes in all is a failed write: never listed
    cluster.store(spare.id).delete_record(BUCKET, "d/5", version)
    assert "d/5" not in await listed(cluster, prefix="d/", page=3)


async def test_a_key_with_more_versions_than_a_page_comes_whole(cluster: MiniCluster) -> None:
    versions = [(await put(cluster, "many", payload(10, i))).record.version for i in range(6)]
    await put(cluster, "next", payload(10))
    got = await listed(cluster, page=4)
    assert got["many"] == sorted(versions, reverse=True) and "next" in got


async def test_the_node_listing_ends_at_the_prefix(cluster: MiniCluster) -> None:
    for key in ("p", "p/1", "p/2", "p0", "q"):
        await put(cluster, key, payload(10))
    store = cluster.store(cluster.nodes[0].id)
    assert [r[0] for r in store.list_rows(BUCKET, "p/", "", 100, True)] == ["p/1", "p/2"]
    assert [r[0] for r in store.list_rows(BUCKET, "p", "p/1", 100, True)] == ["p/2", "p0"]
    assert [e.key for e in store.list_entries(BUCKET, "", "", 2, False)] == ["p", "p/1"]
    assert all(e.deleted is False for e in store.list_entries(BUCKET, "", "", 10, True))


def test_the_successor_of_a_prefix_bounds_exactly_its_keys() -> None:
    from node.store import _successor

    assert _successor("") is None and _successor("\U0010ffff\U0010ffff") is None
    assert _successor("ab") == "ac" and _successor("a\U0010ffff") == "b" and _successor("\ud7ff") == "\ue000"
    for prefix in ("a", "a\U0010ffff", "x/\ud7ff"):
        end = _successor(prefix)
        assert end is not None
        for key in (prefix, prefix + "\U0010ffff", prefix + "\U0010ffffz", prefix + "\x00"):
            assert key.encode() < end.encode()
        assert not end.startswith(prefix)


async def test_an_s3_page_takes_one_call_to_each_node(cluster: MiniCluster) -> None:
    """The keys of a page and the one telling it is truncated come in one call a node (they took two)."""
    for i in range(30):
        await put(cluster, f"k/{i:02d}", payload(10, i))
    for page, calls in ((node_page(8), 1), (8, 2)):  # 7 keys and one more, at node_page and at one entry less
        cluster.client.by_node.clear()
        nodes, reserve = listing_nodes(cluster.view, cluster.ring)
        merged = MergedListing(cluster.client, nodes, BUCKET, cluster.ring.ec.k, prefix="k/", page=page,
                               reserve=reserve)
        keys = []
        async for key, _ in merged.keys():
            keys.append(key)
            if len(keys) == 8:
                break
        assert keys == [f"k/{i:02d}" for i in range(8)]
        assert sorted(list_calls(cluster).values()) == [calls] * len(nodes)
