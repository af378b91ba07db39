"""INGEST_IP_PRIVACY: what is kept of a reader's IP address (the `ip` of opens and clicks).

- `full`: the address as sent (the default);
- `truncate`: IPv4 to its /24 (`192.0.2.77` -> `192.0.2.0`), IPv6 to its /48
  (`2001:db8:abcd:12::1` -> `2001:db8:abcd::`);
- `drop`: no address.

Applied by the event model (`workers.events.model`) to the `ip` column, to the payload's `ip`
field, and before `event_key` is computed, so that a webhook and a logfile record of one open
still meet under every setting. Keys of opens and clicks contain the address: an event stored
under one setting and delivered again under another is a second row.
"""

from __future__ import annotations

import ipaddress
from typing import Any

from workers.events.fields import Recent

FULL, TRUNCATE, DROP = "full", "truncate", "drop"
IP_FIELD = "ip"  # the payload field that holds the reader's address (webhooks and logfiles)

_mode: str | None = None


def mode() -> str:
    """This process's INGEST_IP_PRIVACY, read once."""
    global _mode
    if _mode is None:
        from common.settings import Settings

        _mode = Settings.from_env().ip_privacy
    return _mode


def set_mode(value: str | None) -> None:
    """Use this setting from now on (commands that read their settings already; tests); None:
    read INGEST_IP_PRIVACY again when next needed."""
    global _mode
    _mode = value


def _truncate(address: str) -> str:
    ip = ipaddress.ip_address(address)
    prefix = 24 if ip.version == 4 else 48
    return str(ipaddress.ip_network(f"{address}/{prefix}", strict=False).network_address)


_truncated = Recent(_truncate)


def address(ip: str | None, setting: str) -> str | None:
    """The canonical address (`workers.events.fields.ip`) as kept under `setting`."""
    if ip is None or setting == FULL:
        return ip
    if setting == DROP:
        return None
    return _truncated[ip] if len(ip) <= 64 else _truncate(ip)


def payload(fields: dict[str, Any], kept: str | None, setting: str) -> dict[str, Any]:
    """The fields to store as the payload: the `ip` field replaced by what is kept of it (gone
    when nothing is). A copy when changed: the caller's fields are left as they were."""
    if setting == FULL or IP_FIELD not in fields:
        return fields
    changed = dict(fields)
    if kept is None:
        del changed[IP_FIELD]
    else:
        changed[IP_FIELD] = kept
    return changed
