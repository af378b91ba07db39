"""COPY's text format for `events` rows, written by the worker (split out of `workers.storage.store`).

One str per event, escaped only in the rare row that holds a backslash, tab, newline, carriage
return or NUL; psycopg's row formatter costs several times more.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import fields
from operator import attrgetter
from typing import Any

import orjson

from workers.events.compact import compact
from workers.events.fields import Recent
from workers.events.model import Event
from workers.storage.agents import AGENT_KEYS as _agent_keys
from workers.storage.keys import stored_key

EVENT_COLUMNS: tuple[str, ...] = tuple(f.name for f in fields(Event))
# The order of a COPY line's columns, as `copy_line` writes them: the payload last, so that only
# the other columns need looking at for characters COPY must escape (orjson escapes them all in
# the payload). `copy_line` reads each field by name, so the model's own order does not matter;
# a column added to `Event` and not here fails at import (it is never stored in a neighbour's
# column), and tests/test_copy_rows.py checks that copy_line's fast way keeps this order.
COPY_COLUMNS: tuple[str, ...] = (
    "event_key",
    "event_type",
    "copernica_type",
    "occurred_at",
    "received_at",
    "source",
    "message_id",
    "recipient",
    "ip",
    "user_agent",
    "url",
    "link_id",
    "mailing_id",
    "profile_id",
    "subprofile_id",
    "database_id",
    "collection_id",
    "template_id",
    "tags",
    "smtp_code",
    "smtp_status",
    "description",
    "account",
    "machine",
    "machine_rule",
    "payload",
)
# The columns of `events` COPY_COLUMNS go to: the user agent is stored as its hash (migration
# 0012, `agent_hash`), its text once in `user_agents`.
STORED_COLUMNS: tuple[str, ...] = tuple("user_agent_hash" if c == "user_agent" else c for c in COPY_COLUMNS)
# Before migration 0006 `events` had no machine columns and held the user agent's text: a worker
# running ahead of `ingest migrate` writes these (`copy_line` not `compacted`, `without_machine`).
LEGACY_COLUMNS: tuple[str, ...] = tuple(c for c in COPY_COLUMNS if c not in ("machine", "machine_rule"))
_AGENT = COPY_COLUMNS.index("user_agent")
if sorted(COPY_COLUMNS) != sorted(EVENT_COLUMNS):
    raise RuntimeError(
        "workers.storage.copy_text does not write the columns of Event: missing "
        f"{sorted(set(EVENT_COLUMNS) - set(COPY_COLUMNS))}, "
        f"unknown {sorted(set(COPY_COLUMNS) - set(EVENT_COLUMNS))}"
    )


def _json(value: dict) -> str:
    """The payload as jsonb text. jsonb refuses NUL (which orjson writes as \\u0000): NULs are
    dropped from the strings first, in the rare payload that has one. A text that only reads
    like the escape (a backslash, then `u0000`) is written `\\\\u0000` and stays as it was."""
    text = orjson.dumps(value).decode()
    if "\\u0000" not in text:
        return text
    return orjson.dumps(_without_nul(value)).decode()


def _without_nul(value: Any) -> Any:
    if isinstance(value, str):
        return value.replace("\x00", "")
    if isinstance(value, dict):
        return {_without_nul(key): _without_nul(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_without_nul(item) for item in value]
    return value


_VALUES = attrgetter(*COPY_COLUMNS)
_NULL = "\\N"
_ESCAPES = str.maketrans({"\\": "\\\\", "\n": "\\n", "\r": "\\r", "\t": "\\t", "\x00": None})
_TABS = len(COPY_COLUMNS) - 2  # between the columns before the payload


def copy_line(event: Event, compacted: bool = True, short_key: bool = True) -> str:
    """One event as a line of COPY text, in COPY_COLUMNS' order (NULs dropped: PostgreSQL text
    cannot hold them); the payload without the fields a column holds exactly
    (`workers.events.compact`) unless not `compacted` (a schema before 0006); the key as
    `events` keeps it (`workers.storage.keys.stored_key`) unless not `short_key` (a schema before
    0011: the whole key)."""
    values = _VALUES(event)
    e = event
    key = stored_key(e.event_key) if short_key else e.event_key
    if compacted and type(e.payload) is dict:
        values = (*values[:-1], compact(e.payload, e))
    agent = e.user_agent
    if compacted and agent is not None:
        agent = _agent_keys[agent] if type(agent) is str else agent
        values = (*values[:_AGENT], agent, *values[_AGENT + 1 :])
    try:  # each column as the model makes it, read by name; anything else goes the general way below
        head = "\t".join(
            (
                key,
                e.event_type,
                e.copernica_type,
                _stamps[e.occurred_at],
                str(e.received_at),
                e.source,
                _NULL if (v := e.message_id) is None else v,
                _NULL if (v := e.recipient) is None else v,
                _NULL if (v := e.ip) is None else v,
                _NULL if agent is None else agent,
                _NULL if (v := e.url) is None else v,
                _NULL if (v := e.link_id) is None else v,
                _NULL if (n := e.mailing_id) is None else str(n),
                _NULL if (n := e.profile_id) is None else str(n),
                _NULL if (n := e.subprofile_id) is None else str(n),
                _NULL if (n := e.database_id) is None else str(n),
                _NULL if (n := e.collection_id) is None else str(n),
                _NULL if (n := e.template_id) is None else str(n),
                _NULL if (tags := e.tags) is None else _array(tags) if type(tags) is list else _cell(tags),
                _NULL if (n := e.smtp_code) is None else str(n),
                _NULL if (v := e.smtp_status) is None else v,
                _NULL if (v := e.description) is None else v,
                _NULL if (v := e.account) is None else v,
                _NULL if (b := e.machine) is None else "t" if b is True else "f",
                _NULL if (v := e.machine_rule) is None else v,
            )
        )
    except TypeError:
        head = ""  # not as the model makes it: the general way
    if (
        type(payload := values[-1]) is dict
        and head
        and head.count("\\") == values.count(None)
        and head.count("\t") == _TABS
        and "\n" not in head
        and "\r" not in head
        and "\x00" not in head
        and "\\" not in (document := _json(payload))
    ):
        return f"{head}\t{document}\n"
    return _escaped_line((key, *values[1:]))


def without_machine(lines: str) -> str:
    """COPY text of COPY_COLUMNS as LEGACY_COLUMNS: the two machine columns (just before the
    payload, which holds no raw tab) taken out of each line."""
    out = []
    for line in lines.splitlines(keepends=True):
        head, _machine, _rule, payload = line.rsplit("\t", 3)
        out.append(f"{head}\t{payload}")
    return "".join(out)


def _escaped_line(values: tuple[Any, ...]) -> str:
    """The general way: every value (in COPY_COLUMNS' order) through `_cell` and COPY's escapes."""
    return "\t".join([_NULL if v is None else _cell(v).translate(_ESCAPES) for v in values]) + "\n"


# occurred_at repeats (events of one second): its text is made once (`STAMPS[moment]`).
_stamps = STAMPS = Recent(str, size=10_000)


def _cell(value: object) -> str:
    """A non-NULL value as PostgreSQL reads it, before COPY's escaping."""
    if isinstance(value, bool):
        return "t" if value else "f"
    if isinstance(value, dict):
        return _json(value)
    if isinstance(value, list):
        return _array(value)
    return str(value)  # str, int, datetime ('2026-11-26 12:00:01+00:00')


def _array(items: list) -> str:
    """A text[] literal with every element quoted (so NULL, commas, braces are plain text)."""
    try:  # texts without a quote, a backslash or a NUL (tags as the model makes them): at once
        joined = '","'.join(items)
    except TypeError:
        joined = '"'
    if joined.count('"') == 2 * len(items) - 2 and "\\" not in joined and "\x00" not in joined:
        return '{"' + joined + '"}'
    quoted = [
        "NULL" if item is None else '"' + str(item).replace("\x00", "").replace("\\", "\\\\").replace('"', '\\"') + '"'
        for item in items
    ]
    return "{" + ",".join(quoted) + "}"


def copy_data(events: Iterable[Event], compacted: bool = True, short_key: bool = True) -> bytes:
    """The COPY text of `events`, as `insert_events` sends it: of several events with one key
    (a call delivered twice into one batch) only the first. The unique constraint would drop the
    others, except where their occurred_at differs: an event without a usable time has its time
    of receipt, and `_NEW_KEY` looks such keys up in `events`, where a copy in the same chunk is
    not yet. `compacted`, `short_key`: as `copy_line`."""
    return "".join(copy_line(event, compacted, short_key) for event in first_per_key(events, set())).encode()


def first_per_key(events: Iterable[Event], seen: set[str]) -> list[Event]:
    """Of several events with one key only the first; `seen` holds the keys met before (an
    earlier chunk of the transaction) and gains these. By the whole key: two keys that differ
    only past `stored_key`'s 128 bits (never met: see there) are left to the unique constraint."""
    first = []
    for event in events:
        key = event.event_key
        if key not in seen:
            seen.add(key)
            first.append(event)
    return first
