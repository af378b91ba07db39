"""Payloads built from the documented field lists (../shared/copernica.md), with the normalised
columns each must give. Shared by the parsing, model, logfile and rejected tests."""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.message import EmailMessage, Message
from email.mime.message import MIMEMessage
from email.mime.multipart import MIMEMultipart
from email.mime.text import MIMEText
from typing import Any
from urllib.parse import quote_plus
from xml.sax.saxutils import escape

import orjson

from common.envelope import Envelope
from workers.events.logfiles import LOG_COLUMNS

TZ = "Europe/Amsterdam"
# 2026-11-26 12:00:01 UTC = 13:00:01 in Amsterdam (CET, UTC+1).
TIME = 1795694401
OCCURRED = datetime(2026, 11, 26, 12, 0, 1, tzinfo=UTC)
LOCAL = "2026-11-26 13:00:01"
RECEIVED = 1795694405.25
MESSAGE = "b4icbaqjswyrb7tc"
UNSUBSCRIBE = "u8731"  # an unsubscribe webhook's own id (not a message id)

# Every normalised column and its value when a payload does not fill it.
NORMALISED: dict[str, Any] = {
    "event_type": None,
    "copernica_type": None,
    "occurred_at": OCCURRED,
    "message_id": None,
    "recipient": None,
    "ip": None,
    "user_agent": None,
    "url": None,
    "link_id": None,
    "mailing_id": None,
    "profile_id": None,
    "subprofile_id": None,
    "database_id": None,
    "collection_id": None,
    "template_id": None,
    "tags": None,
    "smtp_code": None,
    "smtp_status": None,
    "description": None,
    "account": None,
    "source": None,
}


@dataclass(frozen=True)
class Case:
    name: str
    form: dict[str, Any]  # fields as a form sends them (all text; nested for PHP-style keys)
    json: dict[str, Any]  # the same event as JSON (ids may be numbers)
    expected: dict[str, Any] = field(default_factory=dict)

    def columns(self, **extra: Any) -> dict[str, Any]:
        return {**NORMALISED, "source": "webhook", **self.expected, **extra}


def _message(kind: str, **more: Any) -> dict[str, Any]:
    return {
        "id": MESSAGE,
        "type": kind,
        "timestamp": LOCAL,
        "time": str(TIME),
        "recipient": "a@example.com",
        "tags": "news;weekly",
        **more,
    }


def _numbers(fields: dict[str, Any], *names: str) -> dict[str, Any]:
    """The JSON flavour: the named ids as numbers, `time` as a number, tags as an array."""
    result = dict(fields)
    for name in (*names, "time"):
        if name in result:
            result[name] = int(result[name])
    if isinstance(result.get("tags"), str):
        result["tags"] = result["tags"].split(";")
    return result


_BASE = {"message_id": MESSAGE, "recipient": "a@example.com", "tags": ["news", "weekly"]}
_PROFILE_FORM = {
    "timestamp": LOCAL,
    "time": str(TIME),
    "profile": "1001",
    "database": "5",
    "created": "2026-01-02 03:04:05",
    "modified": LOCAL,
    "id": "1001",
    "parameters": {"mail": "a@example.com", "campaign": "x"},
    "fields": {"name": "Ann", "city": "Utrecht"},
    "interests": ["music", "books"],
}
_SUB_FORM = {**_PROFILE_FORM, "subprofile": "2002", "collection": "7"}
_PROFILE_COLS = {"profile_id": 1001, "database_id": 5}
_SUB_COLS = {**_PROFILE_COLS, "subprofile_id": 2002, "collection_id": 7}


def _case(name: str, form: dict[str, Any], expected: dict[str, Any], *numeric: str) -> Case:
    return Case(name, form, _numbers(form, *numeric), expected)


# --- returned messages (a bounce webhook's `mime`), built with the stdlib as mail servers send them ---


def _original(size: int = 20_000) -> EmailMessage:
    """The newsletter that came back (large: returned messages carry it whole)."""
    message = EmailMessage()
    message["From"], message["To"], message["Subject"] = "news@example.com", "a@example.com", "Weekly news"
    message.set_content("Hello Ann,\n" + "news " * (size // 5))
    return message


def reply(subject: str, body: str, **headers: str) -> str:
    """A reply to the newsletter, with `headers` (keyword `x_autoreply` -> `X-Autoreply`)."""
    message = EmailMessage()
    message["From"], message["To"], message["Subject"] = "a@example.com", "bounces@example.com", subject
    for name, value in headers.items():
        message[name.replace("_", "-")] = value
    message.set_content(body)
    return message.as_string()


def out_of_office() -> str:
    return reply("Automatic reply: Weekly news", "I am away until Monday.", auto_submitted="auto-replied")


def report(report_type: str, fields: list[dict[str, str]], *, part_type: str, **headers: str) -> str:
    """A `multipart/report` (RFC 6522): a human part, the machine-readable part of `part_type` holding
    `fields` blocks, and the original message."""
    outer = MIMEMultipart("report", report_type=report_type)
    outer["From"], outer["To"], outer["Subject"] = "MAILER-DAEMON@mx.example.net", "bounces@example.com", "Report"
    for name, value in headers.items():
        outer[name.replace("_", "-")] = value
    outer.attach(MIMEText("This is an automatically generated report.\n"))
    blocks = []
    for values in fields:
        block = Message()
        for name, value in values.items():
            block[name] = value
        blocks.append(block)
    machine = Message()
    machine.set_type(part_type)
    machine.set_payload(blocks)
    outer.attach(machine)
    outer.attach(MIMEMessage(_original()))
    return outer.as_string()


def dsn(status: str = "5.1.1", **headers: str) -> str:
    """A delivery-status notification (a real bounce) for a@example.com."""
    return report(
        "delivery-status",
        [
            {"Reporting-MTA": "dns; mx.example.net", "Arrival-Date": "Thu, 26 Nov 2026 13:00:01 +0100"},
            {
                "Final-Recipient": "rfc822; a@example.com",
                "Action": "failed",
                "Status": f"{status} (bad mailbox)",
                "Diagnostic-Code": f"smtp; 550 {status} user unknown",
            },
        ],
        part_type="message/delivery-status",
        **headers,
    )


def read_receipt() -> str:
    return report(
        "disposition-notification",
        [
            {
                "Reporting-UA": "mail.example.net",
                "Final-Recipient": "rfc822; a@example.com",
                "Original-Message-ID": "<1@example.com>",
                "Disposition": "manual-action/MDN-sent-manually; displayed",
            },
        ],
        part_type="message/disposition-notification",
    )


WEBHOOK_CASES: list[Case] = [
    _case(
        "open",
        _message(
            "open",
            ip="192.0.2.1",
            useragent="Mozilla/5.0",
            referer="https://mail.example",
            profile="1001",
            mailing="42",
        ),
        {
            **_BASE,
            "event_type": "opened",
            "copernica_type": "open",
            "ip": "192.0.2.1",
            "user_agent": "Mozilla/5.0",
            "profile_id": 1001,
            "mailing_id": 42,
        },
        "profile",
        "mailing",
    ),
    _case(
        "click",
        _message(
            "click",
            ip="2001:db8::1",
            original="https://example.com/a?b=c&d=e",
            useragent="Mozilla/5.0",
            referer="",
            profile="1001",
            mailing="42",
        ),
        {
            **_BASE,
            "event_type": "clicked",
            "copernica_type": "click",
            "ip": "2001:db8::1",
            "url": "https://example.com/a?b=c&d=e",
            "user_agent": "Mozilla/5.0",
            "profile_id": 1001,
            "mailing_id": 42,
        },
        "profile",
        "mailing",
    ),
    _case("delivery", _message("delivery"), {**_BASE, "event_type": "delivered", "copernica_type": "delivery"}),
    _case(
        "failure",
        _message(
            "failure",
            action="failure",
            state="rcpt",
            code="550",
            extended="5.1.1",
            description="mailbox unknown",
            profile="1001",
            mailing="42",
        ),
        {
            **_BASE,
            "event_type": "failed",
            "copernica_type": "failure",
            "smtp_code": 550,
            "smtp_status": "5.1.1",
            "description": "mailbox unknown",
            "profile_id": 1001,
            "mailing_id": 42,
        },
        "profile",
        "mailing",
    ),
    _case(
        "failure-bounce",
        _message("failure", action="failed", state="bounce", code="552", description="over quota"),
        {**_BASE, "event_type": "bounced", "copernica_type": "failure", "smtp_code": 552, "description": "over quota"},
    ),
    _case(
        "bounce",
        _message(
            "bounce",
            envelope="MAIL FROM:<b@example.net>",
            mime="From: MAILER-DAEMON\r\nSubject: failure\r\n\r\n" + "x" * 100_000,
        ),
        {**_BASE, "event_type": "bounced", "copernica_type": "bounce"},
    ),
    _case(
        "unsubscribe",
        {
            "id": UNSUBSCRIBE,
            "type": "unsubscribe",
            "timestamp": LOCAL,
            "time": str(TIME),
            "database": "5",
            "profile": "1001",
            "mailing": "42",
        },
        {
            "event_type": "unsubscribed",
            "copernica_type": "unsubscribe",
            "database_id": 5,
            "profile_id": 1001,
            "mailing_id": 42,
        },
        "database",
        "profile",
        "mailing",
    ),
    _case(
        "profile-create",
        {"type": "create", **_PROFILE_FORM},
        {"event_type": "profile_created", "copernica_type": "create", **_PROFILE_COLS},
        "profile",
        "database",
    ),
    _case(
        "profile-update",
        {"type": "update", **_PROFILE_FORM},
        {"event_type": "profile_updated", "copernica_type": "update", **_PROFILE_COLS},
        "profile",
        "database",
    ),
    _case(
        "subprofile-create",
        {"type": "create", **_SUB_FORM},
        {"event_type": "profile_created", "copernica_type": "create", **_SUB_COLS},
        "profile",
        "database",
        "subprofile",
        "collection",
    ),
    _case(
        "subprofile-update-action",
        {"action": "update", **_SUB_FORM},
        {"event_type": "profile_updated", "copernica_type": "update", **_SUB_COLS},
        "subprofile",
    ),
    _case(
        "profile-delete",
        {"type": "delete", "timestamp": LOCAL, "time": str(TIME), "profile": "1001", "database": "5"},
        {"event_type": "profile_deleted", "copernica_type": "delete", **_PROFILE_COLS},
        "profile",
    ),
    _case(
        "subprofile-delete",
        {
            "type": "delete",
            "timestamp": LOCAL,
            "time": str(TIME),
            "profile": "1001",
            "database": "5",
            "subprofile": "2002",
            "collection": "7",
        },
        {"event_type": "profile_deleted", "copernica_type": "delete", **_SUB_COLS},
        "collection",
    ),
    # 2017 "feedback" names: no type field; the fields say what it is.
    _case(
        "legacy-click",
        {
            "id": MESSAGE,
            "recipient": "a@example.com",
            "ip": "192.0.2.1",
            "time": str(TIME),
            "original": "https://example.com/",
            "useragent": "Mozilla/5.0",
            "referer": "",
            "tags": "news;weekly",
        },
        {
            **_BASE,
            "event_type": "clicked",
            "copernica_type": "",
            "ip": "192.0.2.1",
            "url": "https://example.com/",
            "user_agent": "Mozilla/5.0",
        },
    ),
    _case(
        "legacy-bounce",
        {
            "id": MESSAGE,
            "recipient": "a@example.com",
            "mailfrom": "b@example.net",
            "rcptto": "a@example.com",
            "mime": "From: x\r\n\r\nbody",
            "tags": "news;weekly",
            "time": str(TIME),
        },
        {**_BASE, "event_type": "bounced", "copernica_type": ""},
    ),
    _case(
        "bounce-out-of-office",
        _message("bounce", envelope="MAIL FROM:<b@example.net>", mime=out_of_office()),
        {**_BASE, "event_type": "autoresponded", "copernica_type": "bounce"},
    ),
    _case(
        "bounce-dsn",
        _message("bounce", envelope="MAIL FROM:<b@example.net>", mime=dsn(auto_submitted="auto-replied")),
        {**_BASE, "event_type": "bounced", "copernica_type": "bounce", "smtp_status": "5.1.1"},
    ),
    _case(
        "legacy-bounce-vacation",
        {
            "id": MESSAGE,
            "recipient": "a@example.com",
            "mailfrom": "b@example.net",
            "rcptto": "a@example.com",
            "tags": "news;weekly",
            "time": str(TIME),
            "mime": reply("Vacation", "On holiday.", x_autoreply="yes"),
        },
        {**_BASE, "event_type": "autoresponded", "copernica_type": ""},
    ),
    _case(
        "legacy-open",
        {
            "id": MESSAGE,
            "recipient": "a@example.com",
            "ip": "192.0.2.1",
            "time": str(TIME),
            "useragent": "Mozilla/5.0",
            "referer": "https://mail.example",
            "tags": "news;weekly",
        },
        {**_BASE, "event_type": "opened", "copernica_type": "", "ip": "192.0.2.1", "user_agent": "Mozilla/5.0"},
    ),
    # no time field: it happened when it was received
    _case(
        "legacy-failure",
        {
            "id": MESSAGE,
            "recipient": "a@example.com",
            "state": "rcpt",
            "code": "550",
            "extended": "5.1.1",
            "description": "mailbox unknown",
            "tags": "news;weekly",
        },
        {
            **_BASE,
            "event_type": "failed",
            "copernica_type": "",
            "smtp_code": 550,
            "smtp_status": "5.1.1",
            "description": "mailbox unknown",
            "occurred_at": datetime.fromtimestamp(RECEIVED, UTC),
        },
    ),
    _case(
        "legacy-failure-bounce",
        {
            "id": MESSAGE,
            "recipient": "a@example.com",
            "state": "bounce",
            "code": "552",
            "description": "over quota",
            "tags": "news;weekly",
        },
        {
            **_BASE,
            "event_type": "bounced",
            "copernica_type": "",
            "smtp_code": 552,
            "description": "over quota",
            "occurred_at": datetime.fromtimestamp(RECEIVED, UTC),
        },
    ),
    _case(
        "unknown-type",
        _message("complaint-v2", something="new", nested={"a": "1"}),
        {**_BASE, "event_type": "unknown", "copernica_type": "complaint-v2"},
    ),
]


def encode_form(fields: dict[str, Any]) -> bytes:
    """PHP-style form encoding: nested dicts as `a[b]=`, lists as `a[]=`."""
    pairs: list[tuple[str, str]] = []

    def walk(prefix: str, value: Any) -> None:
        if isinstance(value, dict):
            for key, item in value.items():
                walk(f"{prefix}[{key}]" if prefix else key, item)
        elif isinstance(value, list):
            for item in value:
                walk(f"{prefix}[]", item)
        else:
            pairs.append((prefix, str(value)))

    walk("", fields)
    return "&".join(f"{quote_plus(k, safe='[]')}={quote_plus(v)}" for k, v in pairs).encode()


def envelope(
    body: bytes, content_type: str, account: str | None = "account-1234", received_at: float = RECEIVED
) -> Envelope:
    headers = {"content-type": content_type}
    if account is not None:
        headers["x-copernica-id"] = account
    return Envelope(
        body=body, content_type=content_type, received_at=received_at, remote="198.51.100.7", headers=headers
    )


def wire(case: Case, encoding: str, **kwargs: Any) -> Envelope:
    if encoding == "form":
        return envelope(encode_form(case.form), "application/x-www-form-urlencoded", **kwargs)
    return envelope(orjson.dumps(case.json), "application/json; charset=utf-8", **kwargs)


# --- logfiles -----------------------------------------------------------------------------------

VALUES: dict[str, str] = {
    "id": MESSAGE,
    "time": LOCAL,
    "ip": "192.0.2.1",
    "header": "Mozilla/5.0 (X11)",
    "email": "a@example.com",
    "tags": "news;weekly",
    "countrycode": "NL",
    "countryname": "Netherlands",
    "regioncode": "NH",
    "city": "Amsterdam",
    "senderdomain": "news.example.com",
    "profile": "1001",
    "subprofile": "2002",
    "template": "77",
    "mailingid": "42",
    "profileid": "1001",
    "subprofileid": "2002",
    "databaseid": "5",
    "collectionid": "7",
    "templateid": "77",
    "groupid": "3",
    "document": "9",
    "documentid": "9",
    "linkinfo": "991",
    "type": "error",
    "status": "5.1.1",
    "description": 'mailbox, "unknown"\nline 2',
    "code": "550",
    "attempts": "1",
    "attempt": "2",
    "mail": "From: a@example.com\r\nSubject: spam?\r\n\r\nreport",
    "content": "<p>x</p>",
    "response": "HTTP 500",
    "recipient": "https://hooks.example/",
}
COLUMN_EXPECTED: dict[str, tuple[str, Any]] = {
    "id": ("message_id", MESSAGE),
    "ip": ("ip", "192.0.2.1"),
    "header": ("user_agent", "Mozilla/5.0 (X11)"),
    "email": ("recipient", "a@example.com"),
    "tags": ("tags", ["news", "weekly"]),
    "profile": ("profile_id", 1001),
    "subprofile": ("subprofile_id", 2002),
    "template": ("template_id", 77),
    "mailingid": ("mailing_id", 42),
    "profileid": ("profile_id", 1001),
    "subprofileid": ("subprofile_id", 2002),
    "databaseid": ("database_id", 5),
    "collectionid": ("collection_id", 7),
    "templateid": ("template_id", 77),
    "linkinfo": ("link_id", "991"),
    "status": ("smtp_status", "5.1.1"),
    "description": ("description", 'mailbox, "unknown"\nline 2'),
    "code": ("smtp_code", 550),
}
LOG_EVENT_TYPES: dict[str, str] = {
    "attempts": "sent",
    "delivery": "delivered",
    "deliveries": "delivered",
    "impression": "opened",
    "impressions": "opened",
    "click": "clicked",
    "clicks": "clicked",
    "clicks-old": "clicked",
    "error": "failed",
    "errors": "failed",
    "retry": "deferred",
    "retries": "deferred",
    "unsubscribe": "unsubscribed",
    "unsubscribes": "unsubscribed",
    "abuse": "complained",
    "abuses": "complained",
}
EVENT_LOGS = [name for name in LOG_COLUMNS if name != "feedback-loop-errors"]


def log_record(log_type: str, **overrides: str) -> dict[str, str]:
    return {name: overrides.get(name, VALUES[name]) for name in LOG_COLUMNS[log_type]}


def log_expected(log_type: str, record: dict[str, str]) -> dict[str, Any]:
    expected = {
        **NORMALISED,
        "source": "logfile",
        "copernica_type": log_type,
        "event_type": LOG_EVENT_TYPES[log_type.split("-", 1)[1]],
    }
    for name, value in record.items():
        if name in COLUMN_EXPECTED and value == VALUES[name]:
            column, typed = COLUMN_EXPECTED[name]
            expected[column] = typed
    if expected["event_type"] == "failed" and "bounce" in record.get("type", "").lower():
        expected["event_type"] = "bounced"
    return expected


def to_csv(log_type: str, records: list[dict[str, str]], header: bool) -> bytes:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    if header:
        writer.writerow(LOG_COLUMNS[log_type])
    for record in records:
        writer.writerow([record[name] for name in LOG_COLUMNS[log_type]])
    return out.getvalue().encode()


def to_json(records: list[dict[str, Any]]) -> bytes:
    return orjson.dumps(records, option=orjson.OPT_INDENT_2)


def to_xml(records: list[dict[str, str]]) -> bytes:
    parts = ['<?xml version="1.0" encoding="UTF-8"?>\n<records>']
    for record in records:
        cells = "".join(f"<{k}>{escape(v)}</{k}>" for k, v in record.items())
        parts.append(f"  <record>{cells}</record>")
    parts.append("</records>\n")
    return "\n".join(parts).encode()


def encode_log(log_type: str, records: list[dict[str, str]], fmt: str) -> bytes:
    if fmt == "csv-header":
        return to_csv(log_type, records, True)
    if fmt == "csv":
        return to_csv(log_type, records, False)
    if fmt == "json":
        return to_json(records)
    return to_xml(records)


LOG_FORMATS = ("csv-header", "csv", "json", "xml")
