"""The per-event machine rules (`workers.events.machine`), where Events are built and in SQL."""

from __future__ import annotations

from collections.abc import Iterator

import psycopg
import pytest

from tests.fixtures_copernica import TZ, envelope, log_record
from workers.events import machine
from workers.events.model import from_logfile, from_webhook
from workers.storage import agents

BROWSER = "Mozilla/5.0 (iPhone; CPU iPhone OS 17_0 like Mac OS X) AppleWebKit/605.1.15 Mobile/15E148"


@pytest.fixture(autouse=True)
def no_operator_networks() -> Iterator[None]:
    machine.configure(None)
    yield
    machine.configure(None)


CASES = [
    # (type, ip, user agent, verdict)
    ("opened", "17.58.101.4", "Mozilla/5.0", (True, "apple_proxy")),  # Mail Privacy Protection
    ("opened", "17.58.101.4", None, (True, "apple_proxy")),
    ("opened", "17.58.101.4", BROWSER, (False, None)),  # someone at Apple, in a browser
    ("opened", "192.0.2.1", "Mozilla/5.0", (False, None)),  # the generic agent elsewhere: no rule
    ("opened", "192.0.2.1", None, (False, None)),
    ("opened", None, BROWSER, (False, None)),
    ("opened", None, None, (None, None)),  # nothing to tell by
    ("clicked", "17.0.0.1", "Mozilla/5.0", (True, "apple_proxy")),
    ("clicked", "2001:db8::1", BROWSER, (False, None)),
    ("delivered", "17.58.101.4", "Mozilla/5.0", (None, None)),  # only opens and clicks
]


@pytest.mark.parametrize(("kind", "ip", "agent", "verdict"), CASES)
def test_apple_proxy_rule(kind: str, ip: str | None, agent: str | None, verdict: tuple) -> None:
    assert machine.classify(kind, ip, agent) == verdict


def test_operator_networks_win_whatever_the_agent() -> None:
    machine.configure(["198.51.100.0/24", "2001:db8:5::/48"])
    assert machine.classify("clicked", "198.51.100.77", BROWSER) == (True, "operator_network")
    assert machine.classify("opened", "2001:db8:5::9", None) == (True, "operator_network")
    assert machine.classify("opened", "198.51.101.1", BROWSER) == (False, None)
    assert machine.classify("opened", "17.1.1.1", None) == (True, "apple_proxy")


def test_webhooks_and_logfiles_get_the_verdict() -> None:
    hook = from_webhook(
        {"id": "m1", "type": "open", "time": "1795694401", "ip": "17.58.1.1", "useragent": "Mozilla/5.0"},
        envelope(b"x", "application/x-www-form-urlencoded"),
        TZ,
    )
    assert (hook.machine, hook.machine_rule) == (True, "apple_proxy")
    record = from_logfile(
        log_record("cdm-impression", ip="192.0.2.1", header=BROWSER), "cdm-impression", TZ, hook.received_at
    )
    assert (record.machine, record.machine_rule) == (False, None)
    machine.configure(["192.0.2.0/24"])
    again = from_logfile(log_record("cdm-click", ip="192.0.2.1"), "cdm-click", TZ, hook.received_at)
    assert (again.machine, again.machine_rule) == (True, "operator_network")


def test_the_sql_rule_is_the_python_rule(db: psycopg.Connection) -> None:
    """What `ingest messages rebuild` applies in SQL gives `classify`'s verdict for every case."""
    machine.configure(["198.51.100.0/24"])
    cases = [*CASES, ("opened", "198.51.100.3", BROWSER, None), ("clicked", "198.51.100.3", None, None)]
    generic = [agents.agent_hash(text) for text in machine.GENERIC_AGENTS]
    for kind, ip, agent, _verdict in cases:
        if kind not in machine.MACHINE_TYPES:
            continue
        row = db.execute(
            f"SELECT {machine.sql_rule()}"
            " FROM (SELECT %(ip)s::inet AS ip, agent_hash(%(agent)s) AS user_agent_hash) AS e",
            {**machine.sql_params(), "generic": generic, "ip": ip, "agent": agent},
        ).fetchone()
        assert row[0] == machine.classify(kind, ip, agent)[1], (ip, agent)
