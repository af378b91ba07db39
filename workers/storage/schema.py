"""Versioned migrations: numbered SQL files in `workers/storage/migrations/`, applied once each.

`apply_migrations` is idempotent: a second run finds nothing pending and changes nothing.
Runs from several processes at once are serialised by an advisory lock.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from importlib import resources

import psycopg

from workers.storage import partitions, store
from workers.storage.queries import scalar

log = logging.getLogger("workers.storage.schema")

_LOCK_ID = 0x636F7065  # arbitrary, constant: "cope"
_NAME = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")


@dataclass(frozen=True, slots=True)
class Migration:
    version: int
    name: str
    sql: str


def available() -> list[Migration]:
    found = []
    for entry in resources.files("workers.storage.migrations").iterdir():
        match = _NAME.match(entry.name)
        if match:
            found.append(Migration(int(match[1]), match[2], entry.read_text(encoding="utf-8")))
    found.sort(key=lambda m: m.version)
    versions = [m.version for m in found]
    if len(set(versions)) != len(versions):
        raise RuntimeError(f"two migrations share a number: {versions}")
    return found


def applied(conn: psycopg.Connection) -> set[int]:
    exists = scalar(conn, "SELECT to_regclass('schema_migrations') IS NOT NULL")
    if not exists:
        return set()
    return {row[0] for row in conn.execute("SELECT version FROM schema_migrations")}


def apply_migrations(database_url: str, target: int | None = None) -> list[Migration]:
    """Apply every pending migration (up to version `target` when given), each in its own
    transaction; return those applied. Then make the partitions of `events` ahead
    (`workers.storage.partitions.create_ahead`, idempotent)."""
    done: list[Migration] = []
    with psycopg.connect(store.conninfo(database_url), autocommit=True) as conn:
        conn.execute("SELECT pg_advisory_lock(%s)", (_LOCK_ID,))
        try:
            conn.execute(
                "CREATE TABLE IF NOT EXISTS schema_migrations ("
                " version integer PRIMARY KEY, name text NOT NULL,"
                " applied_at timestamptz NOT NULL DEFAULT now())"
            )
            have = applied(conn)
            for migration in available():
                if migration.version in have:
                    continue
                if target is not None and migration.version > target:
                    break
                with conn.transaction():
                    conn.execute(migration.sql)
                    conn.execute(
                        "INSERT INTO schema_migrations (version, name) VALUES (%s, %s)",
                        (migration.version, migration.name),
                    )
                log.info("applied migration %04d_%s", migration.version, migration.name)
                done.append(migration)
            # Monthly partitions of `events` around today (from 0004 on): made by every
            # migrate, so a run at least every few months keeps workers from making any.
            partitions.create_ahead(conn)
        finally:
            conn.execute("SELECT pg_advisory_unlock(%s)", (_LOCK_ID,))
    return done
