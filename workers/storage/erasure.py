"""Erasing one person (`ingest erase`): every row that holds them, in one transaction.

Where a person's data lives is listed once, in `HOLDERS` (tables with an address, profile or
message column) plus `rejected_events`, whose raw bodies are searched in Python (`erased.forms`:
plain, percent-encoded, JSON-escaped). For an e-mail address the rows are those whose recipient
is the address (any case) or whose payload names it, then every row of the same messages (an
open is the person's whatever it carries) and of the profiles found with the address (an
unsubscribe webhook or a profile change carries no recipient); those profiles are erased as
well. For a profile id: its rows (with `--database`, those of that database or of none: logfile
records carry no database), the rows of its messages and of the addresses found with it, which
are erased as well. A person is thus their address and profile together, whichever names them:
workers check one of the two per row (`workers.storage.erased`).

Order, so that nothing of the person is stored again while or after they are removed: the
selectors go into `erased_selectors` and commit first, then `erased.barrier` waits for the
store transactions still running on the older list, then one transaction removes every row and
writes the audit row. An erase killed half-way leaves the person's rows whole (and the person
on the list); running it again finishes it.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import orjson
import psycopg
from psycopg.types.json import Jsonb

from workers.storage import erased
from workers.storage.erased import EMAIL, Selector
from workers.storage.queries import scalar

log = logging.getLogger("workers.storage.erasure")

REJECTED = "rejected_events"
_SCAN_ROWS = 2000  # rejected calls read per round trip


@dataclass(frozen=True, slots=True)
class Holder:
    """A table that holds people: the columns a person is found by (None: it has none)."""

    table: str
    recipient: str | None
    profile: str | None
    database: str | None
    message: str | None
    payload: str | None = None  # jsonb searched for the address
    optional: bool = False  # only where the table exists (to_regclass): a schema before its migration


# Every table with a person's rows, except rejected_events (raw bodies: `_erase_rejected`).
# `messages` (one row per message, migration 0006) is optional: a schema without it works.
HOLDERS: tuple[Holder, ...] = (
    Holder("events", "recipient", "profile_id", "database_id", "message_id", "payload"),
    Holder("messages", "recipient", "profile_id", None, "message_id", optional=True),
)


@dataclass(slots=True)
class Erasure:
    """What erasing one person removed (or, in a dry run, would remove)."""

    selector: Selector
    removed: dict[str, int] = field(default_factory=dict)  # table -> rows
    profiles: list[int] = field(default_factory=list)  # profiles found with the address, erased too
    addresses: int = 0  # addresses found with the profile, erased too

    @property
    def total(self) -> int:
        return sum(self.removed.values())


def address_pattern(address: str) -> str:
    """A PostgreSQL regular expression (case-insensitive use) for the address as a whole word of a
    text: `a@example.com` is not found in `ba@example.com` nor in `a@example.com.au`."""
    escaped = orjson.dumps(address).decode()[1:-1]  # as it appears inside jsonb's text
    literal = re.sub(r"([^A-Za-z0-9@])", r"\\\1", escaped)
    return r"(?<![a-z0-9._+!#$%*^`{|}~-])" + literal + r"(?![a-z0-9_-]|\.[a-z0-9])"


def _tables(conn: psycopg.Connection) -> list[Holder]:
    present = []
    for holder in HOLDERS:
        if holder.optional and scalar(conn, "SELECT to_regclass(%s)", (holder.table,)) is None:
            continue
        present.append(holder)
    return present


def _direct(holder: Holder, selector: Selector) -> tuple[list[str], dict[str, Any]]:
    """The conditions that find the selector itself in a table (OR-ed)."""
    params: dict[str, Any] = {}
    conditions: list[str] = []
    if selector.kind == EMAIL:
        params["address"] = selector.value
        if holder.recipient:
            conditions.append(f"lower({holder.recipient}) = %(address)s")
        if holder.payload:
            params["pattern"] = address_pattern(selector.value)
            conditions.append(f"{holder.payload}::text ~* %(pattern)s")
    elif holder.profile:
        params["profile"] = selector.profile_id
        database = selector.database_id
        if database is not None and holder.database:
            params["database"] = database
            conditions.append(
                f"({holder.profile} = %(profile)s AND ({holder.database} = %(database)s OR {holder.database} IS NULL))"
            )
        elif database is None:
            conditions.append(f"{holder.profile} = %(profile)s")
        # else: a table without the database (`messages`) cannot be narrowed to it: its rows of
        # the person are found through the messages of the rows that were (`_related`).
    return conditions, params


def _related(holder: Holder, person: Person) -> tuple[list[str], dict[str, Any]]:
    """The conditions that find the rest of the person: their messages, and the profiles and
    addresses found with the selector."""
    conditions: list[str] = []
    params: dict[str, Any] = {}
    if person.messages and holder.message:
        params["messages"] = sorted(person.messages)
        conditions.append(f"{holder.message} = ANY(%(messages)s)")
    if person.profiles and holder.profile:
        params["profiles"] = sorted(person.profiles)
        conditions.append(f"{holder.profile} = ANY(%(profiles)s)")
    if person.addresses and holder.recipient:
        params["addresses"] = sorted(person.addresses)
        conditions.append(f"lower({holder.recipient}) = ANY(%(addresses)s)")
    return conditions, params


@dataclass(slots=True)
class Person:
    """What is found with a selector: for an address, the profiles stored with it; for a profile,
    the addresses; and the ids of the messages sent to them."""

    profiles: set[int] = field(default_factory=set)
    addresses: set[str] = field(default_factory=set)
    messages: set[str] = field(default_factory=set)

    def add(self, selector: Selector, message: str | None, profile: int | None, address: str | None) -> None:
        if message:
            self.messages.add(message)
        if selector.kind == EMAIL and profile is not None:
            self.profiles.add(profile)
        if selector.kind != EMAIL and address:
            self.addresses.add(address.lower())


def _returning(holder: Holder) -> str:
    return ", ".join(c or "NULL" for c in (holder.message, holder.profile, holder.recipient))


def identities(conn: psycopg.Connection, selector: Selector) -> Person:
    """The profiles (or addresses) stored with the selector, read before anything is removed."""
    person = Person()
    for holder in _tables(conn):
        conditions, params = _direct(holder, selector)
        if conditions:
            columns = ", ".join(c or "NULL" for c in (holder.profile, holder.recipient))
            where = " OR ".join(conditions)
            for profile, address in conn.execute(
                f"SELECT DISTINCT {columns} FROM {holder.table} WHERE {where}", params
            ):
                person.add(selector, None, profile, address)
    return person


def _erase_rows(conn: psycopg.Connection, selector: Selector, result: Erasure) -> Person:
    """Delete the person's rows from every holder; what was found of them."""
    holders = _tables(conn)
    person = Person()
    for holder in holders:  # the rows of the selector itself, and what they tell about the person
        conditions, params = _direct(holder, selector)
        if not conditions:
            continue
        rows = conn.execute(
            f"DELETE FROM {holder.table} WHERE {' OR '.join(conditions)} RETURNING {_returning(holder)}", params
        ).fetchall()
        result.removed[holder.table] = len(rows)
        for row in rows:
            person.add(selector, *row)
    for _ in range(3):  # the rest of their messages, profiles and addresses; then the messages found so
        known = len(person.messages)
        for holder in holders:
            conditions, params = _related(holder, person)
            if conditions:
                rows = conn.execute(
                    f"DELETE FROM {holder.table} WHERE {' OR '.join(conditions)} RETURNING {holder.message or 'NULL'}",
                    params,
                ).fetchall()
                result.removed[holder.table] = result.removed.get(holder.table, 0) + len(rows)
                person.messages.update(m for (m,) in rows if m)
        if len(person.messages) == known:
            break
    result.profiles = sorted(person.profiles)
    result.addresses = len(person.addresses)
    return person


_PROFILE_FIELD = r"profile(?:id|_id)?[\"']?\s*[=:]\s*[\"']?{}(?![0-9])"


def call_holds(body: bytes, selector: Selector, person: Person) -> bool:
    """Whether a raw call names the person: an address of theirs (in any form), one of their
    messages, or a profile id of theirs as the value of a `profile` field."""
    addresses = person.addresses | ({selector.value} if selector.kind == EMAIL else set())
    if addresses and not addresses.isdisjoint(erased.addresses_in(body)):
        return True
    wanted = [*person.profiles, *([selector.profile_id] if selector.profile_id is not None else [])]
    for form in erased.forms(body):
        if any(m.lower().encode() in form for m in person.messages):
            return True
        text = form.decode("latin-1")
        if any(re.search(_PROFILE_FIELD.format(p), text) for p in wanted):
            return True
    return False


def _erase_rejected(conn: psycopg.Connection, selector: Selector, person: Person) -> int:
    """Delete the rejected calls whose raw body names the person (read through, a chunk at a time)."""
    found: list[int] = []
    with conn.cursor(name="erase_rejected_scan") as scan:
        scan.itersize = _SCAN_ROWS
        scan.execute(f"SELECT id, body FROM {REJECTED}")
        for row_id, body in scan:
            if call_holds(bytes(body), selector, person):
                found.append(row_id)
    if found:
        conn.execute(f"DELETE FROM {REJECTED} WHERE id = ANY(%s)", (found,))
    return len(found)


def _hashes(key: bytes, selector: Selector, person: Person) -> list[tuple[str, str]]:
    """(kind, keyed hash) of what workers must keep out: the address or the bare profile id (see
    `workers.storage.erased`), and the profiles or addresses found with it."""
    bare = Selector.profile(selector.profile_id) if selector.profile_id is not None else selector
    selectors = [
        bare,
        *(Selector.profile(p) for p in sorted(person.profiles)),
        *(Selector.email(a) for a in sorted(person.addresses)),
    ]
    return [(s.kind, erased.selector_hash(key, s)) for s in dict.fromkeys(selectors)]


def remember(conn: psycopg.Connection, key: bytes, selectors: Sequence[tuple[str, str]]) -> None:
    """Add keyed hashes to `erased_selectors` (idempotent), in the caller's transaction."""
    check = erased.key_check(key)
    with conn.cursor() as cur:
        cur.executemany(
            "INSERT INTO erased_selectors (kind, selector_hash, key_check) VALUES (%s, %s, %s)"
            " ON CONFLICT (selector_hash) DO NOTHING",
            [(kind, digest, check) for kind, digest in selectors],
        )


def erase(conn: psycopg.Connection, selector: Selector, key: bytes | None, *, dry_run: bool = False) -> Erasure:
    """Remove every row of one person (see the module's docstring for the order). `conn` in
    autocommit; `key` may be None only for a dry run, which changes nothing."""
    result = Erasure(selector)
    known = Person()
    if not dry_run:
        assert key is not None
        known = identities(conn, selector)
        with conn.transaction():
            remember(conn, key, _hashes(key, selector, known))
        erased.barrier(conn)
    with conn.transaction() as tx:
        person = _erase_rows(conn, selector, result)
        result.removed[REJECTED] = _erase_rejected(conn, selector, person)
        if dry_run:
            raise psycopg.Rollback(tx)
        assert key is not None
        remember(conn, key, _hashes(key, selector, person))
        conn.execute(
            "INSERT INTO erasures (kind, selector_hash, removed, total) VALUES (%s, %s, %s, %s)",
            (selector.kind, erased.selector_hash(key, selector), Jsonb(result.removed), result.total),
        )
    if not dry_run:
        if not (person.profiles <= known.profiles and person.addresses <= known.addresses):
            erased.barrier(conn)  # found meanwhile: on the list for every later store
        log.info("erased one %s selector: %d row(s) removed", selector.kind, result.total)
    return result


@dataclass(frozen=True, slots=True)
class ErasureRecord:
    id: int
    erased_at: datetime
    kind: str
    selector_hash: str
    removed: dict[str, int]
    total: int


def list_erasures(conn: psycopg.Connection, limit: int = 100) -> list[ErasureRecord]:
    """The latest erasures first."""
    rows = conn.execute(
        "SELECT id, erased_at, kind, selector_hash, removed, total FROM erasures ORDER BY id DESC LIMIT %s", (limit,)
    ).fetchall()
    return [ErasureRecord(r[0], r[1], r[2], r[3], dict(r[4]), r[5]) for r in rows]


def count_erasures(conn: psycopg.Connection) -> int:
    return int(scalar(conn, "SELECT count(*) FROM erasures"))
