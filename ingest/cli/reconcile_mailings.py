"""`ingest reconcile --mailing ID [--mailing ID ...] [--since DATE] [--fix]`: Copernica's
per-mailing statistics against the stored events.

Per mailing: Copernica's statistics (`workers.backfill.statistics`) beside our counts
(`workers.storage.mailing_counts`), one row per measure with what is missing and what is extra.
`--fix` backfills, through the same idempotent path as `ingest backfill`, the days the
mailing's stored events span (in Copernica's zone) and compares again; with nothing stored
those days are unknown, so nothing is guessed (unless `--since` gives the first day: then
`--since` to today). Counts above Copernica's are reported, never "fixed".

Each comparison is stored (`workers.storage.reconciliations`; after `--fix` the second one too),
for the console's mailing page; a mailing without statistics stores nothing.

Exit codes: 0 nothing missing; 1 something was missing (with `--fix` too, as `reconcile --date`:
a second run then exits 0 if the fix mended it), a mailing unknown to Copernica, its statistics
not to be had, or a file of the fix failed; 2 bad input (before any call); 130 interrupted.
"""

from __future__ import annotations

import argparse
import logging
import zoneinfo
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import date, datetime
from typing import TYPE_CHECKING, Any

from common.settings import Settings
from ingest.cli.backfill import (
    EXIT_FAILED,
    EXIT_INTERRUPTED,
    EXIT_OK,
    BadInput,
    open_run,
    parse_day,
    parse_format,
    parse_timezone,
    parse_types,
    stdout_console,
)

if TYPE_CHECKING:
    from workers.backfill.files import Run, RunSummary
    from workers.backfill.statistics import MailingStatistics, Measure
    from workers.storage.mailing_counts import MailingCounts

log = logging.getLogger("ingest.cli.reconcile_mailings")

MAX_MAILING_ID = 2**63 - 1  # a bigint, as `events.mailing_id`


@dataclass(slots=True)
class MailingCheck:
    """One mailing's reconciliation: Copernica's side, ours before and after a fix."""

    mailing_id: int
    stats: MailingStatistics | None = None
    error: str | None = None  # why there are no statistics
    unknown: bool = False  # 404 on both paths
    before: MailingCounts | None = None
    after: MailingCounts | None = None  # after --fix
    fix_days: list[date] = field(default_factory=list)
    fix_note: str | None = None  # why it was not fixed, or what the fix met
    failed_files: list[str] = field(default_factory=list)

    @property
    def counts(self) -> MailingCounts | None:
        return self.after or self.before

    def measures(self, counts: MailingCounts | None = None) -> list[Measure]:
        """Copernica's figures against `counts` (default: ours now, after a fix if there was one)."""
        from workers.backfill.statistics import compare

        counts = counts or self.counts
        if self.stats is None or counts is None:
            return []
        return compare(self.stats, counts.as_counts())

    @property
    def had_missing(self) -> bool:
        """Whether anything was missing before a fix (a fix that mended it still exits 1)."""
        return any(m.missing for m in self.measures(self.before))

    def added(self) -> dict[str, int]:
        """Per measure, what the fix added to our count."""
        from workers.backfill.statistics import MEASURES

        if self.after is None or self.before is None:
            return {}
        after, before = self.after.as_counts(), self.before.as_counts()
        return {name: after[ours] - before[ours] for name, (_, _, ours) in MEASURES.items()}

    def events_added(self) -> int:
        """Events the fix added to the compared measures (the unique ones are no more events)."""
        return sum(n for name, n in self.added().items() if not name.startswith("unique_"))

    @property
    def status(self) -> str:
        if self.unknown:
            return "unknown"
        if self.stats is None:
            return "failed"
        measures = self.measures()
        if any(m.missing for m in measures):
            return "missing"
        return "extra" if any(m.extra for m in measures) else "ok"


# --- arguments ------------------------------------------------------------------------------------


def parse_mailings(values: Sequence[str] | None) -> list[int]:
    """`--mailing` values as ids, in the order given, each once; BadInput unless each is a
    positive integer."""
    found: list[int] = []
    for raw in values or ():
        text = raw.strip()
        if not text.isascii() or not text.isdigit() or int(text) <= 0 or int(text) > MAX_MAILING_ID:
            raise BadInput(f"--mailing {raw!r} is not a mailing id (a positive integer)")
        if int(text) not in found:
            found.append(int(text))
    return found


def _check_mode(args: argparse.Namespace) -> None:
    if args.mailing and args.date is not None:
        raise BadInput("--mailing and --date are two modes of reconcile: give one of them")
    if not args.mailing:
        if args.since or args.fix:
            raise BadInput("--since and --fix go with --mailing")
        raise BadInput("give --date YYYY-MM-DD (a day's logfiles) or --mailing ID (a mailing's statistics)")
    if args.batch_size <= 0:
        raise BadInput("--batch-size must be positive")


# --- the work -------------------------------------------------------------------------------------


def _fetch(run: Run, check: MailingCheck, begin: datetime | None) -> None:
    from workers.backfill.api import ApiError, AuthError
    from workers.backfill.statistics import UnknownMailing, fetch_statistics

    run.reporter.file_started(f"statistics of mailing {check.mailing_id}")
    try:
        check.stats = fetch_statistics(run.api(), check.mailing_id, begin=begin)
    except UnknownMailing as exc:
        check.unknown, check.error = True, str(exc)
    except AuthError:
        raise
    except ApiError as exc:
        check.error = str(exc)
        log.error("mailing %d: %s", check.mailing_id, exc)


def _fix_days(check: MailingCheck, tz: str, since: date | None) -> list[date]:
    """The days to backfill for one mailing, or [] with `fix_note` saying why none."""
    from workers.backfill.runs import date_range, today_in

    counts = check.before
    if counts is not None and counts.first is not None and counts.last is not None:
        zone = zoneinfo.ZoneInfo(tz)
        return date_range(counts.first.astimezone(zone).date(), counts.last.astimezone(zone).date())
    if since is not None:
        return date_range(since, max(since, today_in(tz)))
    check.fix_note = (
        "nothing stored for this mailing: the days its events fall on are unknown, nothing backfilled "
        "(give --since YYYY-MM-DD to backfill from that day to today)"
    )
    return []


def _fix(run: Run, checks: list[MailingCheck], types: list[str] | None, since: date | None) -> RunSummary:
    """Backfill the days of every mailing with something missing, once per set of log types
    (Marketing Suite `cdm-*`, Publisher `pom-*`, or `--types`)."""
    from workers.backfill.files import RunSummary, default_types
    from workers.backfill.runs import backfill
    from workers.backfill.statistics import LOG_PREFIX

    plans: dict[tuple[str, ...], set[date]] = {}
    for check in checks:
        if check.status != "missing" or check.stats is None:
            continue
        check.fix_days = _fix_days(check, run.tz, since)
        if check.fix_days:
            prefix = LOG_PREFIX[check.stats.source]
            kinds = tuple(types) if types else tuple(t for t in default_types() if t.startswith(prefix))
            plans.setdefault(kinds, set()).update(check.fix_days)
    summary = RunSummary()
    for kinds, days in plans.items():
        part = backfill(run, sorted(days), list(kinds), force=True)
        summary.files.extend(part.files)
        summary.retries += part.retries
        summary.stopped = summary.stopped or part.stopped
        if part.stopped:
            break
    for check in checks:
        check.failed_files = [f.name for f in summary.failed if f.log_date in check.fix_days]
        if check.fix_days and not summary.stopped and not any(f.log_date in check.fix_days for f in summary.files):
            check.fix_note = "Copernica lists no logfiles for those days (past their retention?)"
    return summary


def reconcile_mailings(
    run: Run, mailing_ids: list[int], since: date | None, *, fix: bool, types: list[str] | None
) -> tuple[list[MailingCheck], RunSummary | None]:
    """Fetch, count, compare; with `fix` backfill and count again. Raises AuthError, ZoneMismatch."""
    from workers.backfill.api import Interrupted
    from workers.storage.mailing_counts import mailing_counts

    zone = zoneinfo.ZoneInfo(run.tz)
    begin = datetime(since.year, since.month, since.day, tzinfo=zone) if since is not None else None
    checks = [MailingCheck(mailing_id) for mailing_id in mailing_ids]
    try:
        for check in checks:
            _fetch(run, check, begin.replace(tzinfo=None) if begin is not None else None)
    except Interrupted:
        return checks, _stopped()
    before = mailing_counts(run.conn, mailing_ids, begin)
    for check in checks:
        check.before = before[check.mailing_id]
    _record(run, checks, since, fixed=False)
    if not fix:
        return checks, None
    summary = _fix(run, checks, types, since)
    if summary.files:
        after = mailing_counts(run.conn, mailing_ids, begin)
        for check in checks:
            if check.fix_days:
                check.after = after[check.mailing_id]
        _record(run, [c for c in checks if c.after is not None], since, fixed=True)
    return checks, summary


def _record(run: Run, checks: list[MailingCheck], since: date | None, *, fixed: bool) -> None:
    """Store each comparison (`workers.storage.reconciliations`: the console shows the latest);
    a mailing without statistics (unknown to Copernica, not to be had) has none to store."""
    from workers.storage.reconciliations import record

    for check in checks:
        if check.stats is not None:
            record(run.conn, check.mailing_id, check.measures(), source=check.stats.source, since=since, fixed=fixed)


def _stopped() -> RunSummary:
    from workers.backfill.files import RunSummary

    return RunSummary(stopped=True)


# --- output ---------------------------------------------------------------------------------------


def _as_json(check: MailingCheck, since: date | None, fix: bool) -> dict[str, Any]:
    added = check.added()
    measures = {
        m.name: {"copernica": m.copernica, "stored": m.stored, "missing": m.missing, "extra": m.extra}
        | ({"added": added.get(m.name, 0)} if fix else {})
        for m in check.measures()
    }
    item: dict[str, Any] = {
        "mailing": check.mailing_id,
        "source": check.stats.source if check.stats else None,
        "status": check.status,
        "error": check.error,
        "since": since.isoformat() if since else None,
        "destinations": check.stats.destinations if check.stats else None,
        "measures": measures,
    }
    if fix:
        item["fix"] = {
            "days": [d.isoformat() for d in check.fix_days],
            "added": check.events_added(),
            "failed_files": check.failed_files,
            "note": check.fix_note,
        }
    return item


def _cell(value: int, style: str) -> str:
    return f"[{style}]{value:,}[/{style}]" if value else "0"


def _table(checks: list[MailingCheck], title: str, fix: bool) -> Any:
    from rich.table import Table

    table = Table(title=title, title_justify="left")
    columns = ["mailing", "measure", "copernica", "stored", "missing", "extra"] + (["added"] if fix else [])
    for column in columns:
        table.add_column(column, justify="left" if column in ("mailing", "measure") else "right")
    for check in checks:
        measures = check.measures()
        if not measures:
            table.add_row(str(check.mailing_id), f"[red]{check.status}[/red]", *[""] * (len(columns) - 2))
        added = check.added()
        for n, m in enumerate(measures):
            label = f"{check.mailing_id} ({check.stats.source})" if n == 0 and check.stats else ""
            row = [label, m.name.replace("_", " "), "-" if m.copernica is None else f"{m.copernica:,}"]
            row += [f"{m.stored:,}", _cell(m.missing, "bold red"), _cell(m.extra, "yellow")]
            if fix:
                row.append(_cell(added.get(m.name, 0), "green"))
            table.add_row(*row)
        table.add_section()
    return table


def _notes(check: MailingCheck) -> list[str]:
    name = f"mailing {check.mailing_id}"
    if check.stats is None:
        return [f"[red]{check.error}[/red]"]  # the error names the mailing
    notes = []
    measures = check.measures()
    if check.fix_days:
        first, last = check.fix_days[0], check.fix_days[-1]
        notes.append(f"{name}: backfilled the logfiles of {first}..{last}: {check.events_added():,} event(s) added")
    if check.fix_note:
        notes.append(f"{name}: {check.fix_note}")
    for failed in check.failed_files:
        notes.append(f"[red]{name}[/red]: logfile {failed} could not be fetched")
    missing = [m for m in measures if m.missing]
    extra = [m for m in measures if m.extra]
    if missing:
        which = ", ".join(f"{m.name} -{m.missing:,}" for m in missing)
        notes.append(f"[bold red]{name}[/bold red]: fewer stored than Copernica counts ({which})")
    if extra:
        which = ", ".join(f"{m.name} +{m.extra:,}" for m in extra)
        notes.append(f"[yellow]{name}[/yellow]: more stored than Copernica counts ({which}); left as they are")
    if not missing and not extra:
        notes.append(f"{name}: every count matches")
    return notes


def _print(
    checks: list[MailingCheck], args: argparse.Namespace, since: date | None, summary: RunSummary | None
) -> None:
    if args.json:
        import orjson

        print(orjson.dumps([_as_json(c, since, args.fix) for c in checks]).decode())
        return
    console = stdout_console()
    title = "reconcile mailings" + (f" since {since}" if since else "") + (" after --fix" if args.fix else "")
    console.print(_table(checks, title, args.fix))
    for check in checks:
        for note in _notes(check):
            console.print(note, highlight=False)
    if summary is not None and summary.files:
        stored = summary.total("stored")
        console.print(f"{len(summary.files)} logfile(s) read again, {stored:,} event(s) stored (all mailings)")
    if summary is not None and summary.stopped:
        console.print("interrupted: what was stored is committed; run the same command again to finish")


def cmd_reconcile_mailings(settings: Settings, args: argparse.Namespace) -> int:
    """`ingest reconcile --mailing ...`; called from `cmd_reconcile` (its BadInput handling)."""
    mailing_ids = parse_mailings(args.mailing)
    _check_mode(args)
    since = parse_day(args.since, "--since") if args.since else None
    types = parse_types(args.types)
    fmt = parse_format(args.format)
    tz = parse_timezone(args, settings)
    with open_run(settings, tz, args.batch_size, fmt=fmt) as run:
        checks, summary = reconcile_mailings(run, mailing_ids, since, fix=args.fix, types=types)
    _print(checks, args, since, summary)
    if summary is not None and summary.stopped:
        return EXIT_INTERRUPTED
    failed = any(c.status in ("missing", "unknown", "failed") or c.had_missing or c.failed_files for c in checks)
    return EXIT_FAILED if failed else EXIT_OK
