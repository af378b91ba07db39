"""`ingest messages rebuild [--mailing ID]`: `messages` (and the mailing totals read by
`mailing_stats`) again from `events`, with every machine rule applied again."""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any

import orjson
import psycopg
from rich.console import Console

from common.settings import Settings


def register(sub: Any) -> None:
    group = sub.add_parser(
        "messages",
        help="the one-row-per-message table: rebuild it from the stored events",
        description="The `messages` table the workers keep (one row per message) and the mailing totals.",
    )
    commands = group.add_subparsers(dest="messages_command", metavar="COMMAND", required=True)
    rebuild = commands.add_parser(
        "rebuild",
        help="recompute messages from events, applying the machine rules again",
        description=(
            "Recompute `messages` and the mailing totals from `events`, after applying the machine "
            "rules (Apple's proxy, INGEST_MACHINE_NETWORKS, clicks near delivery, link bursts) to the "
            "stored opens and clicks again. One transaction: readers see the old rows until it commits."
        ),
    )
    rebuild.add_argument(
        "--mailing", type=int, action="append", metavar="ID", help="only this mailing's messages (repeatable)"
    )
    rebuild.add_argument("--json", action="store_true", help="print the summary as JSON")
    rebuild.set_defaults(handler=cmd_rebuild)


def cmd_rebuild(settings: Settings, args: argparse.Namespace) -> int:
    from workers.storage import messages

    url = settings.required("database_url")
    started = time.monotonic()
    scope = "every mailing" if args.mailing is None else "mailing " + ", ".join(map(str, args.mailing))
    with Console(stderr=True).status(f"rebuilding messages of {scope} …"), psycopg.connect(url) as conn:
        made = messages.rebuild(conn, args.mailing)
        conn.commit()
    seconds = round(time.monotonic() - started, 2)
    if args.json:
        summary = {"messages": made, "mailings": args.mailing, "seconds": seconds}
        sys.stdout.write(orjson.dumps(summary).decode() + "\n")
    else:
        print(f"rebuilt {made} messages of {scope} in {seconds} s")
    return 0
