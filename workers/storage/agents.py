"""User agents stored once (migration 0012): a row of `events` holds its user agent's hash
(`user_agent_hash`), the text is in `user_agents`. A browser's user agent is a hundred bytes or
more, on most opens and clicks, and a few thousand texts make nearly all of them.

The worker adds the texts a transaction needs to `user_agents` in that transaction (`add`),
before the rows that name them, and remembers per connection those a committed transaction
added (`known`, `remember`), so that a chunk asks only for texts it has not met.
"""

from __future__ import annotations

import hashlib
import weakref
from collections.abc import Iterable

import psycopg

from workers.events.fields import Recent
from workers.events.model import Event


def agent_hash(text: str) -> int:
    """The key of a user agent's text in `user_agents`: the first 8 bytes of its sha256 (UTF-8),
    signed, as the SQL function `agent_hash` of migration 0012 computes it. 64 bits: two of an
    account's few million different texts share one with odds of about 10^-6; the store refuses
    such a pair rather than mixing them up (`workers.storage.store`)."""
    return int.from_bytes(hashlib.sha256(text.encode("utf-8", "surrogatepass")).digest()[:8], "big", signed=True)


def agent_text(user_agent: str) -> str:
    """A user agent's text as stored (PostgreSQL text cannot hold NUL)."""
    return user_agent.replace("\x00", "") if "\x00" in user_agent else user_agent


# A user agent recurs on most calls: its hash (as COPY text) is made once per text.
_agent_keys = AGENT_KEYS = Recent(lambda text: str(agent_hash(agent_text(text))), size=10_000)


def of(events: Iterable[Event]) -> dict[int, str]:
    """The user agents of `events`, by hash: what `user_agents` must hold for their rows."""
    texts = {text for e in events if (text := e.user_agent) is not None}  # a chunk's few, once each
    return {int(_agent_keys[text]): agent_text(text) for text in texts}


class AgentHashClash(RuntimeError):
    """Two different user agents with one hash: storing would show one for the other, so the
    batch is refused (its job fails and RQ keeps it) rather than mixed up."""


# Insert the texts not stored yet and, in the same statement, find a stored text whose hash one
# of the given has (the statement sees the table as it was before its own insert).
_ADD = (
    "WITH given (h, t) AS (SELECT * FROM unnest(%(h)s::bigint[], %(t)s::text[])),"
    " added AS (INSERT INTO user_agents (agent_hash, user_agent) SELECT h, t FROM given ON CONFLICT DO NOTHING)"
    " SELECT given.h FROM given JOIN user_agents u ON u.agent_hash = given.h WHERE u.user_agent <> given.t LIMIT 1"
)


def add(cur: psycopg.Cursor, agents: dict[int, str]) -> None:
    """Make `user_agents` hold `agents` (hash → text), in the caller's transaction."""
    if not agents:
        return
    clash = cur.execute(_ADD, {"h": list(agents), "t": list(agents.values())}).fetchone()
    if clash is not None:
        raise AgentHashClash(f"two user agents share the hash {clash[0]}: {agents[clash[0]][:200]!r} and a stored one")


# Hashes remembered per connection; beyond this many they are forgotten (and asked for again).
KNOWN = 100_000
_known: weakref.WeakKeyDictionary[psycopg.Connection, set[int]] = weakref.WeakKeyDictionary()


def known(conn: psycopg.Connection) -> set[int]:
    """The user agents known to be stored, for `conn`'s transactions to leave out."""
    return _known.setdefault(conn, set())


def remember(conn: psycopg.Connection, added: Iterable[int]) -> None:
    """What a transaction of `conn` added, once it committed."""
    stored = known(conn)
    added = set(added)
    if len(stored) + len(added) > KNOWN:
        stored.clear()
    stored.update(added)
