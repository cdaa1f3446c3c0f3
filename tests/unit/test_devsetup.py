"""The data dir of `objstore dev` (generated once, reused after) and children that die with their parent."""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import sys
import time
import tomllib
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from objstore.cli import cli
from objstore.cluster import ClusterMap
from objstore.config import ConfigError, load_gateway_config, load_node_config
from objstore.devcluster import child_env, module_runnable
from objstore.devsetup import DevError, DevOptions, parse_node_listen, parse_node_setting, prepare, to_toml
from tests.cluster import pid_gone


def test_first_start_generates_map_configs_and_secrets(tmp_path: Path) -> None:
    setup = prepare(DevOptions(data=tmp_path / "d", port=20000, down_after=3.0, fsync=False))
    root = tmp_path / "d"
    cmap = ClusterMap.load(root / "map.json")
    assert cmap.epoch == 1 and (cmap.ec.k, cmap.ec.m) == (4, 2)
    assert [(n.id, n.address, n.zone) for n in cmap.nodes] == [
        (f"n{i}", f"127.0.0.1:{20000 + i}", f"z{(i - 1) % 3 + 1}") for i in range(1, 7)
    ]
    for name in ("secret", "credentials.json"):
        assert stat.S_IMODE((root / name).stat().st_mode) == 0o600
    assert len(setup.secret) == 64 and setup.access_key.startswith("OBJ") and len(setup.access_key) == 20
    for n in cmap.nodes:
        cfg = load_node_config(setup.node_configs[n.id])
        assert (cfg.id, cfg.listen, cfg.secret) == (n.id, n.address, setup.secret)
        assert cfg.data_dir == str(root / "nodes" / n.id) and Path(cfg.data_dir).is_dir()
        assert (cfg.down_after, cfg.fsync, cfg.map) == (3.0, False, str(root / "map.json"))
    gw = load_gateway_config(setup.gateway_config)
    assert gw.listen == "127.0.0.1:20000" and gw.region == "us-east-1" and gw.secret == setup.secret
    assert [(u.access_key, u.secret_key, u.admin) for u in gw.users] == [(setup.access_key, setup.secret_key, True)]


def test_later_starts_reuse_everything_and_keep_settings(tmp_path: Path) -> None:
    first = prepare(DevOptions(data=tmp_path, nodes=3, zones=3, k=2, m=1, port=21000, down_after=2.5, fsync=False))
    (tmp_path / "nodes" / "n1" / "shard").write_bytes(b"data")
    again = prepare(DevOptions(data=tmp_path))
    assert (again.secret, again.access_key, again.secret_key) == (first.secret, first.access_key, first.secret_key)
    assert again.cmap == first.cmap and (again.host, again.port) == ("127.0.0.1", 21000)
    assert (tmp_path / "nodes" / "n1" / "shard").read_bytes() == b"data"
    cfg = load_node_config(again.node_configs["n2"])
    assert (cfg.down_after, cfg.fsync) == (2.5, False)
    # a flag given again overrides the saved value, and is the new saved value
    prepare(DevOptions(data=tmp_path, down_after=7.0))
    assert load_node_config(prepare(DevOptions(data=tmp_path)).node_configs["n3"]).down_after == 7.0


@pytest.mark.parametrize(
    ("flag", "value"),
    [("nodes", 4), ("zones", 1), ("k", 3), ("m", 2), ("port", 21001), ("host", "127.0.0.2"), ("block_size", 4096)],
)
def test_flags_that_contradict_the_data_dir_are_refused(tmp_path: Path, flag: str, value: object) -> None:
    prepare(DevOptions(data=tmp_path, nodes=3, zones=3, k=2, m=1, port=21000))
    before = (tmp_path / "map.json").read_bytes()
    with pytest.raises(DevError) as e:
        prepare(DevOptions(data=tmp_path, **{flag: value}))  # type: ignore[arg-type]
    option = flag.replace("_", "-")
    assert f"--{option} {value} was given" in e.value.message and "another --data" in e.value.message
    assert (tmp_path / "map.json").read_bytes() == before


def test_flags_equal_to_the_data_dir_are_fine(tmp_path: Path) -> None:
    prepare(DevOptions(data=tmp_path, nodes=3, zones=3, k=2, m=1, port=21000))
    prepare(DevOptions(data=tmp_path, nodes=3, zones=3, k=2, m=1, port=21000, host="127.0.0.1"))


@pytest.mark.parametrize(
    ("opts", "message"),
    [
        ({"nodes": 5}, r"4\+2 needs at least 6 nodes"),
        ({"nodes": 6, "zones": 7}, "--zones must be between 1 and --nodes"),
        ({"port": 65530}, "no room for 6 node ports"),
    ],
)
def test_impossible_new_clusters_are_refused(tmp_path: Path, opts: dict[str, int], message: str) -> None:
    with pytest.raises(DevError, match=message):
        prepare(DevOptions(data=tmp_path, **opts))  # type: ignore[arg-type]
    assert not (tmp_path / "map.json").exists()


def test_node_settings_reach_every_node_config(tmp_path: Path) -> None:
    settings = dict(parse_node_setting(s) for s in ("repair_interval=0.5", "log_level=debug", "gc_grace=2"))
    setup = prepare(DevOptions(data=tmp_path, node_settings=settings))
    for path in setup.node_configs.values():
        cfg = load_node_config(path)
        assert (cfg.repair_interval, cfg.log_level, cfg.gc_grace) == (0.5, "debug", 2.0)


def test_bad_node_setting_values_fail_before_anything_starts(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="repair_concurrency"):
        prepare(DevOptions(data=tmp_path, node_settings={"repair_concurrency": 0}))


@pytest.mark.parametrize("spec", ["nosuchfield=1", "secret=abc", "listen=1.2.3.4:5", "repair_interval"])
def test_node_setting_rejects_unknown_and_generated_fields(spec: str) -> None:
    with pytest.raises(click.BadParameter):
        parse_node_setting(spec)


def test_node_listen_binds_a_node_off_its_map_address(tmp_path: Path) -> None:
    setup = prepare(DevOptions(data=tmp_path, port=22000, node_listen={"n2": "127.0.0.12:31000"}))
    moved, kept = load_node_config(setup.node_configs["n2"]), load_node_config(setup.node_configs["n3"])
    assert (moved.listen, moved.source_address) == ("127.0.0.12:31000", "127.0.0.12")
    assert (kept.listen, kept.source_address) == ("127.0.0.1:22003", "")
    assert setup.cmap.node("n2").address == "127.0.0.1:22002"  # the map still advertises the usual address
    assert setup.node_listen["n2"] == "127.0.0.12:31000" and setup.node_listen["n3"] == "127.0.0.1:22003"
    assert prepare(DevOptions(data=tmp_path)).node_listen["n2"] == "127.0.0.12:31000"  # kept in dev.json
    with pytest.raises(DevError, match="n9"):
        prepare(DevOptions(data=tmp_path, node_listen={"n9": "127.0.0.19:31000"}))
    with pytest.raises(ConfigError, match="source_address"):
        prepare(DevOptions(data=tmp_path, node_settings={"source_address": "localhost"}))


@pytest.mark.parametrize("spec", ["n1", "n1=127.0.0.11", "=127.0.0.11:1", "n1=127.0.0.11:0", "n1=:80"])
def test_node_listen_rejects_malformed_specs(spec: str) -> None:
    with pytest.raises(click.BadParameter):
        parse_node_listen(spec)


def test_toml_roundtrip() -> None:
    doc = {"a": 'x"y\\z\n', "b": True, "c": 3, "d": 0.25, "e": ["p", "q"], "t": [{"k": "v", "n": 1}, {"k": "w"}]}
    assert tomllib.loads(to_toml(doc)) == doc


def test_dev_command_reports_contradictions_as_one_line(tmp_path: Path) -> None:
    prepare(DevOptions(data=tmp_path, nodes=3, zones=3, k=2, m=1, port=21000))
    result = CliRunner().invoke(cli, ["dev", "--data", str(tmp_path), "--k", "3"], prog_name="objstore")
    assert result.exit_code == 1
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: ") and "--k 3 was given" in lines[0]


def test_children_never_see_the_callers_secrets(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OBJSTORE_SECRET", "leaked")
    monkeypatch.setenv("OBJSTORE_ACCESS_KEY", "leaked")
    env = child_env()
    assert "OBJSTORE_SECRET" not in env and "OBJSTORE_ACCESS_KEY" not in env
    assert env["PYTHONUNBUFFERED"] == "1"


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux only")
def test_a_child_dies_with_its_parent_even_on_sigkill(tmp_path: Path) -> None:
    """The parent starts `sleep` the way `objstore dev` starts nodes, then is SIGKILLed: sleep must go too."""
    script = (
        "import subprocess, sys\n"
        "from objstore.devcluster import die_with_parent\n"
        "p = subprocess.Popen(['sleep', '60'], preexec_fn=die_with_parent(), process_group=0)\n"
        "print(p.pid, flush=True)\n"
        "p.wait()\n"
    )
    parent = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE)
    assert parent.stdout is not None
    child_pid = int(parent.stdout.readline())
    os.kill(parent.pid, signal.SIGKILL)
    parent.wait(10)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if pid_gone(child_pid):
            break
        time.sleep(0.02)
    else:
        os.kill(child_pid, signal.SIGKILL)
        pytest.fail(f"sleep (pid {child_pid}) outlived its SIGKILLed parent")


def test_credentials_file_is_json_with_both_keys(tmp_path: Path) -> None:
    prepare(DevOptions(data=tmp_path))
    creds = json.loads((tmp_path / "credentials.json").read_text())
    assert set(creds) == {"access_key", "secret_key"} and len(creds["secret_key"]) >= 40


def test_module_runnable_names_what_is_missing() -> None:
    assert module_runnable("node") is None
    assert module_runnable("objstore_no_such_package") == (
        "objstore_no_such_package.server cannot be imported: No module named 'objstore_no_such_package'"
    )
    assert module_runnable("json") == "json.server is not installed"
