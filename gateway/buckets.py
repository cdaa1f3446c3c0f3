"""Buckets: KV records replicated to every node (majority write and read), naming rules, ownership."""

from __future__ import annotations

import asyncio
import re
import time
from dataclasses import dataclass

from objstore.cluster import ClusterMap, NodeInfo
from objstore.kv import BUCKETS, KVUnavailable, ReplicatedKV
from objstore.records import KVRecord
from objstore.versions import new_version, version_time_ns
from objstore.view import ClusterView

from gateway.errors import S3Error

NS = BUCKETS
CACHE_TTL = 2.0
"""Seconds a gateway trusts its cached copy of a bucket record (creation and deletion update it at once)."""
REFRESH_AFTER = CACHE_TTL / 2
"""Age at which a lookup still answers from the cache but reads the record again in the background."""

_LABEL = re.compile(r"^[a-z0-9](?:[a-z0-9-]*[a-z0-9])?$")
_IPV4 = re.compile(r"^\d{1,3}(?:\.\d{1,3}){3}$")


def check_bucket_name(name: str) -> None:
    """S3's naming rules for new buckets; a bad name raises InvalidBucketName."""
    ok = (
        3 <= len(name) <= 63
        and all(_LABEL.match(label) for label in name.split("."))
        and not _IPV4.match(name)
        and not name.startswith(("xn--", "sthree-", "amzn-s3-demo-"))
        and not name.endswith(("-s3alias", "--ol-s3", ".mrap", "--x-s3", "--table-s3"))
    )
    if not ok:
        raise S3Error("InvalidBucketName", extra={"BucketName": name})


@dataclass
class Bucket:
    """A live bucket."""

    name: str
    owner: str  # access key of the creator
    owner_name: str
    created_ns: int
    versioning: str | None = None  # None (never enabled), "Enabled" or "Suspended"
    pool: str | None = None  # placement pool; None is every node
    region: str = "us-east-1"

    @classmethod
    def from_record(cls, rec: KVRecord) -> Bucket:
        v = rec.value
        return cls(name=rec.name, owner=v["owner"], owner_name=v.get("owner_name", v["owner"]),
                   created_ns=int(v.get("created", version_time_ns(rec.version))),
                   versioning=v.get("versioning"), pool=v.get("pool"), region=v.get("region", "us-east-1"))

    def to_value(self) -> dict[str, object]:
        return {"owner": self.owner, "owner_name": self.owner_name, "created": self.created_ns,
                "versioning": self.versioning, "pool": self.pool, "region": self.region}


class Buckets:
    """Bucket records on every node (majority write and read), with a short-lived cache."""

    def __init__(self, view: ClusterView, kv: ReplicatedKV) -> None:
        self.view = view
        self.kv = kv
        self._cache: dict[str, tuple[float, KVRecord | None]] = {}  # name -> (when read, record)
        self._reads: dict[str, asyncio.Future[KVRecord | None]] = {}  # name -> the read in flight

    def _nodes(self) -> list[NodeInfo]:
        return self.view.by_availability(self.view.all_nodes())

    async def _read(self, name: str) -> KVRecord | None:
        try:
            return await self.kv.get(self._nodes(), NS, name)
        except KVUnavailable as e:
            raise S3Error("ServiceUnavailable", f"bucket metadata unreachable: {e}") from None

    async def _write(self, rec: KVRecord) -> None:
        try:
            await self.kv.put(self._nodes(), rec)
        except KVUnavailable as e:
            raise S3Error("ServiceUnavailable", f"bucket metadata not written: {e}") from None
        self._cache[rec.name] = (time.monotonic(), rec)

    def _refresh(self, name: str) -> asyncio.Future[KVRecord | None]:
        """The read of a bucket record in flight, started if none is: every request of a bucket whose
        cached copy expired waits for one read (a majority of nodes), not one read each."""
        fut = self._reads.get(name)
        if fut is not None:
            return fut

        async def read() -> KVRecord | None:
            started = time.monotonic()
            rec = await self._read(name)
            cached = self._cache.get(name)
            if cached is None or cached[0] <= started:  # a write during the read has the newer copy
                self._cache[name] = (started, rec)
            return rec

        def done(f: asyncio.Future[KVRecord | None]) -> None:
            if self._reads.get(name) is f:
                del self._reads[name]
            if not f.cancelled():
                f.exception()  # a refresh nobody waits for fails quietly; the next lookup reads again

        fut = self._reads[name] = asyncio.ensure_future(read())
        fut.add_done_callback(done)
        return fut

    async def lookup(self, name: str) -> Bucket | None:
        cached = self._cache.get(name)
        age = time.monotonic() - cached[0] if cached else CACHE_TTL
        if age < CACHE_TTL:
            rec = cached[1] if cached else None
            if age >= REFRESH_AFTER:
                self._refresh(name)  # read ahead, so a busy bucket's requests never wait for it
        else:
            rec = await asyncio.shield(self._refresh(name))
        if rec is None or rec.deleted:
            return None
        return Bucket.from_record(rec)

    async def get(self, name: str, user_key: str | None = None) -> Bucket:
        """The bucket, or NoSuchBucket; AccessDenied if `user_key` is given and does not own it."""
        bucket = await self.lookup(name)
        if bucket is None:
            raise S3Error("NoSuchBucket", extra={"BucketName": name})
        if user_key is not None and bucket.owner != user_key:
            raise S3Error("AccessDenied")
        return bucket

    async def create(self, name: str, owner: str, owner_name: str, region: str, pool: str | None,
                     cmap: ClusterMap) -> Bucket:
        check_bucket_name(name)
        existing = await self._read(name)
        if existing is not None and not existing.deleted:
            if existing.value.get("owner") == owner:
                raise S3Error("BucketAlreadyOwnedByYou", extra={"BucketName": name})
            raise S3Error("BucketAlreadyExists", extra={"BucketName": name})
        if pool is not None:
            cmap.pool(pool)  # unknown pool -> error before anything is written
        bucket = Bucket(name, owner, owner_name, time.time_ns(), None, pool, region)
        await self._write(KVRecord(NS, name, new_version(), bucket.to_value()))
        return bucket

    async def update(self, bucket: Bucket) -> None:
        await self._write(KVRecord(NS, bucket.name, new_version(), bucket.to_value()))

    async def delete(self, bucket: Bucket) -> None:
        await self._write(KVRecord(NS, bucket.name, new_version(), bucket.to_value(), deleted=True))

    async def list_all(self) -> list[Bucket]:
        """Every live bucket, merged from a majority of nodes."""
        try:
            records = await self.kv.list(self._nodes(), NS)
        except KVUnavailable as e:
            raise S3Error("ServiceUnavailable", f"bucket metadata unreachable: {e}") from None
        return [Bucket.from_record(r) for r in records if not r.deleted]
