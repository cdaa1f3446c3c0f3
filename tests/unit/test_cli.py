"""The `objstore` command: help everywhere, cluster init/show, one-line errors, lazily loaded subcommands."""

from __future__ import annotations

import json
import sys
import types
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from objstore import cli as cli_module
from objstore.cli import ROOT_COMMANDS, cli, parse_node_spec
from objstore.cluster import ClusterMap


def run(*args: str) -> click.testing.Result:
    return CliRunner().invoke(cli, list(args), prog_name="objstore")


def init_map(path: Path, *extra: str) -> click.testing.Result:
    return run(
        "cluster",
        "init",
        "--out",
        str(path),
        "--k",
        "2",
        "--m",
        "1",
        "--node",
        "n1=10.0.0.1:9001@z1,jurisdiction=FR,rack=r1",
        "--node",
        "n2=10.0.0.2:9001@z2",
        "--node",
        "n3=10.0.0.3:9001@z3",
        *extra,
    )


@pytest.mark.parametrize(
    "args",
    [[], ["dev"], ["node"], ["gateway"], ["cluster"], ["cluster", "init"], ["cluster", "show"]],
)
def test_every_command_has_help(args: list[str]) -> None:
    result = run(*args, "--help")
    assert result.exit_code == 0, result.output
    assert "Usage: objstore" in result.output


def test_root_help_lists_commands() -> None:
    out = run("--help").output
    for name in ("dev", "node", "gateway", "cluster"):
        assert f"  {name} " in out


def test_cluster_init_writes_epoch_one_map(tmp_path: Path) -> None:
    result = init_map(tmp_path / "map.json", "--block-size", "4096")
    assert result.exit_code == 0, result.output
    cmap = ClusterMap.load(tmp_path / "map.json")
    assert cmap.epoch == 1
    assert (cmap.ec.k, cmap.ec.m, cmap.ec.block_size) == (2, 1, 4096)
    assert [(n.id, n.address, n.zone) for n in cmap.nodes] == [
        ("n1", "10.0.0.1:9001", "z1"),
        ("n2", "10.0.0.2:9001", "z2"),
        ("n3", "10.0.0.3:9001", "z3"),
    ]
    assert cmap.node("n1").labels == {"jurisdiction": "FR", "rack": "r1"}
    assert all(n.state == "active" and n.weight == 1.0 for n in cmap.nodes)


def test_cluster_init_refuses_to_overwrite_without_force(tmp_path: Path) -> None:
    path = tmp_path / "map.json"
    assert init_map(path).exit_code == 0
    before = path.read_text()
    again = init_map(path)
    assert again.exit_code == 1
    assert "already exists" in again.output and "Traceback" not in again.output
    assert path.read_text() == before
    assert init_map(path, "--force").exit_code == 0


def test_cluster_init_warns_when_nodes_cannot_hold_a_stripe(tmp_path: Path) -> None:
    result = run("cluster", "init", "--out", str(tmp_path / "m.json"), "--node", "a=h:1@z")
    assert result.exit_code == 0
    assert "Warning: 1 nodes for 4+2" in result.output


@pytest.mark.parametrize(
    "spec",
    ["n1", "n1=host@z1", "n1=host:port@z1", "n1=host:9001", "n1=host:99999@z1", "n1=host:1@z1,label", "=h:1@z"],
)
def test_bad_node_spec_is_a_usage_error(tmp_path: Path, spec: str) -> None:
    result = run("cluster", "init", "--out", str(tmp_path / "m.json"), "--node", spec)
    assert result.exit_code == 2
    assert "--node" in result.output and "Traceback" not in result.output
    assert not (tmp_path / "m.json").exists()


def test_parse_node_spec_accepts_ipv6_and_empty_label_values() -> None:
    n = parse_node_spec("n9=[::1]:7000@zone-a,tier=,dc=par")
    assert (n.id, n.address, n.zone, n.labels) == ("n9", "[::1]:7000", "zone-a", {"tier": "", "dc": "par"})


def test_invalid_ec_profile_is_one_line(tmp_path: Path) -> None:
    result = run("cluster", "init", "--out", str(tmp_path / "m.json"), "--k", "0", "--node", "a=h:1@z")
    assert result.exit_code == 1
    assert result.output.strip() == "Error: ec.k must be in 1..128, got 0"


def test_cluster_show_renders_every_node(tmp_path: Path) -> None:
    init_map(tmp_path / "map.json")
    result = run("cluster", "show", "--cluster", str(tmp_path / "map.json"))
    assert result.exit_code == 0, result.output
    assert "epoch 1" in result.output and "EC 2+1" in result.output
    for expected in ("n1", "10.0.0.2:9001", "z3", "jurisdiction=FR,rack=r1", "active"):
        assert expected in result.output


def test_cluster_show_follows_a_dev_cluster_file(tmp_path: Path) -> None:
    init_map(tmp_path / "map.json")
    (tmp_path / "cluster.json").write_text(json.dumps({"endpoint": "http://x", "map": "map.json"}))
    result = run("cluster", "show", "--cluster", str(tmp_path / "cluster.json"))
    assert result.exit_code == 0, result.output
    assert "10.0.0.3:9001" in result.output


def test_status_of_a_cluster_nobody_answers_for_is_one_line_and_fails(tmp_path: Path) -> None:
    from tests.cluster import free_port_range

    port = free_port_range(2)
    result = run("cluster", "init", "--out", str(tmp_path / "map.json"), "--k", "1", "--m", "1",
                 "--node", f"n1=127.0.0.1:{port}@z1", "--node", f"n2=127.0.0.1:{port + 1}@z2")
    assert result.exit_code == 0, result.output
    (tmp_path / "secret").write_text("s")
    (tmp_path / "cluster.json").write_text(json.dumps({"map": "map.json", "secret_file": str(tmp_path / "secret")}))
    for extra in ([], ["--json"]):
        result = run("status", "--cluster", str(tmp_path / "cluster.json"), *extra)
        assert result.exit_code == 1
        assert result.output.strip().splitlines() == [
            f"Error: no node of the cluster answered (tried 127.0.0.1:{port}, 127.0.0.1:{port + 1})"]


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (None, "No such file or directory"),
        ("{", "is not valid JSON"),
        ('{"epoch": 1}', "cluster map is missing field 'ec'"),
        ("[]", "must be a JSON object"),
    ],
)
def test_cluster_show_errors_are_one_line(tmp_path: Path, content: str | None, message: str) -> None:
    path = tmp_path / "map.json"
    if content is not None:
        path.write_text(content)
    result = run("cluster", "show", "--cluster", str(path))
    assert result.exit_code == 1
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: ") and message in lines[0]


def test_node_with_missing_config_is_one_line(tmp_path: Path) -> None:
    result = run("node", "--config", str(tmp_path / "nope.toml"))
    assert result.exit_code == 1
    assert result.output.strip() == f"Error: config file {tmp_path / 'nope.toml'} does not exist"


def test_gateway_with_invalid_config_is_one_line(tmp_path: Path) -> None:
    path = tmp_path / "gw.toml"
    path.write_text('listen = "nowhere"\nsecret = "s"\nmap = "m.json"\n')
    result = run("gateway", "--config", str(path))
    assert result.exit_code == 1
    assert "field 'listen' must be host:port" in result.output and "Traceback" not in result.output


@pytest.fixture
def extra_command(monkeypatch: pytest.MonkeyPatch) -> list[BaseException]:
    """A command registered the way later modules register theirs; it raises what the test puts in the list."""
    to_raise: list[BaseException] = []
    module = types.ModuleType("objstore_test_extra_command")

    @click.command("extra")
    def extra() -> None:
        """An extra command from another module."""
        if to_raise:
            raise to_raise[0]
        click.echo("extra ran")

    module.extra = extra  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, module.__name__, module)
    monkeypatch.setitem(ROOT_COMMANDS, "extra", f"{module.__name__}:extra")
    return to_raise


def test_lazy_command_is_listed_and_runs(extra_command: list[BaseException]) -> None:
    assert "An extra command from another module." in run("--help").output
    result = run("extra")
    assert result.exit_code == 0 and result.output == "extra ran\n"


@pytest.mark.parametrize(
    ("error", "line"),
    [
        (ConnectionRefusedError(111, "Connection refused"), "Error: Connection refused"),
        (FileNotFoundError(2, "No such file or directory", "/x/y"), "Error: /x/y: No such file or directory"),
        (TimeoutError("node n3 did not answer"), "Error: node n3 did not answer"),
    ],
)
def test_user_errors_from_any_command_are_one_line(
    extra_command: list[BaseException], error: BaseException, line: str
) -> None:
    extra_command.append(error)
    result = run("extra")
    assert result.exit_code == 1
    assert result.output.strip() == line


def test_aiohttp_client_errors_are_user_errors(extra_command: list[BaseException]) -> None:
    import aiohttp

    extra_command.append(aiohttp.ClientConnectionError("cannot connect to 127.0.0.1:1"))
    result = run("extra")
    assert result.exit_code == 1
    assert result.output.strip() == "Error: cannot connect to 127.0.0.1:1"


def test_bugs_are_not_hidden(extra_command: list[BaseException]) -> None:
    extra_command.append(RuntimeError("a bug"))
    result = run("extra")
    assert isinstance(result.exception, RuntimeError)


def test_describe_error_uses_first_line() -> None:
    assert cli_module.describe_error(ValueError("first\nsecond")) == "first"
    assert cli_module.describe_error(ValueError("")) == "ValueError"
