"""Settings: defaults, casts, and a one-line message naming a bad setting."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from ingest.settings import SPEC, Settings, SettingsError


def test_defaults() -> None:
    s = Settings.from_env({}, dotenv=False)
    assert (s.queue, s.host, s.port) == ("copernica", "0.0.0.0", 8080)
    assert s.max_body_bytes == 10 * 1024 * 1024
    assert s.redis_url is None and s.database_url is None
    assert s.copernica_timezone == "Europe/Amsterdam"


def test_casts() -> None:
    s = Settings.from_env({"INGEST_PORT": "9000", "INGEST_MAX_BODY_BYTES": "2048", "REDIS_URL": "redis://h:1/2",
                           "DATABASE_URL": "postgresql://u@h/db", "INGEST_REDIS_TIMEOUT": "0.5"}, dotenv=False)
    assert (s.port, s.max_body_bytes, s.redis_timeout) == (9000, 2048, 0.5)
    assert s.redis_url == "redis://h:1/2"


@pytest.mark.parametrize(("var", "value", "says"), [
    ("INGEST_PORT", "eighty", "must be a whole number"),
    ("INGEST_PORT", "70000", "port number"),
    ("INGEST_MAX_BODY_BYTES", "0", "positive"),
    ("REDIS_URL", "localhost:6379", "redis://"),
    ("DATABASE_URL", "mysql://x", "postgresql://"),
    ("COPERNICA_TIMEZONE", "Nowhere/Town", "time zone"),
    ("INGEST_LOG_LEVEL", "LOUD", "one of"),
])
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
