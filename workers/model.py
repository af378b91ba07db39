"""The event model: Copernica's fields in, one normalised `Event` with its `event_key` out.

This is the only module that knows Copernica's field names. Webhooks and logfile records
both become an `Event` here, with the same key for the same event, so "one row per event"
is one rule in one place (`event_key`).
"""

from __future__ import annotations

import hashlib
import zoneinfo
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import lru_cache
from typing import Any

import orjson

from workers.envelope import Envelope

# Copernica's webhook `type` (and logfile kinds) into the shared vocabulary.
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
    "failure": "failed",
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


@dataclass(frozen=True, slots=True)
class Event:
    """One row of `events`; field names are the table's columns (store.py relies on it)."""

    event_key: str
    event_type: str
    copernica_type: str
    occurred_at: datetime
    received_at: datetime
    source: str  # 'webhook' or 'logfile'
    message_id: str | None
    recipient: str | None
    payload: dict[str, Any]


def normalise_type(copernica_type: str) -> str:
    return EVENT_TYPES.get(copernica_type.strip().lower(), UNKNOWN)


@lru_cache(maxsize=16)
def _zone(name: str) -> zoneinfo.ZoneInfo:
    return zoneinfo.ZoneInfo(name)


def occurred_at(fields: dict[str, Any], tz: str, fallback: datetime) -> datetime:
    """`time` (unix seconds) when present; else `timestamp` read in Copernica's zone."""
    raw = fields.get("time")
    if raw not in (None, ""):
        try:
            return datetime.fromtimestamp(int(float(str(raw))), UTC)
        except (ValueError, OverflowError, OSError):
            pass
    for name in ("timestamp", "time"):
        text = fields.get(name)
        if isinstance(text, str) and text:
            try:
                return datetime.strptime(text.strip(), "%Y-%m-%d %H:%M:%S").replace(tzinfo=_zone(tz))
            except ValueError:
                continue
    return fallback


def _text(value: Any) -> str | None:
    if value is None or isinstance(value, dict | list):
        return None
    text = str(value).strip()
    return text or None


def event_key(event_type: str, message_id: str | None, occurred: datetime, fields: dict[str, Any]) -> str:
    """What makes two events the same. The single rule for webhooks and logfiles alike."""
    if message_id:
        parts = [event_type, message_id, str(int(occurred.timestamp()))]
        ip = _text(fields.get("ip"))
        if ip:
            parts.append(ip)
    else:
        parts = [event_type, "payload", orjson.dumps(fields, option=orjson.OPT_SORT_KEYS).decode()]
    return hashlib.sha256("\x1f".join(parts).encode()).hexdigest()


def from_webhook(fields: dict[str, Any], envelope: Envelope, tz: str) -> Event:
    copernica_type = _text(fields.get("type")) or _text(fields.get("action")) or ""
    event_type = normalise_type(copernica_type)
    received = datetime.fromtimestamp(envelope.received_at, UTC)
    occurred = occurred_at(fields, tz, received)
    message_id = _text(fields.get("id"))
    return Event(
        event_key=event_key(event_type, message_id, occurred, fields),
        event_type=event_type,
        copernica_type=copernica_type,
        occurred_at=occurred,
        received_at=received,
        source="webhook",
        message_id=message_id,
        recipient=_text(fields.get("recipient")) or _text(fields.get("email")),
        payload=fields,
    )
