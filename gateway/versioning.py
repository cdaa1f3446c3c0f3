"""S3 versioning over HLC version ids: "null" versions, the ids clients see, and what a new write retires.

S3 gives a bucket three states: never versioned, Enabled, Suspended. A write to a bucket that is not
Enabled makes the key's *null* version, which replaces the previous null version; a write to an Enabled
bucket adds a version with its own id and leaves the null one alone. Here every version has an HLC id
(so versions sort by time everywhere), and a null version is an id whose random half has its top bit
set: any layer can tell one from its id alone, with no change to records or node listings.
"""

from __future__ import annotations

from gateway.buckets import Bucket
from gateway.errors import S3Error
from gateway.server import Gateway
from objstore.listing import MergedListing, listing_nodes
from objstore.objects import Committed
from objstore.versions import NULL_MARK, is_null, is_version, new_version

NULL = "null"
def object_version(bucket: Bucket) -> str:
    """A new version id for a write to `bucket`: a null version unless versioning is Enabled."""
    version = new_version()
    digit = int(version[NULL_MARK], 16)
    digit = digit | 8 if bucket.versioning != "Enabled" else digit & 7
    return f"{version[:NULL_MARK]}{digit:x}{version[NULL_MARK + 1:]}"


def shown(bucket: Bucket, version: str) -> str | None:
    """The version id a client sees on a read or listing: none in a never-versioned bucket, else the id or "null"."""
    if bucket.versioning is None:
        return None
    return NULL if is_null(version) else version


def shown_on_write(bucket: Bucket, version: str) -> str | None:
    """The x-amz-version-id of a write's answer: S3 sends none for a null version."""
    return None if is_null(version) else shown(bucket, version)


def check_version_id(version_id: str, name: str = "versionId") -> None:
    """A versionId parameter must be "null" or one of our ids; anything else is InvalidArgument."""
    if version_id != NULL and not is_version(version_id):
        raise S3Error("InvalidArgument", "Invalid version id specified",
                      extra={"ArgumentName": name, "ArgumentValue": version_id})


def retire_older(gw: Gateway, bucket: Bucket, done: Committed) -> None:
    """After a commit, remove what it replaced (in the background, owned by the gateway).

    Never versioned: every older version. Suspended: the older null versions. Enabled: nothing.
    Only the nodes that told the commit they hold an older version are called.
    """
    if bucket.versioning == "Enabled":
        return
    rec = done.record
    ring = gw.view.ring(bucket.pool)
    only = is_null if bucket.versioning == "Suspended" else None
    gw.background.spawn(gw.io.prune(ring, bucket.name, rec.key, keep=rec.version, only=only, seen=done))


async def null_version(gw: Gateway, bucket: Bucket, key: str) -> str | None:
    """The id of the key's visible null version (or null delete marker), if it has one."""
    ring = gw.view.ring(bucket.pool)
    nodes, reserve = listing_nodes(gw.view, ring)
    listing = MergedListing(gw.client, nodes, bucket.name, ring.ec.k, prefix=key, versions=True, page=100,
                            reserve=reserve)
    async for found, versions in listing.keys():
        if found != key:
            break  # keys come in order: the first one is `key` itself if it exists at all
        for v in versions:
            if is_null(v.version):
                return v.version
        break
    return None
