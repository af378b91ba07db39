"""PostgreSQL: how rows reach the tables. The only module that writes event SQL.

A worker's rows go by COPY straight into `events` inside a savepoint (`workers.storage.writer`); the unique
constraint on (event_key, occurred_at) refuses a second delivery of an event, and then (or
for rows whose time is not part of their key) they go by COPY into a session-temporary table
and one `INSERT … SELECT … ON CONFLICT DO NOTHING` (`insert_events`): either way a second
delivery of the same event is a no-op (see _NEW_KEY for why that is one row per event, and
the partitions it needs, `workers.storage.partitions`). The COPY text is made by `workers.storage.copy_text`.
Rejected calls are keyed by `call_key` the same way, so a retried job never doubles them.
"""

from __future__ import annotations

import contextlib
import gc
import hashlib
import logging
import queue
import sys
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from collections.abc import Set as AbstractSet
from dataclasses import dataclass
from typing import NamedTuple

import psycopg
from psycopg.conninfo import conninfo_to_dict, make_conninfo
from psycopg.types.json import Jsonb

from common.envelope import Envelope
from workers.events.model import Event
from workers.storage import agents, erased, keys, messages, partitions, writer
from workers.storage.copy_text import (
    LEGACY_COLUMNS,
    STORED_COLUMNS,
    copy_data,
    copy_line,
    first_per_key,
    without_machine,
)

log = logging.getLogger("workers.storage.store")

STATEMENT_TIMEOUT_MS = 120_000
COLUMNS = ", ".join(STORED_COLUMNS)  # the order of copy_line's columns
LEGACY = ", ".join(LEGACY_COLUMNS)  # before migration 0006 (see `messages.kept`)


def _stage_name(columns: str, short_key: bool) -> str:
    """The staging table is per session and shaped like `events` when first made: its name carries
    the column list and the key's type, so a long-lived connection never COPYs into a stage of an
    older schema (one made before migration 0011 has a text key, which `events` no longer takes)."""
    shape = columns if short_key else columns + " event_key text"
    return "incoming_events_" + hashlib.sha256(shape.encode()).hexdigest()[:12]


# One row per event. `events` is partitioned by month on occurred_at (migration 0004), so its
# unique constraint is (event_key, occurred_at), its only one since 0014 (before, the PRIMARY
# KEY (id, occurred_at) never conflicted: generated ids), so a bare ON CONFLICT DO NOTHING
# arbitrates on the key constraint (and also works on a schema before 0004: a worker deployed
# before `ingest migrate`). That is "one row per event_key" whenever occurred_at follows from the key:
# a whole second read from the event's `time`/`timestamp`, which message and profile keys
# contain. It does not when occurred_at is the time of receipt (no usable time: each delivery
# has its own) or a timestamp with a fraction of a second; those rows also look their key up
# in every partition. Limit: that lookup sees rows committed before the statement, so two
# such copies stored by two workers at the same moment are two rows (copies in one chunk are
# one: `copy_data` keeps the first).
_NEW_KEY = (
    "WHERE (s.occurred_at <> s.received_at AND s.occurred_at = date_trunc('second', s.occurred_at))"
    " OR NOT EXISTS (SELECT 1 FROM events e WHERE e.event_key = s.event_key)"
)


@dataclass(frozen=True, slots=True)
class Rejected:
    envelope: Envelope
    reason: str
    source: str = "webhook"


@dataclass(slots=True)
class StoreResult:
    stored: int = 0  # new rows in events
    duplicates: int = 0  # events already there
    rejected: int = 0  # calls kept in rejected_events (new or already kept)
    erased: int = 0  # events and calls of erased people, left out (`workers.storage.erased`)

    def __iadd__(self, other: StoreResult) -> StoreResult:
        self.stored += other.stored
        self.duplicates += other.duplicates
        self.rejected += other.rejected
        self.erased += other.erased
        return self


# Connection settings a DATABASE_URL may give itself, else these. With several hosts
# (`postgresql://h1,h2/db?target_session_attrs=read-write`) each is tried in turn for up to
# connect_timeout, so a host whose machine is gone (no refusal, just silence) costs seconds
# rather than libpq's two minutes before the next one; keepalives find a connection to such a
# machine dead within about half a minute instead of the kernel's quarter of an hour.
CONNECT_DEFAULTS = {
    "connect_timeout": "10",
    "keepalives": "1",
    "keepalives_idle": "15",
    "keepalives_interval": "5",
    "keepalives_count": "3",
}


def connect_options(database_url: str) -> dict[str, str]:
    """CONNECT_DEFAULTS the URL does not set itself (keyword arguments would override the URL's)."""
    given = conninfo_to_dict(database_url)
    return {name: value for name, value in CONNECT_DEFAULTS.items() if name not in given}


def conninfo(database_url: str) -> str:
    """DATABASE_URL with CONNECT_DEFAULTS added, for every connection the project makes."""
    return make_conninfo(database_url, **connect_options(database_url))


def connect(database_url: str) -> psycopg.Connection:
    # A statement that runs for minutes is a sick database: fail it, so the job is retried
    # rather than held (a worker's job must finish well within its timeout).
    return psycopg.connect(
        conninfo(database_url),
        autocommit=False,
        application_name="copernica-ingest",
        options=f"-c statement_timeout={STATEMENT_TIMEOUT_MS}",
    )


def _clean(value: str) -> str:
    """PostgreSQL text cannot hold NUL; JSON gets it escaped by orjson, text columns lose it."""
    if isinstance(value, str) and "\x00" in value:
        return value.replace("\x00", "")
    return value


def insert_events(
    conn: psycopg.Connection, events: Sequence[Event], data: bytes | None = None, *, staged: bool = False
) -> int:
    """Insert within the caller's transaction through the stage; return how many rows were new.
    `data`: the events' `copy_data` when the caller made it already (on another thread);
    `staged`: this transaction made the staging table already (an earlier chunk)."""
    if not events:
        return 0
    not_erased = erased.keep_events(erased.load(conn), events)  # none of an erased person
    if not_erased is not None:
        events, data = not_erased, None
        if not events:
            return 0
    partitions.ensure_for_events(conn, events)  # a set of months when they are known: no query
    kept = messages.kept(conn)
    short = keys.uuid_keys(conn)
    with conn.cursor() as cur:
        if kept:
            agents.add(cur, agents.of(events))
        return insert_staged(
            cur, copy_data(events, kept, short) if data is None else data, staged=staged, current=kept, short_key=short
        )


def insert_staged(cur: psycopg.Cursor, data: bytes, *, staged: bool, current: bool, short_key: bool) -> int:
    """The rows of `data` (COPY text of COPY_COLUMNS) that are new, inserted; how many. Not
    `current`: the schema is before 0006 (`messages.kept`). `short_key`: `data` holds the keys as
    a uuid `events.event_key` takes them (`keys.uuid_keys`)."""
    cols = COLUMNS if current else LEGACY
    stage = _stage_name(cols, short_key)
    if not current:
        data = without_machine(data.decode()).encode()
    if not staged:  # once per transaction: cheap, and right after a rollback dropped the stage
        cur.execute(
            f"CREATE TEMP TABLE IF NOT EXISTS {stage} ON COMMIT DELETE ROWS AS SELECT {cols} FROM events WITH NO DATA"
        )
    with cur.copy(f"COPY {stage} ({cols}) FROM STDIN") as copy:
        copy.write(data)
    cur.execute(f"INSERT INTO events ({cols}) SELECT {cols} FROM {stage} s {_NEW_KEY} ON CONFLICT DO NOTHING")
    stored = cur.rowcount
    cur.execute(f"DELETE FROM {stage}")  # the next chunk of this transaction starts empty
    return stored


def call_key(envelope: Envelope) -> str:
    """What makes two rejected calls the same call (a retried job sees the same envelope)."""
    digest = hashlib.sha256(envelope.body)
    for part in (repr(envelope.received_at), envelope.remote, envelope.method, envelope.target):
        digest.update(b"\x1f" + part.encode("utf-8", "surrogateescape"))
    return digest.hexdigest()


def insert_rejects(conn: psycopg.Connection, rejects: Iterable[Rejected]) -> int:
    count = 0
    with conn.cursor() as cur:
        for item in rejects:
            env = item.envelope
            cur.execute(
                "INSERT INTO rejected_events (call_key, received_at, reason, content_type, headers, body,"
                " source, remote, method, target)"
                " VALUES (%s, to_timestamp(%s), %s, %s, %s, %s, %s, %s, %s, %s)"
                " ON CONFLICT (call_key) DO NOTHING",
                (
                    call_key(env),
                    env.received_at,
                    _clean(item.reason)[:2000],
                    _clean(env.content_type),
                    Jsonb({k: _clean(v) for k, v in env.headers.items()}),
                    env.body,
                    item.source,
                    _clean(env.remote),
                    _clean(env.method),
                    _clean(env.target),
                ),
            )
            count += 1
    return count


class Chunk(NamedTuple):
    """Part of a batch as the parser hands it to `store_chunks` (a plain 3-tuple in this order
    is taken too)."""

    events: Sequence[Event]
    origins: Sequence[Envelope] | None  # origins[i]: the raw call events[i] came from (None: not known)
    rejects: Sequence[Rejected]


WRITER_SWITCH_INTERVAL = 0.001  # seconds; see store_chunks
_REFUSED = (psycopg.DataError, psycopg.errors.UntranslatableCharacter, psycopg.errors.CharacterNotInRepertoire)


def store(
    conn: psycopg.Connection,
    events: Sequence[Event],
    rejects: Sequence[Rejected] = (),
    origins: Sequence[Envelope] | None = None,
) -> StoreResult:
    """Store a batch in one transaction. An event PostgreSQL refuses (bad data) does not sink
    the batch: the batch is retried event by event and the refused ones become rejects, kept
    with `origins[i]` (the raw call event i came from) when given."""
    return store_chunks(conn, [Chunk(events, origins, rejects)])


@dataclass(slots=True)
class Lines:
    """A chunk as the writer thread takes it, made on the caller's thread."""

    direct: bytes  # COPY text of the events whose occurred_at follows from their key
    direct_rows: int
    staged: bytes  # the others (time of receipt, a fraction of a second): they need `_NEW_KEY`
    months: set  # partition months of the chunk's events
    rejects: Sequence[Rejected]
    agents: dict[int, str]  # user agents of the chunk's rows not known to be stored (hash → text)


def _lines(
    events: Sequence[Event],
    rejects: Sequence[Rejected],
    seen: set[str],
    kept: bool = True,
    known: AbstractSet[int] = frozenset(),
    short_key: bool = True,
) -> Lines:
    """Of several events with one key in a transaction only the first (see `copy_data`). `known`:
    user agents known to be stored; `short_key`: the keys as a uuid column takes them (`keys`)."""
    direct: list[str] = []
    staged: list[str] = []
    events = first_per_key(events, seen)
    wanted = {h: t for h, t in agents.of(events).items() if h not in known} if kept else {}
    for event in events:
        occurred = event.occurred_at
        if occurred.microsecond == 0 and occurred != event.received_at:
            direct.append(copy_line(event, kept, short_key))
        else:
            staged.append(copy_line(event, kept, short_key))
    return Lines(
        "".join(direct).encode(),
        len(direct),
        "".join(staged).encode(),
        partitions.months_of(events),
        rejects,
        wanted,
    )


def store_chunks(
    conn: psycopg.Connection, chunks: Iterable[Chunk], meanwhile: Callable[[], object] | None = None
) -> StoreResult:
    """Store chunks as they come, in one transaction, on a thread of their own: PostgreSQL
    stores chunk k while the caller's iterator produces (parses) chunk k+1. The caller's thread
    also writes each chunk's COPY text, so the writer holds the GIL as little as it can (see
    `workers.storage.writer` for how the rows reach `events`). `meanwhile` is called once every chunk is
    handed over, while PostgreSQL stores the last ones and commits (what it raises is raised
    once the transaction has ended, committed or not)."""
    # before 0006: whole payloads (nothing there to expand them); before 0011: whole keys
    current, short = messages.known(conn), keys.known_uuid(conn)
    if not (current and short):
        with conn.transaction():  # a query of its own, until the schema is found current
            current, short = messages.kept(conn), keys.uuid_keys(conn)
    feed: queue.Queue[Lines | None] = queue.Queue(maxsize=2)
    outcome = _Outcome()
    guard = erased.Guard()  # the erased people, loaded by the writer in its transaction
    known = agents.known(conn)
    thread = threading.Thread(
        target=_write_chunks, args=(conn, feed, outcome, guard, short), name="store-writer", daemon=True
    )
    thread.start()
    kept: list[Chunk] = []
    seen: set[str] = set()
    # The writer waits on PostgreSQL several times a transaction and each time needs the GIL
    # back from the parsing thread: by default it waits up to 5 ms for it (the switch interval).
    switch = sys.getswitchinterval()
    sys.setswitchinterval(min(switch, WRITER_SWITCH_INTERVAL))
    with cyclic_gc_off():  # the batch's events are kept until the end
        try:
            for given in chunks:
                chunk = Chunk(*guard.keep(*given))  # nothing of an erased person
                kept.append(chunk)
                if outcome.error is None:
                    feed.put(_lines(chunk.events, chunk.rejects, seen, current, known, short))
        except BaseException:
            outcome.aborted = True
            raise
        finally:
            feed.put(None)
            try:
                if meanwhile is not None and not outcome.aborted:
                    meanwhile()
            finally:
                thread.join()
            sys.setswitchinterval(switch)
    error = outcome.error
    events = [event for chunk in kept for event in chunk.events]
    rejects = [item for chunk in kept for item in chunk.rejects]
    if error is None:
        return StoreResult(outcome.stored, len(events) - outcome.stored, len(rejects), guard.erased)
    if not isinstance(error, _REFUSED):
        raise error
    log.warning("batch of %d refused by PostgreSQL; storing it event by event", len(events))
    origins: list[Envelope | None] = []
    for chunk in kept:
        origins.extend(chunk.origins if chunk.origins is not None else [None] * len(chunk.events))
    from workers.storage import refused  # it imports this module

    result = refused.store_one_by_one(conn, events, origins, rejects)
    result.erased += guard.erased
    return result


class _Outcome:
    """How the writer thread of `store_chunks` ended (rows stored, or what it raised), and
    whether the producer gave up."""

    __slots__ = ("aborted", "error", "stored")

    def __init__(self) -> None:
        self.stored = 0  # read only when `error` is None: the transaction committed
        self.error: BaseException | None = None
        self.aborted = False


def _write_chunks(
    conn: psycopg.Connection,
    feed: queue.Queue[Lines | None],
    outcome: _Outcome,
    guard: erased.Guard,
    short_key: bool,
) -> None:
    """The writer thread of `store_chunks`: every chunk `feed` brings, in one transaction.
    `short_key`: the form the chunks' keys were written in (`keys.uuid_keys`)."""
    ended = False  # the producer's end (None) was taken: nothing more will come
    try:
        with conn.transaction():
            guard.load(conn)
            rows = writer.Writer(conn, short_key)
            try:
                while (lines := feed.get()) is not None:
                    rows.add(lines)
                ended = True
                if outcome.aborted:
                    raise _Aborted()
                outcome.stored = rows.finish()
            except BaseException as exc:
                rows.abandon(exc)  # an open COPY holds the connection's lock
                raise
        if conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE:  # committed, not a savepoint's
            agents.remember(conn, rows.agents)
    except BaseException as exc:  # handed to the caller's thread
        outcome.error = exc
        guard.release()
        while not ended and feed.get() is not None:  # let the producer finish
            pass


@contextlib.contextmanager
def cyclic_gc_off() -> Iterator[None]:
    """The cyclic GC off for a batch's parsing and storing. It would walk the batch's objects
    (thousands, kept until the commit) again and again: ~15 % of the parsing. They form no
    cycles (reference counting frees them), and a batch is bounded (INGEST_WORKER_BATCH), so is
    what a cycle could hold. Nested uses leave it to the outermost to switch it back on."""
    collecting = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if collecting:
            gc.enable()


class _Aborted(Exception):
    """The producer failed: roll the transaction back."""
