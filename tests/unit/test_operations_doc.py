"""docs/operations.md agrees with the code: its commands, options, metric names and quoted log messages exist."""

from __future__ import annotations

import ast
import re
import shlex
from dataclasses import fields
from pathlib import Path
from types import SimpleNamespace

import pytest
from prometheus_client.registry import Collector

from benchmarks import loadgen
from gateway.metrics import GatewayMetrics
from gateway.server import UsersCollector
from node.metrics import NodeCollector
from objstore.bench import bench_command, parser
from objstore.cluster import ClusterMap, ECProfile, NodeInfo
from objstore.config import GatewayConfig, NodeConfig
from objstore.metrics import ProcessMetrics
from objstore.users import UserDirectory
from objstore.view import ClusterView
from tests.unit.test_deploy import (
    check_invocation,
    fenced_blocks,
    resolve,
    shell_invocations,
)

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "operations.md"
SOURCES = [p for package in ("objstore", "node", "gateway") for p in sorted((ROOT / package).glob("*.py"))]


# ---------------------------------------------------------------- commands


def doc_commands() -> list[tuple[list[str], bool]]:
    """(argv, complete) of every `objstore ...` line: whole lines in sh blocks, fragments in inline code."""
    text = DOC.read_text()
    lines = [(argv, True) for block in fenced_blocks(text, "sh") for argv in shell_invocations(block)]
    spans = [(shlex.split(s), False) for s in re.findall(r"`(objstore(?: [^`]*)?)`", text)]
    return lines + spans


def check_command(argv: list[str], complete: bool) -> None:
    """As test_deploy checks commands; `objstore bench` passes its options to the load generator's parser."""
    command, rest = resolve(argv, "operations.md")
    if command is bench_command:
        try:
            parser(loadgen).parse_args(rest)
        except SystemExit as e:
            assert e.code == 0, f"operations.md: `{shlex.join(argv)}`: the load generator refuses these options"
        return
    check_invocation(argv, "operations.md", complete=complete)


def test_every_command_line_of_the_runbook_exists() -> None:
    commands = doc_commands()
    assert len(commands) >= 20
    for argv, complete in commands:
        check_command(argv, complete)


def test_the_runbook_uses_the_operator_commands() -> None:
    names = {resolve(argv, "operations.md")[0].name for argv, _ in doc_commands()}
    assert {"status", "repair", "add-node", "remove-node", "drain", "set-weight", "create", "list", "delete",
            "bench"} <= names


@pytest.mark.parametrize("argv, problem", [
    (["objstore", "user", "create", "x", "--cluster", "c.json", "--no-such-option"], "no option"),
    (["objstore", "bench", "--no-such-option"], "refuses"),
    (["objstore", "users", "list"], "no command"),
])
def test_the_command_check_catches_what_the_cli_refuses(argv: list[str], problem: str) -> None:
    with pytest.raises(AssertionError, match=problem):
        check_command(argv, complete=True)


# ---------------------------------------------------------------- metrics


class _Node:
    """What NodeCollector reads of a node, with nothing running."""

    def __init__(self, cmap: ClusterMap) -> None:
        self.cmap = cmap
        self.loops = SimpleNamespace(report=lambda: {"repair": {}, "scrub": {}})

    def peer_state(self, node_id: str) -> str:
        return "up"


def exposed_names(families: list[object]) -> set[str]:
    """Every name a scrape shows for these metric families (counters with _total, histograms' series)."""
    suffixes = {"counter": ("_total",), "histogram": ("", "_bucket", "_sum", "_count"), "gauge": ("",)}
    return {f.name + s for f in families for s in suffixes.get(f.type, ("",))}  # type: ignore[attr-defined]


def real_metric_names() -> set[str]:
    cmap = ClusterMap(epoch=1, ec=ECProfile(k=2, m=1), nodes=tuple(
        NodeInfo(id=f"n{i}", address=f"127.0.0.1:{9001 + i}", zone=f"z{i}") for i in range(3)))
    collectors: list[Collector] = [NodeCollector(_Node(cmap)),  # type: ignore[arg-type]
                                   UsersCollector(UserDirectory([], None))]  # type: ignore[arg-type]
    families = [f for c in collectors for f in c.collect()]
    for metrics in (ProcessMetrics("node"), GatewayMetrics(ClusterView(cmap))):
        families += list(metrics.registry.collect())
    return exposed_names(families)


def test_every_metric_named_in_the_runbook_exists() -> None:
    real = real_metric_names()
    assert {"objstore_node_peers", "objstore_gateway_requests_total"} <= real
    assert not {"objstore_node_peers_total", "objstore_gateway_requests"} & real  # exposed names only
    named = set(re.findall(r"\bobjstore_[a-z0-9_]+", DOC.read_text()))
    assert len(named) >= 15
    assert named <= real, f"operations.md names metrics that do not exist: {sorted(named - real)}"


# ---------------------------------------------------------------- settings and status fields


def test_every_setting_and_status_field_named_in_the_runbook_exists() -> None:
    """A backticked snake_case word is a node or gateway setting, a field of `objstore status --json` or of a log
    line, or a PromQL function."""
    settings = {f.name for cls in (NodeConfig, GatewayConfig) for f in fields(cls)}
    status_fields = {node.value for module in ("ops.py", "logs.py")
                     for node in ast.walk(ast.parse((ROOT / "objstore" / module).read_text()))
                     if isinstance(node, ast.Constant) and isinstance(node.value, str)}
    status_fields |= {"histogram_quantile"}
    words = re.findall(r"`([a-z]+_[a-z_.]+)`", DOC.read_text())
    assert len(words) >= 10
    unknown = [w for w in words if not w.startswith("objstore_")
               and not all(part in settings | status_fields for part in w.split("."))]
    assert not unknown, f"operations.md names settings or status fields that do not exist: {unknown}"


# ---------------------------------------------------------------- log messages


_PLACEHOLDER = re.compile(r"%[-#0 +]*\d*(?:\.\d+)?[sdfrix]")


def message_patterns() -> list[tuple[str, str]]:
    """(regex, example) of every string literal and f-string of the sources with some words in it.

    A placeholder (%s, {expr}) becomes `.*` in the regex and `X` in the example.
    """
    out: list[tuple[str, str]] = []
    for path in SOURCES:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Constant) and isinstance(node.value, str):
                parts = _PLACEHOLDER.split(node.value)
            elif isinstance(node, ast.JoinedStr):
                parts, current = [], ""
                for value in node.values:
                    if isinstance(value, ast.Constant):
                        current += str(value.value)
                    else:
                        parts.append(current)
                        current = ""
                parts.append(current)
            else:
                continue
            if sum(len(p) for p in parts) >= 8 and len(node.value if isinstance(node, ast.Constant) else "") < 400:
                out.append((".*".join(re.escape(p) for p in parts), "X".join(parts)))
    return out


def quoted_messages() -> list[str]:
    return [" ".join(m.split()) for m in re.findall(r'`"([^`"]+)"`', DOC.read_text())]


def logged(message: str, patterns: list[tuple[str, str]]) -> bool:
    """The doc's message (… stands for any text) and some source string describe the same line."""
    doc_regex = ".*".join(re.escape(p) for p in message.split("…"))
    doc_example = message.replace("…", "X")
    return any(re.fullmatch(regex, doc_example) or re.fullmatch(doc_regex, example) for regex, example in patterns)


def test_every_quoted_log_message_is_one_the_code_writes() -> None:
    patterns = message_patterns()
    messages = quoted_messages()
    assert len(messages) >= 6
    missing = [m for m in messages if not logged(m, patterns)]
    assert not missing, f"operations.md quotes log lines no code writes: {missing}"


def test_the_log_check_refuses_an_invented_message() -> None:
    patterns = message_patterns()
    assert logged("node store2-d1 out of rotation after repeated failures", patterns)
    assert not logged("node store2-d1 exploded", patterns)


def test_the_readme_links_the_runbook() -> None:
    assert "](docs/operations.md)" in (ROOT / "README.md").read_text()
