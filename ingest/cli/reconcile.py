"""`ingest reconcile`: check what is stored against what Copernica knows. Three modes:

- `--date D`: read every logfile of a day again, store what was missing, report per log type and
  Copernica's failed calls of that day (a table, or `--json`);
- `--mailing ID ...`: a mailing's statistics against the stored events (`ingest.cli.reconcile_mailings`);
- `--follow`: the scheduled reconcile, a long-running process. Every `--interval` seconds
  (default 3600) it does `--date` for yesterday and today and `--mailing` for every mailing with
  events in the last `--days-back` days (default 7), without `--fix` unless given, and sets the
  gauges of `workers.backfill.reconcile_metrics`, served on INGEST_RECONCILE_METRICS_PORT
  (`workers.backfill.schedule`). One summary line per round on stderr; a round that fails logs
  one warning and leaves the gauges as they were. SIGTERM/SIGINT stop it after the current
  step, exit 0.

Bad input ends with one line and exit code 2 (`ingest.cli.backfill.handler`). `--date` exits 1
when anything had been missing, a file could not be fetched, or Copernica logged failed calls.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import math
import threading
from collections.abc import Iterator
from typing import TYPE_CHECKING

from common.settings import Settings
from ingest.cli.backfill import (
    EXIT_FAILED,
    EXIT_INTERRUPTED,
    EXIT_OK,
    BadInput,
    api_client,
    connect,
    handler,
    open_run,
    parse_day,
    parse_format,
    parse_timezone,
    parse_types,
    stdout_console,
    stop_on_signals,
    timezone_option,
)

if TYPE_CHECKING:
    from workers.backfill.api import CopernicaClient
    from workers.backfill.files import Run
    from workers.backfill.schedule import MailingStep, RoundResult

log = logging.getLogger("ingest.cli.reconcile")

DEFAULT_INTERVAL = 3600.0
DEFAULT_DAYS_BACK = 7


@handler
def cmd_reconcile(settings: Settings, args: argparse.Namespace) -> int:
    if args.follow:
        return cmd_follow(settings, args)
    for option, value in (("--interval", args.interval), ("--days-back", args.days_back)):
        if value is not None:
            raise BadInput(f"{option} goes with --follow")
    if args.mailing or args.date is None or args.since or args.fix:  # the per-mailing mode
        from ingest.cli.reconcile_mailings import cmd_reconcile_mailings

        return cmd_reconcile_mailings(settings, args)
    return cmd_reconcile_date(settings, args)


def cmd_reconcile_date(settings: Settings, args: argparse.Namespace) -> int:
    """`ingest reconcile --date D`: the per-type table (or JSON) and the failed calls."""
    from rich.table import Table

    from workers.backfill.runs import reconcile

    day = parse_day(args.date, "--date")
    types = parse_types(args.types)
    fmt = parse_format(args.format)
    tz = parse_timezone(args, settings)
    with open_run(settings, tz, args.batch_size, fmt=fmt) as run:
        counts, summary, calls = reconcile(run, day, types)
    missing = sum(c.added for c in counts)
    failed = sum(c.failed for c in counts)
    if args.json:
        import orjson

        print(
            orjson.dumps(
                {
                    "date": day.isoformat(),
                    "missing": missing,
                    "failed_files": failed,
                    "stopped": summary.stopped,
                    "types": [
                        {
                            "type": c.log_type,
                            "files": c.files,
                            "in_logfiles": c.events,
                            "already_stored": c.already,
                            "added": c.added,
                            "rejected": c.rejected,
                            "failed_files": c.failed,
                        }
                        for c in counts
                    ],
                    "failed_calls": calls.as_json(),
                }
            ).decode()
        )
    else:
        table = Table(title=f"reconcile {day}", title_justify="left")
        for column in ("type", "files", "in logfiles", "already stored", "added", "rejected", "failed files"):
            table.add_column(column, justify="left" if column == "type" else "right")
        for c in counts:
            table.add_row(
                c.log_type,
                str(c.files),
                f"{c.events:,}",
                f"{c.already:,}",
                f"[bold red]{c.added:,}[/bold red]" if c.added else "0",
                f"{c.rejected:,}",
                f"[red]{c.failed}[/red]" if c.failed else "0",
            )
        console = stdout_console()
        console.print(table)
        for f in summary.failed:
            console.print(f"[red]failed[/red] {f.name}: {f.error}", highlight=False)
        if missing:
            console.print(f"{missing:,} event(s) had been missing and are now stored")
        elif not failed:
            console.print("nothing was missing")
        from ingest.cli.reconcile_failed_calls import print_failed_calls

        print_failed_calls(console, calls, day)
    if summary.stopped:
        return EXIT_INTERRUPTED
    return EXIT_FAILED if missing or failed or calls.total or calls.error else EXIT_OK


# --- --follow -------------------------------------------------------------------------------------


def parse_interval(text: str | None) -> float:
    """`--interval` in seconds: a positive, finite number (default DEFAULT_INTERVAL)."""
    if text is None:
        return DEFAULT_INTERVAL
    try:
        value = float(text)
    except ValueError:
        raise BadInput(f"--interval {text!r} is not a number of seconds") from None
    if not math.isfinite(value) or value <= 0:
        raise BadInput(f"--interval {text!r}: give a positive number of seconds")
    return value


def parse_days_back(text: str | None) -> int:
    """`--days-back`: a whole number of days, at least 1 (default DEFAULT_DAYS_BACK)."""
    if text is None:
        return DEFAULT_DAYS_BACK
    if not text.strip().isascii() or not text.strip().isdigit() or not 1 <= int(text) <= 3660:
        raise BadInput(f"--days-back {text!r}: give a whole number of days (1 or more)")
    return int(text)


def _check_follow(args: argparse.Namespace) -> None:
    if args.date is not None or args.mailing or args.since:
        raise BadInput(
            "--follow checks yesterday, today and the recent mailings itself: leave out --date/--mailing/--since"
        )
    if args.json:
        raise BadInput("--follow logs one line per round and serves its figures as metrics: leave out --json")
    if args.max_rounds is not None and args.max_rounds <= 0:
        raise BadInput("--max-rounds must be positive")
    if args.batch_size <= 0:
        raise BadInput("--batch-size must be positive")


def mailing_step(*, fix: bool, types: list[str] | None) -> MailingStep:
    """`reconcile --mailing` for the round's mailings (with `fix`: backfill their days and count
    again); what is missing after that goes into the round's result."""
    from ingest.cli.reconcile_mailings import reconcile_mailings
    from workers.backfill.schedule import events_missing

    def step(run: Run, mailing_ids: list[int], result: RoundResult) -> None:
        checks, summary = reconcile_mailings(run, mailing_ids, None, fix=fix, types=types)
        if summary is not None and summary.stopped:
            result.stopped = True
            return
        for check in checks:
            if check.unknown:
                result.unknown_mailings += 1
            elif check.stats is None:
                result.errors.append(check.error or f"mailing {check.mailing_id}: no statistics")
            result.errors.extend(
                f"mailing {check.mailing_id}: logfile {name} could not be fetched" for name in check.failed_files
            )
            result.statistics_missing += events_missing(check.measures())

    return step


def cmd_follow(settings: Settings, args: argparse.Namespace) -> int:
    """`ingest reconcile --follow`: rounds until SIGTERM/SIGINT (or `--max-rounds`), exit 0."""
    import functools

    from workers.backfill import reconcile_metrics
    from workers.backfill.schedule import follow, reconcile_round

    _check_follow(args)
    interval, days_back = parse_interval(args.interval), parse_days_back(args.days_back)
    types = parse_types(args.types)
    fmt = parse_format(args.format)
    tz = parse_timezone(args, settings)
    with stop_on_signals() as stop:
        client = api_client(settings, stop)  # no token: exit 2 before anything runs
        connect(settings).close()  # no database or no schema: said now, not once per round
        round_run = functools.partial(_round_run, settings, client, tz, fmt, args.batch_size, stop)
        do_round = functools.partial(
            reconcile_round, mailing_step=mailing_step(fix=args.fix, types=types), types=types, days_back=days_back
        )
        server = reconcile_metrics.serve(settings.reconcile_metrics_port)
        log.info(
            "reconcile --follow: yesterday, today and the mailings of the last %d day(s), every %g s%s",
            days_back,
            interval,
            " (with --fix)" if args.fix else "",
        )
        try:
            rounds = follow(round_run, do_round, stop=stop, interval=interval, max_rounds=args.max_rounds)
        finally:
            reconcile_metrics.stop(server)
    log.info("reconcile --follow: stopped after %d round(s)", rounds)
    return EXIT_OK


@contextlib.contextmanager
def _round_run(
    settings: Settings, client: CopernicaClient, tz: str, fmt: str, batch_size: int, stop: threading.Event
) -> Iterator[Run]:
    """A round's run: a database connection of its own, the process's client and stop event;
    no progress bar (one summary line per round instead)."""
    from workers.backfill.files import Run

    conn = connect(settings)
    try:
        yield Run(conn, tz, stop=stop, batch_size=batch_size, client=client, fmt=fmt)
    finally:
        conn.close()


# --- parser ---------------------------------------------------------------------------------------


def register(sub: argparse._SubParsersAction) -> None:
    """Add `reconcile` to the `ingest` command line."""
    rec = sub.add_parser(
        "reconcile",
        help="check a day against Copernica's logfiles; store what is missing",
        description=(
            "Read every logfile of a day again and report per log type: events the logfiles hold, how many were "
            "already stored (webhooks, earlier runs), how many were missing and are now added; then Copernica's "
            "failed calls to this receiver that day (feedback-loop-errors) by response, and in how many of their "
            "minutes events are stored now. Exit code 1 when anything had been missing, a file could not be "
            "fetched, or Copernica logged failed calls. --follow does that for yesterday and today, and compares "
            "the mailings of the last days with their statistics, every --interval seconds, and serves what it "
            "found as Prometheus metrics on INGEST_RECONCILE_METRICS_PORT."
        ),
    )
    rec.add_argument("--date", metavar="YYYY-MM-DD", help="the day to check (or --mailing, or --follow)")
    rec.add_argument(
        "--mailing", action="append", metavar="ID", help="compare a mailing's statistics at Copernica (repeatable)"
    )
    rec.add_argument("--since", metavar="YYYY-MM-DD", help="with --mailing: only from that day on (both sides)")
    rec.add_argument(
        "--fix", action="store_true", help="with --mailing or --follow: backfill the mailings' days, compare again"
    )
    rec.add_argument(
        "--follow",
        action="store_true",
        help="run until SIGTERM: every --interval, yesterday and today and the recent mailings; metrics on a port",
    )
    rec.add_argument(
        "--interval", metavar="SECONDS", help=f"with --follow: seconds between rounds (default {DEFAULT_INTERVAL:g})"
    )
    rec.add_argument(
        "--days-back",
        metavar="N",
        help=f"with --follow: compare the mailings with events in the last N days (default {DEFAULT_DAYS_BACK})",
    )
    rec.add_argument("--max-rounds", type=int, default=None, help=argparse.SUPPRESS)
    rec.add_argument(
        "--types",
        metavar="T1,T2",
        help="log types, comma-separated (default: every cdm-*/pom-* event log the day lists)",
    )
    rec.add_argument("--format", default="json", metavar="json|csv|xml", help="download format (default json)")
    rec.add_argument("--batch-size", type=int, default=5000, metavar="N", help=argparse.SUPPRESS)
    rec.add_argument("--json", action="store_true", help="print JSON instead of a table")
    timezone_option(rec)
    rec.set_defaults(handler=cmd_reconcile)
