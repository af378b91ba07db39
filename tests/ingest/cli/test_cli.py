"""The command line: --help everywhere, one-line errors with a non-zero exit, migrate idempotent."""

from __future__ import annotations

import psycopg
import pytest

from ingest.cli import build_parser
from tests.processes import ingest_env, run_ingest

COMMANDS = ["serve", "worker", "migrate", "stats", "dev"]


@pytest.mark.parametrize("command", COMMANDS)
def test_help(command: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        build_parser().parse_args([command, "--help"])
    assert info.value.code == 0
    assert "usage: ingest" in capsys.readouterr().out


def test_bad_setting_is_one_line(redis_url: str, database_url: str) -> None:
    env = ingest_env(redis_url, database_url, INGEST_PORT="abc")
    done = run_ingest(["serve"], env, timeout=30)
    assert done.returncode == 2
    assert done.stderr.strip() == "ingest: INGEST_PORT='abc' is not valid: must be a whole number"


def test_missing_database_is_one_line(redis_url: str) -> None:
    env = ingest_env(redis_url, "")
    done = run_ingest(["migrate"], env, timeout=30)
    assert done.returncode == 2
    assert done.stderr.strip().count("\n") == 0 and "DATABASE_URL is not set" in done.stderr


def test_unreachable_database_is_one_line(redis_url: str) -> None:
    env = ingest_env(redis_url, "postgresql://nobody@127.0.0.1:1/none")
    done = run_ingest(["migrate"], env, timeout=30)
    assert done.returncode == 1
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("ingest: migrate failed:")
    assert "Traceback" not in done.stderr


def test_migrate_twice_changes_nothing(redis_url: str, database_url: str, db: psycopg.Connection) -> None:
    env = ingest_env(redis_url, database_url)
    before = db.execute("SELECT version, applied_at FROM schema_migrations ORDER BY 1").fetchall()
    done = run_ingest(["migrate"], env, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "schema is up to date"
    assert db.execute("SELECT version, applied_at FROM schema_migrations ORDER BY 1").fetchall() == before
    assert before[0][0] == 1
