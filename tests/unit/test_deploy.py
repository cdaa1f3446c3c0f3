"""The deploy kits and operator docs agree with the code: configs load, maps parse, commands and options exist."""

from __future__ import annotations

import json
import math
import re
import shlex
import shutil
import subprocess
import tomllib
from collections.abc import Iterator
from dataclasses import MISSING, Field, fields
from pathlib import Path
from typing import Any

import click
import pytest
import yaml
from click.testing import CliRunner

from objstore.cli import cli
from objstore.cluster import ClusterMap, ClusterMapError, ECProfile, NodeInfo, Pool
from objstore.config import (
    GatewayConfig,
    NodeConfig,
    User,
    gateway_config_from_dict,
    node_config_from_dict,
)

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
EXAMPLES = DEPLOY / "examples"
COMPOSE = DEPLOY / "compose"
K8S = DEPLOY / "k8s"
SYSTEMD = DEPLOY / "systemd"
CONFIG_DOC = ROOT / "docs" / "configuration.md"
DEPLOY_DOC = ROOT / "docs" / "deploy.md"

ENV_VARS = {"OBJSTORE_SECRET", "OBJSTORE_ACCESS_KEY", "OBJSTORE_SECRET_KEY"}
SWITCHES = {"OBJSTORE_ISAL"}  # read by objstore/isal.py, not by the configuration
# Every kind of file the kits hold; a new kind must come with checks of its own.
FILE_KINDS = (".toml", ".json", ".yml", ".yaml", ".service", ".env", ".env.example", "Dockerfile", ".dockerignore",
              ".gitignore")


@pytest.fixture(autouse=True)
def cluster_secret(monkeypatch: pytest.MonkeyPatch) -> None:
    """The kits keep the secret out of TOML files: give it as the processes get it, from the environment."""
    monkeypatch.setenv("OBJSTORE_SECRET", "0" * 64)
    monkeypatch.delenv("OBJSTORE_ACCESS_KEY", raising=False)
    monkeypatch.delenv("OBJSTORE_SECRET_KEY", raising=False)


def deploy_files(*suffixes: str) -> list[Path]:
    return sorted(p for p in DEPLOY.rglob("*") if p.is_file() and p.name.endswith(suffixes))


def load_config(doc: dict[str, Any], where: str) -> NodeConfig | GatewayConfig:
    """A node config names its data dir, a gateway config does not; unknown fields fail either way."""
    if "data_dir" in doc or "id" in doc:
        return node_config_from_dict(doc, where)
    return gateway_config_from_dict(doc, where)


def host_port(address: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    return host, int(port)


# ---------------------------------------------------------------------------
# objstore command lines, checked against the real click tree


HELP_OPTS = {"-h", "--help"}


def resolve(argv: list[str], where: str) -> tuple[click.Command, list[str]]:
    """Walk `objstore a b c ...` down the click groups; returns the command reached and the rest of argv."""
    command: click.Command = cli
    ctx = click.Context(cli, info_name="objstore")
    rest = list(argv[1:])
    while isinstance(command, click.Group) and rest and not rest[0].startswith("-"):
        sub = command.get_command(ctx, rest[0])
        assert sub is not None, f"{where}: `{shlex.join(argv)}`: objstore has no command {rest[0]!r}"
        ctx = click.Context(sub, parent=ctx, info_name=rest[0])
        command, rest = sub, rest[1:]
    return command, rest


def check_invocation(argv: list[str], where: str, complete: bool = True) -> click.Command:
    """Every option exists on the command; a complete line also has its required options and arguments."""
    line = shlex.join(argv)
    command, rest = resolve(argv, where)
    options = {opt: p for p in command.params if isinstance(p, click.Option) for opt in (*p.opts, *p.secondary_opts)}
    given: set[str] = set()
    positional: list[str] = []
    tokens = iter(rest)
    for token in tokens:
        if token.startswith("-") and token != "-":
            name, eq, _ = token.partition("=")
            if name in HELP_OPTS:
                return command
            assert name in options, f"{where}: `{line}`: {command.name} has no option {name}"
            param = options[name]
            if param.is_eager:  # --version and the like end the line
                return command
            given.add(param.name or name)
            if not param.is_flag and not param.count and not eq:
                assert next(tokens, None) is not None, f"{where}: `{line}`: {name} needs a value"
        else:
            positional.append(token)
    arguments = [p for p in command.params if isinstance(p, click.Argument)]
    most = math.inf if any(p.nargs == -1 for p in arguments) else sum(p.nargs for p in arguments)
    assert len(positional) <= most, f"{where}: `{line}`: too many arguments for {command.name}"
    if complete:
        assert not isinstance(command, click.Group), f"{where}: `{line}` names a group, not a command"
        for p in command.params:
            if isinstance(p, click.Option) and p.required:
                assert p.name in given, f"{where}: `{line}`: {command.name} needs {p.opts[0]}"
        least = sum(max(p.nargs, 1) for p in arguments if p.required)
        assert len(positional) >= least, f"{where}: `{line}`: {command.name} needs {least} arguments"
    return command


# Words after which a word is a command, not an argument (`sudo objstore`, `kubectl exec pod -- objstore`).
STARTERS = {"sudo", "--", "&&", "||", ";", "|", "then", "do", "time"}
SEPARATORS = {"&&", "||", ";", "|", ";;", "&", ")"}


def shell_invocations(script: str) -> Iterator[list[str]]:
    """`objstore ...` command lines in a shell snippet (continuations joined, comments dropped)."""
    for line in script.replace("\\\n", " ").splitlines():
        lexer = shlex.shlex(line, posix=True, punctuation_chars=True)
        lexer.whitespace_split = True
        tokens = list(lexer)
        for i, token in enumerate(tokens):
            starts = i == 0 or tokens[i - 1] in STARTERS or (i >= 2 and tokens[i - 2] == "exec")
            if Path(token).name == "objstore" and starts:
                end = next((j for j in range(i + 1, len(tokens)) if tokens[j] in SEPARATORS), len(tokens))
                yield ["objstore", *tokens[i + 1 : end]]


def fenced_blocks(text: str, lang: str) -> list[str]:
    return re.findall(rf"^```{lang}\n(.*?)^```", text, flags=re.DOTALL | re.MULTILINE)


def test_shell_invocations_find_commands_not_arguments() -> None:
    script = (
        "sudo useradd --system --shell /usr/sbin/nologin objstore\n"
        "sudo install -d -o objstore -g objstore /var/lib/objstore/d1 && objstore status --json \\\n"
        "  --cluster a.toml\n"
        "kubectl -n objstore exec objstore-a-0 -- objstore cluster show --cluster m.json  # comment\n"
        "docker compose exec node1 objstore --version\n"
    )
    assert list(shell_invocations(script)) == [
        ["objstore", "status", "--json", "--cluster", "a.toml"],
        ["objstore", "cluster", "show", "--cluster", "m.json"],
        ["objstore", "--version"],
    ]


@pytest.mark.parametrize(
    ("argv", "complete", "problem"),
    [
        (["objstore", "nodes", "--config", "x"], True, "no command 'nodes'"),
        (["objstore", "node", "--conf", "x"], True, "no option --conf"),
        (["objstore", "node"], True, "needs --config"),
        (["objstore", "cluster"], True, "names a group"),
        (["objstore", "cluster", "drain", "--cluster", "x.toml"], True, "needs 1 arguments"),
        (["objstore", "cluster", "show", "--cluster", "x", "extra"], False, "too many arguments"),
    ],
)
def test_check_invocation_catches_what_the_cli_would_refuse(argv: list[str], complete: bool, problem: str) -> None:
    with pytest.raises(AssertionError, match=problem):
        check_invocation(argv, "here", complete)


# ---------------------------------------------------------------------------
# every file under deploy/


def test_every_deploy_file_is_of_a_checked_kind() -> None:
    files = [p for p in DEPLOY.rglob("*") if p.is_file()]
    assert len(files) > 20
    unknown = [str(p.relative_to(ROOT)) for p in files if not p.name.endswith(FILE_KINDS)]
    assert not unknown, f"no checks for {unknown}"


@pytest.mark.parametrize("path", deploy_files(".toml"), ids=lambda p: str(p.relative_to(DEPLOY)))
def test_toml_files_load_through_the_config_schema(path: Path) -> None:
    doc = tomllib.loads(path.read_text())
    assert "secret" not in doc, f"{path}: the cluster secret belongs in the environment, not in a config file"
    cfg = load_config(doc, str(path))
    assert cfg.map, f"{path}: every kit starts its processes from a map file"
    assert cfg.seeds, f"{path}: every kit gives seeds to learn newer maps from"
    assert cfg.log_level in {"debug", "info", "warning", "error"}


def test_toml_check_rejects_an_unknown_field() -> None:
    doc = tomllib.loads((EXAMPLES / "node.toml").read_text()) | {"fsnyc": False}
    with pytest.raises(ValueError, match="unknown field 'fsnyc'"):
        load_config(doc, "node.toml")


@pytest.mark.parametrize("path", deploy_files(".json"), ids=lambda p: str(p.relative_to(DEPLOY)))
def test_cluster_maps_load_and_round_trip(path: Path) -> None:
    doc = json.loads(path.read_text())
    cmap = ClusterMap.from_dict(doc)
    assert cmap.to_dict() == ClusterMap.from_dict(cmap.to_dict()).to_dict()
    assert cmap.epoch == 1
    assert all(n.state == "active" for n in cmap.nodes)
    for pool in (None, *(p.name for p in cmap.pools)):
        nodes = cmap.pool_nodes(pool)
        ec = cmap.pool(pool).ec
        assert len(nodes) >= ec.width, f"{path}: pool {pool or 'default'} has fewer nodes than {ec.k}+{ec.m}"
        assert len({n.zone for n in nodes}) >= 3, f"{path}: pool {pool or 'default'} should span 3 zones"


def read_env_file(path: Path) -> dict[str, str]:
    values = {}
    for line in path.read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            name, sep, value = line.partition("=")
            assert sep and name == name.strip() and value, f"{path}: {line!r} is not NAME=value"
            values[name] = value
    return values


@pytest.mark.parametrize("path", deploy_files(".env", ".env.example"), ids=lambda p: str(p.relative_to(DEPLOY)))
def test_env_files_set_only_variables_objstore_reads(path: Path) -> None:
    values = read_env_file(path)
    assert values and set(values) <= ENV_VARS, f"{path}: unknown variables {set(values) - ENV_VARS}"


def test_example_configs_match_the_example_map() -> None:
    cmap = ClusterMap.load(EXAMPLES / "cluster.json")
    addresses = {n.address for n in cmap.nodes}
    node = node_config_from_dict(tomllib.loads((EXAMPLES / "node.toml").read_text()))
    assert cmap.node(node.id).address == node.listen
    assert set(node.seeds) <= addresses and node.listen not in node.seeds
    gateway = gateway_config_from_dict(tomllib.loads((EXAMPLES / "gateway.toml").read_text()))
    assert set(gateway.seeds) <= addresses
    assert (cmap.ec.k, cmap.ec.m, len(cmap.nodes), len({n.zone for n in cmap.nodes})) == (4, 2, 6, 3)


def test_example_pool_keeps_french_data_on_french_nodes() -> None:
    cmap = ClusterMap.load(EXAMPLES / "cluster-pools.json")
    pool = cmap.pool("fr")
    assert pool.selector == {"jurisdiction": "FR"}
    members = cmap.pool_nodes("fr")
    assert members and all(n.labels.get("jurisdiction") == "FR" for n in members)
    assert len({n.zone for n in members}) >= pool.ec.width


# ---------------------------------------------------------------------------
# systemd units


def read_unit(path: Path) -> dict[str, dict[str, list[str]]]:
    """systemd's INI dialect: repeated keys add values, so every key maps to a list."""
    sections: dict[str, dict[str, list[str]]] = {}
    current: dict[str, list[str]] | None = None
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line[0] in "#;":
            continue
        if line.startswith("[") and line.endswith("]"):
            current = sections.setdefault(line[1:-1], {})
            continue
        key, sep, value = line.partition("=")
        assert sep and current is not None, f"{path}: {raw!r} is not Key=value inside a section"
        current.setdefault(key.strip(), []).append(value.strip())
    return sections


UNITS = sorted(SYSTEMD.glob("*.service"))


def test_units_cover_node_template_and_gateway() -> None:
    assert {p.name for p in UNITS} == {"objstore-node.service", "objstore-node@.service", "objstore-gateway.service"}


@pytest.mark.parametrize("path", UNITS, ids=lambda p: p.name)
def test_unit_is_hardened_and_runs_a_real_command(path: Path) -> None:
    unit = read_unit(path)
    service = unit["Service"]
    one = {key: values[-1] for key, values in service.items()}
    assert unit["Unit"]["Description"] and unit["Install"]["WantedBy"] == ["multi-user.target"]
    assert (one["User"], one["Group"]) == ("objstore", "objstore")
    assert one["ProtectSystem"] == "strict"
    for key in ("PrivateTmp", "NoNewPrivileges", "ProtectHome", "PrivateDevices"):
        assert one[key] == "yes", key
    assert one["CapabilityBoundingSet"] == "" and one["AmbientCapabilities"] == ""
    assert one["Restart"] == "on-failure"
    assert int(one["LimitNOFILE"]) >= 65536
    assert "/etc/objstore/secret.env" in service["EnvironmentFile"]
    instance = "d1" if "@" in path.name else ""
    argv = shlex.split(one["ExecStart"].replace("%i", instance))
    assert argv[0] == "/opt/objstore/bin/objstore"
    command = check_invocation(argv, path.name)
    config = argv[argv.index("--config") + 1]
    assert config.startswith("/etc/objstore/") and config.endswith(".toml")
    assert unit["Unit"]["ConditionPathExists"] == [config.replace(f"-{instance}.", "-%i.") if instance else config]
    if command.name == "node":
        writable = one["ReadWritePaths"].replace("%i", instance).split()
        example = node_config_from_dict(tomllib.loads((EXAMPLES / "node.toml").read_text()))
        assert any(Path(example.data_dir).is_relative_to(w) for w in writable), (path.name, example.data_dir)
        assert Path(config).name in {"node.toml", f"node-{instance}.toml"}
    else:
        assert command.name == "gateway" and "ReadWritePaths" not in service, "a gateway writes nothing"
        assert Path(config).name == "gateway.toml"


def systemd_verify(unit: Path, tmp_path: Path) -> str:
    """`systemd-analyze verify` of a unit, its ExecStart binary swapped for one that exists here (the tool
    checks that it is executable); template units are verified as instance d1. Returns what it printed."""
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed")
    copy = tmp_path / unit.name.replace("@.", "@d1.")
    copy.write_text(unit.read_text().replace("/opt/objstore/bin/objstore", shutil.which("true") or "/bin/true"))
    done = subprocess.run([analyze, "verify", str(copy)], capture_output=True, text=True, timeout=60)
    return (done.stdout + done.stderr).strip() + ("" if done.returncode == 0 else f"\nexit {done.returncode}")


@pytest.mark.parametrize("path", UNITS, ids=lambda p: p.name)
def test_systemd_analyze_verifies_the_unit(path: Path, tmp_path: Path) -> None:
    assert systemd_verify(path, tmp_path) == ""


def test_systemd_analyze_verify_catches_a_bad_unit(tmp_path: Path) -> None:
    (tmp_path / "in").mkdir()
    bad = tmp_path / "in" / "objstore-bad.service"
    bad.write_text(UNITS[0].read_text().replace("ProtectSystem=strict", "ProtectSystem=stricter\nBogusKey=1"))
    said = systemd_verify(bad, tmp_path)
    assert "BogusKey" in said and "protect system" in said.lower()


# ---------------------------------------------------------------------------
# Docker Compose


def dockerfile_instructions(path: Path) -> list[tuple[str, str]]:
    text = re.sub(r"\\\n\s*", " ", path.read_text())
    out = []
    for line in text.splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            word, _, rest = line.strip().partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def test_every_kit_runs_gateways_and_nodes_with_two_malloc_arenas() -> None:
    """MALLOC_ARENA_MAX=2 wherever objstore processes are started: after a burst of writes glibc would
    otherwise keep one arena per encoding thread at its peak (gateway RSS stayed at 240 MB)."""
    for path in UNITS:
        assert "MALLOC_ARENA_MAX=2" in read_unit(path)["Service"].get("Environment", []), path.name
    env = " ".join(rest for word, rest in dockerfile_instructions(COMPOSE / "Dockerfile") if word == "ENV")
    assert "MALLOC_ARENA_MAX=2" in env.split(), "the image of compose and Kubernetes"
    for manifest in (K8S / "gateway.yaml", K8S / "nodes.yaml"):
        images = re.findall(r"image: (\S+)", manifest.read_text())
        assert images and all(i.startswith("objstore:") for i in images), f"{manifest.name} runs the image"
    from objstore.devcluster import child_env
    assert child_env()["MALLOC_ARENA_MAX"] == "2", "objstore dev and the test clusters"


def test_dockerfile_installs_the_project_and_runs_objstore_unprivileged() -> None:
    steps = dockerfile_instructions(COMPOSE / "Dockerfile")
    bases = [rest.split()[0] for word, rest in steps if word == "FROM"]
    assert bases and all(b == "python:3.11-slim" for b in bases)
    for word, rest in steps:
        if word == "COPY" and not rest.startswith("--from"):
            for source in rest.split()[:-1]:
                assert (ROOT / source).exists(), f"Dockerfile copies {source}, which is not in the repository"
    assert any(word == "RUN" and "pip install" in rest for word, rest in steps)
    assert json.loads(dict(steps)["ENTRYPOINT"]) == ["objstore"]
    check_invocation(["objstore", *json.loads(dict(steps)["CMD"])], "Dockerfile CMD", complete=False)
    uid = dict(steps)["USER"].split(":")[0]
    assert uid.isdigit() and int(uid) > 0


def test_compose_runs_six_nodes_and_a_gateway_that_agree_with_their_map() -> None:
    doc = yaml.safe_load((COMPOSE / "docker-compose.yml").read_text())
    services: dict[str, dict[str, Any]] = doc["services"]
    entrypoint = json.loads(dict(dockerfile_instructions(COMPOSE / "Dockerfile"))["ENTRYPOINT"])
    declared_volumes = set(doc["volumes"])
    used_volumes: list[str] = []
    cmaps: set[str] = set()
    kinds: dict[str, Any] = {}
    for name, svc in services.items():
        assert svc["image"] == "objstore:local" and "healthcheck" in svc
        assert (COMPOSE / svc["build"]["context"] / svc["build"]["dockerfile"]).resolve() == COMPOSE / "Dockerfile"
        for env_file in svc["env_file"]:
            assert (COMPOSE / f"{env_file}.example").is_file(), f"{name}: {env_file} has no committed example"
        argv = [*entrypoint, *svc["command"]]
        command = check_invocation(argv, f"compose service {name}")
        mounts = {target: source for source, target, *_ in (v.split(":") for v in svc["volumes"])}
        config_path = Path(argv[argv.index("--config") + 1])
        host_dir = COMPOSE / mounts[str(config_path.parent)]
        cfg = load_config(tomllib.loads((host_dir / config_path.name).read_text()), f"{name}")
        map_path = Path(cfg.map)
        assert str(map_path.parent) in mounts, f"{name}: map {map_path} is not mounted"
        cmap = ClusterMap.load(COMPOSE / mounts[str(map_path.parent)] / map_path.name)
        cmaps.add(cmap.to_json())
        addresses = {n.address for n in cmap.nodes}
        assert set(cfg.seeds) <= addresses
        kinds[name] = command.name
        if isinstance(cfg, NodeConfig):
            volume = mounts[cfg.data_dir]
            assert volume in declared_volumes, f"{name}: data_dir {cfg.data_dir} is not on a named volume"
            used_volumes.append(volume)
            assert cmap.node(cfg.id).address == f"{name}:{host_port(cfg.listen)[1]}"
            assert svc["env_file"] == ["secret.env"]
        else:
            assert f"{host_port(cfg.listen)[1]}:{host_port(cfg.listen)[1]}" in svc["ports"]
            assert set(svc["depends_on"]) == {n for n, s in services.items() if n != name}
            assert "gateway.env" in svc["env_file"]
    assert sorted(kinds.values()) == ["gateway"] + ["node"] * 6
    assert sorted(used_volumes) == sorted(declared_volumes), "one volume per node, each used once"
    assert len(cmaps) == 1, "every process reads the same map"
    cmap = ClusterMap.from_dict(json.loads(cmaps.pop()))
    assert (cmap.ec.k, cmap.ec.m, len({n.zone for n in cmap.nodes})) == (4, 2, 3)
    assert {n.id for n in cmap.nodes} == {n for n, kind in kinds.items() if kind == "node"}


# ---------------------------------------------------------------------------
# Kubernetes


def k8s_resources(name: str) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all((K8S / name).read_text()) if d]


def test_kustomization_applies_every_manifest_but_the_secret_example() -> None:
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    manifests = {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml", "secret.example.yaml"}
    assert set(kustomization["resources"]) == manifests
    for name in manifests | {"secret.example.yaml"}:
        for res in k8s_resources(name):
            assert res["apiVersion"] and res["kind"] and res["metadata"]["name"], name
            assert res["kind"] == "Namespace" or res["metadata"]["namespace"] == "objstore"


def container_env(container: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {e["name"]: e for e in container.get("env", [])}


def test_k8s_nodes_and_gateways_agree_with_configmap_map_and_secret() -> None:
    resources = [r for name in ("configmap.yaml", "nodes.yaml", "gateway.yaml") for r in k8s_resources(name)]
    by_kind: dict[str, dict[str, dict[str, Any]]] = {}
    for r in resources:
        by_kind.setdefault(r["kind"], {})[r["metadata"]["name"]] = r
    secret = k8s_resources("secret.example.yaml")[0]
    assert secret["kind"] == "Secret" and set(secret["stringData"]) == ENV_VARS
    config = by_kind["ConfigMap"]["objstore-config"]["data"]
    cmap = ClusterMap.from_dict(json.loads(config["cluster.json"]))
    pods_seen: set[str] = set()

    for sts in by_kind["StatefulSet"].values():
        service = by_kind["Service"][sts["spec"]["serviceName"]]["spec"]
        assert service["clusterIP"] == "None" and service["publishNotReadyAddresses"] is True
        pod = sts["spec"]["template"]
        assert service["selector"].items() <= pod["metadata"]["labels"].items()
        assert sts["spec"]["selector"]["matchLabels"].items() <= pod["metadata"]["labels"].items()
        (claim,) = sts["spec"]["volumeClaimTemplates"]
        (container,) = pod["spec"]["containers"]
        assert container["readinessProbe"]
        env = container_env(container)
        assert env["POD_NAME"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"
        assert env["OBJSTORE_SECRET"]["valueFrom"]["secretKeyRef"] == {"name": "objstore", "key": "OBJSTORE_SECRET"}
        mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
        ports = {p["name"]: p["containerPort"] for p in container["ports"]}
        zones = pod["spec"]["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
        (zone,) = zones["nodeSelectorTerms"][0]["matchExpressions"][0]["values"]
        for ordinal in range(sts["spec"]["replicas"]):
            pod_name = f"{sts['metadata']['name']}-{ordinal}"
            argv = ["objstore", *(a.replace("$(POD_NAME)", pod_name) for a in container["args"])]
            assert check_invocation(argv, f"statefulset {pod_name}").name == "node"
            config_path = Path(argv[argv.index("--config") + 1])
            assert mounts[str(config_path.parent)] == "config"
            cfg = node_config_from_dict(tomllib.loads(config[config_path.name]), config_path.name)
            assert cfg.id == pod_name and mounts[cfg.data_dir] == claim["metadata"]["name"]
            assert Path(cfg.map).name == "cluster.json" and mounts[str(Path(cfg.map).parent)] == "config"
            node = cmap.node(pod_name)
            assert node.address == f"{pod_name}.{sts['spec']['serviceName']}:{ports['rpc']}"
            assert host_port(cfg.listen)[1] == ports["rpc"] and node.zone == zone
            assert set(cfg.seeds) <= {n.address for n in cmap.nodes}
            pods_seen.add(pod_name)
    assert pods_seen == {n.id for n in cmap.nodes}, "every node of the map is a pod, every pod a node"
    assert (cmap.ec.k, cmap.ec.m, len({n.zone for n in cmap.nodes})) == (4, 2, 3)

    (deployment,) = by_kind["Deployment"].values()
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    argv = ["objstore", *container["args"]]
    assert check_invocation(argv, "gateway deployment").name == "gateway"
    gateway = gateway_config_from_dict(tomllib.loads(config[Path(argv[argv.index("--config") + 1]).name]))
    assert set(gateway.seeds) <= {n.address for n in cmap.nodes}
    assert container["envFrom"] == [{"secretRef": {"name": secret["metadata"]["name"]}}]
    probe_path = container["readinessProbe"]["httpGet"]["path"]
    assert f'"{probe_path}"' in (ROOT / "gateway" / "server.py").read_text(), "the probe path is a gateway route"
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports["s3"] == host_port(gateway.listen)[1]
    s3_services = [s for s in by_kind["Service"].values() if s["spec"].get("clusterIP") != "None"]
    assert [(p["port"], p["targetPort"]) for s in s3_services for p in s["spec"]["ports"]] == [(9000, "s3")]


# ---------------------------------------------------------------------------
# docs/configuration.md: every field documented, nothing documented that does not exist

TOML_TYPES = {"str": "string", "bool": "boolean", "int": "integer", "float": "float",
              "list[str]": "array of strings", "list[User]": "array of tables"}


def doc_table(cls: type) -> dict[str, list[str]]:
    """The rows (field -> cells) of the table under the heading that names `Class`."""
    text = CONFIG_DOC.read_text()
    match = re.search(rf"^#+ [^\n]*\(`{cls.__name__}`\)\n(.*?)(?=^#)", text + "\n#", flags=re.DOTALL | re.MULTILINE)
    assert match, f"docs/configuration.md has no section for {cls.__name__}"
    rows = {}
    for line in match.group(1).splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if line.startswith("|") and cells[0].startswith("`"):
            rows[cells[0].strip("`")] = cells[1:]
    return rows


def toml_default(f: Field[Any]) -> str:
    if f.default is not MISSING:
        value = f.default
    elif f.default_factory is not MISSING:
        value = f.default_factory()
    else:
        return "required"
    if isinstance(value, bool):
        return f"`{str(value).lower()}`"
    return f"`{json.dumps(value)}`" if isinstance(value, (str, list)) else f"`{value!r}`"


@pytest.mark.parametrize("cls", [NodeConfig, GatewayConfig, User], ids=lambda c: c.__name__)
def test_configuration_doc_lists_every_config_field_with_type_and_default(cls: type) -> None:
    rows = doc_table(cls)
    assert list(rows) == [f.name for f in fields(cls)], "same fields, in the dataclass's order"
    for f in fields(cls):
        type_cell, default_cell, meaning = rows[f.name]
        assert type_cell == TOML_TYPES[str(f.type)], f.name
        assert default_cell == toml_default(f), f.name
        assert len(meaning) > 20, f"{f.name}: say what it means"


def full_map() -> dict[str, Any]:
    """A map that sets every field to something other than its default (so a dropped field shows its default)."""
    return {
        "epoch": 1,
        "ec": {"k": 2, "m": 1, "block_size": 4096},
        "partition_bits": 8,
        "nodes": [{"id": f"n{i}", "address": f"h{i}:1", "zone": f"z{i}", "labels": {"x": "y"}, "weight": 2.0,
                   "state": "draining"} for i in range(3)],
        "pools": [{"name": "p", "selector": {"x": "y"}, "ec": {"k": 1, "m": 1, "block_size": 4096}}],
    }


# Where each map class sits in full_map(), and how to read the field back from the parsed map.
MAP_PARTS: dict[type, tuple[Any, Any]] = {
    ClusterMap: (lambda d: d, lambda m: m),
    ECProfile: (lambda d: d["ec"], lambda m: m.ec),
    NodeInfo: (lambda d: d["nodes"][0], lambda m: m.nodes[0]),
    Pool: (lambda d: d["pools"][0], lambda m: m.pools[0]),
}


@pytest.mark.parametrize("cls", list(MAP_PARTS), ids=lambda c: c.__name__)
def test_configuration_doc_lists_every_map_field_with_the_parsers_default(cls: type) -> None:
    rows = doc_table(cls)
    assert list(rows) == [f.name for f in fields(cls)], "same fields, in the dataclass's order"
    part, read = MAP_PARTS[cls]
    for name, (type_cell, default_cell, meaning) in rows.items():
        assert type_cell and len(meaning) > 20, name
        doc = full_map()
        del part(doc)[name]
        if default_cell == "required":
            with pytest.raises(ClusterMapError):
                ClusterMap.from_dict(doc)
        else:
            value = getattr(read(ClusterMap.from_dict(doc)), name)
            expected = json.loads(default_cell.strip("`"))
            assert value == expected or (isinstance(value, tuple) and list(value) == expected), name


def test_configuration_doc_names_every_environment_variable() -> None:
    """The reference lists what the configuration reads and the process-wide switches (the erasure code's
    backend), no more and no less."""
    documented = set(re.findall(r"`(OBJSTORE_[A-Z_]+)`", CONFIG_DOC.read_text()))
    source = "".join((ROOT / "objstore" / name).read_text() for name in ("config.py", "isal.py"))
    assert documented == ENV_VARS | SWITCHES == set(re.findall(r"\"(OBJSTORE_[A-Z_]+)\"", source))


# ---------------------------------------------------------------------------
# the docs' snippets and commands

DOCS = [CONFIG_DOC, DEPLOY_DOC]


@pytest.mark.parametrize("path", DOCS, ids=lambda p: p.name)
def test_doc_snippets_load_and_commands_exist(path: Path) -> None:
    text = path.read_text()
    for block in fenced_blocks(text, "toml"):
        load_config(tomllib.loads(block), f"{path.name} toml block")
    for block in fenced_blocks(text, "json"):
        ClusterMap.from_dict(json.loads(block))
    lines = [argv for block in fenced_blocks(text, "sh") for argv in shell_invocations(block)]
    for argv in lines:
        check_invocation(argv, path.name)
    spans = [shlex.split(s) for s in re.findall(r"`(objstore(?: [^`]*)?)`", text)]
    for argv in spans:
        check_invocation(argv, path.name, complete=False)
    assert len(lines) + len(spans) >= 3
    for ref in re.findall(r"`(deploy/[^`\s]+)`", text):
        assert (ROOT / ref).exists(), f"{path.name} names {ref}, which does not exist"


def test_deploy_doc_runs_every_operator_command() -> None:
    text = DEPLOY_DOC.read_text()
    lines = [argv for block in fenced_blocks(text, "sh") for argv in shell_invocations(block)]
    lines += [shlex.split(span) for span in re.findall(r"`(objstore [^`]*)`", text)]
    names = {resolve(argv, "deploy.md")[0].name for argv in lines}
    assert {"init", "show", "status", "repair", "add-node", "drain", "remove-node", "set-weight"} <= names


def test_deploy_doc_cluster_init_writes_the_example_map(tmp_path: Path) -> None:
    (argv,) = [a for block in fenced_blocks(DEPLOY_DOC.read_text(), "sh") for a in shell_invocations(block)
               if a[1:3] == ["cluster", "init"]]
    out = argv.index("--out") + 1
    argv[out] = str(tmp_path / "cluster.json")
    result = CliRunner().invoke(cli, argv[1:], prog_name="objstore")
    assert result.exit_code == 0, result.output
    written = ClusterMap.load(tmp_path / "cluster.json")
    assert written == ClusterMap.load(EXAMPLES / "cluster.json")
