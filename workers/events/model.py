"""The event model: Copernica's fields in, one normalised `Event` with its `event_key` out.

This is the only module that knows Copernica's field names. Webhooks (`from_webhook`) and
logfile records (`from_logfile`) both become an `Event` here, with the same key for the same
event, so "one row per event" is one rule in one place (`event_key`). Value coercion (ids,
addresses, times, tags) lives in `workers.events.fields`.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final

import orjson

from common.envelope import Envelope
from workers.events import fields as fv
from workers.events import machine, mime, privacy
from workers.events.parsing import MAX_DEPTH, Unparseable

log = logging.getLogger("workers.events.model")

# Copernica's webhook `type` (and logfile kinds, the part after `cdm-`/`pom-`) into the shared
# vocabulary (django-anymail's names).
EVENT_TYPES: dict[str, str] = {
    "attempts": "sent",
    "attempt": "sent",
    "delivery": "delivered",
    "deliveries": "delivered",
    "open": "opened",
    "impression": "opened",
    "impressions": "opened",
    "click": "clicked",
    "clicks": "clicked",
    "clicks-old": "clicked",
    "failure": "failed",
    "failed": "failed",
    "error": "failed",
    "errors": "failed",
    "bounce": "bounced",
    "retry": "deferred",
    "retries": "deferred",
    "unsubscribe": "unsubscribed",
    "unsubscribes": "unsubscribed",
    "abuse": "complained",
    "abuses": "complained",
    "complaint": "complained",
    "create": "profile_created",
    "update": "profile_updated",
    "delete": "profile_deleted",
}
UNKNOWN = "unknown"
# Not a type Copernica sends: a `bounce` webhook whose returned message is an automatic reply
# (out of office, vacation, read receipt; `workers.events.mime`).
AUTORESPONDED = mime.AUTORESPONDED
VOCABULARY: frozenset[str] = frozenset(EVENT_TYPES.values()) | {AUTORESPONDED, UNKNOWN}
PROFILE_TYPES: frozenset[str] = frozenset({"profile_created", "profile_updated", "profile_deleted"})
UNSUBSCRIBED = "unsubscribed"
# Types whose key includes the address the event came from (a person's open or click).
IP_TYPES: frozenset[str] = frozenset({"opened", "clicked"})
# Logfiles that hold no events (kept out of `events`).
NON_EVENT_LOGS: frozenset[str] = frozenset({"feedback-loop-errors"})


@dataclass(slots=True)  # not frozen: a frozen dataclass costs ~3x to build, and workers build millions
class Event:
    """One row of `events`; field names are the table's columns (store.py relies on it), in the
    table's order (`from_webhook` and `from_logfile` build it positionally). Treat it as
    immutable: nothing changes an Event once built."""

    event_key: str
    event_type: str
    copernica_type: str
    occurred_at: datetime
    received_at: datetime
    source: str  # 'webhook' or 'logfile'
    message_id: str | None
    recipient: str | None
    payload: dict[str, Any]
    ip: str | None = None
    user_agent: str | None = None
    url: str | None = None
    link_id: str | None = None
    mailing_id: int | None = None
    profile_id: int | None = None
    subprofile_id: int | None = None
    database_id: int | None = None
    collection_id: int | None = None
    template_id: int | None = None
    tags: list[str] | None = None
    smtp_code: int | None = None
    smtp_status: str | None = None
    description: str | None = None
    account: str | None = None
    machine: bool | None = None  # opens and clicks: a machine's fetch (`workers.events.machine`)
    machine_rule: str | None = None  # the rule that said so


def normalise_type(copernica_type: str) -> str:
    return EVENT_TYPES.get(copernica_type.strip().lower(), UNKNOWN)


def is_event_log(log_type: str) -> bool:
    """Whether a logfile's records are events (`cdm-attempts` are: `sent`); feedback-loop-errors are not."""
    return log_type.strip().lower() not in NON_EVENT_LOGS


def _canonical(value: Any) -> str:
    return orjson.dumps(value, option=orjson.OPT_SORT_KEYS).decode()


def event_key(
    event_type: str,
    message_id: str | None,
    occurred: datetime,
    fields: dict[str, Any],
    *,
    ip: str | None = None,
) -> str:
    """What makes two events the same: the one rule for webhooks and logfiles alike.

    - Unsubscribes (`unsubscribed`) with a profile id (`profile`, `profileid` or `profile_id`,
      as a number): sha256 of the type, the profile and the occurred second. Not the `id`: the
      unsubscribe webhook's `id` is the unsubscribe's own, the `cdm-unsubscribe` /
      `pom-unsubscribes` record's `id` is the message's, so only the profile and the time are
      shared. What collapses: two unsubscribes of one profile in the same second. Without a
      profile id they key as message events (below) on whatever `id` they carry
      (`message_id` here: the caller passes the webhook's own id for the key although the
      Event's `message_id` stays empty); webhook and logfile then do not meet. Migration 0005
      re-keyed stored unsubscribes by this rule (the same in SQL).
    - Message events (anything with a message id): sha256 of the normalised type, the message
      id, the occurred second (unix) and, for opens and clicks only, the sender's address
      (canonical form). Not the URL, user agent, tags or recipient, which logfiles carry
      differently. So an open arriving as a webhook (`type=open`, `time` in unix seconds) and
      again as a `cdm-impression` record (`time` in local Copernica time, same instant) is one
      row. What collapses: two opens (or clicks) of one message in the same second from the
      same address; two events of another type for one message in the same second (e.g. a
      `failure` webhook with state bounce and a `bounce` webhook: one `bounced` row, the
      first stored wins).
    - Profile events (`profile_created/updated/deleted`) with a profile id: sha256 of the type,
      database, profile, subprofile, collection, the occurred second and the changed values
      (`fields` and `interests`, canonical JSON). Two identical changes in the same second
      collapse.
    - Anything else (no message id, no profile): sha256 of the type and the canonical payload
      (sorted keys): only a byte-for-byte repeat of the same fields collapses.

    The database's unique constraint on `event_key` is the guard (INSERT ... ON CONFLICT DO
    NOTHING); it holds the key's first 128 bits as a uuid (`workers.storage.keys.stored_key`).
    Message-event keys are built as in the core schema (0001), so rows stored before migration
    0002 keep matching re-deliveries.

    A `bounce` webhook whose message is an automatic reply is `autoresponded` (its own type,
    so its own key); bounces stored before that existed stay `bounced`, so such a reply
    delivered again after the upgrade is a second row.

    Where webhook and logfile cannot meet: a click webhook from before 2023 carries no `ip`
    while the `cdm-click` record does (two rows); a 2017 failure form carries no time (keyed
    on its time of receipt: it meets no `cdm-error` record, nor its own re-delivery); an
    unsubscribe without a profile id; logfile times are local, so in the hour a
    DST change repeats (autumn, 02:00-03:00 Amsterdam) the first reading is taken and a
    webhook from the second pass keys an hour apart (two rows). Profile events stored before
    migration 0002 keep the payload key they were stored with (0002 re-keys only the failures
    it re-labels `bounced`).
    """
    second = str(int(occurred.timestamp()))
    if event_type == UNSUBSCRIBED and (profile := _profile_id(fields)) is not None:
        parts = [event_type, "profile", str(profile), second]
    elif message_id:
        parts = [event_type, message_id, second]
        if event_type in IP_TYPES and ip:
            parts.append(ip)
    elif event_type in PROFILE_TYPES and fv.text(fields.get("profile")):
        parts = [
            event_type,
            "profile",
            fv.text(fields.get("database")) or "",
            fv.text(fields.get("profile")) or "",
            fv.text(fields.get("subprofile")) or "",
            fv.text(fields.get("collection")) or "",
            second,
            _canonical({"fields": fields.get("fields"), "interests": fields.get("interests")}),
        ]
    else:
        parts = [event_type, "payload", _canonical(fields)]
    return hashlib.sha256("\x1f".join(parts).encode("utf-8", "surrogatepass")).hexdigest()


def _profile_id(fields: dict[str, Any]) -> int | None:
    """The profile id as `_common` reads it into `profile_id` (the column migration 0005 keys on)."""
    value = _first(fields, *_PROFILE_NAMES)
    return fv.bigint(value) if value is not None else None


_SIZED = (str, list, dict)  # the kinds whose empty value counts as absent


def _first(fields: dict[str, Any], *names: str) -> Any:
    """The first of `names` that is present with a non-empty value (not None, "", [] or {})."""
    for name in names:
        value = fields.get(name)
        if value or (value is not None and not isinstance(value, _SIZED)):
            return value
    return None


# The names each column is read from, in `Event`'s order from recipient to description: webhook
# names first, then logfile names (`email`, `header`, `linkinfo`, `mailingid`, ...), then the
# 2017 feedback names (`rcptto`).
_COLUMNS: tuple[tuple[str, ...], ...] = (
    ("recipient", "email", "rcptto"),
    ("ip",),
    ("useragent", "user_agent", "header"),
    ("original", "url"),
    ("linkinfo", "link", "linkid"),
    *(
        (name, name + "id", name + "_id")
        for name in ("mailing", "profile", "subprofile", "database", "collection", "template")
    ),
    ("tags",),
    ("code",),
    ("extended", "status"),
    ("description",),
)
_FIRST_NAMES = tuple(names[0] for names in _COLUMNS)
_PROFILE_NAMES = next(names for names in _COLUMNS if names[0] == "profile")
_STATUS_COLUMN: Final = 13  # smtp_status's place in what `_common` returns
_DESCRIPTION_COLUMN: Final = 14  # description's, the last
_LATER_NAMES = frozenset(name for names in _COLUMNS for name in names[1:])


# What `_common` returns: `Event`'s columns from recipient to description, in its order.
_Columns = tuple[
    str | None,  # recipient
    str | None,  # ip
    str | None,  # user_agent
    str | None,  # url
    str | None,  # link_id
    int | None,  # mailing_id
    int | None,  # profile_id
    int | None,  # subprofile_id
    int | None,  # database_id
    int | None,  # collection_id
    int | None,  # template_id
    list[str] | None,  # tags
    int | None,  # smtp_code
    str | None,  # smtp_status
    str | None,  # description
]


def _common(fields: dict[str, Any]) -> _Columns:
    """The normalised columns both webhooks and logfile records fill from Copernica's names, in
    `Event`'s order: recipient, then ip to description.

    Values that do not fit a column (a non-numeric id, an invalid address) leave it NULL; the
    payload keeps them as sent. A record that holds none of the later names (every webhook)
    is read by the first names at once: an empty value there is NULL either way.
    """
    if _LATER_NAMES.isdisjoint(fields):
        values = list(map(fields.get, _FIRST_NAMES))
    else:
        values = [_first(fields, *names) for names in _COLUMNS]
    (
        recipient,
        ip,
        user_agent,
        url,
        link,
        mailing,
        profile,
        subprofile,
        database,
        collection,
        template,
        tags,
        code_raw,
        status,
        description,
    ) = values
    text, bigint = fv.text, fv.bigint
    smtp_code = fv.smtp_code(code_raw) if code_raw is not None else None
    smtp_status = text(status) if status is not None else None
    if smtp_status is None and smtp_code is None and fv.is_enhanced_status(code_raw):
        smtp_status = text(code_raw)
    return (
        text(recipient, fv.INDEXED_TEXT_MAX),
        fv.ip(ip) if ip is not None else None,
        text(user_agent) if user_agent is not None else None,
        text(url) if url is not None else None,
        text(link) if link is not None else None,
        bigint(mailing) if mailing is not None else None,
        bigint(profile) if profile is not None else None,
        bigint(subprofile) if subprofile is not None else None,
        bigint(database) if database is not None else None,
        bigint(collection) if collection is not None else None,
        bigint(template) if template is not None else None,
        fv.tags(tags) if tags is not None else None,
        smtp_code,
        smtp_status,
        text(description) if description is not None else None,
    )


def _private(fields: dict[str, Any], columns: _Columns) -> tuple[dict[str, Any], _Columns]:
    """The payload and columns as INGEST_IP_PRIVACY keeps them (`workers.events.privacy`): the
    reader's address truncated or dropped in the `ip` column and the payload alike."""
    setting = privacy.mode()
    if setting == privacy.FULL:
        return fields, columns
    kept = privacy.address(columns[1], setting)
    return privacy.payload(fields, kept, setting), (columns[0], kept, *columns[2:])


def _webhook_type(fields: dict[str, Any]) -> str:
    """`type` wins; `action` stands in for it (a documented subprofile example). Failure events
    also carry `action` (failure/failed), which is why `type` is read first."""
    return fv.text(fields.get("type")) or fv.text(fields.get("action")) or ""


def _refine(event_type: str, detail: str | None) -> str:
    """A failure whose state (webhook, `failure` or 2017 form) or type (logfile error) says
    bounce is a bounce.

    Nothing makes a failure `deferred`: Copernica documents no state or type for a temporary
    failure (`state` is the SMTP phase, or `bounce`), and deferrals arrive only as `*-retry`
    logfile records. Any word here changes keys (the type is in them), so none is guessed."""
    if event_type == "failed" and detail and "bounce" in detail.lower():
        return "bounced"
    return event_type


_LEGACY_FAILURE = ("state", "code", "extended", "description")
_LEGACY_OPEN = ("ip", "useragent", "referer")


def _legacy_type(fields: dict[str, Any]) -> str:
    """The 2017 "feedback" webhooks send no type: a click has `original`, a bounce `mime`
    (or `mailfrom`/`rcptto`); with a message `id`, a failure has `state` (or `code`,
    `extended`, `description`) and an open `ip` (or `useragent`, `referer`)."""
    if "original" in fields:
        return "click"
    if "mime" in fields or "mailfrom" in fields or "rcptto" in fields:
        return "bounce"
    if "id" in fields:
        if any(name in fields for name in _LEGACY_FAILURE):
            return "failure"
        if any(name in fields for name in _LEGACY_OPEN):
            return "open"
    return ""


def from_webhook(fields: dict[str, Any], envelope: Envelope, tz: str) -> Event:
    """One webhook call's fields into an Event. Never raises for odd values: an unknown type
    is `unknown`, a missing time falls back to the time the call was received.

    `copernica_type` is the type as sent (`''` when none was: a 2017 feedback call, whose
    event type is read from its fields). A bounce is `autoresponded` when its `mime` is an
    automatic reply, and a delivery-status report fills `smtp_status` (`workers.events.mime`). An
    unsubscribe's `id` is no message id: `message_id` stays empty (see `event_key`)."""
    copernica_type = _webhook_type(fields)
    kind = copernica_type or _legacy_type(fields)
    event_type = normalise_type(kind)
    received = datetime.fromtimestamp(envelope.received_at, UTC) if _sane(envelope.received_at) else _EPOCH
    occurred = fv.occurred_at(fields, tz) or received
    message_id = None if event_type in PROFILE_TYPES else fv.text(fields.get("id"), fv.INDEXED_TEXT_MAX)
    key_id = message_id
    fields, columns = _private(fields, _common(fields))  # INGEST_IP_PRIVACY, before the key
    if event_type == "failed":
        event_type = _refine(event_type, fv.text(fields.get("state")))
    elif event_type == "bounced":
        event_type, status = mime.classify(fields.get("mime"))
        if status is not None and columns[_STATUS_COLUMN] is None:
            columns = (*columns[:_STATUS_COLUMN], status, *columns[_DESCRIPTION_COLUMN:])
    elif event_type == UNSUBSCRIBED:
        message_id = None  # the webhook's `id` is the unsubscribe's own (kept in the payload)
    verdict = machine.classify(event_type, columns[1], columns[2])
    return Event(
        event_key(event_type, key_id, occurred, fields, ip=columns[1]),
        event_type,
        copernica_type,
        occurred,
        received,
        "webhook",
        message_id,
        columns[0],
        fields,
        *columns[1:],
        fv.account(_header(envelope.headers, "x-copernica-id")),
        *verdict,
    )


_INT64 = (-(2**63), 2**64 - 1)  # what orjson writes


def _jsonable(value: Any, depth: int = 0) -> Any:
    """A record's value as JSON can hold it: integers past 64 bits (JSON logfiles can carry
    them), Decimals and other odd scalars become their text; nesting past MAX_DEPTH its repr.
    Webhook bodies need none of this (orjson and the form parser only produce JSON values)."""
    if value is None or isinstance(value, str | bool | float):
        return value
    if isinstance(value, int):
        return value if _INT64[0] <= value <= _INT64[1] else str(value)
    if isinstance(value, dict | list):
        if depth >= MAX_DEPTH:
            return repr(value)[:10_000]
        if isinstance(value, dict):
            return {str(k): _jsonable(v, depth + 1) for k, v in value.items()}
        return [_jsonable(v, depth + 1) for v in value]
    return str(value)


def from_logfile(fields: dict[str, Any], log_type: str, tz: str, received_at: datetime) -> Event:
    """One logfile record (column -> value) into an Event with source 'logfile'.

    `copernica_type` is the log's prefix (`cdm-impression`); `time` is local Copernica time
    (`tz`). Raises `Unparseable` for a record that cannot be an event: no usable `time`, or a
    log that holds no events (`is_event_log`). Values JSON cannot hold (integers past 64 bits)
    are kept in the payload as text.
    """
    prefix = log_type.strip().lower()
    if not is_event_log(prefix):
        raise Unparseable(f"{prefix} records are not events")
    fields = _jsonable(fields)
    occurred = fv.occurred_at(fields, tz)
    if occurred is None:
        raise Unparseable(f"{prefix} record has no usable time: {fields.get('time')!r}"[:300])
    kind = prefix.split("-", 1)[1] if prefix[:4] in ("cdm-", "pom-") else prefix
    event_type = _refine(normalise_type(kind), fv.text(fields.get("type")))
    message_id = fv.text(fields.get("id"), fv.INDEXED_TEXT_MAX)
    fields, columns = _private(fields, _common(fields))  # INGEST_IP_PRIVACY, before the key
    return Event(
        event_key(event_type, message_id, occurred, fields, ip=columns[1]),
        event_type,
        prefix,
        occurred,
        received_at if received_at.tzinfo else received_at.replace(tzinfo=UTC),
        "logfile",
        message_id,
        columns[0],
        fields,
        *columns[1:],
        None,
        *machine.classify(event_type, columns[1], columns[2]),
    )


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def _sane(seconds: float) -> bool:
    return 0 <= seconds < 253_402_300_000  # before year 10000


def _header(headers: dict[str, str], name: str) -> str | None:
    if name in headers:
        return headers[name]
    for key, value in headers.items():
        if isinstance(key, str) and key.lower() == name:
            return value
    return None
