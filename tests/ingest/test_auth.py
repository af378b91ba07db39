"""Who may post, through the real receiver and a real Redis: signatures (keys served by a DNS
server on 127.0.0.1), tokens, networks, stacking. A refused call is never queued."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from urllib.parse import unquote_plus

import pytest
import redis
from aiohttp.test_utils import TestClient
from cryptography.hazmat.primitives.asymmetric import rsa
from hypothesis import given
from hypothesis import strategies as st

from common.settings import Settings, SettingsError
from ingest.auth import REFUSALS, Authenticator, strip_token
from ingest.signatures import KeyCache, dns_txt
from tests.clients import receiver_client
from tests.dns_server import DnsServer
from tests.ingest.test_app import queued_calls
from tests.ingest.test_signatures import BODY, KEY_ID, dkim_record, new_key, sign

TOKEN = "t0ken-0123456789abcdef"
NEXT_TOKEN = "next-token-fedcba9876543210"
JSON = "application/json"


@pytest.fixture(scope="module")
def key() -> rsa.RSAPrivateKey:
    return new_key()


@pytest.fixture
def dns(key: rsa.RSAPrivateKey):
    with DnsServer() as server:
        server.records[KEY_ID] = ["v=spf1 -all", dkim_record(key)]
        yield server


@pytest.fixture
def make_client(settings: Settings, dns: DnsServer):
    """`async with make_client(INGEST_AUTH=..., ...) as client` - the app with these settings."""

    @asynccontextmanager
    async def make(keys: KeyCache | None = None, **env: str) -> AsyncIterator[TestClient]:
        values = {
            **settings.to_env(),
            "INGEST_AUTH": "signature,token",
            "INGEST_TOKENS": f"{TOKEN},{NEXT_TOKEN}",
            "INGEST_DNS_SERVER": dns.address,
            **env,
        }
        conf = Settings.from_env(values, dotenv=False)
        auth = Authenticator(conf, keys=keys) if keys is not None else None
        async with receiver_client(conf, auth=auth) as client:  # as `ingest serve` runs it: no access log
            yield client

    return make


async def post(client: TestClient, path: str = "/copernica", body: bytes = BODY, headers: dict | None = None):
    return await client.post(path, data=body, headers={"Content-Type": JSON, **(headers or {})})


# --- signatures -------------------------------------------------------------------------------


async def test_signed_call_is_queued_and_key_cached(make_client, key, dns: DnsServer, redis_conn: redis.Redis) -> None:
    async with make_client(INGEST_PUBLIC_HOSTS="events.example.com", COPERNICA_ACCOUNT_ID="1234") as client:
        for _ in range(3):
            resp = await post(client, headers=sign(key))
            assert resp.status == 200, await resp.text()
    assert dns.queries[KEY_ID] == 1  # a cached key costs no DNS query
    calls = queued_calls(redis_conn)
    assert [c["body"] for c in calls] == [BODY] * 3
    assert calls[0]["headers"]["signature"].startswith('keyId="one._domainkey.copernica.com"')
    assert calls[0]["target"] == "/copernica"


TAMPERED = {
    "body": lambda key: (BODY.replace(b"open", b"click"[:4]), sign(key)),  # same length: Content-Length is signed
    "signed header": lambda key: (BODY, {**sign(key), "X-Copernica-ID": "account-666"}),
    "old date": lambda key: (BODY, sign(key, date=1_700_000_000)),
    "keyId domain": lambda key: (BODY, sign(key, key_id="one._domainkey.copernica.com.evil.example")),
    "wrong key": lambda _key: (BODY, sign(new_key())),
    "unknown keyId": lambda key: (BODY, sign(key, key_id="two._domainkey.copernica.com")),
    "digest": lambda key: (BODY, sign(key, digest="SHA-256=" + "A" * 43 + "=")),
}


@pytest.mark.parametrize("what", list(TAMPERED))
async def test_tampered_call_is_refused_and_not_queued(make_client, key, what: str, redis_conn: redis.Redis) -> None:
    body, headers = TAMPERED[what](key)
    before = sum(REFUSALS.values())
    async with make_client() as client:
        resp = await post(client, body=body, headers=headers)
        assert resp.status == 401
        answer = await resp.json()
        assert answer["status"] == "error" and answer["reason"]
    assert queued_calls(redis_conn) == []
    assert sum(REFUSALS.values()) == before + 1


async def test_wrong_host_or_account_is_403(make_client, key, redis_conn: redis.Redis) -> None:
    async with make_client(INGEST_PUBLIC_HOSTS="events.example.com", COPERNICA_ACCOUNT_ID="account_1234") as client:
        assert (await post(client, headers=sign(key, host="other.example.com"))).status == 403
        assert (await post(client, headers=sign(key, account="account-999"))).status == 403
        assert (await post(client, headers=sign(key, account="Account_1234"))).status == 200
    assert len(queued_calls(redis_conn)) == 1


async def test_rotated_key_verifies_after_one_refetch(make_client, key, dns: DnsServer, redis_conn) -> None:
    clock = [0.0]
    keys = KeyCache(dns_txt(dns.address), 3600, clock=lambda: clock[0])
    async with make_client(keys=keys) as client:
        assert (await post(client, headers=sign(key))).status == 200
        rotated = new_key()
        dns.records[KEY_ID] = [dkim_record(rotated)]
        clock[0] += 120  # well within the TTL: the cached key is stale, not expired
        assert (await post(client, headers=sign(rotated))).status == 200
        assert dns.queries[KEY_ID] == 2
        assert (await post(client, headers=sign(key))).status == 401  # old key, refused without a refetch
        assert dns.queries[KEY_ID] == 2
    assert len(queued_calls(redis_conn)) == 2


async def test_dns_down_is_503_not_queued(make_client, key, dns: DnsServer, redis_conn) -> None:
    dns.silent = True
    keys = KeyCache(dns_txt(dns.address, timeout=0.3), 3600)
    async with make_client(keys=keys) as client:
        resp = await post(client, headers=sign(key))
        assert resp.status == 503 and resp.headers["Retry-After"]
    assert queued_calls(redis_conn) == []


# --- tokens -----------------------------------------------------------------------------------


async def test_token_in_query_or_path_is_stripped(make_client, redis_conn: redis.Redis, caplog) -> None:
    caplog.set_level(logging.DEBUG)
    async with make_client(INGEST_AUTH="token") as client:
        assert (await post(client, f"/copernica?token={TOKEN}")).status == 200
        assert (await post(client, f"/copernica?a=1&token={NEXT_TOKEN}&b=%20x")).status == 200
        assert (await post(client, f"/copernica/{TOKEN}")).status == 200
        assert (await post(client, f"/copernica/{NEXT_TOKEN}?c=3")).status == 200
        for wrong in (
            f"/copernica?token={TOKEN}x",
            "/copernica/nope-nope-nope-nope",
            "/copernica?token=",
            "/copernica",
        ):
            resp = await post(client, wrong)
            assert resp.status == 401, wrong
            assert TOKEN not in await resp.text()
        assert (await client.get(f"/copernica/{TOKEN}")).status == 200
        assert (await client.delete(f"/copernica/{TOKEN}")).status == 405
    targets = [c["target"] for c in queued_calls(redis_conn)]
    assert targets == ["/copernica", "/copernica?a=1&b=%20x", "/copernica", "/copernica?c=3"]
    assert "refused" in caplog.text
    assert TOKEN not in caplog.text and NEXT_TOKEN not in caplog.text


def test_tokens_are_secret_in_settings() -> None:
    conf = Settings.from_env({"INGEST_TOKENS": TOKEN}, dotenv=False)
    assert TOKEN not in repr(conf)
    with pytest.raises(SettingsError) as caught:
        Settings.from_env({"INGEST_TOKENS": f"{TOKEN},short!"}, dotenv=False)
    assert TOKEN not in str(caught.value) and "INGEST_TOKENS" in str(caught.value)
    with pytest.raises(SettingsError, match="INGEST_AUTH"):
        Settings.from_env({"INGEST_AUTH": "signature,password"}, dotenv=False)
    with pytest.raises(SettingsError, match="INGEST_TOKENS"):
        Authenticator(Settings.from_env({"INGEST_AUTH": "token"}, dotenv=False))


@pytest.mark.parametrize(
    "target,kept,found",
    [
        ("/copernica", "/copernica", []),
        ("/copernica?x=1", "/copernica?x=1", []),
        ("/copernica?token=a%2Bb", "/copernica", ["a+b"]),
        ("/copernica?tok%65n=abc&z", "/copernica?z", ["abc"]),
        ("/copernica/abc?token=d&e=f", "/copernica?e=f", ["abc", "d"]),
    ],
)
def test_strip_token(target: str, kept: str, found: list[str]) -> None:
    assert strip_token(target, target.startswith("/copernica/")) == (kept, found)


@given(st.text(max_size=80), st.booleans())
def test_strip_token_never_fails(target: str, path_token: bool) -> None:
    """Whatever the target, no `token` parameter is left in what is kept."""
    raw = "/copernica" + ("/x" if path_token else "") + "?" + target
    kept, found = strip_token(raw, path_token)
    assert kept.startswith("/copernica")
    _path, _sep, query = kept.partition("?")
    assert all(unquote_plus(part.partition("=")[0]) != "token" for part in query.split("&"))
    assert ("x" in found) == path_token


# --- none, stacking, networks -----------------------------------------------------------------


async def test_none_accepts_anyone(make_client, redis_conn) -> None:
    async with make_client(INGEST_AUTH="none") as client:
        assert (await post(client)).status == 200
        assert (await post(client, f"/copernica/{TOKEN}")).status == 200
    assert [c["target"] for c in queued_calls(redis_conn)] == ["/copernica", "/copernica"]


async def test_methods_stack(make_client, key, redis_conn) -> None:
    async with make_client() as client:  # signature,token
        assert (await post(client, headers=sign(key))).status == 200
        assert (await post(client, f"/copernica?token={TOKEN}")).status == 200
        resp = await post(client)
        assert resp.status == 401
        assert (await resp.json())["reason"] == "credentials required (signature or token)"
        # a wrong token does not spoil a good signature, nor the reverse
        assert (
            await post(client, "/copernica?token=wrong", headers=sign(key, target="/copernica?token=wrong"))
        ).status == 200
        forged = BODY.replace(b"open", b"opex")
        assert (await post(client, f"/copernica?token={TOKEN}", body=forged, headers=sign(key))).status == 200
    async with make_client(INGEST_AUTH="token") as client:
        assert (await post(client, headers=sign(key))).status == 401
    async with make_client(INGEST_AUTH="signature") as client:
        assert (await post(client, f"/copernica?token={TOKEN}")).status == 401
    assert len(queued_calls(redis_conn)) == 4


async def test_allowed_networks_and_trusted_proxies(make_client, redis_conn) -> None:
    async with make_client(INGEST_AUTH="none", INGEST_ALLOWED_NETWORKS="10.0.0.0/8") as client:
        resp = await post(client, headers={"X-Forwarded-For": "10.1.2.3"})  # not a trusted proxy: ignored
        assert resp.status == 403
    async with make_client(INGEST_AUTH="none", INGEST_ALLOWED_NETWORKS="127.0.0.0/8,::1") as client:
        assert (await post(client)).status == 200
    async with make_client(
        INGEST_AUTH="none",
        INGEST_ALLOWED_NETWORKS="145.255.128.0/21",
        INGEST_TRUSTED_PROXIES="127.0.0.1,::1,192.168.0.0/16",
    ) as client:
        assert (await post(client, headers={"X-Forwarded-For": "145.255.130.7"})).status == 200
        assert (await post(client, headers={"X-Forwarded-For": "145.255.130.7, 192.168.1.1"})).status == 200
        # the caller writes its own X-Forwarded-For: only the hop our proxy added counts
        assert (await post(client, headers={"X-Forwarded-For": "145.255.130.7, 203.0.113.9"})).status == 403
        assert (await post(client, headers={"X-Forwarded-For": "garbage"})).status == 403
        assert (await post(client)).status == 403  # the proxy itself is not a caller
    assert len(queued_calls(redis_conn)) == 3
