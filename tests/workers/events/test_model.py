"""The event model: every documented webhook x encoding into normalised columns, the key rule,
and the property that no call is ever lost between `parse_calls` and the database."""

from __future__ import annotations

import dataclasses
import json
from datetime import UTC, datetime
from typing import Any

import psycopg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from psycopg.rows import dict_row

from tests.checks import store_and_assert_nothing_vanished
from tests.fixtures_copernica import (
    LOCAL,
    MESSAGE,
    NORMALISED,
    OCCURRED,
    RECEIVED,
    TIME,
    TZ,
    UNSUBSCRIBE,
    WEBHOOK_CASES,
    Case,
    dsn,
    encode_form,
    envelope,
    log_record,
    out_of_office,
    read_receipt,
    reply,
    wire,
)
from workers.events.logfiles import log_type_from_name
from workers.events.model import VOCABULARY, Event, event_key, from_logfile, from_webhook
from workers.events.parsing import parse_body
from workers.jobs import parse_calls
from workers.storage import store
from workers.storage.keys import stored_key

FORM = "application/x-www-form-urlencoded"
CASES = [pytest.param(case, enc, id=f"{case.name}-{enc}") for case in WEBHOOK_CASES for enc in ("form", "json")]


def build(fields: dict[str, Any], account: str | None = "account-1234") -> Event:
    return from_webhook(fields, envelope(b"", FORM, account=account), TZ)


def columns(event: Event) -> dict[str, Any]:
    return {name: getattr(event, name) for name in NORMALISED}


@pytest.mark.parametrize(("case", "encoding"), CASES)
def test_webhook_normalised_columns(case: Case, encoding: str) -> None:
    env = wire(case, encoding)
    fields = parse_body(env.content_type, env.body)
    event = from_webhook(fields, env, TZ)
    assert columns(event) == case.columns(account="1234")
    assert event.received_at == datetime.fromtimestamp(RECEIVED, UTC)
    assert event.payload == (case.form if encoding == "form" else case.json)  # everything, as sent
    assert event.event_type in VOCABULARY


def test_both_encodings_give_one_key() -> None:
    for case in WEBHOOK_CASES:
        keys = {
            from_webhook(parse_body(e.content_type, e.body), e, TZ).event_key
            for e in (wire(case, "form"), wire(case, "json"))
        }
        assert len(keys) == 1, case.name


def test_every_case_stores_with_its_columns(db: psycopg.Connection) -> None:
    """The columns exist with the right types: what goes in comes back out of PostgreSQL.
    (One case at a time: the three bounce variants share message and second, so one key.)"""
    for case in WEBHOOK_CASES:
        db.execute("TRUNCATE events")
        env = wire(case, "form")
        event = from_webhook(parse_body(env.content_type, env.body), env, TZ)
        result = store.store(db, [event])
        assert (result.stored, result.rejected) == (1, 0), case.name
        with db.cursor(row_factory=dict_row) as cur:
            query = "SELECT *, e.user_agent AS user_agent, event_fields(e) AS fields FROM events e"
            row = cur.execute(query).fetchone()
        stored = {name: row[name] for name in NORMALISED}
        stored["ip"] = str(row["ip"]) if row["ip"] is not None else None
        assert stored == case.columns(account="1234"), case.name
        assert row["fields"] == case.form  # every field as sent (workers.events.compact)
        assert row["event_key"].hex == stored_key(event.event_key)  # a uuid (workers.storage.keys)


def test_bounce_variants_of_one_message_and_second_are_one_row(db: psycopg.Connection) -> None:
    """Documented collapse: a failure with state bounce, a bounce, a 2017 bounce and a bounce
    whose message is a delivery-status report (marked auto-replied too), same message and second,
    are one `bounced` event."""
    names = {"failure-bounce", "bounce", "legacy-bounce", "bounce-dsn"}
    events = [from_webhook(c.form, wire(c, "form"), TZ) for c in WEBHOOK_CASES if c.name in names]
    assert len({e.event_key for e in events}) == 1
    assert store.store(db, events).stored == 1


def test_type_wins_over_action_and_action_stands_in_for_type() -> None:
    failure = build({"id": "m", "type": "failure", "action": "failed", "time": str(TIME)})
    assert (failure.event_type, failure.copernica_type) == ("failed", "failure")
    sub = build({"action": "create", "profile": "1", "subprofile": "2", "time": str(TIME)})
    assert (sub.event_type, sub.copernica_type) == ("profile_created", "create")
    only_action = build({"id": "m", "action": "failed", "state": "bounce", "time": str(TIME)})
    assert only_action.event_type == "bounced"


@pytest.mark.parametrize(
    ("state", "expected"),
    [("bounce", "bounced"), ("BOUNCE", "bounced"), ("rcpt", "failed"), ("", "failed"), (None, "failed")],
)
def test_failure_state_bounce_is_bounced(state: str | None, expected: str) -> None:
    fields = {"id": "m", "type": "failure", "time": str(TIME)}
    if state is not None:
        fields["state"] = state
    assert build(fields).event_type == expected


@pytest.mark.parametrize(
    ("header", "account"),
    [
        ("account-1234", "1234"),
        ("account_1234", "1234"),
        ("Account_1234", "1234"),
        ("ACCOUNT-77", "77"),
        ("environment-5", "environment-5"),
        ("1234", "1234"),
        (None, None),
        ("", None),
    ],
)
def test_account_from_x_copernica_id(header: str | None, account: str | None) -> None:
    assert build({"type": "open", "id": "m"}, account=header).account == account


def test_account_header_name_is_case_insensitive() -> None:
    env = envelope(b"", FORM, account=None)
    env = dataclasses.replace(env, headers={"X-Copernica-ID": "account_9"})
    assert from_webhook({"type": "open"}, env, TZ).account == "9"


def test_ids_as_strings_fill_columns_and_stay_as_sent() -> None:
    event = build(
        {
            "type": "open",
            "id": "m",
            "profile": " 0012 ",
            "mailing": "42",
            "database": "5x",
            "template": "99999999999999999999",
            "ip": "300.1.1.1",
            "time": str(TIME),
        }
    )
    assert (event.profile_id, event.mailing_id, event.database_id, event.template_id) == (12, 42, None, None)
    assert event.ip is None
    assert event.payload["profile"] == " 0012 " and event.payload["database"] == "5x"
    assert event.payload["ip"] == "300.1.1.1" and event.payload["template"] == "99999999999999999999"


def test_unknown_type_is_kept_not_rejected() -> None:
    event = build({"type": "brand-new", "id": "m", "x": {"y": ["1"]}})
    assert (event.event_type, event.copernica_type) == ("unknown", "brand-new")
    assert event.payload == {"type": "brand-new", "id": "m", "x": {"y": ["1"]}}
    assert build({"hello": "world"}).event_type == "unknown"


def test_occurred_at_prefers_time_then_timestamp_in_copernica_zone_then_received() -> None:
    assert build({"type": "open", "time": str(TIME), "timestamp": "2000-01-01 00:00:00"}).occurred_at == OCCURRED
    # 13:00:01 in Amsterdam in November (CET) is 12:00:01 UTC; in July (CEST) 11:00:01 UTC.
    assert build({"type": "open", "timestamp": "2026-11-26 13:00:01"}).occurred_at == OCCURRED
    summer = build({"type": "open", "timestamp": "2026-07-01 13:00:01"}).occurred_at
    assert summer == datetime(2026, 7, 1, 11, 0, 1, tzinfo=UTC)
    assert from_webhook({"type": "open"}, envelope(b"", FORM), "UTC").occurred_at == datetime.fromtimestamp(
        RECEIVED, UTC
    )
    assert build({"type": "open", "time": "garbage"}).occurred_at == datetime.fromtimestamp(RECEIVED, UTC)


def test_tags_string_or_array() -> None:
    assert build({"type": "open", "tags": "a; b;;c"}).tags == ["a", "b", "c"]
    assert build({"type": "open", "tags": ["a", "b"]}).tags == ["a", "b"]
    assert build({"type": "open", "tags": ""}).tags is None


# --- event_key ----------------------------------------------------------------------------------


def _open(**more: Any) -> Event:
    return build({"type": "open", "id": MESSAGE, "time": str(TIME), "ip": "192.0.2.1", **more})


def test_key_ignores_what_logfiles_carry_differently() -> None:
    base = _open().event_key
    assert _open(useragent="other", referer="x", tags="z", recipient="b@example.com").event_key == base
    assert (
        build({"type": "open", "id": MESSAGE, "time": str(TIME), "ip": "192.0.2.1"}, account="account-9").event_key
        == base
    )


def test_key_separates_what_identifies_the_event() -> None:
    base = _open().event_key
    assert _open(ip="192.0.2.2").event_key != base  # another address
    assert build({"type": "open", "id": MESSAGE, "time": str(TIME + 1), "ip": "192.0.2.1"}).event_key != base
    assert build({"type": "click", "id": MESSAGE, "time": str(TIME), "ip": "192.0.2.1"}).event_key != base
    assert build({"type": "open", "id": "other", "time": str(TIME), "ip": "192.0.2.1"}).event_key != base


def test_key_collapses_two_opens_in_one_second_from_one_address() -> None:
    assert _open(useragent="phone").event_key == _open(useragent="desktop").event_key


def test_ip_is_compared_in_canonical_form() -> None:
    a = build({"type": "click", "id": "m", "time": str(TIME), "ip": "2001:DB8:0:0::1"})
    b = build({"type": "click", "id": "m", "time": str(TIME), "ip": "2001:db8::1"})
    assert a.event_key == b.event_key and a.ip == "2001:db8::1"


def test_profile_key_is_profile_type_time_and_changed_fields() -> None:
    base = {"type": "update", "profile": "1", "database": "5", "time": str(TIME), "fields": {"name": "Ann"}}
    key = build(base).event_key
    assert build({**base, "id": "1", "modified": "x"}).event_key == key
    assert build({**base, "fields": {"name": "Bob"}}).event_key != key
    assert build({**base, "interests": ["a"]}).event_key != key
    assert build({**base, "subprofile": "2"}).event_key != key
    assert build({**base, "time": str(TIME + 1)}).event_key != key
    assert build({**base, "type": "create"}).event_key != key
    assert build(base).message_id is None


def test_without_message_or_profile_the_key_is_the_payload() -> None:
    a = build({"type": "mystery", "x": "1", "y": "2"})
    assert build({"y": "2", "x": "1", "type": "mystery"}).event_key == a.event_key  # key order irrelevant
    assert build({"type": "mystery", "x": "1", "y": "3"}).event_key != a.event_key


def test_duplicate_webhook_is_stored_once(db: psycopg.Connection) -> None:
    case = WEBHOOK_CASES[0]
    first = [wire(case, "form").to_wire(), wire(case, "json", received_at=RECEIVED + 60).to_wire()]
    events, origins, rejects = parse_calls(first, TZ)
    result = store.store(db, events, rejects, origins)
    assert (result.stored, result.duplicates) == (1, 1)
    assert db.execute("SELECT count(*) FROM events").fetchone()[0] == 1


# --- unsubscribes: the webhook's id is its own, the logfile's the message's ---------------------

_RECEIVED_AT = datetime(2026, 11, 27, tzinfo=UTC)


def _unsubscribe(**more: Any) -> Event:
    return build(
        {
            "id": UNSUBSCRIBE,
            "type": "unsubscribe",
            "time": str(TIME),
            "database": "5",
            "profile": "1001",
            "mailing": "42",
            **more,
        }
    )


def _unsubscribe_log(log_type: str = "cdm-unsubscribe", **values: str) -> Event:
    return from_logfile(log_record(log_type, **values), log_type, TZ, _RECEIVED_AT)


def test_unsubscribe_webhook_id_is_not_a_message_id() -> None:
    event = _unsubscribe()
    assert event.message_id is None
    assert event.payload["id"] == UNSUBSCRIBE
    assert (event.profile_id, event.mailing_id, event.database_id) == (1001, 42, 5)
    assert _unsubscribe_log().message_id == MESSAGE  # the logfile's id is the message's


@pytest.mark.parametrize("log_type", ["cdm-unsubscribe", "pom-unsubscribes"])
def test_unsubscribe_webhook_and_logfile_share_a_key(log_type: str) -> None:
    """Different ids, same profile and second (unix `time` in the webhook, local in the log)."""
    record = _unsubscribe_log(log_type)
    assert (record.event_type, record.profile_id, record.occurred_at) == ("unsubscribed", 1001, OCCURRED)
    assert _unsubscribe().event_key == record.event_key
    assert _unsubscribe(profile=1001).event_key == record.event_key  # JSON sends a number
    assert _unsubscribe(id="other").event_key == record.event_key


def test_unsubscribe_key_separates_profiles_and_seconds() -> None:
    key = _unsubscribe().event_key
    assert _unsubscribe(profile="1002").event_key != key
    assert _unsubscribe(time=str(TIME + 1)).event_key != key
    assert _unsubscribe_log(profile="1002").event_key != key
    assert _unsubscribe_log(time="2026-11-26 13:00:02").event_key != key


def test_unsubscribe_without_profile_keys_on_its_id_as_before() -> None:
    webhook = build({"id": UNSUBSCRIBE, "type": "unsubscribe", "time": str(TIME), "profile": "x"})
    assert webhook.message_id is None and webhook.profile_id is None
    assert webhook.event_key == event_key("unsubscribed", UNSUBSCRIBE, OCCURRED, {})  # the message rule
    record = _unsubscribe_log(profile="")
    assert record.event_key == event_key("unsubscribed", MESSAGE, OCCURRED, {})
    assert record.event_key != webhook.event_key  # nothing shared: they cannot meet


def test_unsubscribe_webhook_and_logfile_are_one_row_either_order(db: psycopg.Connection) -> None:
    for first, second in [(_unsubscribe(), _unsubscribe_log()), (_unsubscribe_log("pom-unsubscribes"), _unsubscribe())]:
        db.execute("TRUNCATE events")
        assert store.store(db, [first]).stored == 1
        result = store.store(db, [second])
        assert (result.stored, result.duplicates) == (0, 1)
        row = db.execute("SELECT source, message_id, profile_id FROM events").fetchall()
        assert row == [(first.source, first.message_id, 1001)]


# --- 2017 feedback forms (no type) ------------------------------------------------------------------


def test_legacy_open_and_failure_are_recognised() -> None:
    opened = build(
        {
            "id": MESSAGE,
            "recipient": "a@example.com",
            "ip": "192.0.2.1",
            "time": str(TIME),
            "useragent": "Mozilla/5.0",
            "referer": "",
            "tags": "x",
        }
    )
    assert (opened.event_type, opened.copernica_type, opened.ip) == ("opened", "", "192.0.2.1")
    failed = build(
        {
            "id": MESSAGE,
            "recipient": "a@example.com",
            "state": "rcpt",
            "code": "550",
            "extended": "5.1.1",
            "description": "unknown",
            "tags": "x",
        }
    )
    assert (failed.event_type, failed.smtp_code, failed.smtp_status) == ("failed", 550, "5.1.1")
    assert failed.occurred_at == datetime.fromtimestamp(RECEIVED, UTC)  # no time field: when received
    assert build({"ip": "192.0.2.1", "useragent": "x"}).event_type == "unknown"  # no message id: no open


def test_legacy_open_meets_its_impression_record() -> None:
    opened = build({"id": MESSAGE, "recipient": "a@example.com", "ip": "192.0.2.1", "time": str(TIME)})
    impression = from_logfile(log_record("cdm-impression"), "cdm-impression", TZ, _RECEIVED_AT)
    assert opened.event_key == impression.event_key


@pytest.mark.parametrize("state", ["bounce", "BOUNCE", "rcpt", "data", "", None])
def test_legacy_failure_is_refined_as_the_failure_webhook_is(state: str | None) -> None:
    fields = {"id": "m", "recipient": "a@example.com", "code": "550", "time": str(TIME)}
    if state is not None:
        fields["state"] = state
    legacy, webhook = build(fields), build({**fields, "type": "failure"})
    assert legacy.event_type == webhook.event_type == ("bounced" if state and "bounce" in state.lower() else "failed")
    assert legacy.event_key == webhook.event_key


# --- bounce webhooks that are automatic replies -----------------------------------------------------


@pytest.mark.parametrize(
    ("mime", "expected", "status"),
    [
        pytest.param(out_of_office(), "autoresponded", None, id="out-of-office"),
        pytest.param(reply("Vacation", "Away", x_autoreply="yes"), "autoresponded", None, id="x-autoreply"),
        pytest.param(reply("Away", "Away", precedence="auto_reply"), "autoresponded", None, id="precedence"),
        pytest.param(read_receipt(), "autoresponded", None, id="read-receipt"),
        pytest.param(dsn("5.1.1", auto_submitted="auto-replied"), "bounced", "5.1.1", id="dsn-auto-submitted"),
        pytest.param(reply("Re: Weekly news", "Please call me."), "bounced", None, id="human-reply"),
        pytest.param("", "bounced", None, id="no-mime"),
    ],
)
def test_bounce_webhook_mime_decides(mime: str, expected: str, status: str | None) -> None:
    event = build({"id": MESSAGE, "type": "bounce", "time": str(TIME), "recipient": "a@example.com", "mime": mime})
    assert (event.event_type, event.copernica_type, event.smtp_status) == (expected, "bounce", status)
    assert event.event_type in VOCABULARY
    assert event.payload["mime"] == mime


def test_a_failure_with_state_bounce_is_not_read_as_a_message() -> None:
    event = build({"id": "m", "type": "failure", "state": "bounce", "mime": out_of_office(), "time": str(TIME)})
    assert event.event_type == "bounced"


def test_a_sent_status_wins_over_the_reports() -> None:
    event = build({"id": "m", "type": "bounce", "extended": "5.2.2", "mime": dsn("5.1.1"), "time": str(TIME)})
    assert event.smtp_status == "5.2.2"


def test_autoreplies_and_bounces_of_one_message_and_second_are_two_rows(db: psycopg.Connection) -> None:
    fields = {"id": MESSAGE, "type": "bounce", "time": str(TIME)}
    events = [build({**fields, "mime": out_of_office()}), build({**fields, "mime": dsn()})]
    assert [e.event_type for e in events] == ["autoresponded", "bounced"]
    assert store.store(db, events).stored == 2


# --- pom-delivery ----------------------------------------------------------------------------------


def test_pom_delivery_is_pom_deliveries() -> None:
    assert log_type_from_name("pom-delivery.2026-11-25.log") == "pom-delivery"
    alias = from_logfile(log_record("pom-delivery"), "pom-delivery", TZ, _RECEIVED_AT)
    plural = from_logfile(log_record("pom-deliveries"), "pom-deliveries", TZ, _RECEIVED_AT)
    webhook = build({"id": MESSAGE, "type": "delivery", "time": str(TIME), "timestamp": LOCAL})
    assert (alias.event_type, alias.copernica_type) == ("delivered", "pom-delivery")
    assert alias.event_key == plural.event_key == webhook.event_key


# --- no call lost (hypothesis, real PostgreSQL) ------------------------------------------------

_scalar = st.one_of(
    st.text(max_size=30),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=False),
    st.booleans(),
    st.none(),
)
_json_value = st.recursive(
    _scalar,
    lambda kids: st.lists(kids, max_size=4) | st.dictionaries(st.text(max_size=8), kids, max_size=4),
    max_leaves=12,
)
_field_names = st.sampled_from(
    [
        "id",
        "type",
        "action",
        "time",
        "timestamp",
        "ip",
        "recipient",
        "tags",
        "profile",
        "mailing",
        "state",
        "code",
        "original",
        "fields",
        "subprofile",
        "database",
        "useragent",
        "x",
        "fields[name]",
        "interests[]",
        "a[b][]",
    ]
)
_types = st.sampled_from(
    ["open", "click", "delivery", "failure", "bounce", "unsubscribe", "create", "update", "delete", "weird", ""]
)


@st.composite
def calls(draw: st.DrawFn) -> dict[str, Any]:
    kind = draw(st.sampled_from(["form", "json", "binary"]))
    if kind == "binary":
        body = draw(st.binary(max_size=300))
        content_type = draw(st.sampled_from([FORM, "application/json", "", "text/plain"]))
    else:
        fields = draw(
            st.dictionaries(_field_names, _json_value if kind == "json" else st.text(max_size=40), max_size=8)
        )
        if draw(st.booleans()):
            fields["type"] = draw(_types)
        if kind == "json":
            body = json.dumps(fields).encode()  # stdlib: big integers and Infinity are sent as they are
            content_type = "application/json"
        else:
            body = encode_form(fields)
            content_type = FORM
    headers = {"x-copernica-id": draw(st.text(max_size=20))} if draw(st.booleans()) else {}
    # received_at is the receiver's own clock (time.time()), not caller input
    received = draw(st.floats(min_value=0, max_value=4e9, allow_nan=False))
    return {
        "v": 1,
        "body": body,
        "content_type": content_type,
        "received_at": received,
        "remote": "",
        "method": "POST",
        "target": "/copernica",
        "headers": headers,
    }


@settings(
    max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow]
)
@given(st.lists(calls(), min_size=1, max_size=6))
def test_arbitrary_calls_never_crash_and_never_get_lost(db: psycopg.Connection, batch: list[dict]) -> None:
    db.execute("TRUNCATE events, rejected_events")
    events, origins, rejects = parse_calls(batch, TZ)
    assert len(events) + len(rejects) == len(batch)  # every call is an event or a reject
    assert len(origins) == len(events)
    stored_keys, kept = store_and_assert_nothing_vanished(db, events, origins, rejects)
    for reject in rejects:
        assert store.call_key(reject.envelope) in kept
    # and nothing else: the rows are exactly these events and these calls
    refused = {
        store.call_key(o) for e, o in zip(events, origins, strict=True) if stored_key(e.event_key) not in stored_keys
    }
    assert stored_keys <= {stored_key(e.event_key) for e in events}
    assert kept == {store.call_key(r.envelope) for r in rejects} | refused
