"""Coercing Copernica's field values into typed columns (split out of `workers.events.model`).

Every function here takes whatever arrived (str, int, list, dict, None) and returns the typed
value or None. None means "the column stays NULL"; the value itself is kept in the payload.
Nothing here raises for odd input.
"""

from __future__ import annotations

import ipaddress
import re
import zoneinfo
from datetime import UTC, datetime
from functools import lru_cache
from typing import Any

BIGINT_MAX = 2**63 - 1
# Indexed text columns (message_id, recipient) are bounded: a btree entry holds ~2.7 kB.
INDEXED_TEXT_MAX = 512

_DIGITS = re.compile(r"\s*(\d{1,19})\s*")
_ENHANCED = re.compile(r"\s*[245]\.\d{1,3}\.\d{1,3}\s*")
_ACCOUNT = re.compile(r"\s*([A-Za-z]+)[-_](\S+?)\s*")
# A dotted quad as `ipaddress` accepts it (no leading zeros), which is its own canonical form.
_OCTET = "(?:25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])"
_IPV4 = re.compile(rf"{_OCTET}(?:\.{_OCTET}){{3}}")


def text(value: Any, limit: int | None = None) -> str | None:
    """A scalar as trimmed text without NULs (PostgreSQL text cannot hold them); None when empty,
    a container, or longer than `limit`."""
    if type(value) is str:  # the common case, first: no str() and no NUL scan when there is none
        result = value.strip()
        if "\x00" in result:
            result = result.replace("\x00", "").strip()
    elif value is None or isinstance(value, dict | list | bool):
        return None
    else:
        result = str(value).replace("\x00", "").strip()
    if not result or (limit is not None and len(result) > limit):
        return None
    return result


def bigint(value: Any) -> int | None:
    """An id as sent (int or digit string, e.g. "1234") as a bigint; None for anything else."""
    if type(value) is str and len(value) <= 19 and value.isdigit() and value.isascii():  # the common id
        number = int(value)  # without the regex
        return number if number <= BIGINT_MAX else None
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        number = value
    elif isinstance(value, str):
        match = _DIGITS.fullmatch(value)
        if match is None:
            return None
        number = int(match[1])
    else:
        return None
    return number if 0 <= number <= BIGINT_MAX else None


class Recent(dict):
    """What a coercion made of the values seen lately (addresses of mail proxies, a mailing's
    tags, the second an event occurred and the like recur call after call); emptied when it
    holds `size` of them. `recent[value]` is a plain dict look-up when the value was seen."""

    def __init__(self, make: Any, size: int = 4096) -> None:
        super().__init__()
        self.make, self.size = make, size

    def __missing__(self, key: Any) -> Any:
        if len(self) >= self.size:
            self.clear()
        value = self[key] = self.make(key)
        return value


def ip(value: Any) -> str | None:
    """A valid IPv4/IPv6 address in canonical form (fits `inet`); None otherwise."""
    if type(value) is str and len(value) <= _CACHED_LENGTH:
        return _ips[value]
    return _ip(value)


def _ip(value: Any) -> str | None:
    raw = text(value, 100)
    if raw is None:
        return None
    if _IPV4.fullmatch(raw):
        return raw
    try:
        address = ipaddress.ip_address(raw)
    except ValueError:
        return None
    if getattr(address, "scope_id", None):
        return None  # `fe80::1%eth0`: inet has no zone index
    return str(address)


def tags(value: Any) -> list[str] | None:
    """`a;b` (logfiles, most webhooks) or an array (`tags[]=a&tags[]=b`, JSON) as a list of text."""
    if type(value) is str and len(value) <= _CACHED_LENGTH:  # a new list each time: the caller's to keep
        found = _tag_lists[value]
        return list(found) if found is not None else None
    return _tags(value)


def _tags(value: Any) -> list[str] | None:
    if isinstance(value, str):
        items: list[Any] = value.split(";")
    elif isinstance(value, list):
        items = value
    elif isinstance(value, dict):
        items = list(value.values())
    else:
        return None
    result = [t for t in (text(item) for item in items) if t is not None]
    return result or None


_CACHED_LENGTH = 256  # longer texts are coerced each time: a hostile payload cannot fill the caches
_ips = Recent(_ip)
_tag_lists = Recent(lambda value: tuple(_tags(value) or ()) or None)


def smtp_code(value: Any) -> int | None:
    """A three-digit SMTP reply code (550); None for anything else (kept in the payload)."""
    number = bigint(value)
    return number if number is not None and 100 <= number <= 999 else None


def is_enhanced_status(value: Any) -> bool:
    """`5.1.1`-style enhanced status code (RFC 3463)."""
    return isinstance(value, str) and _ENHANCED.fullmatch(value) is not None


def account(value: Any) -> str | None:
    """X-Copernica-ID: `account-1234`, `account_1234`, `Account_1234` -> '1234'. Other prefixes
    (`environment-5`) keep their lower-cased prefix ('environment-5') so ids of different kinds
    never look alike."""
    if type(value) is str and len(value) <= _CACHED_LENGTH:  # every call of an account: the same header
        return _accounts[value]
    return _account(value)


def _account(value: Any) -> str | None:
    raw = text(value, 200)
    if raw is None:
        return None
    match = _ACCOUNT.fullmatch(raw)
    if match is None:
        return raw
    prefix = match[1].lower()
    return match[2] if prefix == "account" else f"{prefix}-{match[2]}"


_accounts = Recent(_account, size=256)


@lru_cache(maxsize=16)
def _zone(name: str) -> zoneinfo.ZoneInfo:
    return zoneinfo.ZoneInfo(name)


def unix_time(value: Any) -> datetime | None:
    """Unix seconds (int, float or numeric text) as a UTC datetime."""
    if isinstance(value, bool) or value is None:
        return None
    try:
        seconds = float(value) if isinstance(value, int | float) else float(str(value).strip())
        return datetime.fromtimestamp(int(seconds), UTC)
    except (ValueError, OverflowError, OSError):
        return None


def local_time(value: Any, tz: str) -> datetime | None:
    """`YYYY-MM-DD HH:MM:SS` (no zone: read in `tz`; an explicit offset is honoured) as UTC.

    In the hour a DST change repeats, the earlier reading is taken (fold=0)."""
    raw = text(value, 40)
    if raw is None or not raw[:4].isdigit():
        return None
    try:
        parsed = datetime.fromisoformat(raw)
        if parsed.tzinfo is None:
            parsed = parsed.replace(tzinfo=_zone(tz))
        result = parsed.astimezone(UTC)
        result.timestamp()  # out-of-range local times (year 1 east of UTC) fail here, not later
        return result
    except (ValueError, OverflowError):
        return None


def occurred_at(fields: dict[str, Any], tz: str) -> datetime | None:
    """`time` when it is unix seconds (webhooks; authoritative); else a `time` or `timestamp`
    text read in Copernica's zone (logfiles say `time`, webhooks `timestamp`)."""
    raw = fields.get("time")
    if type(raw) is str and len(raw) <= 12 and raw.isdigit() and raw.isascii():  # a webhook's `time`
        try:
            return datetime.fromtimestamp(int(raw), UTC)
        except (OverflowError, OSError, ValueError):
            pass  # the general rules below say what it is
    numeric = isinstance(raw, str) and raw.strip().replace(".", "", 1).isdigit()
    if numeric or (isinstance(raw, int | float) and not isinstance(raw, bool)):
        found = unix_time(raw)
        if found is not None:
            return found
    for name in ("time", "timestamp"):
        found = local_time(fields.get(name), tz)
        if found is not None:
            return found
    return None
