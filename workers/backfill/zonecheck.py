"""Is COPERNICA_TIMEZONE the zone of a logfile's times? Checked against stored webhooks.

Copernica documents no zone for a logfile's `time` (nor for a webhook's `timestamp`). Read in
the wrong zone, every record keys apart from its webhook (the key holds the occurred second)
and backfill stores each event twice. Webhooks also carry `time` in unix seconds, so events
stored from webhooks hold the true instant: a file's first event records are matched against
them (same normalised type and message id, and ip where both have one). When enough match
and nearly all are off by the same whole number of quarter hours other than 0, the file is
refused (`ZoneMismatch`), naming the zone that would make them meet.
"""

from __future__ import annotations

import ipaddress
import logging
import zoneinfo
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import BinaryIO

import psycopg

from workers.events.logfiles import read_records
from workers.events.model import from_logfile
from workers.events.parsing import Unparseable

log = logging.getLogger("workers.backfill.zonecheck")

SAMPLE_RECORDS = 1000  # event records read from the start of a file
MIN_MATCHES = 5  # fewer matches with stored webhooks: no verdict, the file is stored as it is
MIN_SHARE = 0.9  # share of the matches that must agree on one offset
STEP = 900  # zone offsets are whole quarter hours (+5:30 India, +5:45 Nepal)
MAX_OFFSET = 26 * 3600  # UTC-12 against UTC+14
_QUERY_LIMIT = 50_000

# Zones with a fractional offset, tried before every other zone when one is to be named.
_FRACTIONAL_ZONES = (
    "Asia/Kolkata",
    "Asia/Tehran",
    "Asia/Kabul",
    "Asia/Kathmandu",
    "Asia/Yangon",
    "Australia/Darwin",
    "Australia/Adelaide",
    "Australia/Eucla",
    "America/St_Johns",
    "Pacific/Marquesas",
    "Pacific/Chatham",
    "Australia/Lord_Howe",
)


@dataclass(frozen=True, slots=True)
class Sample:
    """What matching needs of one event: from a logfile record, or from a stored webhook."""

    event_type: str
    message_id: str
    ip: str | None
    occurred_at: datetime


@dataclass(frozen=True, slots=True)
class Verdict:
    sampled: int  # event records read
    matches: int  # of those, how many have a stored webhook event
    offset: int = 0  # seconds most matches are off: logfile time minus webhook time
    agreeing: int = 0  # matches off by exactly `offset`
    zone: str | None = None  # the COPERNICA_TIMEZONE that makes them meet, when offset != 0
    zone_offset: timedelta | None = None  # that zone's UTC offset at the matched events

    @property
    def mismatch(self) -> bool:
        return self.matches >= MIN_MATCHES and self.offset != 0 and self.agreeing >= MIN_SHARE * self.matches


class ZoneMismatch(Exception):
    """A logfile's times are in another zone than the configured one; nothing of it was stored."""

    def __init__(self, label: str, tz: str, verdict: Verdict) -> None:
        self.label, self.tz, self.verdict = label, tz, verdict
        offset = verdict.offset
        way = "earlier" if offset < 0 else "later"
        if verdict.zone is not None:
            meet = f"they meet with COPERNICA_TIMEZONE={verdict.zone} (or --timezone {verdict.zone})"
        elif verdict.zone_offset is not None:
            meet = f"no time zone has the offset UTC{format_offset(int(verdict.zone_offset.total_seconds()))}"
        else:
            meet = "no time zone makes them meet"
        super().__init__(
            f"{label}: time zone mismatch: read as {tz}, its times are {format_offset(abs(offset), sign=False)} h "
            f"{way} than the webhooks of the same events (offset {format_offset(offset)}, {verdict.agreeing} of "
            f"{verdict.matches} matches); {meet}. Nothing of this file was stored"
        )


def format_offset(seconds: int, *, sign: bool = True) -> str:
    """-3600 -> '-01:00'; 19800 -> '+05:30'; without sign 3600 -> '1:00'."""
    minutes = abs(seconds) // 60
    if not sign:
        return f"{minutes // 60}:{minutes % 60:02d}"
    return f"{'-' if seconds < 0 else '+'}{minutes // 60:02d}:{minutes % 60:02d}"


def sample(stream: BinaryIO, log_type: str, fmt: str, tz: str, limit: int = SAMPLE_RECORDS) -> tuple[list[Sample], int]:
    """The first `limit` event records of a logfile, read in `tz`, and how many were read.
    Records without a message id count but cannot be matched; unreadable records are skipped."""
    found: list[Sample] = []
    events = 0
    now = datetime.now(UTC)
    for record in read_records(stream, log_type, fmt):
        if record.fields is None:
            continue
        try:
            event = from_logfile(record.fields, log_type, tz, now)
        except Unparseable:
            continue
        except Exception:  # a model bug is the store's to report, with the record
            log.debug("sampling %s: record %d not read", log_type, record.line, exc_info=True)
            continue
        events += 1
        if event.message_id:
            found.append(Sample(event.event_type, event.message_id, event.ip, event.occurred_at))
        if events >= limit:
            break
    return found, events


def stored_webhooks(conn: psycopg.Connection, samples: Sequence[Sample]) -> list[Sample]:
    """Events stored from webhooks with the message ids and types of `samples`, near their times.

    Uses `events_message_id_idx` (message_id, in every partition); the occurred_at range lets
    PostgreSQL skip the month partitions no offset can reach."""
    if not samples:
        return []
    ids = sorted({s.message_id for s in samples})
    types = sorted({s.event_type for s in samples})
    reach = timedelta(seconds=MAX_OFFSET + 3600)
    low = min(s.occurred_at for s in samples) - reach
    high = max(s.occurred_at for s in samples) + reach
    with conn.transaction():
        rows = conn.execute(
            "SELECT event_type, message_id, host(ip), occurred_at FROM events"
            " WHERE message_id = ANY(%s) AND source = 'webhook' AND event_type = ANY(%s)"
            " AND occurred_at BETWEEN %s AND %s LIMIT %s",
            (ids, types, low, high, _QUERY_LIMIT),
        ).fetchall()
    return [Sample(*row) for row in rows]


def _address(text: str | None) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    if not text:
        return None
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        return None


def judge(samples: Iterable[Sample], stored: Iterable[Sample], tz: str, sampled: int | None = None) -> Verdict:
    """Match logfile samples with stored webhook events; the offset most matches share.

    A record matches the stored events of its type and message id whose ip is its own (when
    both have one). One of them at offset 0 makes it an exact match; otherwise each offset that
    is a whole number of quarter hours counts once for it. Ties go to offset 0."""
    by_key: dict[tuple[str, str], list[Sample]] = {}
    for event in stored:
        by_key.setdefault((event.event_type, event.message_id), []).append(event)
    samples = list(samples)
    tally: Counter[int] = Counter()
    seen_at: dict[int, datetime] = {}
    matches = 0
    for record in samples:
        address = _address(record.ip)
        candidates = [
            w
            for w in by_key.get((record.event_type, record.message_id), ())
            if address is None or (other := _address(w.ip)) is None or other == address
        ]
        if not candidates:
            continue
        matches += 1
        offsets = {int((record.occurred_at - w.occurred_at).total_seconds()): w.occurred_at for w in candidates}
        if 0 in offsets:
            tally[0] += 1
            continue
        for offset, at in offsets.items():
            if offset % STEP == 0 and abs(offset) <= MAX_OFFSET:
                tally[offset] += 1
                seen_at.setdefault(offset, at)
    sampled = len(samples) if sampled is None else sampled
    if not tally:
        return Verdict(sampled, matches)
    offset, agreeing = max(tally.items(), key=lambda item: (item[1], item[0] == 0))
    if offset == 0:
        return Verdict(sampled, matches, 0, agreeing)
    at = seen_at[offset]
    configured = zoneinfo.ZoneInfo(tz).utcoffset(at) or timedelta(0)
    true_offset = configured + timedelta(seconds=offset)
    return Verdict(sampled, matches, offset, agreeing, zone_for(true_offset, at), true_offset)


def zone_for(offset: timedelta, at: datetime) -> str | None:
    """A zone name whose UTC offset at `at` is `offset`: `UTC`, else `Etc/GMT±N` for whole hours
    (the sign is POSIX's: Etc/GMT-2 is UTC+2), else a named zone; None when none has it."""
    if offset == timedelta(0):
        return "UTC"
    seconds = int(offset.total_seconds())
    if seconds % 3600 == 0 and -12 <= seconds // 3600 <= 14:
        return f"Etc/GMT{-(seconds // 3600):+d}"
    for name in (*_FRACTIONAL_ZONES, *sorted(zoneinfo.available_timezones())):
        if "/" not in name or name.startswith(("posix/", "right/")):
            continue
        try:
            if zoneinfo.ZoneInfo(name).utcoffset(at) == offset:
                return name
        except (zoneinfo.ZoneInfoNotFoundError, ValueError, OSError):
            continue
    return None


def check(conn: psycopg.Connection, stream: BinaryIO, log_type: str, fmt: str, tz: str) -> Verdict:
    """Read the first event records of `stream` and judge them against stored webhooks. The
    stream is left wherever reading stopped: the caller seeks back."""
    samples, events = sample(stream, log_type, fmt, tz)
    verdict = judge(samples, stored_webhooks(conn, samples), tz, events)
    log.debug(
        "zone check of a %s file: %d event records, %d matches, offset %d s (%d agree)",
        log_type,
        verdict.sampled,
        verdict.matches,
        verdict.offset,
        verdict.agreeing,
    )
    return verdict
