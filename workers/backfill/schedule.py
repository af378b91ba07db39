"""The scheduled reconcile (`ingest reconcile --follow`): a round every interval, and its gauges.

A round reconciles yesterday and today (in the run's zone) as `ingest reconcile --date` does:
what the logfiles hold that was not stored is stored now and counted, and Copernica's failed
calls of those days are counted. Then every mailing with an event in the last `days_back` days
(`workers.storage.mailing_counts.recent_mailings`) is compared with its statistics, as
`ingest reconcile --mailing` does (each comparison stored, as there, for the console's mailing
page); that comparison belongs to the command line, which passes it in as a `MailingStep` (the
workers import nothing of `ingest/`).

A round that ends without error sets the gauges of `workers.backfill.reconcile_metrics` to what
it found and records its success. A round that fails (a listing, a logfile or a mailing's
statistics not to be had, the API or PostgreSQL down, a refused token) logs one warning and
leaves every gauge as it was: the last complete round's figures stay, and the age of the last
success grows until `CopernicaIngestReconcileStale` fires. The next round comes at the next
interval. Rounds start on a fixed cadence (`started + k * interval`); a round that overruns
skips the ticks it missed rather than running back to back.
"""

from __future__ import annotations

import contextlib
import logging
import math
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import TYPE_CHECKING

from workers.backfill import reconcile_metrics
from workers.backfill.runs import reconcile, today_in
from workers.storage.mailing_counts import recent_mailings

if TYPE_CHECKING:
    from workers.backfill.files import Run
    from workers.backfill.statistics import Measure

log = logging.getLogger("workers.backfill.schedule")

DAYS_BACK = 7  # mailings with events in this many days are compared with their statistics
INTERVAL = 3600.0  # seconds from the start of one round to the start of the next


@dataclass(slots=True)
class RoundResult:
    """What one round found. `logfile_missing`: events the logfiles held that were not stored
    (the round stored them); `statistics_missing`: events the mailings' statistics count beyond
    what is stored (after the fix, when the step fixes); `failed_calls`: Copernica's failed
    webhook calls of `days`."""

    number: int
    days: list[date]
    logfile_missing: int = 0
    failed_calls: int = 0
    mailings: int = 0
    statistics_missing: int = 0
    unknown_mailings: int = 0  # mailings Copernica does not know (404): reported, no error
    errors: list[str] = field(default_factory=list)
    stopped: bool = False  # SIGINT/SIGTERM during the round: its figures are partial

    @property
    def complete(self) -> bool:
        return not self.errors and not self.stopped


# Compares `mailing_ids` with Copernica's statistics, adding to the result's `statistics_missing`,
# `unknown_mailings`, `errors` and `stopped`.
MailingStep = Callable[["Run", list[int], RoundResult], None]


def events_missing(measures: Sequence[Measure]) -> int:
    """Events a mailing's statistics count beyond what is stored: the sum of what is missing of
    each compared figure but the unique ones (a unique open is no event of its own)."""
    return sum(m.missing for m in measures if not m.name.startswith("unique_"))


def check_days(run: Run, days: Sequence[date], types: Sequence[str] | None, result: RoundResult) -> None:
    """`reconcile --date` for each of `days`: the missing events stored and counted, the failed
    calls counted, what could not be read kept as the round's errors."""
    for day in days:
        counts, summary, calls = reconcile(run, day, types)
        result.logfile_missing += sum(c.added for c in counts)
        result.failed_calls += calls.total
        result.errors.extend(f"{f.name}: {f.error}" for f in summary.failed)
        if calls.error:
            result.errors.append(calls.error)
        if summary.stopped:
            result.stopped = True
            return


def reconcile_round(
    run: Run,
    number: int,
    *,
    mailing_step: MailingStep,
    types: Sequence[str] | None = None,
    days_back: int = DAYS_BACK,
    now: datetime | None = None,
) -> RoundResult:
    """One round: yesterday and today from the logfiles, then the mailings with events since
    `days_back` days before `now`. Raises what the steps raise (AuthError, ZoneMismatch, a
    database error); `follow` turns that into a failed round."""
    today = today_in(run.tz)
    result = RoundResult(number, [today - timedelta(days=1), today])
    check_days(run, result.days, types, result)
    if result.stopped:
        return result
    since = (now or datetime.now(UTC)) - timedelta(days=days_back)
    mailing_ids = recent_mailings(run.conn, since)
    result.mailings = len(mailing_ids)
    if mailing_ids:
        mailing_step(run, mailing_ids, result)
    return result


def publish(result: RoundResult, now: float | None = None) -> None:
    """Set the gauges to what a complete round found, and its success."""
    reconcile_metrics.record_logfile_missing(result.logfile_missing)
    reconcile_metrics.record_statistics_missing(result.statistics_missing)
    reconcile_metrics.record_failed_calls(result.failed_calls)
    reconcile_metrics.record_success(now)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _one_line(text: str, limit: int = 300) -> str:
    return " ".join(text.split())[:limit]


def _summary(result: RoundResult, seconds: float) -> str:
    first, last = result.days[0], result.days[-1]
    unknown = f" ({result.unknown_mailings} unknown to Copernica)" if result.unknown_mailings else ""
    return (
        f"reconcile round {result.number} ({first}..{last}): {result.logfile_missing:,} event(s) missing from the "
        f"logfiles (now stored), {result.failed_calls:,} failed call(s) logged by Copernica; "
        f"{result.mailings:,} mailing(s) compared{unknown}: {result.statistics_missing:,} event(s) missing from "
        f"their statistics; {seconds:.1f} s"
    )


def run_round(
    open_run: Callable[[], contextlib.AbstractContextManager[Run]],
    do_round: Callable[[Run, int], RoundResult],
    number: int,
) -> RoundResult | None:
    """One round with a run of its own (a fresh database connection: PostgreSQL may have
    restarted since the last); its gauges published when it completed. None when it failed."""
    began = time.monotonic()
    try:
        with open_run() as run:
            result = do_round(run, number)
    except Exception as exc:  # the API or PostgreSQL down, a refused token, a zone mismatch, ...
        log.debug("reconcile round %d failed", number, exc_info=True)
        log.warning("reconcile round %d failed: %s; the gauges keep their values", number, _first_line(exc))
        return None
    if result.stopped:
        log.info("reconcile round %d interrupted; the gauges keep their values", number)
    elif result.errors:
        more = f" (and {len(result.errors) - 1} more)" if len(result.errors) > 1 else ""
        log.warning(
            "reconcile round %d failed: %s%s; the gauges keep their values", number, _one_line(result.errors[0]), more
        )
    else:
        publish(result)
        log.info("%s", _summary(result, time.monotonic() - began))
    return result


def seconds_to_next(started: float, interval: float, now: float) -> float:
    """Seconds from `now` to the next tick of the cadence `started + k * interval` (k >= 1)."""
    ticks = max(1, math.floor((now - started) / interval) + 1)
    return max(0.0, started + ticks * interval - now)


def follow(
    open_run: Callable[[], contextlib.AbstractContextManager[Run]],
    do_round: Callable[[Run, int], RoundResult],
    *,
    stop: threading.Event,
    interval: float = INTERVAL,
    max_rounds: int | None = None,
) -> int:
    """Run a round every `interval` seconds until `stop` is set (SIGINT/SIGTERM: after the
    current step) or `max_rounds` have run. Returns the rounds run."""
    started = time.monotonic()
    rounds = 0
    while not stop.is_set():
        rounds += 1
        result = run_round(open_run, do_round, rounds)
        if result is not None and result.stopped:
            break
        if max_rounds is not None and rounds >= max_rounds:
            break
        if stop.wait(seconds_to_next(started, interval, time.monotonic())):
            break
    return rounds
