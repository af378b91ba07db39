"""`ingest rejected list` and `ingest rejected replay [--id N | --all]`.

Registered through `ingest.cli.COMMAND_MODULES`; the work itself is in `workers.storage.rejected`.
"""

from __future__ import annotations

import argparse
import logging
from typing import Any

from common.settings import Settings
from ingest.cli.base import EXIT_FAILURE, EXIT_USAGE, fail, one_target

log = logging.getLogger("ingest.cli.rejected")


def register(subparsers: Any) -> None:
    """Add the `rejected` command group to the `ingest` parser."""
    rejected = subparsers.add_parser(
        "rejected",
        help="list or replay the calls that could not be stored",
        description="Calls that could not be read as events are kept in rejected_events with the reason.",
    )
    sub = rejected.add_subparsers(dest="rejected_command", metavar="ACTION", required=True)

    listing = sub.add_parser(
        "list",
        help="show kept calls: id, received, reason, first bytes",
        description="Show the most recently received rejected calls first.",
    )
    listing.add_argument("--limit", type=int, default=50, help="show at most N calls (default 50)")
    listing.set_defaults(handler=cmd_rejected_list)

    replay = sub.add_parser(
        "replay",
        help="re-parse kept calls and store those that now parse",
        description="Re-parse kept calls with the current code; those that become events are stored "
        "and removed from rejected_events in the same transaction.",
    )
    replay.add_argument("--id", type=int, metavar="N", help="replay the call with this id")
    replay.add_argument("--all", action="store_true", help="replay every kept call")
    replay.set_defaults(handler=cmd_rejected_replay)


def cmd_rejected_list(settings: Settings, args: argparse.Namespace) -> int:
    from workers.storage import store
    from workers.storage.rejected import as_rows, count_rejected, list_rejected

    if args.limit < 1:
        return fail("rejected list: --limit must be at least 1", EXIT_USAGE)
    with store.connect(settings.required("database_url")) as conn:
        conn.autocommit = True
        calls = list_rejected(conn, limit=args.limit)
        total = count_rejected(conn)
    if not calls:
        print("no rejected calls")
        return 0
    header = ("id", "received (UTC)", "source", "reason", "first bytes")
    rows = as_rows(calls)
    reason_width = min(60, max(len(header[3]), *(len(r[3]) for r in rows)))
    widths = [max(len(header[i]), *(len(r[i]) for r in rows)) for i in range(3)] + [reason_width]
    for row in (header, *rows):
        reason = row[3] if len(row[3]) <= reason_width else row[3][: reason_width - 1] + "…"
        cells = [
            row[0].rjust(widths[0]),
            row[1].ljust(widths[1]),
            row[2].ljust(widths[2]),
            reason.ljust(widths[3]),
            row[4],
        ]
        print("  ".join(cells).rstrip())
    if total > len(calls):
        print(f"({len(calls)} of {total} shown; --limit N shows more)")
    return 0


def cmd_rejected_replay(settings: Settings, args: argparse.Namespace) -> int:
    if (refused := one_target("rejected replay", args, "N")) is not None:
        return refused
    from workers.storage import store
    from workers.storage.rejected import replay

    with store.connect(settings.required("database_url")) as conn:
        conn.autocommit = True
        if args.id is not None:
            exists = conn.execute("SELECT 1 FROM rejected_events WHERE id = %s", (args.id,)).fetchone()
            if not exists:
                return fail(f"rejected replay: no rejected call with id {args.id}", EXIT_FAILURE)
        result = replay(conn, settings.copernica_timezone, only=args.id)
    print(
        f"replayed {result.replayed}: {result.removed} now stored ({result.stored} new events, "
        f"{result.duplicates} already stored), {result.still_rejected} still rejected"
    )
    for reason, count in sorted(result.reasons.items(), key=lambda item: -item[1])[:10]:
        print(f"  {count:>6}  {reason[:200]}")
    return 0
