"""Logfile records: every documented layout x format, streaming, damaged files, and the same
event from a webhook and a logfile stored once."""

from __future__ import annotations

import gzip
import io
import tracemalloc
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import psycopg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.fixtures_copernica import (
    EVENT_LOGS,
    LOCAL,
    LOG_FORMATS,
    MESSAGE,
    NORMALISED,
    TIME,
    TZ,
    WEBHOOK_CASES,
    encode_log,
    log_expected,
    log_record,
    wire,
)
from workers.events.logfiles import LOG_COLUMNS, Record, log_type_from_name, read_records
from workers.events.model import from_logfile, from_webhook, is_event_log
from workers.events.parsing import Unparseable, parse_body
from workers.storage import store

RECEIVED = datetime(2026, 11, 27, 8, 0, tzinfo=UTC)


def records(data: bytes, log_type: str, fmt: str) -> list[Record]:
    return list(read_records(io.BytesIO(data), log_type, "csv" if fmt.startswith("csv") else fmt))


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("cdm-click.2026-11-25.log", "cdm-click"),
        ("cdm-click.2026-11-25.csv", "cdm-click"),
        ("cdm-impression.2026-11-25.json.gz", "cdm-impression"),
        ("/var/tmp/pom-clicks-old.2026-11-25.xml", "pom-clicks-old"),
        ("POM-ERRORS.2026-11-25.log", "pom-errors"),
        ("feedback-loop-errors.2026-11-25.log", "feedback-loop-errors"),
        ("cdm-attempts.log", "cdm-attempts"),
        ("something-else.2026-11-25.log", None),
        ("cdm-click", "cdm-click"),
        ("", None),
        ("../..", None),
    ],
)
def test_log_type_from_name(name: str, expected: str | None) -> None:
    assert log_type_from_name(name) == expected


def test_documented_column_order() -> None:
    assert LOG_COLUMNS["cdm-click"] == (
        "id",
        "senderdomain",
        "time",
        "linkinfo",
        "ip",
        "header",
        "email",
        "tags",
        "countrycode",
        "countryname",
        "regioncode",
        "city",
        "profile",
        "subprofile",
        "template",
    )
    assert LOG_COLUMNS["pom-errors"] == (
        "id",
        "time",
        "type",
        "status",
        "description",
        "code",
        "content",
        "email",
        "tags",
        "senderdomain",
        "groupid",
        "profile",
        "subprofile",
        "template",
        "document",
    )
    assert LOG_COLUMNS["pom-clicks-old"] == tuple(c for c in LOG_COLUMNS["pom-clicks"] if c != "linkinfo")
    assert LOG_COLUMNS["feedback-loop-errors"] == ("time", "response", "recipient", "header")
    assert LOG_COLUMNS["pom-delivery"] == LOG_COLUMNS["pom-deliveries"]  # both names are in use
    assert len(LOG_COLUMNS) == 19


LAYOUTS = [pytest.param(t, f, id=f"{t}-{f}") for t in EVENT_LOGS for f in LOG_FORMATS]


@pytest.mark.parametrize(("log_type", "fmt"), LAYOUTS)
def test_every_layout_and_format(log_type: str, fmt: str) -> None:
    first = log_record(log_type)
    second = log_record(
        log_type,
        id="second-message",
        time="2026-07-01 13:00:01",
        **({"type": "hard BOUNCE"} if "type" in first else {}),
    )
    got = records(encode_log(log_type, [first, second], fmt), log_type, fmt)
    assert [r.error for r in got] == [None, None]
    if fmt.startswith("csv"):  # the CSV line each record starts on (quoted fields may hold line breaks)
        start = 2 if fmt == "csv-header" else 1
        expected_lines = [start, start + encode_log(log_type, [first], "csv").count(b"\n")]
    else:
        expected_lines = [1, 2]
    assert [r.line for r in got] == expected_lines
    for record, sent in zip(got, (first, second), strict=True):
        fields = dict(record.fields)
        if fmt == "xml" and "mail" in sent:  # XML reads line ends as \n
            sent = {**sent, "mail": sent["mail"].replace("\r\n", "\n")}
        assert fields == sent
        assert record.raw

    event = from_logfile(got[0].fields, log_type, TZ, RECEIVED)
    assert {name: getattr(event, name) for name in NORMALISED} == log_expected(log_type, first)
    assert event.received_at == RECEIVED and event.payload == got[0].fields

    later = from_logfile(got[1].fields, log_type, TZ, RECEIVED)
    assert later.message_id == "second-message"
    assert later.occurred_at == datetime(2026, 7, 1, 11, 0, 1, tzinfo=UTC)  # CEST
    if "type" in first:
        assert later.event_type == "bounced"


def test_header_in_another_order_is_used() -> None:
    data = b"time,id,email\n2026-11-26 13:00:01,m1,a@example.com\n"
    got = records(data, "cdm-delivery", "csv")
    assert got == [
        Record(2, {"time": LOCAL, "id": "m1", "email": "a@example.com"}, b"2026-11-26 13:00:01,m1,a@example.com\n")
    ]


def test_csv_errors_are_records_not_exceptions() -> None:
    header = ",".join(LOG_COLUMNS["cdm-unsubscribe"]).encode()
    good = b"m1,2026-11-26 13:00:01,a@example.com,t,example.com,1,2,3"
    data = b"\n".join(
        [
            header,
            good,
            b"m2,2026-11-26 13:00:01,short",
            b"\xff\xfe,2026,a,t,d,1,2,3",
            b"",
            good,
            b'm3,"2026-11-26 13:00:01,a@example.com,t,exa',
        ]
    )
    got = records(data, "cdm-unsubscribe", "csv")
    assert [(r.line, r.fields is not None) for r in got] == [(2, True), (3, False), (4, False), (6, True), (7, False)]
    assert "expected 8 columns, found 3" in got[1].error
    assert "UTF-8" in got[2].error and got[2].raw.startswith(b"\xff\xfe")
    assert "truncated" in got[4].error and got[4].raw.startswith(b'm3,"2026')


def test_csv_last_line_cut_short_is_an_error_record() -> None:
    data = b"m1,2026-11-26 13:00:01,a@example.com,t,example.com,1,2,3\nm2,2026-11-26 13:00:01,a@exa"
    got = records(data, "cdm-unsubscribe", "csv")
    assert got[0].error is None
    assert got[1].fields is None and "truncated" in got[1].error


def test_csv_of_unknown_layout_needs_its_header() -> None:
    assert records(b"id,time\nm,2026-11-26 13:00:01\n", "cdm-new", "csv")[0].fields == {
        "id": "m",
        "time": "2026-11-26 13:00:01",
    }
    assert "no header" in records(b"m,2026-11-26 13:00:01\n", "cdm-new", "csv")[0].error


def test_json_errors_are_records() -> None:
    data = b'[{"id": "m1", "time": "2026-11-26 13:00:01"}, 42, ["x"], {"id": "m2", "time": "2026-11-26 13:00'
    got = records(data, "cdm-delivery", "json")
    assert got[0].fields == {"id": "m1", "time": "2026-11-26 13:00:01"}
    assert [r.fields for r in got[1:]] == [None, None, None]
    assert "not an object" in got[1].error and "unreadable JSON" in got[3].error
    assert [r.line for r in got] == [1, 2, 3, 4]


def test_json_lines_are_tolerated() -> None:
    data = b'{"id": "m1", "time": "x"}\n{"id": "m2", "time": "y"}\n'
    assert [r.fields["id"] for r in records(data, "cdm-delivery", "json")] == ["m1", "m2"]


def test_json_numbers_keep_their_type() -> None:
    got = records(b'[{"id": "m", "time": "2026-11-26 13:00:01", "profile": 12, "x": 1.5}]', "cdm-delivery", "json")
    assert got[0].fields["profile"] == 12 and got[0].fields["x"] == 1.5
    assert from_logfile(got[0].fields, "cdm-delivery", TZ, RECEIVED).profile_id == 12


def test_xml_truncated_is_an_error_record() -> None:
    data = b"<records><record><id>m1</id><time>2026-11-26 13:00:01</time></record><record><id>m2</id>"
    got = records(data, "cdm-delivery", "xml")
    assert got[0].fields == {"id": "m1", "time": "2026-11-26 13:00:01"}
    assert got[1].fields is None and "unreadable XML" in got[1].error


def test_xml_empty_field_and_nested_markup() -> None:
    data = b"<records><record><id>m1</id><tags/><header>a<b>c</b>d</header></record></records>"
    assert records(data, "cdm-impression", "xml")[0].fields == {"id": "m1", "tags": "", "header": "acd"}


@pytest.mark.parametrize("fmt", LOG_FORMATS)
def test_gzip_is_read_transparently(fmt: str) -> None:
    data = gzip.compress(encode_log("cdm-impression", [log_record("cdm-impression")], fmt))
    got = records(data, "cdm-impression", fmt)
    assert [r.error for r in got] == [None] and got[0].fields["id"] == MESSAGE


def test_damaged_gzip_is_an_error_record() -> None:
    data = gzip.compress(encode_log("cdm-impression", [log_record("cdm-impression")] * 3, "csv"))[:-12]
    got = records(data, "cdm-impression", "csv")
    assert got and got[-1].fields is None and got[-1].error


def test_unknown_format_is_refused() -> None:
    with pytest.raises(ValueError, match="format"):
        read_records(io.BytesIO(b""), "cdm-click", "yaml")


def test_empty_files_have_no_records() -> None:
    for fmt in ("csv", "json"):
        assert records(b"", "cdm-click", fmt) == []
    assert records(b"<records/>", "cdm-click", "xml") == []


def test_records_that_are_not_events() -> None:
    with pytest.raises(Unparseable, match="no usable time"):
        from_logfile({"id": "m", "time": ""}, "cdm-click", TZ, RECEIVED)
    with pytest.raises(Unparseable, match="not events"):
        from_logfile({"time": LOCAL, "response": "500"}, "feedback-loop-errors", TZ, RECEIVED)
    assert not is_event_log("feedback-loop-errors")
    assert is_event_log("cdm-attempts") and is_event_log("pom-clicks-old")


def test_logfile_time_may_also_be_unix() -> None:
    event = from_logfile({"id": "m", "time": str(TIME)}, "cdm-delivery", TZ, RECEIVED)
    assert event.occurred_at == datetime.fromtimestamp(TIME, UTC)


# --- streaming: memory stays bounded on a large file ---------------------------------------------


class Generated(io.RawIOBase):
    """A large logfile produced on the fly (never whole in memory)."""

    def __init__(self, head: bytes, record: bytes, count: int, sep: bytes, tail: bytes) -> None:
        self._parts: Iterator[bytes] = self._make(head, record, count, sep, tail)
        self._buffer = b""

    @staticmethod
    def _make(head: bytes, record: bytes, count: int, sep: bytes, tail: bytes) -> Iterator[bytes]:
        yield head
        for i in range(count):
            yield (sep if i else b"") + record.replace(b"MSGID", b"m%08d" % i)
        yield tail

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        while len(self._buffer) < len(buffer):
            part = next(self._parts, None)
            if part is None:
                break
            self._buffer += part
        size = min(len(buffer), len(self._buffer))
        buffer[:size] = self._buffer[:size]
        self._buffer = self._buffer[size:]
        return size


STREAMS = {
    "csv": (b"", b"MSGID,2026-11-26 13:00:01,1,a@example.com," + b"t" * 150 + b",d,1,2,3\n", b"", b""),
    "json": (
        b"[",
        b'{"id": "MSGID", "time": "2026-11-26 13:00:01", "email": "a@example.com", "pad": "' + b"x" * 150 + b'"}',
        b",\n",
        b"]",
    ),
    "xml": (
        b"<records>",
        b"<record><id>MSGID</id><time>2026-11-26 13:00:01</time><pad>" + b"x" * 150 + b"</pad></record>\n",
        b"",
        b"</records>",
    ),
}


@pytest.mark.parametrize("fmt", sorted(STREAMS))
def test_large_file_streams_in_bounded_memory(fmt: str) -> None:
    head, record, sep, tail = STREAMS[fmt]
    count = 30_000  # about 7 MB
    stream = io.BufferedReader(Generated(head, record, count, sep, tail))
    tracemalloc.start()
    seen = 0
    try:
        for item in read_records(stream, "cdm-delivery", fmt):
            assert item.error is None
            seen += 1
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert seen == count
    assert peak < 2 * 1024 * 1024, f"peak {peak} bytes: the file was not streamed"


# --- one event, one row -----------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", LOG_FORMATS)
def test_same_open_from_webhook_and_impression_log_is_one_row(db: psycopg.Connection, fmt: str) -> None:
    case = next(c for c in WEBHOOK_CASES if c.name == "open")
    env = wire(case, "form")
    webhook = from_webhook(parse_body(env.content_type, env.body), env, TZ)
    # The logfile says 13:00:01 local Amsterdam time for the webhook's unix second (12:00:01 UTC).
    sent = log_record("cdm-impression", header="another user agent string", tags="other")
    (record,) = records(encode_log("cdm-impression", [sent], fmt), "cdm-impression", fmt)
    logged = from_logfile(record.fields, "cdm-impression", TZ, RECEIVED)
    assert logged.occurred_at == webhook.occurred_at
    assert logged.event_key == webhook.event_key

    first = store.store(db, [webhook])
    second = store.store(db, [logged])
    assert (first.stored, second.stored, second.duplicates) == (1, 0, 1)
    assert db.execute("SELECT count(*), min(source) FROM events").fetchone() == (1, "webhook")


def test_same_click_webhook_and_click_log_is_one_row(db: psycopg.Connection) -> None:
    case = next(c for c in WEBHOOK_CASES if c.name == "legacy-click")
    env = wire(case, "json")
    webhook = from_webhook(parse_body(env.content_type, env.body), env, TZ)
    (record,) = records(encode_log("cdm-click", [log_record("cdm-click")], "csv"), "cdm-click", "csv")
    logged = from_logfile(record.fields, "cdm-click", TZ, RECEIVED)
    assert store.store(db, [logged, webhook]).stored == 1


def test_another_address_in_the_log_is_another_open(db: psycopg.Connection) -> None:
    case = next(c for c in WEBHOOK_CASES if c.name == "open")
    webhook = from_webhook(case.form, wire(case, "form"), TZ)
    (record,) = records(
        encode_log("cdm-impression", [log_record("cdm-impression", ip="192.0.2.99")], "json"), "cdm-impression", "json"
    )
    assert store.store(db, [webhook, from_logfile(record.fields, "cdm-impression", TZ, RECEIVED)]).stored == 2


# --- hostile input ------------------------------------------------------------------------------


@settings(max_examples=100, deadline=None)
@given(st.binary(max_size=600), st.sampled_from(["csv", "json", "xml"]), st.sampled_from(sorted(LOG_COLUMNS)))
def test_arbitrary_bytes_never_raise(data: bytes, fmt: str, log_type: str) -> None:
    for record in read_records(io.BytesIO(data), log_type, fmt):
        assert (record.fields is None) == (record.error is not None)
        assert record.line >= 1


_values = st.one_of(
    st.text(max_size=40),
    st.integers(),
    st.floats(),
    st.none(),
    st.booleans(),
    st.sampled_from(
        [
            "2026-11-26 13:00:01",
            "0001-01-01 00:00:00",
            "9999-12-31 23:59:59",
            "2026-10-25 02:30:00",
            "1795694401",
            "::1",
            "999999999999999999999",
        ]
    ),
)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.sampled_from(EVENT_LOGS), st.data())
def test_arbitrary_field_values_become_events_or_unparseable(
    db: psycopg.Connection, log_type: str, data: st.DataObject
) -> None:
    db.execute("TRUNCATE events")
    fields = {name: data.draw(_values, label=name) for name in LOG_COLUMNS[log_type]}
    try:
        event = from_logfile(fields, log_type, TZ, RECEIVED)
    except Unparseable:
        return
    conn = store.connect(db.info.dsn)
    try:
        result = store.store(conn, [event])
    finally:
        conn.close()
    assert (result.stored, result.rejected) == (1, 0)  # typed columns always fit PostgreSQL


def test_values_json_cannot_hold_are_kept_as_text(db: psycopg.Connection) -> None:
    (record,) = records(
        b'[{"id": "m", "time": "2026-11-26 13:00:01", "profile": 123456789012345678901234567890}]',
        "cdm-delivery",
        "json",
    )
    event = from_logfile(record.fields, "cdm-delivery", TZ, RECEIVED)
    assert event.payload["profile"] == "123456789012345678901234567890" and event.profile_id is None
    assert store.store(db, [event]).stored == 1


def test_json_record_nested_too_deep_is_an_error_record_and_reading_goes_on() -> None:
    data = b"[" + b'{"a":' * 100_000 + b"1" + b"}" * 100_000 + b', {"id": "m", "n": 1.5, "l": [2.25]}]'
    got = records(data, "cdm-delivery", "json")
    assert got[0].fields is None and "nested deeper" in got[0].error
    assert got[1].fields == {"id": "m", "n": 1.5, "l": [2.25]}  # floats, not Decimals
    assert type(got[1].fields["n"]) is float


def test_xml_entity_expansion_is_refused() -> None:
    entities = '<!ENTITY a "aaaaaaaaaa">' + "".join(
        f'<!ENTITY {chr(98 + i)} "{("&" + chr(97 + i) + ";") * 10}">' for i in range(8)
    )
    data = f'<?xml version="1.0"?><!DOCTYPE r [{entities}]><records><record><id>&i;</id></record></records>'
    got = records(data.encode(), "cdm-delivery", "xml")
    assert len(got) == 1 and got[0].fields is None and "unreadable XML" in got[0].error
