"""Monthly partitions of `events`: listed, made ahead, made for the months of a batch, pruned.

`events` is partitioned by range on `occurred_at` (migration 0004): `events_pYYYYMM` holds one
calendar month in UTC, `events_default` catches any row no partition takes, so an insert never
fails for want of a partition. The SQL function `events_create_partition(month)` (0004) is the
one implementation of "make a month's partition"; it also moves that month's rows out of the
default partition, which would otherwise block it.

- `create_ahead`: `ingest migrate` makes the previous, the current and the next three months,
  and a partition for every month that has rows in the default partition.
- `ensure_for_events`: workers make the months of a batch before inserting it. The months
  known to exist are cached per connection, so a batch of known months costs no query.
- `prune`: drops (DETACH, then DROP) the partitions whose whole month is older than a cutoff.
  Rows are never deleted: a month still partly inside the retention period stays whole.
"""

from __future__ import annotations

import logging
import re
import time
import weakref
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import TYPE_CHECKING

import psycopg
from psycopg import sql

from workers.storage.queries import scalar

if TYPE_CHECKING:
    from workers.events.model import Event

log = logging.getLogger("workers.storage.partitions")

PARENT = "events"
DEFAULT = "events_default"
BEHIND = 1  # months before the current one that `create_ahead` makes
AHEAD = 3  # months after the current one that `create_ahead` makes
# Workers make partitions up to this many months past the current one; a row timed later
# (a clock far off, a bogus `time`) goes to the default partition rather than making one
# partition per bogus month. `create_ahead` moves it out once its month comes near.
HORIZON = 12
# How long a worker waits for the locks a new partition needs (the default partition,
# exclusively) before it gives up and lets the rows go to the default partition. Below
# PostgreSQL's deadlock_timeout (1 s), so a worker never stalls a deadlock check.
WORKER_LOCK_TIMEOUT = "500ms"
# Prune and migrate wait longer, then fail with a message.
ADMIN_LOCK_TIMEOUT = "10s"
_RECHECK_UNPARTITIONED = 60.0  # seconds: a worker older than migration 0004 notices it this soon


class RetentionError(Exception):
    """Bad input to prune (an age it cannot read); the message is one line."""


@dataclass(frozen=True, slots=True)
class Partition:
    name: str
    lower: datetime | None  # None for the default partition
    upper: datetime | None
    is_default: bool
    rows_estimate: int | None  # planner statistics; None until the partition was analysed
    bytes: int

    @property
    def month(self) -> date | None:
        return month_of(self.lower) if self.lower is not None else None


def month_of(moment: datetime) -> date:
    """The first day of `moment`'s month in UTC (the partitions' months)."""
    if moment.tzinfo is not None and moment.utcoffset():
        moment = moment.astimezone(UTC)
    return date(moment.year, moment.month, 1)


def add_months(month: date, count: int) -> date:
    index = month.year * 12 + month.month - 1 + count
    return date(index // 12, index % 12 + 1, 1)


def is_partitioned(conn: psycopg.Connection) -> bool:
    row = conn.execute("SELECT relkind FROM pg_class WHERE oid = to_regclass(%s)", (PARENT,)).fetchone()
    return row is not None and row[0] == "p"


_BOUNDS = r"FROM \('([^']*)'\) TO \('([^']*)'\)"


def list_partitions(conn: psycopg.Connection) -> list[Partition]:
    """Every partition of `events`, the default first, then by month. Bounds are read back by
    PostgreSQL in this session (the text `pg_get_expr` gives follows the session's time zone)."""
    rows = conn.execute(
        "SELECT c.relname, b[1]::timestamptz, b[2]::timestamptz,"
        " pg_get_expr(c.relpartbound, c.oid) = 'DEFAULT', c.reltuples::bigint, pg_total_relation_size(c.oid)"
        " FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid"
        " LEFT JOIN LATERAL regexp_match(pg_get_expr(c.relpartbound, c.oid), %s) AS b ON true"
        " WHERE i.inhparent = to_regclass(%s)"
        " ORDER BY 2 NULLS FIRST, 1",
        (_BOUNDS, PARENT),
    ).fetchall()
    return [
        Partition(name, lower, upper, bool(is_default), rows if rows >= 0 else None, size)
        for name, lower, upper, is_default, rows, size in rows
    ]


def default_months(conn: psycopg.Connection) -> list[date]:
    """Months that have rows in the default partition (it should hold few or none)."""
    rows = conn.execute(
        sql.SQL("SELECT DISTINCT date_trunc('month', occurred_at AT TIME ZONE 'UTC')::date FROM {} ORDER BY 1").format(
            sql.Identifier(DEFAULT)
        )
    ).fetchall()
    return [row[0] for row in rows]


def create_months(conn: psycopg.Connection, months: Iterable[date], lock_timeout: str) -> list[date]:
    """Make the partitions of `months` that do not exist, in one transaction (a savepoint when
    the caller has one open); return the months made. Waits at most `lock_timeout` for each
    lock (raises psycopg.errors.LockNotAvailable after that, the transaction rolled back)."""
    created: list[date] = []
    with conn.transaction():
        previous = scalar(conn, "SELECT current_setting('lock_timeout')")
        conn.execute("SELECT set_config('lock_timeout', %s, true)", (lock_timeout,))
        for month in sorted(set(months)):
            if scalar(conn, "SELECT events_create_partition(%s)", (month,)):
                created.append(month)
        conn.execute("SELECT set_config('lock_timeout', %s, true)", (previous,))
    if created:
        log.info("created partitions for %s", ", ".join(m.strftime("%Y-%m") for m in created))
    return created


def create_ahead(conn: psycopg.Connection, today: date | None = None) -> list[date]:
    """`ingest migrate`: the months around today, and the months the default partition holds
    rows of (within HORIZON); idempotent. Does nothing before migration 0004."""
    if not is_partitioned(conn):
        return []
    current = month_of(datetime.now(UTC)) if today is None else date(today.year, today.month, 1)
    wanted = {add_months(current, n) for n in range(-BEHIND, AHEAD + 1)}
    wanted.update(m for m in default_months(conn) if m <= add_months(current, HORIZON))
    have = {p.month for p in list_partitions(conn) if p.month is not None}
    return create_months(conn, wanted - have, ADMIN_LOCK_TIMEOUT) if wanted - have else []


# --- workers: the months of a batch ----------------------------------------------------------


@dataclass(slots=True)
class _Known:
    """What one connection knows exists. `pending` is the transaction (xid8) that made
    partitions and may still roll back: until it has ended, nothing cached is trusted for good
    (the catalogue is read again once it has). A partition made and then rolled back to a
    savepoint is believed in until that transaction ends: rows of its month go to the default
    partition meanwhile (never lost; `create_ahead` moves them)."""

    months: set[date] = field(default_factory=set)
    partitioned: bool = True
    checked: float = 0.0  # when `partitioned` was last read
    pending: str | None = None


_known: weakref.WeakKeyDictionary[psycopg.Connection, _Known] = weakref.WeakKeyDictionary()


def ensure_for_events(conn: psycopg.Connection, events: Sequence[Event]) -> None:
    """Make sure the partitions of the months of `events` exist before they are inserted
    (inside the caller's transaction). Costs a set of months when they are all known."""
    ensure_months(conn, months_of(events))


def months_of(events: Iterable[Event]) -> set[date]:
    """The partition months of `events` (what `ensure_months` takes)."""
    return {month_of(moment) for moment in {event.occurred_at for event in events}}


def known(conn: psycopg.Connection, months: set[date]) -> bool:
    """Whether `ensure_months(conn, months)` would send nothing to the server (so a caller with
    a COPY in progress on `conn` need not end it first)."""
    state = _known.get(conn)
    return state is not None and state.partitioned and state.pending is None and months <= state.months


def ensure_months(conn: psycopg.Connection, months: set[date]) -> None:
    """`ensure_for_events` for months already gathered (by `months_of`, on another thread)."""
    state = _known.get(conn)
    if state is None:
        state = _known[conn] = _Known()
    if state.partitioned and state.pending is None and months <= state.months:
        return
    _ensure(conn, state, months)


def _ensure(conn: psycopg.Connection, state: _Known, months: set[date]) -> None:
    if not state.partitioned and not _partitioned_now(conn, state):
        return
    if state.pending is not None and _pending_has(conn, state, months):
        return
    horizon = add_months(month_of(datetime.now(UTC)), HORIZON)
    missing = {m for m in months - state.months if m <= horizon}
    if not missing:
        return
    if not is_partitioned(conn):  # an older schema (a worker deployed before `ingest migrate`)
        state.partitioned, state.checked = False, time.monotonic()
        return
    state.months.update(p.month for p in list_partitions(conn) if p.month is not None)
    missing -= state.months
    if not missing:
        return
    in_callers_transaction = conn.info.transaction_status != psycopg.pq.TransactionStatus.IDLE
    try:
        created = create_months(conn, missing, WORKER_LOCK_TIMEOUT)
    except psycopg.errors.LockNotAvailable:
        log.warning(
            "could not lock events to create partitions for %s within %s; these rows go to %s"
            " until a later batch or `ingest migrate` creates them",
            ", ".join(m.strftime("%Y-%m") for m in sorted(missing)),
            WORKER_LOCK_TIMEOUT,
            DEFAULT,
        )
        return
    state.months.update(created)
    if created and in_callers_transaction:  # made inside a transaction that may yet roll back
        state.pending = scalar(conn, "SELECT pg_current_xact_id()::text")


def _partitioned_now(conn: psycopg.Connection, state: _Known) -> bool:
    """Whether `events` is partitioned by now (asked again at most every _RECHECK_UNPARTITIONED)."""
    if time.monotonic() - state.checked < _RECHECK_UNPARTITIONED:
        return False
    state.partitioned = is_partitioned(conn)
    state.checked = time.monotonic()
    return state.partitioned


def _pending_has(conn: psycopg.Connection, state: _Known, months: set[date]) -> bool:
    """Whether our own transaction that made partitions, still open, made every one of `months`
    (what it made is there for us). Once it has ended (committed or rolled back, maybe to a
    savepoint), what is known is read again."""
    status = scalar(conn, "SELECT pg_xact_status(%s::xid8)", (state.pending,))
    if status != "in progress":
        state.months.clear()
        state.pending = None
        return False
    return months <= state.months


def forget(conn: psycopg.Connection) -> None:
    """Drop what is cached for `conn` (tests; after dropping partitions on the same connection)."""
    _known.pop(conn, None)


# --- prune --------------------------------------------------------------------------------------

_AGE = re.compile(r"^\s*(\d{1,6})\s*([dw])\s*$", re.IGNORECASE)


def parse_age(text: str) -> timedelta:
    """`90d` or `12w`: days or weeks (not months: `m` reads as minutes to some, months to
    others, and months differ in length)."""
    match = _AGE.match(text or "")
    if not match:
        raise RetentionError(f"{text!r} is not an age like 90d or 12w (a number of days or weeks)")
    count = int(match[1])
    if count < 1:
        raise RetentionError(f"{text!r}: the age must be at least 1 day")
    return timedelta(days=count) if match[2].lower() == "d" else timedelta(weeks=count)


@dataclass(slots=True)
class PruneResult:
    cutoff: datetime
    dropped: list[Partition] = field(default_factory=list)  # or, in a dry run, those that would be
    kept: list[Partition] = field(default_factory=list)
    moved_months: list[date] = field(default_factory=list)  # out of the default partition first
    default_rows: int = 0  # rows left in the default partition (outside every month made)


def prune(
    conn: psycopg.Connection, older_than: timedelta, *, now: datetime | None = None, dry_run: bool = False
) -> PruneResult:
    """Drop every month partition whose range ends at or before `now - older_than`.

    First the rows the default partition holds for months that can have a partition are moved
    into their partitions (`events_create_partition`), so that old rows there go with their
    month. Each partition is detached and dropped in a transaction of its own: a lock that does
    not come within ADMIN_LOCK_TIMEOUT fails this prune with the partitions before it dropped.
    `conn` must be in autocommit mode (each step commits)."""
    moment = now or datetime.now(UTC)
    result = PruneResult(cutoff=moment - older_than)
    if not is_partitioned(conn):
        raise RetentionError("events is not partitioned yet: run `ingest migrate` first")
    if not dry_run:
        horizon = add_months(month_of(moment), HORIZON)
        wanted = [m for m in default_months(conn) if m <= horizon]
        if wanted:
            result.moved_months = create_months(conn, wanted, ADMIN_LOCK_TIMEOUT)
    for part in list_partitions(conn):
        if part.is_default:
            continue
        if part.upper is not None and part.upper <= result.cutoff:
            result.dropped.append(part)
        else:
            result.kept.append(part)
    if not dry_run:
        for part in result.dropped:
            with conn.transaction():
                conn.execute("SELECT set_config('lock_timeout', %s, true)", (ADMIN_LOCK_TIMEOUT,))
                conn.execute(
                    sql.SQL("ALTER TABLE {} DETACH PARTITION {}").format(
                        sql.Identifier(PARENT), sql.Identifier(part.name)
                    )
                )
                conn.execute(sql.SQL("DROP TABLE {}").format(sql.Identifier(part.name)))
            log.info("dropped partition %s (%s to %s)", part.name, part.lower, part.upper)
    result.default_rows = scalar(conn, sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(DEFAULT)))
    return result
