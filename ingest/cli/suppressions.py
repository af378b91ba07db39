"""`ingest suppressions export [--since DATE] [--format csv|json]`: who must not be mailed again
(hard bounces, complaints, unsubscribes), streamed to stdout for the tools that send."""

from __future__ import annotations

import argparse
import csv
import sys
from datetime import UTC, datetime
from typing import Any

import orjson
import psycopg

from common.settings import Settings
from ingest.cli.base import EXIT_USAGE, fail


def register(sub: Any) -> None:
    group = sub.add_parser(
        "suppressions",
        help="addresses not to mail again: hard bounces, complaints, unsubscribes",
        description="The `suppressions` view: one row per address and reason.",
    )
    commands = group.add_subparsers(dest="suppressions_command", metavar="COMMAND", required=True)
    export = commands.add_parser(
        "export",
        help="stream the suppressions to stdout (CSV or JSON)",
        description=(
            "Every suppression, one per address and reason (hard_bounce, complaint, unsubscribe), with "
            "its first and last time and the mailing of the latest event. A soft bounce or a deferral "
            "is none. Streamed: memory does not grow with the table."
        ),
    )
    export.add_argument("--since", metavar="DATE", help="only those whose latest event is on or after DATE (UTC)")
    export.add_argument("--format", choices=("csv", "json"), default="csv", help="csv (default, with a header) or json")
    export.set_defaults(handler=cmd_export)


def _since(value: str | None) -> datetime | None:
    if value is None:
        return None
    moment = datetime.fromisoformat(value)
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def _cell(value: object) -> object:
    return value.isoformat() if isinstance(value, datetime) else value


def cmd_export(settings: Settings, args: argparse.Namespace) -> int:
    from workers.storage.suppressions import COLUMNS, stream

    try:
        since = _since(args.since)
    except ValueError:
        return fail(f"suppressions export: --since must be a date (YYYY-MM-DD), not {args.since!r}", EXIT_USAGE)
    out = sys.stdout
    rows = 0
    with psycopg.connect(settings.required("database_url"), connect_timeout=5) as conn:
        if args.format == "csv":
            writer = csv.writer(out, lineterminator="\n")
            writer.writerow(COLUMNS)
            for row in stream(conn, since):
                writer.writerow([_cell(v) for v in row])
                rows += 1
        else:  # one JSON array, written as it is read
            out.write("[")
            for row in stream(conn, since):
                out.write(",\n" if rows else "\n")
                out.write(orjson.dumps(dict(zip(COLUMNS, row, strict=True))).decode())
                rows += 1
            out.write("\n]\n" if rows else "]\n")
    print(f"ingest: exported {rows} suppressions", file=sys.stderr)
    return 0
