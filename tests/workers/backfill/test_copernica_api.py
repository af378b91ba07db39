"""The REST client against the fake Copernica API: auth, retries, streaming downloads, secrets."""

from __future__ import annotations

import io
import logging
import threading
import time
from collections.abc import Iterator
from datetime import date

import orjson
import pytest

from tests.fake_copernica import FakeCopernica, make_records
from workers.backfill.api import (
    ApiError,
    AuthError,
    CopernicaClient,
    Interrupted,
    RetriesExhausted,
    RetryPolicy,
    jwt_expiry,
    parse_auth_answer,
    parse_retry_after,
)

DAY = date(2026, 11, 25)
FAST = RetryPolicy(retries=4, base_delay=0.01, max_delay=0.05)


@pytest.fixture
def fake() -> Iterator[FakeCopernica]:
    server = FakeCopernica().start()
    server.add_file("cdm-click", DAY, make_records("cdm-click", DAY, 300))
    server.add_file("cdm-impression", DAY, make_records("cdm-impression", DAY, 10))
    yield server
    server.stop()


def client_for(fake: FakeCopernica, policy: RetryPolicy = FAST, **kw) -> CopernicaClient:
    return CopernicaClient(fake.token, fake.api_url, fake.auth_url, policy=policy, timeout=10, **kw)


@pytest.mark.parametrize("shape", ["object", "string", "bare"])
def test_authenticates_once_and_sends_bearer(fake: FakeCopernica, shape: str) -> None:
    fake.auth_shape = shape
    client = client_for(fake)
    assert client.list_logfiles(DAY.isoformat(), "cdm-click") == ["cdm-click.2026-11-25.log"]
    assert client.list_dates() == ["2026-11-25"]
    assert client.authentications == 1
    auth = [h for h in fake.hits if h.path == "/authenticate"]
    assert len(auth) == 1
    api = [h for h in fake.hits if h.path.startswith("/v4/")]
    assert all(h.authorization == f"Bearer {fake.issued[0]}" for h in api)


def test_jwt_lifetime_read_from_exp_else_24h(fake: FakeCopernica) -> None:
    fake.jwt_lifetime = 3600
    client = client_for(fake)
    client.list_dates()
    assert abs(client._jwt_expires - (time.time() + 3600 - 60)) < 5
    fake.jwt_exp = False
    other = client_for(fake)
    other.list_dates()
    assert abs(other._jwt_expires - (time.time() + 86400 - 60)) < 5


def test_expired_cached_jwt_is_renewed_before_use(fake: FakeCopernica) -> None:
    now = [time.time()]
    client = client_for(fake, clock=lambda: now[0])
    client.list_dates()
    now[0] += 86400  # a day later: the cached JWT has expired
    client.list_dates()
    assert client.authentications == 2


def test_401_on_expired_token_renews_once(fake: FakeCopernica) -> None:
    client = client_for(fake)
    client.list_dates()
    fake.expire_tokens()  # Copernica no longer accepts the JWT we cached
    assert client.list_logfiles(DAY.isoformat()) == ["cdm-click.2026-11-25.log", "cdm-impression.2026-11-25.log"]
    assert client.authentications == 2


def test_401_twice_is_an_auth_error(fake: FakeCopernica) -> None:
    client = client_for(fake)
    fake.fail("/v4/logfiles", 401, 401)
    with pytest.raises(AuthError):
        client.list_dates()


def test_refused_access_token_is_one_clear_error_without_the_token(fake: FakeCopernica) -> None:
    client = CopernicaClient("wrong-" + fake.token, fake.api_url, fake.auth_url, policy=FAST)
    with pytest.raises(AuthError) as info:
        client.list_dates()
    assert "refused" in str(info.value)
    assert fake.token not in str(info.value)


def test_429_honours_retry_after(fake: FakeCopernica) -> None:
    client = client_for(fake)
    client.list_dates()
    fake.fail("/v4/logfiles", (429, 1))
    client.list_dates()
    listing = [h for h in fake.hits if h.path == "/v4/logfiles"]
    assert listing[-1].at - listing[-2].at >= 0.95
    assert client.retried == 1


def test_503_twice_then_ok(fake: FakeCopernica) -> None:
    client = client_for(fake)
    fake.fail("/v4/logfile/cdm-click", 503, 503)
    out = io.BytesIO()
    size = client.download("cdm-click.2026-11-25.log", "json", out)
    assert size == len(out.getvalue()) > 0
    assert len(orjson.loads(out.getvalue())) == 300
    assert client.retried == 2


def test_gives_up_after_the_retry_limit(fake: FakeCopernica) -> None:
    client = client_for(fake, policy=RetryPolicy(retries=2, base_delay=0.01))
    fake.fail("/v4/logfile/cdm-click", 503, 502, 504, 503)
    with pytest.raises(RetriesExhausted) as info:
        client.download("cdm-click.2026-11-25.log", "json", io.BytesIO())
    assert "after 2 retries" in str(info.value)
    assert len(fake.downloads()) == 3


def test_other_errors_are_not_retried(fake: FakeCopernica) -> None:
    client = client_for(fake)
    with pytest.raises(ApiError) as info:
        client.download("cdm-nothing.2026-11-25.log", "json", io.BytesIO())
    assert info.value.status == 404
    assert len(fake.downloads()) == 1


@pytest.mark.parametrize("drop", ["drop", "drop-chunked"])
def test_connection_dropped_mid_file_restarts_the_download(fake: FakeCopernica, drop: str) -> None:
    client = client_for(fake)
    fake.fail("/v4/logfile/cdm-click", drop)
    out = io.BytesIO()
    client.download("cdm-click.2026-11-25.log", "csv", out)
    expected = fake.render(fake.files["cdm-click.2026-11-25.log"], "csv")
    assert out.getvalue() == expected  # whole, and not the half first try in front of it
    assert client.retried == 1


def test_download_passes_from(fake: FakeCopernica) -> None:
    client = client_for(fake)
    records = fake.files["cdm-click.2026-11-25.log"].records
    out = io.BytesIO()
    client.download("cdm-click.2026-11-25.log", "json", out, since=records[-11]["_unix"])
    assert len(orjson.loads(out.getvalue())) == 10
    assert fake.downloads()[-1].query == {"from": str(records[-11]["_unix"])}


def test_paged_listing_is_followed(fake: FakeCopernica) -> None:
    fake.paged = True
    for n in range(3):
        fake.add_file("cdm-delivery", date(2026, 11, 26 + n), [])
    client = client_for(fake)
    assert client.list_dates() == ["2026-11-25", "2026-11-26", "2026-11-27", "2026-11-28"]


def test_stop_interrupts_a_back_off(fake: FakeCopernica) -> None:
    stop = threading.Event()
    client = client_for(fake, policy=RetryPolicy(retries=3, base_delay=30), stop=stop)
    client.list_dates()
    fake.fail("/v4/logfiles", 503)
    threading.Timer(0.2, stop.set).start()
    started = time.monotonic()
    with pytest.raises(Interrupted):
        client.list_dates()
    assert time.monotonic() - started < 5


def test_secrets_never_logged_or_in_errors(fake: FakeCopernica, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    client = client_for(fake)
    fake.fail("/v4/logfile/cdm-click", 503, (429, 0), "drop")
    client.download("cdm-click.2026-11-25.log", "json", io.BytesIO())
    fake.expire_tokens()
    client.list_dates()
    fake.fail("/v4/logfile/cdm-click", 503, 503, 503, 503, 503)
    with pytest.raises(RetriesExhausted) as info:
        client.download("cdm-click.2026-11-25.log", "json", io.BytesIO())
    text = caplog.text + str(info.value) + repr(client)
    assert "retry" in caplog.text
    for secret in [fake.token, *fake.issued]:
        assert secret not in text
    assert client.scrub(f"x {fake.token} {fake.issued[-1]} y") == "x *** *** y"


def test_parse_auth_answer_variants() -> None:
    jwt = "aaa.bbb.ccc"
    assert parse_auth_answer(b"aaa.bbb.ccc\n") == (jwt, None)
    assert parse_auth_answer(b'"aaa.bbb.ccc"') == (jwt, None)
    assert parse_auth_answer(b'{"access_token": "aaa.bbb.ccc", "expires_in": 600}') == (jwt, 600.0)
    assert parse_auth_answer(b'{"result": "aaa.bbb.ccc"}') == (jwt, None)
    for bad in (b"", b"{}", b"<html>error page</html>", b"[]"):
        with pytest.raises(AuthError):
            parse_auth_answer(bad)


def test_jwt_expiry_and_retry_after_parsing() -> None:
    assert jwt_expiry("x.eyJleHAiOjE3MDAwMDAwMDB9.y") == 1700000000.0
    assert jwt_expiry("not-a-jwt") is None
    assert jwt_expiry("x.!!!.y") is None
    assert parse_retry_after("7") == 7.0
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT", now=1445412470.0) == 10.0
    assert parse_retry_after("soon") is None
    assert parse_retry_after(None) is None
    policy = RetryPolicy(base_delay=1, max_delay=8)
    assert all(0.5 <= policy.backoff(0, None) <= 1 for _ in range(20))
    assert all(4 <= policy.backoff(5, None) <= 8 for _ in range(20))
    assert policy.backoff(0, 30) >= 30
