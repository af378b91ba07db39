"""Settings: defaults, casts, and a one-line message naming a bad setting."""

from __future__ import annotations

import os
import re
from dataclasses import fields
from pathlib import Path

import pytest

from common.settings import SECRETS, SPEC, Settings, SettingsError
from tests.conftest import ROOT
from tests.processes import ingest_env, run_ingest


def test_defaults() -> None:
    s = Settings.from_env({}, dotenv=False)
    assert (s.queue, s.host, s.port) == ("copernica", "0.0.0.0", 8080)
    assert s.max_body_bytes == 10 * 1024 * 1024
    assert s.redis_url is None and s.database_url is None
    assert s.copernica_timezone == "Europe/Amsterdam"


def test_casts() -> None:
    s = Settings.from_env(
        {
            "INGEST_PORT": "9000",
            "INGEST_MAX_BODY_BYTES": "2048",
            "REDIS_URL": "redis://h:1/2",
            "DATABASE_URL": "postgresql://u@h/db",
            "INGEST_REDIS_TIMEOUT": "0.5",
        },
        dotenv=False,
    )
    assert (s.port, s.max_body_bytes, s.redis_timeout) == (9000, 2048, 0.5)
    assert s.redis_url == "redis://h:1/2"


def test_replica_settings() -> None:
    s = Settings.from_env({}, dotenv=False)
    assert (s.redis_min_replicas, s.redis_replica_timeout) == (0, 500)
    s = Settings.from_env({"INGEST_REDIS_MIN_REPLICAS": "2", "INGEST_REDIS_REPLICA_TIMEOUT": "250"}, dotenv=False)
    assert (s.redis_min_replicas, s.redis_replica_timeout) == (2, 250)


@pytest.mark.parametrize(
    ("var", "value", "says"),
    [
        ("INGEST_PORT", "eighty", "must be a whole number"),
        ("INGEST_PORT", "70000", "port number"),
        ("INGEST_MAX_BODY_BYTES", "0", "positive"),
        ("REDIS_URL", "localhost:6379", "redis://"),
        ("DATABASE_URL", "mysql://x", "postgresql://"),
        ("COPERNICA_TIMEZONE", "Nowhere/Town", "time zone"),
        ("INGEST_LOG_LEVEL", "LOUD", "one of"),
        ("INGEST_REDIS_MIN_REPLICAS", "-1", "zero or a positive"),
        ("INGEST_REDIS_MIN_REPLICAS", "one", "whole number"),
        ("INGEST_REDIS_REPLICA_TIMEOUT", "0", "positive"),
        ("INGEST_REDIS_REPLICA_TIMEOUT", "0.5", "whole number"),
    ],
)
def test_bad_value_names_the_setting(var: str, value: str, says: str) -> None:
    with pytest.raises(SettingsError) as info:
        Settings.from_env({var: value}, dotenv=False)
    message = str(info.value)
    assert message.startswith(f"{var}=") and says in message and "\n" not in message


def test_dotenv_is_read_and_environment_wins(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / ".env").write_text("INGEST_QUEUE=from-file\nINGEST_PORT=9999\n")
    monkeypatch.chdir(tmp_path)
    for _attr, var, *_ in SPEC:
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("INGEST_PORT", "7000")
    s = Settings.from_env()
    assert s.queue == "from-file" and s.port == 7000
    assert "INGEST_QUEUE" not in os.environ


def test_require_names_the_missing_setting() -> None:
    with pytest.raises(SettingsError, match="DATABASE_URL is not set"):
        Settings.from_env({}, dotenv=False).require("database_url")


def test_required_is_the_value_or_the_same_message() -> None:
    url = "redis://localhost:6379/0"
    assert Settings.from_env({"REDIS_URL": url}, dotenv=False).required("redis_url") == url
    with pytest.raises(SettingsError, match="DATABASE_URL is not set"):
        Settings.from_env({"REDIS_URL": url}, dotenv=False).required("database_url")


README = ROOT / "README.md"


def readme_settings_table(text: str) -> dict[str, str]:
    """The README's settings table (`| `VAR` | default | meaning |` rows under "## Settings"):
    each variable and its default column as written."""
    section = text.split("\n## Settings\n", 1)[1].split("\n## ", 1)[0]
    rows: dict[str, str] = {}
    for line in section.splitlines():
        match = re.fullmatch(r"\| `([A-Z][A-Z0-9_]*)` \| (.+?) \| .+ \|", line.strip())
        if match:
            assert match[1] not in rows, f"{match[1]} is in the README's settings table twice"
            rows[match[1]] = match[2]
    return rows


def shown_default(default: object) -> str:
    return "(unset)" if default is None else f"`{default}`"


def test_readme_settings_table_matches_the_code() -> None:
    table = readme_settings_table(README.read_text())
    assert len(table) > 10  # the table was found and parsed
    in_code = {var: shown_default(default) for _attr, var, _cast, default, _doc in SPEC}
    assert sorted(set(in_code) - set(table)) == [], "settings missing from the README's table"
    assert sorted(set(table) - set(in_code)) == [], "README rows that are no setting"
    wrong = {var: (table[var], shown) for var, shown in in_code.items() if table[var] != shown}
    assert wrong == {}, "README default differs from the code's (README, code)"


def test_every_setting_is_declared_once_with_its_parts() -> None:
    names = [f.name for f in fields(Settings)]
    assert [attr for attr, *_ in SPEC] == names
    assert len({var for _attr, var, *_ in SPEC}) == len(SPEC)  # no variable read twice
    for attr, var, cast, default, doc in SPEC:
        assert callable(cast) and doc.strip(), var
        assert getattr(Settings(), attr) == default  # the dataclass default is the setting's default
        if default is not None:  # the default survives its own cast, as it would if written out
            assert cast(str(default)) == default, var
    assert {
        "COPERNICA_ACCESS_TOKEN",
        "INGEST_TOKENS",
        "REDIS_SENTINEL_PASSWORD",
        "INGEST_CONSOLE_USERS",
        "INGEST_CONSOLE_SECRET",
        "INGEST_ERASURE_KEY",
    } == SECRETS
    shown = repr(Settings.from_env({"INGEST_TOKENS": "t" * 20, "COPERNICA_ACCESS_TOKEN": "secret-token"}, dotenv=False))
    assert "t" * 20 not in shown and "secret-token" not in shown


def test_connection_bounds_settings() -> None:
    s = Settings.from_env({}, dotenv=False)
    assert (s.head_timeout, s.max_connections) == (10.0, 4096)
    s = Settings.from_env({"INGEST_HEAD_TIMEOUT": "2.5", "INGEST_MAX_CONNECTIONS": "100"}, dotenv=False)
    assert (s.head_timeout, s.max_connections) == (2.5, 100)
    for var, value in (("INGEST_HEAD_TIMEOUT", "0"), ("INGEST_MAX_CONNECTIONS", "-1")):
        with pytest.raises(SettingsError, match=f"^{var}="):
            Settings.from_env({var: value}, dotenv=False)


def test_bad_replica_setting_stops_the_receiver_in_one_line() -> None:
    env = ingest_env("redis://127.0.0.1:1/0", "postgresql://u@127.0.0.1:1/db", INGEST_REDIS_MIN_REPLICAS="-1")
    done = run_ingest(["serve"], env, timeout=30)
    assert done.returncode == 2
    assert done.stderr.strip() == (
        "ingest: INGEST_REDIS_MIN_REPLICAS='-1' is not valid: must be zero or a positive whole number"
    )


def test_database_url_may_list_several_hosts() -> None:
    url = "postgresql://u:pw@10.0.0.1:5432,10.0.0.2:5433/ingest?target_session_attrs=read-write"
    settings = Settings.from_env({"DATABASE_URL": url}, dotenv=False)
    assert settings.required("database_url") == url
    assert settings.to_env()["DATABASE_URL"] == url  # handed to child processes as it is
