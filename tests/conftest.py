"""Real-server fixtures: the embedded Valkey and PostgreSQL, or those given by URL.

Set TEST_REDIS_URL / TEST_DATABASE_URL to run the suite against servers of your own (their
data is wiped); otherwise one embedded pair is started for the session in a temp directory.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import psycopg
import pytest
import redis
from psycopg.conninfo import make_conninfo

from common.settings import Settings
from ingest.devstack.embedded import EmbeddedPostgres, EmbeddedValkey
from tests.fake_copernica import FakeCopernica
from workers.storage.schema import apply_migrations

# Tables every test starts without rows (the schema itself is kept). TRUNCATE on `events`
# empties its partitions too; partitions a test made stay, empty, and harm no other test.
DATA_TABLES = (
    "events",
    "rejected_events",
    "backfill_files",
    "messages",
    "mailing_totals",
    "erasures",
    "erased_selectors",
    "mailing_reconciliations",
    "user_agents",
)


@pytest.fixture(scope="session")
def valkey(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedValkey | None]:
    if os.environ.get("TEST_REDIS_URL"):
        yield None
        return
    server = EmbeddedValkey(tmp_path_factory.mktemp("valkey"))
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def postgres(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedPostgres | None]:
    if os.environ.get("TEST_DATABASE_URL"):
        yield None
        return
    server = EmbeddedPostgres(tmp_path_factory.mktemp("postgres"))
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def redis_url(valkey: EmbeddedValkey | None) -> str:
    return os.environ.get("TEST_REDIS_URL") or valkey.url


@pytest.fixture(scope="session")
def migrated_database_url(postgres: EmbeddedPostgres | None) -> str:
    url = os.environ.get("TEST_DATABASE_URL") or postgres.url
    apply_migrations(url)
    return url


@pytest.fixture
def database_url(migrated_database_url: str) -> str:
    """A migrated database whose data tables are empty at the start of the test."""
    with psycopg.connect(migrated_database_url, autocommit=True) as conn:
        present = [t for t in DATA_TABLES if conn.execute("SELECT to_regclass(%s)", (t,)).fetchone()[0] is not None]
        if present:
            conn.execute(f"TRUNCATE {', '.join(present)} RESTART IDENTITY")
    return migrated_database_url


@pytest.fixture
def scratch_database_url(migrated_database_url: str) -> Iterator[str]:
    """An empty database of its own on the test server (not migrated), as a URL (what
    DATABASE_URL takes); dropped afterwards."""
    name = f"scratch_{uuid.uuid4().hex[:10]}"
    admin = make_conninfo(migrated_database_url, dbname="postgres")
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    yield urlunsplit(urlsplit(migrated_database_url)._replace(path=f"/{name}"))
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE "{name}" WITH (FORCE)')


@pytest.fixture
def redis_conn(redis_url: str) -> Iterator[redis.Redis]:
    conn = redis.Redis.from_url(redis_url)
    conn.flushdb()
    yield conn
    conn.close()


@pytest.fixture
def settings(redis_url: str, database_url: str, redis_conn: redis.Redis) -> Settings:  # noqa: ARG001 - an emptied queue
    """Settings pointing at the real servers, with empty queue and tables; no auth (tests/test_auth.py has it)."""
    return Settings.from_env(
        {"REDIS_URL": redis_url, "DATABASE_URL": database_url, "INGEST_AUTH": "none"}, dotenv=False
    )


@pytest.fixture
def db(database_url: str) -> Iterator[psycopg.Connection]:
    with psycopg.connect(database_url, autocommit=True) as conn:
        yield conn


ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def fake() -> Iterator[FakeCopernica]:
    """Copernica's REST API, faked by a real HTTP server (tests/fake_copernica.py)."""
    server = FakeCopernica().start()
    yield server
    server.stop()
