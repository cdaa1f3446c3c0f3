"""Users in the replicated KV: create/list/delete rules, the gateway's directory (refresh, lookups, negative cache)."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

import pytest
from aiohttp.test_utils import make_mocked_request
from click.testing import CliRunner
from multidict import CIMultiDict

from gateway.sigv4 import access_key_of
from objstore import users as users_module
from objstore.cli import cli
from objstore.client import NodeUnavailable
from objstore.cluster import ClusterMap, ECProfile, NodeInfo
from objstore.config import User
from objstore.kv import KVUnavailable, ReplicatedKV
from objstore.quorum import Background
from objstore.records import KVRecord
from objstore.users import (
    LOOKUP_BURST,
    NEGATIVE_TTL,
    UserDirectory,
    UserError,
    UserStore,
    explain_unavailable,
    is_access_key,
    new_access_key,
    new_secret_key,
)
from objstore.versions import HybridClock, new_version

NODES = [NodeInfo(id=f"n{i}", address=f"127.0.0.1:{9000 + i}", zone=f"z{i}") for i in range(3)]


class FakeKVNodes:
    """The KV part of the node RPC, in memory: one dict per node; nodes can be down or hang."""

    def __init__(self) -> None:
        self.data: dict[str, dict[tuple[str, str], KVRecord]] = {n.id: {} for n in NODES}
        self.down: set[str] = set()
        self.hang = False
        self.reads = 0

    async def _reach(self, node: NodeInfo) -> dict[tuple[str, str], KVRecord]:
        if self.hang:
            await asyncio.sleep(3600)
        if node.id in self.down:
            raise NodeUnavailable(node.id, 0, "connection refused")
        return self.data[node.id]

    async def put_kv(self, node: NodeInfo, rec: KVRecord) -> None:
        store = await self._reach(node)
        old = store.get((rec.ns, rec.name))
        if old is None or rec.version > old.version:
            store[(rec.ns, rec.name)] = rec

    async def get_kv(self, node: NodeInfo, ns: str, name: str) -> KVRecord | None:
        self.reads += 1
        return (await self._reach(node)).get((ns, name))

    async def list_kv(self, node: NodeInfo, ns: str, prefix: str = "") -> list[KVRecord]:
        self.reads += 1
        store = await self._reach(node)
        return [r for (n, _), r in sorted(store.items()) if n == ns and r.name.startswith(prefix)]


@pytest.fixture
async def fake() -> FakeKVNodes:
    return FakeKVNodes()


@pytest.fixture
async def store(fake: FakeKVNodes) -> UserStore:
    return UserStore(ReplicatedKV(fake, Background()), lambda: NODES)  # type: ignore[arg-type]


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


# ---------------------------------------------------------------- the store


def test_generated_keys_are_valid_and_distinct() -> None:
    keys = {new_access_key() for _ in range(50)}
    assert len(keys) == 50 and all(is_access_key(k) and len(k) == 20 and k == k.upper() for k in keys)
    secret = new_secret_key()
    assert len(secret) == 40 and secret != new_secret_key()


async def test_create_stores_on_every_node_and_lists_without_surprises(store: UserStore, fake: FakeKVNodes) -> None:
    alice = await store.create("alice")
    await store.create("bob", access_key="BOBKEY0001", secret_key="bob-secret-1", admin=True)
    assert is_access_key(alice.access_key) and alice.secret_key
    await asyncio.sleep(0)  # the write to the third node finishes in the background
    assert all(("user", alice.access_key) in d for d in fake.data.values())
    assert [u.name for u in await store.list_all()] == ["alice", "bob"]
    got = await store.get("BOBKEY0001")
    assert got is not None and got.secret_key == "bob-secret-1" and got.admin and got.name == "bob"
    assert got.as_user() == User("BOBKEY0001", "bob-secret-1", "bob", True)
    assert await store.get("NOSUCHKEY") is None


async def test_create_refuses_taken_names_and_keys_and_bad_fields(store: UserStore) -> None:
    await store.create("alice", access_key="ALICEKEY01")
    with pytest.raises(UserError, match="already taken"):
        await store.create("other", access_key="ALICEKEY01")
    with pytest.raises(UserError, match="named alice exists"):
        await store.create("alice")
    for name, access_key, secret_key, field in (("bad name", None, None, "user name"),
                                                ("x", "a/b", None, "access key"), ("x", "ab", None, "access key"),
                                                ("x", None, "short", "secret key"),
                                                ("x", None, "has a space in it", "secret key")):
        with pytest.raises(UserError, match=field):
            await store.create(name, access_key, secret_key)
    assert [u.name for u in await store.list_all()] == ["alice"]


async def test_delete_by_key_or_name_and_create_again(store: UserStore, fake: FakeKVNodes) -> None:
    a = await store.create("alice", access_key="ALICEKEY01")
    await store.create("bob", access_key="BOBKEY0001")
    assert (await store.delete("alice")).access_key == "ALICEKEY01"
    assert (await store.delete("BOBKEY0001")).name == "bob"
    assert await store.list_all() == [] and await store.get("ALICEKEY01") is None
    with pytest.raises(UserError, match="no user"):
        await store.delete("alice")
    tomb = fake.data["n0"][("user", "ALICEKEY01")]
    assert tomb.deleted and tomb.value["secret_key"] == ""  # the secret does not outlive the user
    again = await store.create("alice2", access_key="ALICEKEY01", secret_key="another-secret")
    assert again.created_ns >= a.created_ns
    got = await store.get("ALICEKEY01")
    assert got is not None and got.secret_key == "another-secret"


async def test_a_delete_wins_over_a_create_stamped_by_a_clock_ahead(store: UserStore, fake: FakeKVNodes,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(users_module, "CLOCK", HybridClock())  # the process-wide clock must not jump ahead
    far_future = f"{time.time_ns() + 3600 * 10**9:016x}" + "0" * 16
    rec = KVRecord("user", "SKEWED0001", far_future, {"secret_key": "s3cret-key", "name": "skewed", "admin": False,
                                                      "created": 0})
    for d in fake.data.values():
        d[("user", rec.name)] = rec
    await store.delete("skewed")
    assert await store.get("SKEWED0001") is None


async def test_buckets_owned_reads_the_bucket_records(store: UserStore, fake: FakeKVNodes) -> None:
    for name, owner, deleted in (("b1", "AK1", False), ("b2", "AK2", False), ("b3", "AK1", True)):
        rec = KVRecord("bucket", name, new_version(), {"owner": owner}, deleted=deleted)
        for d in fake.data.values():
            d[("bucket", name)] = rec
    assert await store.buckets_owned("AK1") == ["b1"]


async def test_majority_is_needed_and_the_reason_is_one_line(store: UserStore, fake: FakeKVNodes) -> None:
    fake.down = {"n0"}
    await store.create("alice")
    fake.down = {"n0", "n1"}
    with pytest.raises(KVUnavailable) as info:
        await store.list_all()
    line = explain_unavailable(info.value)
    assert "unreachable" in line and "connection refused" in line and "\n" not in line


async def test_an_unreadable_record_hides_no_other_user(store: UserStore, fake: FakeKVNodes) -> None:
    await store.create("alice")
    broken = KVRecord("user", "BROKEN0001", new_version(), {"name": "no secret"})
    for d in fake.data.values():
        d[("user", broken.name)] = broken
    assert [u.name for u in await store.list_all()] == ["alice"]


# ---------------------------------------------------------------- the gateway's directory


async def test_refresh_adds_and_removes_cluster_users_and_config_wins(store: UserStore, fake: FakeKVNodes) -> None:
    configured = User("CONFIGKEY1", "config-secret", "cfg", True)
    d = UserDirectory([configured], store)
    await store.create("alice", access_key="ALICEKEY01", secret_key="alice-secret")
    await store.create("imposter", access_key="CONFIGKEY1", secret_key="other-secret")
    await d.refresh()
    assert d.users["ALICEKEY01"].secret_key == "alice-secret"
    assert d.users["CONFIGKEY1"] is configured and d.cluster_users == 1
    await store.delete("alice")
    await store.delete("imposter")
    await d.refresh()
    assert "ALICEKEY01" not in d.users and d.users["CONFIGKEY1"] is configured
    await store.create("bob", access_key="BOBKEY0001")
    fake.down = {"n0", "n1"}
    with pytest.raises(KVUnavailable):
        await d.refresh()
    assert d.users.keys() == {"CONFIGKEY1"}  # nothing learnt, nothing lost
    fake.down = set()
    await d.refresh()
    assert "BOBKEY0001" in d.users


async def test_an_unknown_key_is_looked_up_once_and_then_known(store: UserStore, fake: FakeKVNodes) -> None:
    d = UserDirectory([], store)
    await d.refresh()
    await store.create("alice", access_key="ALICEKEY01")
    await asyncio.gather(*(d.ensure("ALICEKEY01") for _ in range(20)))
    assert d.lookups == 1 and "ALICEKEY01" in d.users
    await d.ensure("ALICEKEY01")
    await d.ensure(None)
    await d.ensure("not a key!")
    assert d.lookups == 1


async def test_absent_keys_are_remembered_for_a_while(store: UserStore) -> None:
    clock = Clock()
    d = UserDirectory([], store, clock=clock)
    await d.ensure("NOSUCHKEY1")
    await d.ensure("NOSUCHKEY1")
    assert d.lookups == 1 and "NOSUCHKEY1" not in d.users
    await store.create("late", access_key="NOSUCHKEY1")
    clock.now += NEGATIVE_TTL + 0.1
    await d.ensure("NOSUCHKEY1")
    assert d.lookups == 2 and "NOSUCHKEY1" in d.users


async def test_a_flood_of_random_keys_costs_a_bounded_number_of_reads(store: UserStore, fake: FakeKVNodes) -> None:
    clock = Clock()
    d = UserDirectory([], store, clock=clock)
    for i in range(500):
        await d.ensure(f"RANDOMKEY{i:05d}")
    assert d.lookups == LOOKUP_BURST
    clock.now += 1.0
    for i in range(500, 1000):
        await d.ensure(f"RANDOMKEY{i:05d}")
    assert d.lookups == LOOKUP_BURST + int(users_module.LOOKUP_RATE)


async def test_the_negative_cache_is_bounded(store: UserStore, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(users_module, "NEGATIVE_MAX", 5)
    monkeypatch.setattr(users_module, "LOOKUP_BURST", 100)
    d = UserDirectory([], store, clock=Clock())
    for i in range(12):
        await d.ensure(f"RANDOMKEY{i:05d}")
    assert len(d._absent) <= 5 and "RANDOMKEY00011" in d._absent


async def test_a_hung_cluster_delays_an_unknown_key_only_briefly(store: UserStore, fake: FakeKVNodes,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(users_module, "LOOKUP_TIMEOUT", 0.05)
    d = UserDirectory([], store)
    fake.hang = True
    async with asyncio.timeout(2):
        await d.ensure("HUNGKEY001")
    assert "HUNGKEY001" not in d.users
    await d.close()


# ---------------------------------------------------------------- what a request claims


@pytest.mark.parametrize("target, headers, expected", [
    ("/b/k", {"Authorization": "AWS4-HMAC-SHA256 Credential=AKID/20260101/us-east-1/s3/aws4_request, "
                               "SignedHeaders=host, Signature=00"}, "AKID"),
    ("/b/k", {"Authorization": "AWS4-HMAC-SHA256 SignedHeaders=host,Credential=A/B/20260101/r/s3/aws4_request"},
     "A/B"),
    ("/b/k?X-Amz-Credential=AKQ%2F20260101%2Fus-east-1%2Fs3%2Faws4_request&X-Amz-Signature=1", {}, "AKQ"),
    ("/b/k?AWSAccessKeyId=AKV2&Signature=x&Expires=1", {}, "AKV2"),
    ("/b/k", {"Authorization": "AWS AKID:sig"}, None),
    ("/b/k", {"Authorization": "AWS4-HMAC-SHA256 Signature=00"}, None),
    ("/b/k", {}, None),
])
def test_access_key_of_reads_the_claimed_key(target: str, headers: dict[str, str], expected: str | None) -> None:
    assert access_key_of(make_mocked_request("GET", target, headers=CIMultiDict(headers))) == expected


# ---------------------------------------------------------------- the command line


def unreachable_cluster(tmp_path: Path) -> Path:
    """A cluster.json whose nodes listen nowhere (ports of the discard range on loopback, nothing bound)."""
    cmap = ClusterMap(epoch=1, ec=ECProfile(k=2, m=1), nodes=tuple(
        NodeInfo(id=f"n{i}", address=f"127.0.0.1:{9 + i}", zone=f"z{i}") for i in range(3)))
    cmap.save(tmp_path / "map.json")
    (tmp_path / "secret").write_text("0" * 64)
    info = {"endpoint": "http://127.0.0.1:9", "map": "map.json", "secret_file": str(tmp_path / "secret")}
    path = tmp_path / "cluster.json"
    path.write_text(json.dumps(info))
    return path


@pytest.mark.parametrize("args, message", [
    (["user", "list"], "user records are unreachable"),
    (["user", "create", "alice"], "user records are unreachable"),
    (["user", "delete", "alice"], "user records are unreachable"),
    (["user", "create", "bad name"], "user name 'bad name'"),
    (["user", "create", "alice", "--secret-key", "short"], "secret key"),
])
def test_cli_errors_are_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, args: list[str],
                                 message: str) -> None:
    monkeypatch.delenv("OBJSTORE_SECRET", raising=False)
    path = unreachable_cluster(tmp_path)
    result = CliRunner().invoke(cli, [*args, "--cluster", str(path)], prog_name="objstore")
    assert result.exit_code == 1, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: ") and message in lines[0], result.output
    assert "Traceback" not in result.output


def test_cli_refuses_a_missing_cluster_file(tmp_path: Path) -> None:
    result = CliRunner().invoke(cli, ["user", "list", "--cluster", str(tmp_path / "nope.json")], prog_name="objstore")
    assert result.exit_code == 2 and "does not exist" in result.output
