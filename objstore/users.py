"""S3 users kept in the cluster's replicated KV: their records, the gateway's user directory, `objstore user`."""

from __future__ import annotations

import asyncio
import json
import logging
import re
import secrets
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, TypeVar

import click
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from objstore.cluster import NodeInfo
from objstore.config import User
from objstore.kv import BUCKETS, USERS, KVUnavailable, ReplicatedKV
from objstore.quorum import QuorumError
from objstore.records import KVRecord
from objstore.versions import CLOCK, new_version, version_time_ns

log = logging.getLogger("objstore.users")

NS = USERS  # a record's name is the access key
BUCKET_NS = BUCKETS  # read here only to warn on delete

REFRESH_INTERVAL = 2.0
"""Seconds between two full reads of the cluster's users by a gateway: a deleted key stops working within it."""
LOOKUP_TIMEOUT = 2.0
"""Seconds a request with an unknown access key waits for the cluster to say whether the key exists."""
NEGATIVE_TTL = 5.0
"""Seconds an access key the cluster did not know is answered as unknown without asking again."""
NEGATIVE_MAX = 10_000
"""Unknown access keys remembered at most (a flood of random keys must not grow the gateway's memory)."""
LOOKUP_RATE, LOOKUP_BURST = 10.0, 20
"""Lookups of unknown keys per second, and the burst above it: random keys cannot hammer the KV."""

_ACCESS_KEY = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{2,127}")
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@+-]{0,63}")
_SECRET = re.compile(r"[!-~]{8,128}")  # printable ASCII, no space: it travels in configs and shells


class UserError(ValueError):
    """A user that cannot be created or found as asked; the message says why."""


def new_access_key() -> str:
    """A fresh access key id: 20 upper-case characters, like AWS's (and `objstore dev`'s)."""
    return "OBJ" + secrets.token_hex(9).upper()[:17]


def new_secret_key() -> str:
    """A fresh secret key: 40 URL-safe characters (240 random bits)."""
    return secrets.token_urlsafe(30)


def is_access_key(text: str) -> bool:
    """True if `text` could be an access key: 3-128 letters, digits, '.', '_' or '-', starting alphanumeric."""
    return _ACCESS_KEY.fullmatch(text) is not None


def check_user(name: str, access_key: str, secret_key: str) -> None:
    """UserError naming the first field that cannot be stored as given."""
    if not _NAME.fullmatch(name):
        raise UserError(f"user name {name!r}: 1-64 letters, digits or . _ @ + -, starting with a letter or digit")
    if not is_access_key(access_key):
        raise UserError(f"access key {access_key!r}: 3-128 letters, digits or . _ -, starting with a letter or digit")
    if not _SECRET.fullmatch(secret_key):
        raise UserError("secret key: 8-128 printable ASCII characters without spaces")


@dataclass(frozen=True)
class StoredUser:
    """A user as the cluster keeps it: keys, display name, admin flag, creation time."""

    access_key: str
    secret_key: str
    name: str
    admin: bool
    created_ns: int
    version: str = ""  # of the record it was read from ("" for a user not stored yet)

    @classmethod
    def from_record(cls, rec: KVRecord) -> StoredUser:
        v = rec.value
        return cls(rec.name, str(v["secret_key"]), str(v.get("name") or rec.name), bool(v.get("admin", False)),
                   int(v.get("created", 0)), rec.version)

    def to_record(self, deleted: bool = False) -> KVRecord:
        value: dict[str, Any] = {"secret_key": "" if deleted else self.secret_key, "name": self.name,
                                 "admin": self.admin, "created": self.created_ns}
        return KVRecord(NS, self.access_key, new_version(CLOCK), value, deleted=deleted)

    def as_user(self) -> User:
        return User(self.access_key, self.secret_key, self.name, self.admin)

    def created_iso(self) -> str:
        return datetime.fromtimestamp(self.created_ns / 1e9, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _after(version: str) -> None:
    """Make this process's next version id sort after `version`, whatever its clock says.

    The newest version of a record wins on every node: a delete written from a host whose clock is
    behind the creator's would otherwise lose to the create it means to undo.
    """
    if version:
        CLOCK.observe(version_time_ns(version))


def _live(records: Iterable[KVRecord]) -> list[StoredUser]:
    users = []
    for rec in records:
        if rec.deleted:
            continue
        try:
            users.append(StoredUser.from_record(rec))
        except (KeyError, TypeError, ValueError) as e:  # a damaged record must not hide every other user
            log.warning("user record %s is unreadable: %s", rec.name, e)
    return users


class UserStore:
    """The users of a cluster, on every node of its map: majority writes and reads, so each read sees the last write."""

    def __init__(self, kv: ReplicatedKV, nodes: Callable[[], Sequence[NodeInfo]]) -> None:
        self.kv = kv
        self.nodes = nodes

    async def list_all(self) -> list[StoredUser]:
        """Every live user, by name."""
        return sorted(_live(await self.kv.list(self.nodes(), NS)), key=lambda u: (u.name, u.access_key))

    async def get(self, access_key: str) -> StoredUser | None:
        rec = await self.kv.get(self.nodes(), NS, access_key)
        return None if rec is None else next(iter(_live([rec])), None)

    async def create(self, name: str, access_key: str | None = None, secret_key: str | None = None,
                     admin: bool = False) -> StoredUser:
        """Store a new user; keys not given are generated. Names and access keys are unique among live users."""
        user = StoredUser(access_key or new_access_key(), secret_key or new_secret_key(), name, admin, time.time_ns())
        check_user(user.name, user.access_key, user.secret_key)
        for other in await self.list_all():
            if other.access_key == user.access_key:
                raise UserError(f"access key {user.access_key} is already taken (by user {other.name})")
            if other.name == user.name:
                raise UserError(f"a user named {user.name} exists already (access key {other.access_key})")
        earlier = await self.kv.get(self.nodes(), NS, user.access_key)  # a deleted user's tombstone
        if earlier is not None:
            _after(earlier.version)
        await self.kv.put(self.nodes(), user.to_record())
        return user

    async def find(self, key_or_name: str) -> StoredUser:
        """The live user with this access key, else with this name; UserError if there is none."""
        users = await self.list_all()
        for user in users:
            if user.access_key == key_or_name:
                return user
        for user in users:
            if user.name == key_or_name:
                return user
        raise UserError(f"no user with access key or name {key_or_name!r}")

    async def delete(self, key_or_name: str) -> StoredUser:
        """Remove a user (a tombstone that wins over every older write of that access key); returns who it was."""
        user = await self.find(key_or_name)
        _after(user.version)
        await self.kv.put(self.nodes(), user.to_record(deleted=True))
        return user

    async def buckets_owned(self, access_key: str) -> list[str]:
        """Names of the live buckets whose owner is this access key."""
        records = await self.kv.list(self.nodes(), BUCKET_NS)
        return [r.name for r in records if not r.deleted and r.value.get("owner") == access_key]


class UserDirectory:
    """The users one gateway authenticates: those of its config, plus the cluster's, in one dict it keeps fresh.

    `users` is shared with the authenticator and the admin endpoints, and changed in place. Config users
    win over a cluster user with the same access key. `refresh` reads every cluster user (the gateway
    runs it every REFRESH_INTERVAL); `ensure` asks the cluster once about an access key not in `users`,
    so a user created a moment ago works at once. Unknown keys are remembered for NEGATIVE_TTL and
    lookups are rate-limited, so a flood of bad keys costs the KV at most LOOKUP_RATE reads a second.
    When the cluster cannot be read, the last users read keep working.
    """

    def __init__(self, configured: Iterable[User], store: UserStore,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.users: dict[str, User] = {u.access_key: u for u in configured}
        self.store = store
        self.clock = clock
        self._configured = frozenset(self.users)
        self._from_cluster: set[str] = set()
        self._absent: dict[str, float] = {}  # access key -> monotonic time until which it is known absent
        self._lookups: dict[str, asyncio.Task[None]] = {}
        self._tokens = float(LOOKUP_BURST)
        self._tokens_at = clock()
        self.refreshed_at: float | None = None  # clock() of the last successful refresh
        self.lookups = 0  # cluster reads made for unknown keys (for tests and metrics)

    @property
    def cluster_users(self) -> int:
        return len(self._from_cluster)

    def _apply(self, user: StoredUser) -> None:
        if user.access_key in self._configured:
            return
        self.users[user.access_key] = user.as_user()
        self._from_cluster.add(user.access_key)
        self._absent.pop(user.access_key, None)

    async def refresh(self) -> None:
        """Replace the cluster users by what a majority of nodes holds now; KVUnavailable leaves them as they were."""
        fresh = {u.access_key: u for u in await self.store.list_all()}
        for gone in self._from_cluster - fresh.keys():
            self.users.pop(gone, None)
            self._from_cluster.discard(gone)
        for user in fresh.values():
            self._apply(user)
        self.refreshed_at = self.clock()

    def _take_token(self, now: float) -> bool:
        self._tokens = min(float(LOOKUP_BURST), self._tokens + (now - self._tokens_at) * LOOKUP_RATE)
        self._tokens_at = now
        if self._tokens < 1.0:
            return False
        self._tokens -= 1.0
        return True

    def _remember_absent(self, access_key: str, now: float) -> None:
        if len(self._absent) >= NEGATIVE_MAX:
            self._absent = {k: t for k, t in self._absent.items() if t > now}
            while len(self._absent) >= NEGATIVE_MAX:  # oldest first: dicts keep insertion order
                del self._absent[next(iter(self._absent))]
        self._absent[access_key] = now + NEGATIVE_TTL

    async def ensure(self, access_key: str | None) -> None:
        """Make `users` hold this access key if the cluster has it; an unknown key is left for the caller to refuse."""
        if not access_key or access_key in self.users or not is_access_key(access_key):
            return
        now = self.clock()
        until = self._absent.get(access_key)
        if until is not None and until > now:
            return
        task = self._lookups.get(access_key)
        if task is None:
            if not self._take_token(now):
                return
            task = asyncio.ensure_future(self._lookup(access_key))
            self._lookups[access_key] = task
            task.add_done_callback(lambda _: self._lookups.pop(access_key, None))
        await asyncio.shield(task)  # one read for many requests with the same key; a cancelled request leaves it

    async def close(self) -> None:
        """Cancel the lookups still running (the gateway is stopping)."""
        tasks = list(self._lookups.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _lookup(self, access_key: str) -> None:
        self.lookups += 1
        try:
            async with asyncio.timeout(LOOKUP_TIMEOUT):
                user = await self.store.get(access_key)
        except (KVUnavailable, TimeoutError) as e:
            log.warning("could not look up access key %s in the cluster: %s", access_key, e)
            user = None
        if user is None:
            self._remember_absent(access_key, self.clock())
        else:
            self._apply(user)


def explain_unavailable(e: KVUnavailable) -> str:
    """One line: what could not be read or written, and the first node's reason."""
    cause = e.__context__
    detail = f": {cause.errors[0][1]}" if isinstance(cause, QuorumError) and cause.errors else ""
    return f"the cluster's user records are unreachable ({e}{detail})"


# ---------------------------------------------------------------------------
# `objstore user`

T = TypeVar("T")


def _with_store(cluster_path: str, action: Callable[[UserStore], Awaitable[T]]) -> T:
    """Run `action` with the UserStore of the cluster that `cluster_path` names; errors become one line."""
    from objstore.cli import fail
    from objstore.client import NodeClient
    from objstore.ops import STATUS_TIMEOUT, _newest_map, open_cluster
    from objstore.quorum import Background

    cmap, secret, _ = open_cluster(cluster_path)

    async def run() -> T:
        background = Background()
        async with NodeClient(secret, timeout=STATUS_TIMEOUT, connect_timeout=STATUS_TIMEOUT) as client:
            try:
                newest = await _newest_map(client, cmap)
                nodes = [n for n in newest.nodes if n.state != "removed"]
                return await action(UserStore(ReplicatedKV(client, background), lambda: nodes))
            finally:
                await background.close()

    try:
        return asyncio.run(run())
    except UserError as e:
        fail(str(e))
    except KVUnavailable as e:
        fail(explain_unavailable(e))


_cluster_opt = click.option("--cluster", "cluster_path", required=True, type=click.Path(exists=True, dir_okay=False),
                            help="A node config (TOML) or the cluster.json written by `objstore dev`.")


@click.group("user")
def user_group() -> None:
    """Create, list and delete S3 users (access keys).

    They are kept in the cluster, and every gateway accepts them at once, without a restart. Users of a gateway's config file ([[users]]) work as before and are not listed here.
    """


@user_group.command("create")
@_cluster_opt
@click.argument("name")
@click.option("--access-key", help="The access key id (default: 20 random upper-case characters).")
@click.option("--secret-key", help="The secret key (default: 40 random characters; better than one typed in a shell).")
@click.option("--admin", is_flag=True, help="May sign in to the gateway dashboard.")
@click.option("--json", "as_json", is_flag=True, help="Print the new user, keys included, as one JSON object.")
def create_command(cluster_path: str, name: str, access_key: str | None, secret_key: str | None, admin: bool,
                   as_json: bool) -> None:
    """Create user NAME and print its keys.

    Keys not given are generated. The secret key is printed this once; every gateway accepts the
    user at once.
    """
    user = _with_store(cluster_path, lambda store: store.create(name, access_key, secret_key, admin))
    if as_json:
        click.echo(json.dumps({"name": user.name, "access_key": user.access_key, "secret_key": user.secret_key,
                               "admin": user.admin, "created": user.created_iso()}))
        return
    console = Console(highlight=False, soft_wrap=True)  # a key wrapped across lines would be copied wrong
    console.print(f"Created user [bold]{user.name}[/]{' (admin)' if user.admin else ''}")
    console.print(f"  access key  [bold]{user.access_key}[/]")
    console.print(f"  secret key  [bold]{escape(user.secret_key)}[/]")
    console.print("[yellow]The secret key is not shown again: store it now.[/]")


@user_group.command("list")
@_cluster_opt
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
def list_command(cluster_path: str, as_json: bool) -> None:
    """List the users: name, access key, admin, created.

    Secret keys are never shown.
    """
    users = _with_store(cluster_path, lambda store: store.list_all())
    if as_json:
        click.echo(json.dumps([{"name": u.name, "access_key": u.access_key, "admin": u.admin,
                                "created": u.created_iso()} for u in users], indent=2))
        return
    table = Table(caption="users of gateway config files are not listed" if users else None)
    for column in ("name", "access key", "admin", "created"):
        table.add_column(column)
    for u in users:
        table.add_row(u.name, u.access_key, "yes" if u.admin else "no", u.created_iso())
    console = Console()
    console.print(table if users else "no users in the cluster (users of gateway config files are not listed)")


@user_group.command("delete")
@_cluster_opt
@click.argument("key_or_name", metavar="ACCESS_KEY_OR_NAME")
def delete_command(cluster_path: str, key_or_name: str) -> None:
    """Delete a user by access key or name.

    Every gateway refuses its access key within a few seconds. Its buckets and objects stay.
    """

    async def delete(store: UserStore) -> tuple[StoredUser, list[str]]:
        user = await store.delete(key_or_name)
        return user, await store.buckets_owned(user.access_key)

    user, buckets = _with_store(cluster_path, delete)
    click.echo(f"Deleted user {user.name} (access key {user.access_key}).")
    if buckets:
        shown = ", ".join(buckets[:5]) + (f" and {len(buckets) - 5} more" if len(buckets) > 5 else "")
        click.echo(f"It owned {len(buckets)} bucket(s): {shown}. They and their objects stay, reachable again only "
                   f"by a user created with --access-key {user.access_key}.")
