"""Real S3 command-line clients (aws cli, rclone, s3cmd) against `objstore dev`, each with its default settings."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

BIN = Path(sys.executable).parent
CLIENT_TIMEOUT = 60  # seconds for any one client command
BIG = 21 * 1024 * 1024 + 13  # above aws cli's 8 MiB multipart threshold: three parts with default settings
# Names that break naive URL or signature code: spaces, '+', '%', unicode, emoji, shell and query characters.
TREE = {
    "top.txt": b"top\n",
    "a b/with space.txt": b"space\n",
    "a b/c+d/plus+sign.txt": b"plus\n",
    "a b/c+d/e%f/100%.txt": b"percent\n",
    "a b/c+d/e%f/%2F not a slash.txt": b"encoded slash\n",
    "\u00fcn\u00ef/\U0001F600/\u00e9moji \U0001F600.txt": b"emoji\n",
    "\u00fcn\u00ef/q?mark&amp=x.txt": b"query\n",
    "\u00fcn\u00ef/tilde~(paren)!'*;,@$.txt": b"punct\n",
    "deep/1/2/3/4/5/leaf.bin": os.urandom(70 * 1024),  # above the inline limit: a real blob
}


def tool(name: str) -> str:
    """The client installed next to this Python (the test extra installs all three), else skip."""
    path = BIN / name
    if path.exists():
        return str(path)
    found = shutil.which(name)
    if found is None:
        pytest.skip(f"{name} is not installed (pip install -e '.[test]')")
    return found


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def tree_digest(root: Path) -> dict[str, str]:
    """Relative path -> sha256 of every file under root."""
    return {p.relative_to(root).as_posix(): sha256_file(p) for p in sorted(root.rglob("*")) if p.is_file()}


def write_tree(root: Path, files: dict[str, bytes]) -> None:
    for rel, data in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)


class Clients:
    """Runs the clients with an isolated HOME and config files that name only endpoint, credentials, path style."""

    def __init__(self, cluster, home: Path) -> None:  # type: ignore[no-untyped-def]
        self.cluster = cluster
        self.home = home
        host_port = cluster.endpoint.split("://", 1)[1]
        (home / ".aws").mkdir(parents=True, exist_ok=True)
        (home / ".aws" / "config").write_text(f"[default]\nregion = {cluster.region}\n")
        (home / ".aws" / "credentials").write_text(
            f"[default]\naws_access_key_id = {cluster.access_key}\naws_secret_access_key = {cluster.secret_key}\n")
        self.rclone_conf = home / "rclone.conf"
        self.rclone_conf.write_text(
            "[obj]\ntype = s3\nprovider = Other\n"
            f"access_key_id = {cluster.access_key}\nsecret_access_key = {cluster.secret_key}\n"
            f"endpoint = {cluster.endpoint}\nforce_path_style = true\n")
        self.s3cfg = home / ".s3cfg"
        self.s3cfg.write_text(
            f"[default]\naccess_key = {cluster.access_key}\nsecret_key = {cluster.secret_key}\n"
            f"host_base = {host_port}\nhost_bucket = {host_port}\nuse_https = False\n")
        self.env = {
            "HOME": str(home), "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
            "LANG": "C.UTF-8", "LC_ALL": "C.UTF-8", "PYTHONIOENCODING": "utf-8",
            "AWS_CONFIG_FILE": str(home / ".aws" / "config"),
            "AWS_SHARED_CREDENTIALS_FILE": str(home / ".aws" / "credentials"),
            "AWS_EC2_METADATA_DISABLED": "true", "RCLONE_CONFIG": str(self.rclone_conf),
        }

    def run(self, argv: list[str], cwd: Path | None = None) -> str:
        proc = subprocess.run(argv, env=self.env, cwd=cwd, capture_output=True, timeout=CLIENT_TIMEOUT,
                              stdin=subprocess.DEVNULL, check=False)  # the assert below shows the output
        out, err = proc.stdout.decode("utf-8", "replace"), proc.stderr.decode("utf-8", "replace")
        assert proc.returncode == 0, f"{argv} exited {proc.returncode}\nstdout:\n{out}\nstderr:\n{err}"
        return out

    def aws(self, *args: str, cwd: Path | None = None) -> str:
        return self.run([tool("aws"), "--endpoint-url", self.cluster.endpoint, *args], cwd)

    def rclone(self, *args: str) -> str:
        return self.run([tool("rclone"), "--retries", "1", "--low-level-retries", "2", *args])

    def s3cmd(self, *args: str) -> str:
        return self.run([tool("s3cmd"), "-c", str(self.s3cfg), *args])


@pytest.fixture(scope="module")
def clients(dev_cluster, tmp_path_factory):  # type: ignore[no-untyped-def]
    dev_cluster.require_gateway()
    return Clients(dev_cluster, tmp_path_factory.mktemp("home"))


@pytest.fixture(scope="module")
def big_file(tmp_path_factory) -> Path:  # type: ignore[no-untyped-def]
    path = tmp_path_factory.mktemp("big") / "big file.bin"
    path.write_bytes(os.urandom(BIG))
    return path


def test_aws_s3_cp_ls_rm_and_multipart(clients: Clients, big_file: Path, tmp_path: Path) -> None:
    s3 = clients.cluster.s3()
    assert "make_bucket: cli-aws" in clients.aws("s3", "mb", "s3://cli-aws")
    clients.aws("s3", "cp", str(big_file), "s3://cli-aws/dir/big file.bin", "--no-progress")
    head = s3.head_object(Bucket="cli-aws", Key="dir/big file.bin")
    assert head["ContentLength"] == BIG
    assert head["ETag"].strip('"').endswith("-3"), "aws s3 cp should have used a 3-part multipart upload"
    back = tmp_path / "back.bin"
    clients.aws("s3", "cp", "s3://cli-aws/dir/big file.bin", str(back), "--no-progress")
    assert sha256_file(back) == sha256_file(big_file)

    listing = clients.aws("s3", "ls", "s3://cli-aws/")
    assert listing.split() == ["PRE", "dir/"]
    listing = clients.aws("s3", "ls", "--recursive", "s3://cli-aws/")
    assert listing.strip().endswith(f"{BIG} dir/big file.bin")
    assert "cli-aws" in clients.aws("s3", "ls").split()

    # aws-cli v1 presigns with SigV2 against a custom endpoint: the URL must work as it comes
    url = clients.aws("s3", "presign", "s3://cli-aws/dir/big file.bin", "--expires-in", "300").strip()
    with urllib.request.urlopen(url, timeout=CLIENT_TIMEOUT) as resp:
        assert hashlib.sha256(resp.read()).hexdigest() == sha256_file(big_file)

    # a server-side move of a big object: multipart UploadPartCopy with ranges, then a delete
    clients.aws("s3", "mv", "s3://cli-aws/dir/big file.bin", "s3://cli-aws/moved.bin", "--no-progress")
    assert clients.aws("s3", "ls", "--recursive", "s3://cli-aws/").split()[-1] == "moved.bin"
    clients.aws("s3", "cp", "s3://cli-aws/moved.bin", str(back), "--no-progress")
    assert sha256_file(back) == sha256_file(big_file)

    clients.aws("s3", "rm", "s3://cli-aws/moved.bin")
    assert clients.aws("s3", "ls", "--recursive", "s3://cli-aws/").strip() == ""
    clients.aws("s3", "rb", "s3://cli-aws")
    assert "cli-aws" not in clients.aws("s3", "ls").split()


def test_aws_s3_sync_tree_and_delete(clients: Clients, tmp_path: Path) -> None:
    src, dst = tmp_path / "src", tmp_path / "dst"
    write_tree(src, TREE)
    clients.aws("s3", "mb", "s3://cli-sync")
    out = clients.aws("s3", "sync", str(src), "s3://cli-sync/tree", "--no-progress")
    assert out.count("upload:") == len(TREE)
    # A second sync of an unchanged tree finds nothing to do: sizes and times listed back match.
    assert clients.aws("s3", "sync", str(src), "s3://cli-sync/tree", "--no-progress").strip() == ""
    listed = clients.aws("s3", "ls", "--recursive", "s3://cli-sync/tree/")
    assert sorted(line.split(None, 3)[3] for line in listed.splitlines()) == sorted(f"tree/{k}" for k in TREE)

    clients.aws("s3", "sync", "s3://cli-sync/tree", str(dst), "--no-progress")
    assert tree_digest(dst) == tree_digest(src)

    # Change one file, delete another, sync with --delete: the bucket follows.
    (src / "top.txt").write_bytes(b"changed, and longer\n")
    (src / "a b" / "with space.txt").unlink()
    out = clients.aws("s3", "sync", str(src), "s3://cli-sync/tree", "--delete", "--no-progress")
    assert "delete: s3://cli-sync/tree/a b/with space.txt" in out
    shutil.rmtree(dst)
    clients.aws("s3", "sync", "s3://cli-sync/tree", str(dst), "--no-progress")
    assert tree_digest(dst) == tree_digest(src)

    clients.aws("s3", "rm", "--recursive", "s3://cli-sync/tree/a b/")
    keys = json.loads(clients.aws("s3api", "list-objects-v2", "--bucket", "cli-sync", "--prefix", "tree/a b/"))
    assert keys.get("KeyCount", 0) == 0
    clients.aws("s3", "rb", "s3://cli-sync", "--force")


def test_aws_s3api(clients: Clients, tmp_path: Path) -> None:
    body = tmp_path / "body.txt"
    body.write_bytes(b"hello from s3api\n")
    clients.aws("s3api", "create-bucket", "--bucket", "cli-api")
    put = json.loads(clients.aws("s3api", "put-object", "--bucket", "cli-api", "--key", "k+ey %1.txt",
                                 "--body", str(body), "--content-type", "text/plain", "--metadata", "color=blue"))
    assert put["ETag"] == f'"{hashlib.md5(body.read_bytes()).hexdigest()}"'
    head = json.loads(clients.aws("s3api", "head-object", "--bucket", "cli-api", "--key", "k+ey %1.txt"))
    assert head["ContentLength"] == body.stat().st_size and head["Metadata"] == {"color": "blue"}
    assert head["ContentType"] == "text/plain"
    out = tmp_path / "out.txt"
    clients.aws("s3api", "get-object", "--bucket", "cli-api", "--key", "k+ey %1.txt", "--range", "bytes=6-9", str(out))
    assert out.read_bytes() == b"from"
    listed = json.loads(clients.aws("s3api", "list-objects-v2", "--bucket", "cli-api"))
    assert [o["Key"] for o in listed["Contents"]] == ["k+ey %1.txt"]
    clients.aws("s3api", "copy-object", "--bucket", "cli-api", "--key", "copy", "--copy-source", "cli-api/k+ey %1.txt")
    deleted = json.loads(clients.aws("s3api", "delete-objects", "--bucket", "cli-api", "--delete",
                                     json.dumps({"Objects": [{"Key": "k+ey %1.txt"}, {"Key": "copy"}]})))
    assert sorted(d["Key"] for d in deleted["Deleted"]) == ["copy", "k+ey %1.txt"]
    clients.aws("s3api", "delete-bucket", "--bucket", "cli-api")
    buckets = json.loads(clients.aws("s3api", "list-buckets"))
    assert "cli-api" not in [b["Name"] for b in buckets["Buckets"]]


def test_rclone(clients: Clients, big_file: Path, tmp_path: Path) -> None:
    src, dst = tmp_path / "src", tmp_path / "dst"
    write_tree(src, TREE)
    clients.rclone("mkdir", "obj:cli-rclone")
    clients.rclone("copy", str(src), "obj:cli-rclone/tree")
    clients.rclone("copyto", str(big_file), "obj:cli-rclone/big.bin")
    listed = clients.rclone("lsf", "-R", "--files-only", "obj:cli-rclone/tree")
    assert sorted(listed.splitlines()) == sorted(TREE)
    assert clients.rclone("lsl", "obj:cli-rclone/big.bin").split()[0] == str(BIG)
    clients.rclone("check", str(src), "obj:cli-rclone/tree")  # sizes and MD5s (ETags) of every file
    clients.rclone("sync", "obj:cli-rclone/tree", str(dst))
    assert tree_digest(dst) == tree_digest(src)
    clients.rclone("copyto", "obj:cli-rclone/big.bin", str(tmp_path / "big.bin"))
    assert sha256_file(tmp_path / "big.bin") == sha256_file(big_file)
    middle = subprocess.run([tool("rclone"), "cat", "--offset", str(BIG // 2), "--count", "1000",
                             "obj:cli-rclone/big.bin"], env=clients.env, capture_output=True,
                            timeout=CLIENT_TIMEOUT, check=True).stdout  # bytes, not text: a ranged GET
    with open(big_file, "rb") as f:
        f.seek(BIG // 2)
        assert middle == f.read(1000)

    # sync deletes on the remote what is gone locally
    (src / "\u00fcn\u00ef" / "q?mark&amp=x.txt").unlink()
    clients.rclone("sync", str(src), "obj:cli-rclone/tree")
    assert "\u00fcn\u00ef/q?mark&amp=x.txt" not in clients.rclone("lsf", "-R", "obj:cli-rclone/tree").splitlines()
    clients.rclone("purge", "obj:cli-rclone")
    assert "cli-rclone" not in clients.rclone("lsd", "obj:")


def test_s3cmd(clients: Clients, big_file: Path, tmp_path: Path) -> None:
    src, dst = tmp_path / "src", tmp_path / "dst"
    write_tree(src, TREE)
    clients.s3cmd("mb", "s3://cli-s3cmd")
    clients.s3cmd("put", str(big_file), "s3://cli-s3cmd/big.bin")
    etag = clients.cluster.s3().head_object(Bucket="cli-s3cmd", Key="big.bin")["ETag"]
    assert etag.strip('"').endswith("-2")  # s3cmd's default 15 MiB chunks: a two-part multipart upload
    clients.s3cmd("sync", f"{src}/", "s3://cli-s3cmd/tree/")
    listed = clients.s3cmd("ls", "-r", "s3://cli-s3cmd/tree/")
    assert sorted(line.split("s3://cli-s3cmd/tree/", 1)[1] for line in listed.splitlines()) == sorted(TREE)
    clients.s3cmd("sync", "s3://cli-s3cmd/tree/", f"{dst}/")
    assert tree_digest(dst) == tree_digest(src)
    clients.s3cmd("get", "s3://cli-s3cmd/big.bin", str(tmp_path / "big.bin"))
    assert sha256_file(tmp_path / "big.bin") == sha256_file(big_file)
    info = clients.s3cmd("info", "s3://cli-s3cmd/big.bin")
    assert f"File size: {BIG}" in info
    clients.s3cmd("del", "--recursive", "--force", "s3://cli-s3cmd/")
    assert clients.s3cmd("ls", "-r", "s3://cli-s3cmd/").strip() == ""
    clients.s3cmd("rb", "s3://cli-s3cmd")
    assert "cli-s3cmd" not in clients.s3cmd("ls")
