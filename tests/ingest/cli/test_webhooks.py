"""`ingest webhooks list|create|delete` against the fake Copernica REST API (a real aiohttp server)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import orjson
import pytest

from ingest.cli.webhooks import redact_url
from tests.commands import run as run_ingest
from tests.commands import set_api_env
from tests.fake_copernica import WEBHOOK_TRIGGERS, FakeCopernica
from workers.backfill.webhooks import TRIGGERS, Webhook

URL = "https://events.example.com/copernica"


@pytest.fixture
def env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, fake: FakeCopernica) -> dict[str, str]:
    """The environment of an `ingest webhooks` run against the fake API (in-process or a subprocess)."""
    return set_api_env(monkeypatch, tmp_path, fake)


def run(capsys: pytest.CaptureFixture, *argv: str) -> tuple[int, str, str]:
    return run_ingest(capsys, "webhooks", *argv)


def listed(capsys: pytest.CaptureFixture) -> list[dict]:
    code, out, err = run(capsys, "list", "--json")
    assert code == 0, err
    return orjson.loads(out)


def secrets_of(fake: FakeCopernica) -> list[str]:
    return [fake.token, *fake.issued]


# --- the round trip --------------------------------------------------------------------------------


@pytest.mark.usefixtures("env")
def test_create_list_delete_round_trip(capsys, fake) -> None:
    code, out, err = run(
        capsys,
        "create",
        "--url",
        URL,
        "--trigger",
        "click",
        "--trigger",
        "open",
        "--callers",
        "ms",
        "--database",
        "3",
        "--collection",
        "7",
    )
    assert code == 0, err
    lines = out.splitlines()
    assert [line.split()[0] for line in lines] == ["created", "created"]
    ids = [int(line.split()[1]) for line in lines]
    assert sorted(fake.webhooks) == sorted(ids)
    assert fake.webhook_bodies == [
        {"handler": URL, "trigger": "click", "callers": ["ms"], "database": 3, "collection": 7},
        {"handler": URL, "trigger": "open", "callers": ["ms"], "database": 3, "collection": 7},
    ]

    rows = listed(capsys)
    assert rows == [
        {"id": ids[0], "trigger": "click", "handler": URL, "callers": ["ms"], "database": 3, "collection": 7},
        {"id": ids[1], "trigger": "open", "handler": URL, "callers": ["ms"], "database": 3, "collection": 7},
    ]
    code, table, _ = run(capsys, "list")
    assert code == 0
    body = [line for line in table.splitlines() if URL in line]
    assert len(body) == 2 and all(str(i) in "".join(body) for i in ids)
    assert "click" in body[0] and "open" in body[1] and " 3 " in body[0] and " 7 " in body[0]

    code, out, err = run(capsys, "delete", str(ids[0]))
    assert code == 0, err
    assert out.strip() == f"deleted {ids[0]}"
    assert [r["id"] for r in listed(capsys)] == [ids[1]]
    assert [(h.method, h.path) for h in fake.webhook_hits() if h.method == "DELETE"] == [
        ("DELETE", f"/v4/webhook/{ids[0]}")
    ]


@pytest.mark.usefixtures("env")
def test_trigger_all_makes_one_webhook_per_trigger(capsys, fake) -> None:
    code, out, err = run(capsys, "create", "--url", URL, "--trigger", "all", "--json")
    assert code == 0, err
    made = orjson.loads(out)
    assert [m["trigger"] for m in made] == list(WEBHOOK_TRIGGERS) and len(made) == 8
    assert all(m["created"] for m in made) and len({m["id"] for m in made}) == 8
    assert sorted(fake.webhooks) == sorted(m["id"] for m in made)
    # Only what was asked for: handler and trigger, Copernica's defaults for the rest.
    assert all(set(b) == {"handler", "trigger"} for b in fake.webhook_bodies)
    assert TRIGGERS == WEBHOOK_TRIGGERS


@pytest.mark.usefixtures("env")
def test_create_again_does_not_make_a_second_subscription(capsys, fake) -> None:
    assert run(capsys, "create", "--url", URL, "--trigger", "click")[0] == 0
    code, out, err = run(capsys, "create", "--url", URL, "--trigger", "click,delivery")
    assert code == 0, err
    assert [line.split()[0] for line in out.splitlines()] == ["exists", "created"]
    assert sorted(h["trigger"] for h in fake.webhooks.values()) == ["click", "delivery"]
    # Another scope is another subscription.
    assert run(capsys, "create", "--url", URL, "--trigger", "click", "--database", "4")[0] == 0
    assert len(fake.webhooks) == 3


@pytest.mark.usefixtures("env")
def test_list_follows_the_pages(capsys, fake) -> None:
    fake.webhook_page_limit = 3
    for n in range(8):
        fake.add_webhook(f"{URL}?n={n}", WEBHOOK_TRIGGERS[n])
    rows = listed(capsys)
    assert [r["handler"] for r in rows] == [f"{URL}?n={n}" for n in range(8)]
    pages = [h.query for h in fake.webhook_hits() if h.method == "GET"]
    assert [int(q["start"]) for q in pages] == [0, 3, 6]
    assert all(0 < int(q["limit"]) <= 1000 for q in pages)


@pytest.mark.usefixtures("env")
def test_delete_of_an_unknown_id_is_one_line_and_exit_1(capsys, fake) -> None:
    fake.add_webhook(URL, "click")
    code, out, err = run(capsys, "delete", "999")
    assert code == 1 and out == ""
    assert err == "ingest: webhooks delete: no webhook with id 999\n"
    assert len(fake.webhooks) == 1


# --- retries ---------------------------------------------------------------------------------------


@pytest.mark.usefixtures("env")
def test_429_with_retry_after_is_waited_for_then_the_create_succeeds(capsys, fake, caplog) -> None:
    fake.fail("POST /v4/webhooks", (429, 1))
    code, out, err = run(capsys, "create", "--url", URL, "--trigger", "bounce")
    assert code == 0, err
    posts = [h for h in fake.webhook_hits() if h.method == "POST"]
    assert len(posts) == 2 and posts[1].at - posts[0].at >= 0.95  # Retry-After: 1 honoured
    assert len(fake.webhooks) == 1 and out.startswith("created ")
    assert "HTTP 429; retry 1/3" in caplog.text


@pytest.mark.parametrize("argv", [["list"], ["create", "--url", URL, "--trigger", "open"], ["delete", "ID"]])
@pytest.mark.usefixtures("env")
def test_503_is_retried_for_every_action(capsys, fake, caplog, argv) -> None:
    webhook_id = fake.add_webhook("https://old.example.com/copernica", "open")
    argv = [a.replace("ID", str(webhook_id)) for a in argv]
    method = {"list": "GET", "create": "POST", "delete": "DELETE"}[argv[0]]
    fake.fail(f"{method} /v4/webhook", 503, 503)
    code, _, err = run(capsys, *argv)
    assert code == 0, err
    assert len([h for h in fake.webhook_hits() if h.method == method]) == 3
    assert caplog.text.count("HTTP 503; retry") == 2


@pytest.mark.usefixtures("env")
def test_503_past_the_retry_limit_is_one_line_and_exit_1(capsys, fake) -> None:
    fake.fail("GET /v4/webhooks", 503, 503, 503, 503)  # COPERNICA_RETRIES=3: four tries
    code, out, err = run(capsys, "list")
    assert code == 1 and out == ""
    assert err.splitlines()[-1] == "ingest: webhooks list: GET /webhooks: HTTP 503, still failing after 3 retries"


@pytest.mark.parametrize("failure", [504, "drop"])
@pytest.mark.usefixtures("env")
def test_a_create_that_may_have_happened_is_not_sent_twice(capsys, fake, failure) -> None:
    fake.fail("POST /v4/webhooks", failure)
    code, out, err = run(capsys, "create", "--url", URL, "--trigger", "click")
    assert code == 1 and out == ""
    assert len([h for h in fake.webhook_hits() if h.method == "POST"]) == 1
    assert "may have been carried out" in err.splitlines()[-1]


# --- secrets ---------------------------------------------------------------------------------------


def test_the_token_is_never_printed_by_a_real_process(env, fake, tmp_path) -> None:
    """stdout, stderr and DEBUG logs of real `ingest webhooks` runs: success, failures, a refused token."""
    base = {**os.environ, **env, "INGEST_LOG_LEVEL": "DEBUG"}

    def ingest(*argv: str, **extra: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "ingest", "webhooks", *argv],
            env={**base, **extra},
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=60,
        )

    created = ingest("create", "--url", URL, "--trigger", "click")
    fake.fail("GET /v4/webhooks", 503, 503, 503, 503)
    exhausted = ingest("list")
    fake.fail("POST /v4/webhooks", 502)
    unsure = ingest("create", "--url", URL, "--trigger", "open")
    refused = ingest("list", COPERNICA_ACCESS_TOKEN="wrong-" + fake.token)
    assert created.returncode == 0 and "created" in created.stdout
    assert [p.returncode for p in (exhausted, unsure, refused)] == [1, 1, 1]
    assert "refused the credentials" in refused.stderr
    everything = "".join(p.stdout + p.stderr for p in (created, exhausted, unsure, refused))
    assert "authenticated with Copernica" in everything  # the logs were on
    for secret in secrets_of(fake):
        assert secret not in everything


@pytest.mark.usefixtures("env")
def test_a_receiver_token_in_the_handler_is_masked(capsys, fake) -> None:
    fake.add_webhook("https://events.example.com/copernica?token=s3cret&x=1", "click")
    fake.add_webhook("https://events.example.com/copernica/s3cret", "open")
    fake.add_webhook("https://user:s3cret@events.example.com/hook", "delivery")
    code, table, _ = run(capsys, "list")
    rows = listed(capsys)
    assert code == 0 and "s3cret" not in table + orjson.dumps(rows).decode()
    assert [r["handler"] for r in rows] == [
        "https://events.example.com/copernica?token=***&x=1",
        "https://events.example.com/copernica/***",
        "https://user:***@events.example.com/hook",
    ]
    assert redact_url("https://events.example.com/copernica") == "https://events.example.com/copernica"


# --- bad input -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["create", "--url", URL, "--trigger", "clicks"], "unknown trigger 'clicks'"),
        (["create", "--url", URL, "--trigger", "click,unsubscribe"], "unknown trigger 'unsubscribe'"),
        (["create", "--url", URL], "--trigger is required"),
        (["create", "--trigger", "click"], "--url URL is required"),
        (["create", "--url", URL, "--trigger", "open", "--callers", "ms,mailer"], "unknown caller 'mailer'"),
        (["create", "--url", URL, "--trigger", "open", "--callers", ""], "unknown caller ''"),
        (["create", "--url", URL, "--trigger", "open", "--database", "three"], "--database 'three' is not an id"),
        (["create", "--url", URL, "--trigger", "open", "--collection", "-4"], "--collection '-4' is not an id"),
        (["create", "--url", "http://events.example.com/copernica", "--trigger", "open"], "must use https"),
        (["create", "--url", "http://10.0.0.5/copernica?token=s3cret", "--trigger", "open"], "token=***"),
        (["create", "--url", "ftp://events.example.com/x", "--trigger", "open"], "is not an http(s) URL"),
        (["create", "--url", "events.example.com/copernica", "--trigger", "open"], "is not an http(s) URL"),
        (["create", "--url", "https://events.example.com:99999/", "--trigger", "open"], "is not a valid URL"),
        (["delete", "12abc"], "ID '12abc' is not an id"),
        (["delete", "0"], "ID '0' is not an id"),
    ],
)
@pytest.mark.usefixtures("env")
def test_bad_input_is_one_line_exit_2_and_calls_nothing(capsys, fake, argv, message) -> None:
    code, out, err = run(capsys, *argv)
    assert code == 2 and out == ""
    assert err.count("\n") == 1 and err.startswith("ingest: ") and message in err, err
    assert "s3cret" not in err
    assert fake.hits == []  # not even the authenticate endpoint


@pytest.mark.usefixtures("env")
def test_missing_access_token_is_one_line_exit_2(capsys, fake, monkeypatch) -> None:
    monkeypatch.delenv("COPERNICA_ACCESS_TOKEN")
    code, _, err = run(capsys, "list")
    assert code == 2 and err.count("\n") == 1 and "COPERNICA_ACCESS_TOKEN is not set" in err
    assert fake.hits == []


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:8080/copernica",
        "http://localhost/copernica",
        "http://[::1]:8080/copernica",
        "https://events.example.com/copernica",
    ],
)
@pytest.mark.usefixtures("env")
def test_https_or_loopback_http_is_accepted(capsys, fake, url) -> None:
    code, _, err = run(capsys, "create", "--url", url, "--trigger", "delivery")
    assert code == 0, err
    assert [b["handler"] for b in fake.webhook_bodies] == [url]


def test_webhook_from_the_api_accepts_either_id_spelling() -> None:
    a = Webhook.from_api({"ID": "1894", "handler": URL, "trigger": "create", "callers": ["ms", "publisher"]})
    b = Webhook.from_api({"id": 7, "handler": URL, "trigger": "create", "database": "0"})
    assert (a.id, b.id, b.database) == (1894, 7, None)
    assert a.same_as(b)  # no callers means every caller; database 0 means none


def test_a_refused_connection_is_retried_even_for_a_create(fake) -> None:
    """Nothing was sent, so sending again cannot make a second webhook."""
    from ingest.processes import free_port
    from workers.backfill.api import CopernicaClient, RetriesExhausted, RetryPolicy
    from workers.backfill.webhooks import create_webhook

    dead = f"http://127.0.0.1:{free_port()}/v4"
    client = CopernicaClient(fake.token, dead, fake.auth_url, policy=RetryPolicy(retries=2, base_delay=0.01))
    with pytest.raises(RetriesExhausted, match="still failing after 2 retries"):
        create_webhook(client, Webhook(None, "click", URL))
    assert client.retried == 2
