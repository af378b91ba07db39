"""People stored for the personal-data tests: one to erase (events in three monthly partitions,
a profile-only unsubscribe, a profile change, an open without recipient, rejected calls in form
and JSON), and neighbours whose addresses contain or extend hers, who must stay whole."""

from __future__ import annotations

from datetime import UTC, datetime

import orjson
import psycopg

from common.envelope import Envelope, wire
from tests.payloads import FORM, JSON, webhook_body, webhook_json
from workers.jobs import parse_calls
from workers.storage import erased, store

KEY = "test-erasure-key-0123456789"
ANNA = "Anna.Smith+news@Example.com"  # as Copernica sends it
ANNA_NORMAL = ANNA.lower()
ANNA_PROFILE = 7001
CARL = "carl@example.com"
# Neighbours: hers is a part of theirs.
XANNA = "xanna.smith+news@example.com"
ANNA_AU = "anna.smith+news@example.com.au"


def unix(year: int, month: int, day: int) -> str:
    return str(int(datetime(year, month, day, 12, 0, 1, tzinfo=UTC).timestamp()))


def anna_calls() -> list[dict]:
    """Anna's webhook calls: an open, a click and a delivery in three months, an open of her
    click's message without any address, an unsubscribe and a profile change (profile only)."""
    p = {"profile": ANNA_PROFILE, "database": 12}
    bodies = [
        webhook_body("open", id="ma1", time=unix(2026, 9, 15), recipient=ANNA, ip="192.0.2.10", **p),
        webhook_body(
            "click", id="ma2", time=unix(2026, 10, 15), recipient=ANNA, ip="192.0.2.10", original="https://x.example/a"
        ),
        webhook_body("delivery", id="ma3", time=unix(2026, 11, 15), recipient=ANNA, **p),
        webhook_body("open", id="ma2", time=unix(2026, 10, 16), ip="192.0.2.11"),
        webhook_body("unsubscribe", id="u1", time=unix(2026, 11, 16), profile=ANNA_PROFILE, database=12, mailing=9),
        webhook_body("update", time=unix(2026, 11, 17), profile=ANNA_PROFILE, database=12, fields={"email": ANNA}),
    ]
    return [wire(b, FORM, 1795694401.0, "127.0.0.1", "POST", "/copernica", {}) for b in bodies]


def other_calls() -> list[dict]:
    """The neighbours' calls (in the same months), which an erase of Anna must leave alone."""
    bodies = [
        webhook_body("open", id="mx1", time=unix(2026, 9, 15), recipient=XANNA, ip="192.0.2.20", profile=7003),
        webhook_body("open", id="my1", time=unix(2026, 10, 15), recipient=ANNA_AU, ip="192.0.2.21"),
        webhook_body("open", id="mc1", time=unix(2026, 11, 15), recipient=CARL, ip="192.0.2.22", profile=7002),
        webhook_body(
            "click", id="mc1", time=unix(2026, 11, 15), recipient=CARL, ip="192.0.2.22", original="https://x.example/c"
        ),
        webhook_body("unsubscribe", id="u2", time=unix(2026, 11, 16), profile=7002, database=12, mailing=9),
    ]
    return [wire(b, FORM, 1795694401.0, "127.0.0.1", "POST", "/copernica", {}) for b in bodies]


def anna_rejects() -> list[bytes]:
    """Calls that could not be read, naming Anna: form-encoded, JSON, JSON with `\\u0040`."""
    return [
        b"type=open&id=zz1&recipient=Anna.Smith%2Bnews%40Example.com&time=%ZZ",
        webhook_json("open", id="zz2", recipient=ANNA)[:-1],  # cut short
        b'{"type":"open","recipient":"anna.smith+news\\u0040example.com",',
        b"type=open&id=zz4&recipient=anna.smith+news@example.com&x=%ZZ",  # the + as sent, unencoded
    ]


def other_rejects() -> list[bytes]:
    return [
        b"type=open&id=zz5&recipient=xanna.smith%2Bnews%40example.com&time=%ZZ",
        webhook_json("open", id="zz6", recipient=ANNA_AU)[:-1],
        webhook_json("open", id="zz7", recipient=CARL)[:-1],
    ]


def store_calls(database_url: str, calls: list[dict]) -> store.StoreResult:
    events, origins, rejects = parse_calls(calls, "Europe/Amsterdam")
    assert not rejects
    with store.connect(database_url) as conn:
        return store.store(conn, events, rejects, origins)


def store_rejects(database_url: str, bodies: list[bytes]) -> store.StoreResult:
    items = [
        store.Rejected(
            Envelope(body=b, content_type=JSON if b.startswith(b"{") else FORM, received_at=1795694401.0 + i), "test"
        )
        for i, b in enumerate(bodies)
    ]
    with store.connect(database_url) as conn:
        return store.store(conn, [], items)


def store_everyone(database_url: str) -> None:
    store_calls(database_url, anna_calls() + other_calls())
    store_rejects(database_url, anna_rejects() + other_rejects())


def rows_naming(conn: psycopg.Connection, address: str) -> list[str]:
    """Every row of every table, whatever its columns, that names `address` (in any form a body
    can hold it): `table:id` of each."""
    found = []
    tables = [
        r[0]
        for r in conn.execute(
            "SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
            " WHERE n.nspname = 'public' AND c.relkind IN ('r', 'p') AND NOT c.relispartition"
        )
    ]
    for table in tables:
        for row in conn.execute(f"SELECT row_to_json(t)::text FROM {table} t"):
            if address.lower() in erased.addresses_in(row[0].encode()):
                found.append(f"{table}:{orjson.loads(row[0]).get('id')}")
    for row_id, body in conn.execute("SELECT id, body FROM rejected_events"):
        if address.lower() in erased.addresses_in(bytes(body)):
            found.append(f"rejected_events(body):{row_id}")
    return found


def count(conn: psycopg.Connection, sql: str, *params: object) -> int:
    return int(conn.execute(sql, params).fetchone()[0])
