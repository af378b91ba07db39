"""Machine opens and clicks: the rules that decide, for one `opened` or `clicked` event, whether
a machine fetched the pixel or the link rather than a person.

Two kinds of rule, in two rooms:

- **Per event** (here, applied where an Event is built, webhook and logfile alike): what the
  event itself shows.
  - `apple_proxy`: Apple Mail Privacy Protection fetches every image of a message through
    Apple's proxies, from Apple's own network (17.0.0.0/8, `APPLE_NETWORKS`) with a generic
    user agent (`Mozilla/5.0` and nothing after it) or none. An address in Apple's network
    with a browser's full user agent is a person (an Apple employee).
  - `operator_network`: an address in `INGEST_MACHINE_NETWORKS` (security scanners and link
    checkers the operator knows, or the iCloud Private Relay egress list
    https://mask-api.icloud.com/egress-ip-ranges.csv), whatever the user agent.
  An event with neither an address nor a user agent is unknown (`machine` NULL); any other is
  a person (`machine` false, no rule) until a rule of the second kind says otherwise.
- **Per message** (in SQL, `messages_apply_click_rules` of migrations 0006 and 0013, run by the trigger
  that keeps `messages`, 0010: they need the message's other events),
  for clicks only: `click_near_delivery` (a click before, or within `CLICK_DELAY_SECONDS` of,
  the message's delivery, or of its sending when no delivery is stored) and `link_burst` (two
  different links of one message clicked within `BURST_SECONDS` of each other: a scanner
  following every link, not a person going back to the mail). They are recomputed whenever a
  click or a delivery of the message arrives, so the order of arrival does not matter.

`ingest messages rebuild` applies every rule again to the stored events (`sql_rule`, the same
per-event rule in SQL), so the rules can change without anything being lost.
"""

from __future__ import annotations

import ipaddress
import logging
from collections.abc import Iterable
from typing import Final

from workers.events.fields import Recent

log = logging.getLogger("workers.events.machine")

# Apple's network (ARIN: APPLE-WWNET, 17.0.0.0/8), where Mail Privacy Protection fetches from.
APPLE_NETWORKS: Final[tuple[str, ...]] = ("17.0.0.0/8",)
GENERIC_AGENTS: Final[frozenset[str]] = frozenset({"Mozilla/5.0"})
MACHINE_TYPES: Final[frozenset[str]] = frozenset({"opened", "clicked"})

APPLE_PROXY: Final = "apple_proxy"
OPERATOR_NETWORK: Final = "operator_network"
CLICK_NEAR_DELIVERY: Final = "click_near_delivery"
LINK_BURST: Final = "link_burst"
EVENT_RULES: Final[tuple[str, ...]] = (APPLE_PROXY, OPERATOR_NETWORK)
MESSAGE_RULES: Final[tuple[str, ...]] = (CLICK_NEAR_DELIVERY, LINK_BURST)
RULES: Final[tuple[str, ...]] = EVENT_RULES + MESSAGE_RULES
# The per-message rules' figures, as the SQL of migrations 0006 and 0010 writes them (a test holds
# the two together).
CLICK_DELAY_SECONDS: Final = 5
BURST_SECONDS: Final = 1

Verdict = tuple[bool | None, str | None]  # (machine, rule)
_UNKNOWN: Verdict = (None, None)
_PERSON: Verdict = (False, None)

_Network = ipaddress.IPv4Network | ipaddress.IPv6Network
_apple: tuple[_Network, ...] = tuple(ipaddress.ip_network(n) for n in APPLE_NETWORKS)
_operator: tuple[_Network, ...] = ()


def configure(networks: Iterable[str] | None) -> None:
    """The operator's networks (INGEST_MACHINE_NETWORKS), for every event built from now on."""
    global _operator
    _operator = tuple(ipaddress.ip_network(n, strict=False) for n in networks or ())
    _where.clear()


def operator_networks() -> tuple[str, ...]:
    return tuple(str(n) for n in _operator)


def _place(ip: str) -> str | None:
    """Which rule's network holds the address: APPLE_PROXY's, OPERATOR_NETWORK's, or None."""
    try:
        address = ipaddress.ip_address(ip)
    except ValueError:
        return None
    if any(address in n for n in _operator if n.version == address.version):
        return OPERATOR_NETWORK
    if any(address in n for n in _apple if n.version == address.version):
        return APPLE_PROXY
    return None


_where = Recent(_place, size=8192)


def classify(event_type: str, ip: str | None, user_agent: str | None) -> Verdict:
    """The per-event verdict of an open or a click (None, None for any other type)."""
    if event_type not in MACHINE_TYPES:
        return _UNKNOWN
    if ip is None:
        return _UNKNOWN if user_agent is None else _PERSON
    place = _where[ip]
    if place == OPERATOR_NETWORK:
        return True, OPERATOR_NETWORK
    if place == APPLE_PROXY and (user_agent is None or user_agent in GENERIC_AGENTS):
        return True, APPLE_PROXY
    return _PERSON


def sql_rule(apple: str = "%(apple)s", operator: str = "%(operator)s", generic: str = "%(generic)s") -> str:
    """`classify`'s rule as a SQL expression of `ip` and `user_agent_hash` (how a row stores its
    user agent: `workers.storage.agents`) giving the rule's name (or NULL), for `ingest messages
    rebuild`; `apple` and `operator` are `cidr[]` parameters, `generic` the `bigint[]` of
    GENERIC_AGENTS' hashes."""
    return (
        f"CASE WHEN ip IS NULL THEN NULL"
        f" WHEN ip <<= ANY({operator}::cidr[]) THEN '{OPERATOR_NETWORK}'"
        f" WHEN ip <<= ANY({apple}::cidr[])"
        f" AND (user_agent_hash IS NULL OR user_agent_hash = ANY({generic}::bigint[]))"
        f" THEN '{APPLE_PROXY}' END"
    )


def sql_params() -> dict[str, list[str]]:
    """The networks `sql_rule` reads (its `generic` hashes come from the storage room)."""
    return {"apple": list(APPLE_NETWORKS), "operator": list(operator_networks())}
