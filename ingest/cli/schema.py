"""`ingest migrate` and `ingest prune --older-than 90d [--dry-run]`: the schema, and dropping the
months of events past retention.

The work is in `workers.storage.schema` and `workers.storage.partitions`. A bad
age ends with one line and exit code 2; a lock that does not come in time, with exit code 1.
"""

from __future__ import annotations

import argparse
import logging
import sys
from typing import TYPE_CHECKING, Any

from common.settings import Settings
from ingest.cli.base import EXIT_USAGE

if TYPE_CHECKING:
    from workers.storage.partitions import Partition

log = logging.getLogger("ingest.cli.schema")


def register(subparsers: Any) -> None:
    """Add `migrate` and `prune` to the `ingest` parser."""
    migrate = subparsers.add_parser(
        "migrate",
        help="create or upgrade the PostgreSQL schema",
        description=("Apply pending schema migrations. Idempotent: a second run changes nothing."),
    )
    migrate.set_defaults(handler=cmd_migrate)
    prune = subparsers.add_parser(
        "prune",
        help="drop the monthly partitions of events, and the rejected calls, older than an age",
        description="Drop (detach, then drop) every monthly partition of events whose whole month is older "
        "than --older-than. No rows are deleted one by one: a month partly inside the period stays. "
        "Rejected calls received before the same cutoff are deleted.",
    )
    prune.add_argument("--older-than", required=True, metavar="AGE", help="days or weeks, e.g. 90d or 13w")
    prune.add_argument("--dry-run", action="store_true", help="list what would be dropped, drop nothing")
    prune.set_defaults(handler=cmd_prune)


def cmd_migrate(settings: Settings, _args: argparse.Namespace) -> int:
    from workers.storage.schema import apply_migrations

    done = apply_migrations(settings.required("database_url"))
    if done:
        for migration in done:
            print(f"applied {migration.version:04d}_{migration.name}")
    else:
        print("schema is up to date")
    return 0


def _size(count: int) -> str:
    value = float(count)
    for unit in ("B", "kB", "MB", "GB"):
        if value < 1024 or unit == "GB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} TB"  # pragma: no cover


def _line(part: Partition) -> str:
    rows = f"~{part.rows_estimate:,} rows" if part.rows_estimate is not None else "rows not counted yet"
    lower = part.lower.date().isoformat() if part.lower else "?"
    upper = part.upper.date().isoformat() if part.upper else "?"
    return f"  {part.name}  {lower} .. {upper}  {rows}  {_size(part.bytes)}"


def cmd_prune(settings: Settings, args: argparse.Namespace) -> int:
    import psycopg

    from workers.storage import store
    from workers.storage.partitions import RetentionError, parse_age, prune
    from workers.storage.rejected import prune_rejected

    try:
        age = parse_age(args.older_than)
    except RetentionError as exc:
        print(f"ingest: prune --older-than: {exc}", file=sys.stderr)
        return EXIT_USAGE
    with psycopg.connect(
        store.conninfo(settings.required("database_url")), autocommit=True, application_name="copernica-ingest prune"
    ) as conn:
        try:
            result = prune(conn, age, dry_run=args.dry_run)
        except RetentionError as exc:
            print(f"ingest: prune: {exc}", file=sys.stderr)
            return EXIT_USAGE
        rejected = prune_rejected(conn, result.cutoff, dry_run=args.dry_run)
    cutoff = result.cutoff.strftime("%Y-%m-%d %H:%M UTC")
    verb = "would drop" if args.dry_run else "dropped"
    for month in result.moved_months:
        print(f"moved rows of {month:%Y-%m} out of events_default into their partition")
    print(f"{verb} {len(result.dropped)} partition(s) whose month ended by {cutoff}; {len(result.kept)} kept")
    for part in result.dropped:
        print(_line(part))
    if result.default_rows:
        print(
            f"events_default holds {result.default_rows:,} rows outside the month partitions; "
            "prune does not delete them"
        )
    print(f"{'would delete' if args.dry_run else 'deleted'} {rejected:,} rejected call(s) received before {cutoff}")
    return 0
