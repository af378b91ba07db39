"""`ingest backfill`, `ingest import`: recover events from Copernica's logfiles; and the pieces
every logfile command shares (argument checks, `open_run`, `handler`), which `ingest reconcile`
(`ingest.cli.reconcile`, `ingest.cli.reconcile_mailings`) uses too.

Bad input (a date, a type, a missing file or token) ends with one line and exit code 2. A run
shows one progress bar on stderr and a summary table on stdout; it exits 1 when a file
failed or its times are in another zone than COPERNICA_TIMEZONE / --timezone (one line naming the zone;
nothing of that file stored), 130 when interrupted. Ctrl-C or SIGTERM stop after the current
batch (a second Ctrl-C aborts at once); what was stored is committed, and a rerun finishes the rest.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import logging
import re
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from datetime import date
from typing import TYPE_CHECKING, Any

from common.settings import Settings

if TYPE_CHECKING:
    import psycopg
    from rich.progress import Progress

    from workers.backfill.api import CopernicaClient
    from workers.backfill.files import FileResult, Run, RunSummary

log = logging.getLogger("ingest.cli.backfill")

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130


class BadInput(Exception):
    """One-line message for bad arguments; exit code 2."""


def handler(func: Callable[[Settings, argparse.Namespace], int]) -> Callable[[Settings, argparse.Namespace], int]:
    @functools.wraps(func)
    def run(settings: Settings, args: argparse.Namespace) -> int:
        from workers.backfill.api import AuthError
        from workers.backfill.files import BackfillError
        from workers.backfill.zonecheck import ZoneMismatch

        try:
            return func(settings, args)
        except (BadInput, BackfillError) as exc:
            print(f"ingest: {exc}", file=sys.stderr)
            return EXIT_USAGE
        except (AuthError, ZoneMismatch) as exc:
            print(f"ingest: {exc}", file=sys.stderr)
            return EXIT_FAILED

    return run


# --- argument checks --------------------------------------------------------------------------


def parse_day(text: str, option: str) -> date:
    if not re.fullmatch(r"\d{4}-\d{2}-\d{2}", text.strip()):
        raise BadInput(f"{option} {text!r} is not a date (YYYY-MM-DD)")
    try:
        return date.fromisoformat(text.strip())
    except ValueError:
        raise BadInput(f"{option} {text!r} is not a valid date") from None


def parse_types(text: str | None) -> list[str] | None:
    """The `--types` asked for; None (not given): every event log type a day lists."""
    from workers.backfill.files import check_types

    if text is None:
        return None
    return check_types(text.split(","))


def parse_timezone(args: argparse.Namespace, settings: Settings) -> str:
    """`--timezone` when given (for this run), else COPERNICA_TIMEZONE."""
    import zoneinfo

    name = getattr(args, "timezone", None)
    if name is None:
        return settings.copernica_timezone
    try:
        zoneinfo.ZoneInfo(name.strip())
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        raise BadInput(f"--timezone {name!r} is not an IANA time zone (e.g. UTC, Europe/Amsterdam)") from None
    return name.strip()


def parse_format(text: str) -> str:
    fmt = text.strip().lower()
    if fmt not in ("json", "csv", "xml"):
        raise BadInput(f"--format {text!r}: use json, csv or xml")
    return fmt


def _positive(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if value <= 0:
        raise argparse.ArgumentTypeError("must be positive")
    return value


# --- the pieces every command needs ---------------------------------------------------------------


def connect(settings: Settings) -> psycopg.Connection:
    from workers.storage import store
    from workers.storage.queries import scalar

    conn = store.connect(settings.required("database_url"))
    present = scalar(conn, "SELECT to_regclass('backfill_files') IS NOT NULL")
    conn.rollback()
    if not present:
        conn.close()
        raise BadInput("the schema has no backfill_files table yet: run `ingest migrate`")
    return conn


def api_client(settings: Settings, stop: threading.Event) -> CopernicaClient:
    from workers.backfill.api import client_from_settings

    return client_from_settings(settings, stop)


@contextlib.contextmanager
def stop_on_signals() -> Iterator[threading.Event]:
    """SIGINT/SIGTERM set the event (stop after the current batch); a second SIGINT aborts."""
    stop = threading.Event()

    def on_signal(signum: int, _frame: Any) -> None:
        if stop.is_set() and signum == signal.SIGINT:
            raise KeyboardInterrupt
        stop.set()
        log.warning("%s: stopping after the current batch", signal.Signals(signum).name)

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield stop
    finally:
        for sig, previous_handler in previous.items():
            signal.signal(sig, previous_handler)


class _Bar:
    """One rich progress bar per run on stderr: files done of planned, records, rate, ETA."""

    def __init__(self, progress: Progress) -> None:
        self.progress = progress
        self.task = progress.add_task("starting", total=0, records=0, rate=0.0)
        self.started = time.monotonic()
        self.count = 0

    def add_files(self, count: int) -> None:
        total = (self.progress.tasks[self.task].total or 0) + count
        self.progress.update(self.task, total=total)

    def file_started(self, name: str) -> None:
        self.progress.update(self.task, description=name)

    def records(self, count: int) -> None:
        self.count += count
        rate = self.count / max(1e-6, time.monotonic() - self.started)
        self.progress.update(self.task, records=self.count, rate=rate)

    def file_finished(self, result: FileResult) -> None:  # noqa: ARG002 - Reporter's signature
        self.progress.advance(self.task)


@contextlib.contextmanager
def _progress() -> Iterator[_Bar]:
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    console = Console(stderr=True)
    progress = Progress(
        TextColumn("{task.description}", style="bold"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("files"),
        TextColumn("{task.fields[records]:,} records"),
        TextColumn("{task.fields[rate]:,.0f}/s"),
        TimeElapsedColumn(),
        TextColumn("ETA"),
        TimeRemainingColumn(),
        console=console,
        transient=False,
        disable=not console.is_terminal,
    )
    # Log lines go above the bar instead of through it.
    handlers = [
        h
        for h in logging.getLogger().handlers
        if isinstance(h, logging.StreamHandler) and getattr(h, "stream", None) in (sys.stderr, sys.__stderr__)
    ]
    with progress:
        olds = [h.setStream(sys.stderr) for h in handlers] if console.is_terminal else []
        try:
            bar = _Bar(progress)
            yield bar
        finally:
            for stream_handler, old in zip(handlers, olds, strict=False):
                if old is not None:
                    stream_handler.setStream(old)


def stdout_console() -> Any:
    from rich.console import Console

    return Console(width=None if sys.stdout.isatty() else 160)


def _summary_table(summary: RunSummary, title: str) -> int:
    """Print the per-file summary; return the exit code it implies."""
    from rich.table import Table

    console = stdout_console()
    shown = [f for f in summary.files if f.status != "skipped"]
    skipped = len(summary.files) - len(shown)
    table = Table(title=title, title_justify="left")
    for column in ("file", "type", "date", "records", "stored", "duplicates", "rejected", "status"):
        table.add_column(
            column, justify="right" if column in ("records", "stored", "duplicates", "rejected") else "left"
        )
    for f in shown:
        status = f.status if f.status != "failed" else "[red]failed[/red]"
        table.add_row(
            f.name,
            f.log_type,
            str(f.log_date or ""),
            f"{f.records:,}",
            f"{f.stored:,}",
            f"{f.duplicates:,}",
            f"{f.rejected:,}" if not f.rejected else f"[yellow]{f.rejected:,}[/yellow]",
            status,
        )
    table.add_row(
        "total",
        "",
        "",
        f"{summary.total('records'):,}",
        f"{summary.total('stored'):,}",
        f"{summary.total('duplicates'):,}",
        f"{summary.total('rejected'):,}",
        "",
        style="bold",
    )
    console.print(table)
    if skipped:
        console.print(f"{skipped} file(s) already complete, skipped (use --force to read them again)")
    if summary.retries:
        console.print(f"{summary.retries} request(s) retried")
    rejected = summary.total("rejected")
    if rejected:
        console.print(
            f"[yellow]{rejected:,} record(s) could not be read; they are in rejected_events "
            "(target = file:line)[/yellow]",
            highlight=False,
        )
    for f in summary.failed:
        console.print(f"[red]failed[/red] {f.name}: {f.error}", highlight=False, markup=True)
    if summary.stopped:
        console.print("interrupted: completed batches are stored; run the same command again to finish")
        return EXIT_INTERRUPTED
    return EXIT_FAILED if summary.failed else EXIT_OK


@contextlib.contextmanager
def open_run(settings: Settings, tz: str, batch_size: int, *, fmt: str = "json", api: bool = True) -> Iterator[Run]:
    """What one command's run needs, set up and torn down in order: the stop signals, the REST
    client (`api`), the database connection and the progress bar."""
    from workers.backfill.files import Run

    with stop_on_signals() as stop:
        client = api_client(settings, stop) if api else None
        conn = connect(settings)
        try:
            with _progress() as bar:
                yield Run(conn, tz, stop=stop, reporter=bar, batch_size=batch_size, client=client, fmt=fmt)
        finally:
            conn.close()


# --- commands -------------------------------------------------------------------------------------


@handler
def cmd_backfill(settings: Settings, args: argparse.Namespace) -> int:
    from workers.backfill.runs import backfill, date_range, follow, today_in

    types = parse_types(args.types)
    fmt = parse_format(args.format)
    tz = parse_timezone(args, settings)
    if args.batch_size <= 0:
        raise BadInput("--batch-size must be positive")
    if args.follow:
        if args.since or args.until:
            raise BadInput("--follow polls today's files: leave out --since/--until")
    else:
        if not args.since:
            raise BadInput("--since YYYY-MM-DD is required (or --follow)")
        since = parse_day(args.since, "--since")
        until = parse_day(args.until, "--until") if args.until else today_in(tz)
        if since > until:
            raise BadInput(f"--since {since} is after --until {until}")
    with open_run(settings, tz, args.batch_size, fmt=fmt) as run:
        if args.follow:
            summary = follow(run, types, interval=args.interval, max_polls=args.max_polls)
        else:
            summary = backfill(run, date_range(since, until), types, force=args.force)
    if args.follow:
        _summary_table(summary, "backfill --follow")
        return EXIT_OK  # a clean stop; failures of single polls were retried by the next
    return _summary_table(summary, "backfill")


@handler
def cmd_import(settings: Settings, args: argparse.Namespace) -> int:
    from workers.backfill.imports import import_files, plan_import

    fmt = parse_format(args.format) if args.format else None
    tz = parse_timezone(args, settings)
    planned = plan_import(args.paths, args.type, fmt)
    if args.batch_size <= 0:
        raise BadInput("--batch-size must be positive")
    with open_run(settings, tz, args.batch_size, api=False) as run:
        summary = import_files(run, planned)
    return _summary_table(summary, "import")


# --- parser ---------------------------------------------------------------------------------------


def register(sub: argparse._SubParsersAction) -> None:
    """Add `backfill` and `import` to the `ingest` command line."""
    backfill = sub.add_parser(
        "backfill",
        help="store missed events from Copernica's logfiles (REST API)",
        description=(
            "Download Copernica's logfiles per date and type through the REST API (COPERNICA_ACCESS_TOKEN) and "
            "store their events once each, beside those the webhooks brought. Resumable: completed files are "
            "skipped on a rerun. --follow polls today's files instead."
        ),
    )
    backfill.add_argument("--since", metavar="YYYY-MM-DD", help="first day to backfill")
    backfill.add_argument("--until", metavar="YYYY-MM-DD", help="last day (default: today, Copernica's zone)")
    backfill.add_argument(
        "--types",
        metavar="T1,T2",
        help="log types, comma-separated (default: every cdm-*/pom-* event log the day lists)",
    )
    backfill.add_argument("--format", default="json", metavar="json|csv|xml", help="download format (default json)")
    backfill.add_argument("--force", action="store_true", help="read completed files again too")
    backfill.add_argument(
        "--follow", action="store_true", help="poll today's files and store what is new, until Ctrl-C/SIGTERM"
    )
    backfill.add_argument(
        "--interval", type=_positive, default=60.0, metavar="S", help="seconds between polls with --follow (default 60)"
    )
    backfill.add_argument("--max-polls", type=int, default=None, help=argparse.SUPPRESS)
    backfill.add_argument(
        "--batch-size", type=int, default=5000, metavar="N", help="events stored per transaction (default 5000)"
    )
    timezone_option(backfill)
    backfill.set_defaults(handler=cmd_backfill)

    imp = sub.add_parser(
        "import",
        help="store events from logfiles downloaded by hand",
        description=(
            "Read logfiles downloaded from the Copernica dashboard (CSV with or without header, JSON, XML; .gz too) "
            "and store their events. The log type comes from the file name (cdm-click.2026-11-25.log...) or --type."
        ),
    )
    imp.add_argument("paths", nargs="+", metavar="PATH", help="logfiles to import")
    imp.add_argument("--type", metavar="TYPE", help="log type of every file (e.g. cdm-click)")
    imp.add_argument("--format", metavar="json|csv|xml", help="format of every file (default: by extension or content)")
    imp.add_argument(
        "--batch-size", type=int, default=5000, metavar="N", help="events stored per transaction (default 5000)"
    )
    timezone_option(imp)
    imp.set_defaults(handler=cmd_import)


def timezone_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--timezone",
        metavar="ZONE",
        help=(
            "zone of the logfiles' times for this run (default: COPERNICA_TIMEZONE). Before a file is stored its "
            "first records are checked against stored webhooks; a file in another zone is refused, naming the zone"
        ),
    )
