"""The people erased (`ingest erase`), as keyed hashes, and the check that keeps them out.

A person is named by a *selector*: an e-mail address (lower-cased) or a profile id (with its
database when given). Only its keyed hash is ever stored: keyed BLAKE2b-256 (RFC 7693, a MAC)
with INGEST_ERASURE_KEY of `email:<address>` or `profile:<id>` / `profile:<id>@<database>`;
without the key the list cannot be read back into addresses, nor tried against a list of
guessed ones. (Not HMAC-SHA256: a worker hashes every row while the list is not empty, and
HMAC's two passes cost about twice as much: over 3 % of the drain.) The list that workers
check holds addresses and bare profile ids (a logfile record carries a profile but no
database; Copernica's profile ids are unique within an account); `--database` only narrows
which stored rows an erase removes, and is part of the audit row's hash.

One hash per row: its recipient's when it has one, else its profile's. An erase lists the
address and the profiles stored with it (or the profile and its addresses), so either names
the person; what it cannot know is an address the person uses only after the erase, with an
erased profile.

Every store transaction checks its rows against `erased_selectors` (`Guard`): it takes a shared
advisory lock and reads the list's version (one round trip, overlapped with the parsing of the
first chunk), reloads the list only when the version changed, and hashes a row only when the
list holds selectors of its kind. `ingest erase` adds the selector, then
waits for the lock once alone (`barrier`): every store transaction still running on the older
list has ended before it removes the person's rows, and every later one sees the selector.
"""

from __future__ import annotations

import hashlib
import logging
import re
import threading
import weakref
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from hashlib import blake2b
from typing import TYPE_CHECKING
from urllib.parse import unquote, unquote_plus

import psycopg

from workers.events.model import Event
from workers.storage.queries import scalar

if TYPE_CHECKING:
    from common.envelope import Envelope
    from workers.storage.store import Rejected

log = logging.getLogger("workers.storage.erased")

EMAIL = "email"
PROFILE = "profile"
LOCK_ID = 0x65726173  # "eras": store transactions hold it shared, `ingest erase` takes it alone
_KEY_CHECK_TEXT = b"copernica-ingest: erasure key check"


class ErasureKeyError(RuntimeError):
    """The erased list cannot be checked with this process's key (unset, or another key)."""


@dataclass(frozen=True, slots=True)
class Selector:
    """One person as `ingest erase` names them; `value` is normalised (see `email`, `profile`)."""

    kind: str
    value: str

    @classmethod
    def email(cls, address: str) -> Selector:
        return cls(EMAIL, address.strip().lower())

    @classmethod
    def profile(cls, profile_id: int, database_id: int | None = None) -> Selector:
        return cls(PROFILE, str(profile_id) if database_id is None else f"{profile_id}@{database_id}")

    @property
    def profile_id(self) -> int | None:
        return int(self.value.split("@", 1)[0]) if self.kind == PROFILE else None

    @property
    def database_id(self) -> int | None:
        if self.kind != PROFILE or "@" not in self.value:
            return None
        return int(self.value.split("@", 1)[1])

    def __str__(self) -> str:
        if self.kind == EMAIL:
            return self.value
        database = self.database_id
        return f"profile {self.profile_id}" + (f" (database {database})" if database is not None else "")


def mac_key(key: bytes) -> bytes:
    """The BLAKE2b key of INGEST_ERASURE_KEY (BLAKE2b takes at most 64 bytes)."""
    return key if len(key) <= 64 else hashlib.blake2b(key).digest()


def keyed_hash(key: bytes, kind: str, value: str) -> str:
    data = f"{kind}:{value}".encode("utf-8", "surrogatepass")
    return hashlib.blake2b(data, key=mac_key(key), digest_size=32).hexdigest()


def selector_hash(key: bytes, selector: Selector) -> str:
    return keyed_hash(key, selector.kind, selector.value)


def key_check(key: bytes) -> str:
    """The key's fingerprint, stored beside the hashes: a process with another key is detected."""
    return hashlib.blake2b(_KEY_CHECK_TEXT, key=mac_key(key), digest_size=8).hexdigest()


_key: tuple[bool, bytes | None] = (False, None)


def current_key() -> bytes | None:
    """INGEST_ERASURE_KEY of this process, read once (only once the list is not empty)."""
    global _key
    if not _key[0]:
        from common.settings import Settings

        value = Settings.from_env().erasure_key
        _key = (True, value.encode() if value is not None else None)
    return _key[1]


def set_key(key: str | None) -> None:
    """Use this key from now on (commands that read their settings already; tests); None: read
    INGEST_ERASURE_KEY again when next needed."""
    global _key
    _key = (True, key.encode()) if key is not None else (False, None)


class ErasedList:
    """The erased list as a worker checks it: the digests by kind, and BLAKE2b states already
    keyed and fed `email:` / `profile:`, so that a row costs one copy, one update and one digest."""

    __slots__ = ("_email", "_profile", "emails", "profiles", "version")

    def __init__(self, version: int, emails: frozenset[bytes], profiles: frozenset[bytes], key: bytes) -> None:
        self.version = version
        self.emails = emails  # raw digests of `keyed_hash`
        self.profiles = profiles
        self._email = blake2b(b"email:", key=key, digest_size=32)
        self._profile = blake2b(b"profile:", key=key, digest_size=32)

    def __bool__(self) -> bool:
        return bool(self.emails or self.profiles)

    def dropped(self, events: Sequence[Event]) -> set[int]:
        """The places of the events of erased people: by the recipient's hash, or (an event
        without recipient) the profile's. The drain's hot loop while anyone is erased."""
        emails, profiles = self.emails, self.profiles
        email, profile_state = self._email, self._profile
        found: set[int] = set()
        for i, event in enumerate(events):
            recipient = event.recipient
            if recipient:
                if emails:
                    h = email.copy()
                    h.update(recipient.lower().encode("utf-8", "surrogatepass"))
                    if h.digest() in emails:
                        found.add(i)
            elif profiles and (profile := event.profile_id) is not None:
                h = profile_state.copy()
                h.update(b"%d" % profile)
                if h.digest() in profiles:
                    found.add(i)
        return found

    def holds(self, event: Event) -> bool:
        """Whether one event belongs to an erased person (see `dropped`)."""
        return bool(self.dropped((event,)))

    def holds_call(self, body: bytes) -> bool:
        """Whether a raw call (a reject) names an erased address anywhere in its body."""
        if not self.emails:
            return False
        for address in addresses_in(body):
            h = self._email.copy()
            h.update(address.encode("utf-8", "surrogatepass"))
            if h.digest() in self.emails:
                return True
        return False


EMPTY = ErasedList(0, frozenset(), frozenset(), b"")
_lists: weakref.WeakKeyDictionary[psycopg.Connection, ErasedList] = weakref.WeakKeyDictionary()
_present: weakref.WeakSet[psycopg.Connection] = weakref.WeakSet()  # connections whose schema has the list


def load(conn: psycopg.Connection) -> ErasedList:
    """The erased list, inside the caller's store transaction: the shared lock is held until it
    ends (see `barrier`). Before migration 0007 (a worker deployed before `ingest migrate`): empty."""
    with conn.cursor() as cur:
        if conn not in _present:
            if scalar(conn, "SELECT to_regclass('erased_selectors') IS NOT NULL") is not True:
                return EMPTY
            _present.add(conn)
        # Two statements in one round trip; the second's snapshot follows the lock (READ COMMITTED).
        cur.execute(
            f"SELECT pg_advisory_xact_lock_shared({LOCK_ID}); SELECT coalesce(max(id), 0) FROM erased_selectors"
        )
        cur.nextset()  # the version: the second statement's result
        version = int((cur.fetchone() or (0,))[0])
        cached = _lists.get(conn)
        if cached is not None and cached.version == version:
            return cached
        rows = cur.execute("SELECT kind, selector_hash, key_check FROM erased_selectors").fetchall() if version else []
    erased = _build(version, rows)
    _lists[conn] = erased
    return erased


def _build(version: int, rows: Sequence[tuple[str, str, str]]) -> ErasedList:
    if not rows:
        return ErasedList(version, frozenset(), frozenset(), b"")
    key = current_key()
    if key is None:
        raise ErasureKeyError(
            f"{len(rows)} erased selector(s) are stored but INGEST_ERASURE_KEY is not set: nothing is stored "
            "until it is (erased people would come back)"
        )
    if any(check != key_check(key) for _, _, check in rows):
        raise ErasureKeyError(
            "INGEST_ERASURE_KEY is not the key the erased selectors were hashed with: nothing is stored until "
            "it is (erased people would come back)"
        )
    emails = frozenset(bytes.fromhex(h) for kind, h, _ in rows if kind == EMAIL)
    profiles = frozenset(bytes.fromhex(h) for kind, h, _ in rows if kind == PROFILE)
    return ErasedList(version, emails, profiles, mac_key(key))


def barrier(conn: psycopg.Connection) -> None:
    """Wait until every store transaction that began before the caller's last commit has ended
    (`conn` in autocommit, outside a transaction). Store transactions that begin while it waits
    wait for it too (PostgreSQL queues them behind the exclusive request), then see the list
    as committed."""
    conn.execute("SELECT pg_advisory_lock(%s)", (LOCK_ID,))
    conn.execute("SELECT pg_advisory_unlock(%s)", (LOCK_ID,))


def keep_events(erased: ErasedList, events: Sequence[Event]) -> list[Event] | None:
    """The events not of an erased person, or None when every one is kept."""
    if not erased:
        return None
    skip = erased.dropped(events)
    if not skip:
        return None
    return [event for i, event in enumerate(events) if i not in skip]


class Guard:
    """The erased list of one store transaction of `store_chunks`: loaded by the writer thread
    once the transaction has begun, used by the thread that hands it the chunks."""

    __slots__ = ("erased", "list", "ready")

    def __init__(self) -> None:
        self.ready = threading.Event()
        self.list: ErasedList | None = None
        self.erased = 0  # events and rejects left out

    def load(self, conn: psycopg.Connection) -> None:
        try:
            self.list = load(conn)
        finally:
            self.ready.set()

    def release(self) -> None:
        """The writer ended (maybe before loading): never leave the other thread waiting."""
        self.ready.set()

    def keep(
        self, events: Sequence[Event], origins: Sequence[Envelope] | None, rejects: Sequence[Rejected]
    ) -> tuple[Sequence[Event], Sequence[Envelope] | None, Sequence[Rejected]]:
        """A chunk without what belongs to an erased person."""
        self.ready.wait()
        erased = self.list
        if not erased:  # empty, or the writer failed (its error is raised by the caller)
            return events, origins, rejects
        dropped = erased.dropped(events)
        if dropped:
            events = [event for i, event in enumerate(events) if i not in dropped]
            if origins is not None:
                origins = [origin for i, origin in enumerate(origins) if i not in dropped]
        kept_rejects = [item for item in rejects if not erased.holds_call(item.envelope.body)] if rejects else rejects
        left_out = len(dropped) + len(rejects) - len(kept_rejects)
        if left_out:
            self.erased += left_out
            log.info("left out %d event(s) or call(s) of erased people", left_out)
        return events, origins, kept_rejects


# An e-mail address as it appears in a body: the local part without `=`, `&`, `?`, `/` or quotes
# (so `recipient=a@example.com` gives `a@example.com`), a dotted domain.
_ADDRESS = re.compile(
    rb"[a-z0-9._+!#$%*^`{|}~-]+@[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?(?:\.[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?)+"
)
_JSON_ESCAPE = re.compile(rb"\\u([0-9a-fA-F]{4})")


def _unescape_json(data: bytes) -> bytes:
    return _JSON_ESCAPE.sub(lambda m: chr(int(m[1], 16)).encode("utf-8", "surrogatepass"), data)


def forms(body: bytes) -> Iterable[bytes]:
    """A raw body as the address may hide in it, lower-cased: as sent, percent-decoded (`%40`,
    with `+` as itself and as a space), and with JSON's `\\u0040` escapes undone."""
    raw = bytes(body).lower()
    yield raw
    if b"%" in raw or b"+" in raw:
        text = raw.decode("latin-1")
        yield unquote(text, encoding="latin-1").encode("latin-1")
        yield unquote_plus(text, encoding="latin-1").encode("latin-1")
    if b"\\u" in raw:
        yield _unescape_json(raw)
        if b"%" in raw:
            yield _unescape_json(unquote(raw.decode("latin-1"), encoding="latin-1").encode("latin-1"))


def addresses_in(body: bytes) -> set[str]:
    """Every e-mail address a raw call holds, lower-cased, in any of `forms`."""
    found: set[str] = set()
    for form in forms(body):
        if b"@" in form:
            found.update(m.decode("utf-8", "replace") for m in _ADDRESS.findall(form))
    return found
