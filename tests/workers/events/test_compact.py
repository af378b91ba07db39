"""The stored payload leaves out what a column holds exactly, and every field comes back as sent
(`workers.events.compact`, `event_fields(events)` in SQL) for every fixture type: each webhook
in both encodings, each logfile record."""

from __future__ import annotations

from datetime import UTC, datetime
from importlib import resources

import psycopg
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb

from tests.fixtures_copernica import EVENT_LOGS, TZ, WEBHOOK_CASES, log_record, wire
from workers.events import compact
from workers.events.model import Event, from_logfile, from_webhook
from workers.events.parsing import parse_body
from workers.storage import store
from workers.storage.keys import key_text, stored_key

RECEIVED = datetime(2026, 11, 27, 8, 0, tzinfo=UTC)


def fixture_events() -> list[Event]:
    events = []
    for case in WEBHOOK_CASES:
        for encoding in ("form", "json"):
            env = wire(case, encoding)
            events.append(from_webhook(parse_body(env.content_type, env.body), env, TZ))
    events += [from_logfile(log_record(name), name, TZ, RECEIVED) for name in EVENT_LOGS]
    return events


def _stored(db: psycopg.Connection) -> dict[str, dict]:
    with db.cursor(row_factory=dict_row) as cur:
        rows = cur.execute("SELECT event_key, payload, event_fields(e) AS fields FROM events e").fetchall()
    return {key_text(row["event_key"]): row for row in rows}  # by the stored key (32 hex digits)


def test_every_fixture_type_comes_back_as_sent(db: psycopg.Connection) -> None:
    events = fixture_events()
    unique = {e.event_key: e for e in events}  # a form and its JSON twin may share a key
    firsts = [next(e for e in events if e.event_key == key) for key in unique]
    assert store.store(db, firsts).stored == len(firsts)
    stored = _stored(db)
    saved = 0
    for event in firsts:
        row = stored[stored_key(event.event_key)]
        assert row["fields"] == event.payload, event.copernica_type
        assert compact.expand(row["payload"], event) == event.payload
        saved += len(str(event.payload)) - len(str(row["payload"]))
    assert saved > 100 * len(firsts)  # not vacuous: the columns' fields are left out


def test_only_exact_values_are_left_out() -> None:
    env = wire(WEBHOOK_CASES[0], "form")
    fields = {
        "id": " m1 ",
        "type": "open",
        "time": 1795694401,
        "ip": "2001:db8::1",
        "mailing": "0042",
        "tags": ["a", "b"],
        "~": "x",
    }
    event = from_webhook(dict(fields), env, TZ)
    assert compact.compact(event.payload, event) == fields  # a `~` field: stored whole
    del fields["~"]
    event = from_webhook(dict(fields), env, TZ)
    kept = compact.compact(event.payload, event)
    # the padded id, the IPv6 address, the zero-padded mailing and the tag array stay as sent;
    # the type and the time (a JSON number) are left out
    assert kept == {"id": " m1 ", "ip": "2001:db8::1", "mailing": "0042", "tags": ["a", "b"], "~": ".y#T"}
    assert compact.expand(kept, event) == fields


def test_payloads_stored_before_0013_come_back_as_sent(db: psycopg.Connection) -> None:
    """Rows stored with two characters a field (before 0013) are read by `event_fields` and
    `expand` as before; the short form is 8 bytes smaller for an open."""
    events = fixture_events()
    unique = list({e.event_key: e for e in events}.values())
    assert store.store(db, unique).stored == len(unique)
    old_form = saved = 0
    for event in unique:
        short = compact.compact(event.payload, event)
        spec = short.get("~")
        if not isinstance(spec, str):
            continue
        pairs = "".join(code + form for code, form in compact._codes(spec))
        assert len(pairs) >= len(spec)  # the short form is never longer
        saved += len(pairs) - len(spec)
        before = {**short, "~": pairs}
        assert compact.expand(before, event) == event.payload
        db.execute("UPDATE events SET payload = %s WHERE event_key = %s", (Jsonb(before), stored_key(event.event_key)))
        old_form += 1
    assert old_form > 10 and saved > old_form
    for event in unique:
        assert _stored(db)[stored_key(event.event_key)]["fields"] == event.payload, event.copernica_type


def test_the_migration_reads_every_code_of_the_python_side() -> None:
    names, values = compact.sql_cases()
    sql = (resources.files("workers.storage.migrations") / "0013_totals_in_fold.sql").read_text()
    assert names in sql and values in sql


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    values=st.dictionaries(
        st.sampled_from(["id", "recipient", "ip", "useragent", "mailing", "profile", "tags", "time", "x"]),
        st.one_of(
            st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), max_size=12),
            st.integers(-5, 2**64 - 1),
            st.booleans(),
            st.none(),
        ),
        max_size=7,
    )
)
def test_arbitrary_fields_come_back_as_sent(db: psycopg.Connection, values: dict) -> None:
    fields = {"type": "open", **values}
    event = from_webhook(fields, wire(WEBHOOK_CASES[0], "form"), TZ)
    db.execute("TRUNCATE events")
    result = store.store(db, [event])
    if result.rejected:  # PostgreSQL refused a value (kept as a call): nothing to read back
        return
    assert _stored(db)[stored_key(event.event_key)]["fields"] == event.payload
