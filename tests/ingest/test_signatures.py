"""Copernica's signed requests, piece by piece: headers, digest, signing string, DNS keys, cache.

The signer below builds calls the way copernica.md section 2 (and Copernica's
http-signatures-php) describes, with RSA keys the tests generate.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import time
from email.utils import formatdate

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, padding, rsa
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from multidict import CIMultiDict, CIMultiDictProxy

from ingest.signatures import (
    KeyCache,
    KeyUnavailable,
    SignatureError,
    Verifier,
    account_matches,
    check_digest,
    dns_txt,
    parse_dkim_key,
    parse_signature,
    signing_string,
)
from tests.dns_server import DnsServer, split_txt
from tests.payloads import webhook_json

KEY_ID = "one._domainkey.copernica.com"
SIGNED = "(request-target) Host Date Content-length Content-type X-Copernica-ID Digest X-nonce"
BODY = webhook_json("open", id="b4icbaqjswyrb7tc", time=1795694401)


def new_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def dkim_record(key: rsa.RSAPrivateKey, sep: str = "; ") -> str:
    der = key.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return sep.join(["v=DKIM1", "k=rsa", f"p={base64.b64encode(der).decode()}"])


def sign(
    key: rsa.RSAPrivateKey,
    body: bytes = BODY,
    *,
    target: str = "/copernica",
    method: str = "POST",
    host: str = "events.example.com",
    key_id: str = KEY_ID,
    signed: str = SIGNED,
    date: float | None = None,
    account: str = "account-1234",
    content_type: str = "application/json",
    digest: str | None = None,
) -> dict[str, str]:
    """The headers of a call Copernica signed (the body is sent as is)."""
    headers = {
        "Host": host,
        "Date": formatdate(time.time() if date is None else date, usegmt=True),
        "Content-Length": str(len(body)),
        "Content-Type": content_type,
        "X-Copernica-ID": account,
        "Digest": digest or "SHA-256=" + base64.b64encode(hashlib.sha256(body).digest()).decode(),
        "X-Nonce": "fsd9f2",
    }
    lines = []
    for name in signed.lower().split():
        if name == "(request-target)":
            lines.append(f"(request-target): {method.lower()} {target}")
        else:
            value = next(v for k, v in headers.items() if k.lower() == name)
            lines.append(f"{name}: {value.strip()}")
    signature = key.sign("\n".join(lines).encode(), padding.PKCS1v15(), hashes.SHA256())
    headers["Signature"] = (
        f'keyId="{key_id}",algorithm="rsa-sha256",headers="{signed}",signature="{base64.b64encode(signature).decode()}"'
    )
    return headers


def proxy(headers: dict[str, str]) -> CIMultiDictProxy[str]:
    return CIMultiDictProxy(CIMultiDict(headers))


@pytest.fixture(scope="module")
def key() -> rsa.RSAPrivateKey:
    return new_key()


@pytest.fixture(scope="module")
def other_key() -> rsa.RSAPrivateKey:
    return new_key()


class FakeDns:
    """An in-process resolver: records by name, lookups counted, a clock the test moves."""

    def __init__(self, records: dict[str, list[str]]) -> None:
        self.records = records
        self.lookups = 0
        self.now = 1000.0

    async def resolve(self, name: str) -> list[list[bytes]]:
        self.lookups += 1
        return [split_txt(v) for v in self.records.get(name, [])]

    def cache(self, ttl: float = 3600, **kwargs: float) -> KeyCache:
        return KeyCache(self.resolve, ttl, clock=lambda: self.now, **kwargs)


def verifier(dns: FakeDns, **kwargs: object) -> Verifier:
    return Verifier(dns.cache(), max_age=60, **kwargs)


def verify(v: Verifier, headers: dict[str, str], body: bytes = BODY, target: str = "/copernica") -> None:
    asyncio.run(v.verify("POST", target, proxy(headers), body))


# --- header formats ---------------------------------------------------------------------------


def test_parse_signature_header() -> None:
    params = parse_signature('keyId="a.copernica.com", algorithm="rsa-sha256",headers="date digest",signature="x=="')
    assert params == {
        "keyId": "a.copernica.com",
        "algorithm": "rsa-sha256",
        "headers": "date digest",
        "signature": "x==",
    }


@pytest.mark.parametrize("value", ["", "keyId=a", 'keyId="a" junk', 'keyId="a",,', '"a"', "\xff"])
def test_malformed_signature_header(value: str) -> None:
    with pytest.raises(SignatureError) as caught:
        parse_signature(value)
    assert caught.value.code == "malformed_signature"


@pytest.mark.parametrize(
    "name,algorithm",
    [
        ("SHA-256", hashlib.sha256),
        ("sha-256", hashlib.sha256),
        ("SHA-512", hashlib.sha512),
        ("SHA", hashlib.sha1),
        ("MD5", hashlib.md5),
    ],
)
def test_digest_algorithms_case_insensitive(name: str, algorithm) -> None:
    check_digest(f"{name}={base64.b64encode(algorithm(BODY).digest()).decode()}", BODY)
    with pytest.raises(SignatureError, match="does not match"):
        check_digest(f"{name}={base64.b64encode(algorithm(b'other').digest()).decode()}", BODY)


def test_digest_several_and_unknown() -> None:
    good = "SHA-256=" + base64.b64encode(hashlib.sha256(BODY).digest()).decode()
    check_digest(f"ADLER32=abcd, {good}", BODY)
    with pytest.raises(SignatureError, match="no supported algorithm"):
        check_digest("ADLER32=abcd", BODY)
    with pytest.raises(SignatureError):
        check_digest(f"{good}, SHA=AAAA", BODY)  # every known algorithm must match
    for bad in (None, "", "SHA-256", "SHA-256=***"):
        with pytest.raises(SignatureError):
            check_digest(bad, BODY)


def test_signing_string() -> None:
    headers = CIMultiDict({"Host": "h", "Date": " d ", "X-A": "1"})
    headers.add("X-A", "2")
    text = signing_string(
        ["(request-target)", "host", "date", "x-a"], "POST", "/copernica?a=%20b", CIMultiDictProxy(headers)
    )
    assert text == b"(request-target): post /copernica?a=%20b\nhost: h\ndate: d\nx-a: 1, 2"
    with pytest.raises(SignatureError):
        signing_string(["x-missing"], "POST", "/", CIMultiDictProxy(headers))


# --- keys -------------------------------------------------------------------------------------


def test_dkim_record_multi_string_any_spacing(key: rsa.RSAPrivateKey) -> None:
    want = key.public_key().public_numbers()
    for sep in ("; ", ";", " ; "):
        found = parse_dkim_key([[b"v=spf1 -all"], split_txt(dkim_record(key, sep), 100)])
        assert found.public_numbers() == want


def test_dkim_record_without_usable_key(key: rsa.RSAPrivateKey) -> None:
    ed = (
        ed25519.Ed25519PrivateKey.generate()
        .public_key()
        .public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    for records in (
        [],
        [[b"v=spf1 -all"]],
        [[b"v=DKIM1; k=rsa; p="]],
        [[b"v=DKIM1; p=!!!"]],
        [[b"v=DKIM1; p=" + base64.b64encode(ed)]],
        [[b"v=DKIM2; " + dkim_record(key).encode()[9:]]],
    ):
        with pytest.raises(SignatureError) as caught:
            parse_dkim_key(records)
        assert caught.value.code == "unknown_key"


def test_key_cache_ttl_refetch_limit_and_unknown_keys(key: rsa.RSAPrivateKey) -> None:
    dns = FakeDns({KEY_ID: [dkim_record(key)]})
    cache = dns.cache(ttl=100, refetch_after=30)

    async def scenario() -> None:
        first = await cache.get(KEY_ID)
        assert await cache.get(KEY_ID) is first and dns.lookups == 1
        assert await cache.get(KEY_ID, fresh=True) is first and dns.lookups == 1  # refetched too recently
        dns.now += 31
        await cache.get(KEY_ID, fresh=True)
        assert dns.lookups == 2
        dns.now += 101
        await cache.get(KEY_ID)
        assert dns.lookups == 3  # expired
        for _ in range(3):
            with pytest.raises(SignatureError):
                await cache.get("nope.copernica.com")
        assert dns.lookups == 4  # an unknown keyId is remembered too

    asyncio.run(scenario())


def test_key_cache_shares_lookups_and_bounds_them(key: rsa.RSAPrivateKey) -> None:
    gate = asyncio.Event
    calls: list[str] = []

    async def scenario() -> None:
        release = gate()

        async def slow(name: str) -> list[list[bytes]]:
            calls.append(name)
            await release.wait()
            return [split_txt(dkim_record(key))]

        cache = KeyCache(slow, 3600, max_lookups=2)
        waiting = [asyncio.ensure_future(cache.get(KEY_ID)) for _ in range(5)]
        other = asyncio.ensure_future(cache.get("two.copernica.com"))
        await asyncio.sleep(0)
        with pytest.raises(KeyUnavailable):
            await cache.get("three.copernica.com")
        release.set()
        keys = await asyncio.gather(*waiting, other)
        assert len({id(k) for k in keys[:5]}) == 1
        assert calls == [KEY_ID, "two.copernica.com"]

    asyncio.run(scenario())


def test_dns_txt_from_a_real_server(key: rsa.RSAPrivateKey) -> None:
    with DnsServer() as server:
        server.records[KEY_ID] = ["v=spf1 -all", dkim_record(key)]
        resolve = dns_txt(server.address)
        records = asyncio.run(resolve(KEY_ID))
        assert parse_dkim_key(records).public_numbers() == key.public_key().public_numbers()
        assert asyncio.run(resolve("missing.copernica.com")) == []
        server.silent = True
        with pytest.raises(KeyUnavailable):
            asyncio.run(dns_txt(server.address, timeout=0.3)(KEY_ID))


# --- the verification -------------------------------------------------------------------------


def test_valid_signature(key: rsa.RSAPrivateKey) -> None:
    dns = FakeDns({KEY_ID: [dkim_record(key)]})
    verify(verifier(dns, hosts=("events.example.com",), account="1234"), sign(key))
    verify(verifier(dns), sign(key, target="/copernica?x=1&y=%20"), target="/copernica?x=1&y=%20")
    minimal = "(request-target) host date x-copernica-id digest x-nonce"
    verify(verifier(dns), sign(key, signed=minimal))


def _refused(v: Verifier, headers: dict[str, str], body: bytes = BODY, target: str = "/copernica") -> SignatureError:
    with pytest.raises(SignatureError) as caught:
        verify(v, headers, body, target)
    return caught.value


def test_tampering_is_refused(key: rsa.RSAPrivateKey, other_key: rsa.RSAPrivateKey) -> None:
    dns = FakeDns({KEY_ID: [dkim_record(key)], "evil.copernica.com.example.org": [dkim_record(other_key)]})
    v = verifier(dns)
    assert _refused(v, sign(key), body=BODY + b" ").code == "bad_digest"
    assert _refused(v, {**sign(key), "X-Copernica-ID": "account-9999"}).code == "bad_signature"
    assert _refused(v, sign(key), target="/copernica?x=1").code == "bad_signature"
    assert _refused(v, sign(key, date=time.time() - 120)).code == "stale_date"
    assert _refused(v, sign(key, date=time.time() + 120)).code == "stale_date"
    assert _refused(v, {**sign(key), "Date": "yesterday"}).code == "bad_date"
    assert _refused(v, sign(key, key_id="evil.copernica.com.example.org")).code == "foreign_key"
    assert _refused(v, sign(key, key_id="copernica.com")).code == "foreign_key"
    assert _refused(v, sign(other_key)).code == "bad_signature"
    assert _refused(v, sign(key, key_id="two.copernica.com")).code == "unknown_key"
    assert _refused(v, sign(key, signed="(request-target) host date digest x-nonce")).code == "unsigned_headers"
    assert _refused(v, sign(key, signed="(request-target) host date x-copernica-id digest")).code == "unsigned_headers"
    assert (
        _refused(v, {**sign(key), "Signature": sign(key)["Signature"].replace("rsa-sha256", "hmac-sha256")}).code
        == "bad_algorithm"
    )


def test_host_and_account_checks(key: rsa.RSAPrivateKey) -> None:
    dns = FakeDns({KEY_ID: [dkim_record(key)]})
    hosts = verifier(dns, hosts=("events.example.com",))
    verify(hosts, sign(key, host="Events.Example.com:443"))
    assert _refused(hosts, sign(key, host="other.example.com")).status == 403
    for sent in ("account-1234", "account_1234", "Account_1234", "ACCOUNT-1234"):
        assert account_matches(sent, "account-1234") and account_matches(sent, "1234")
    assert account_matches("environment_77", "Environment-77")
    assert not account_matches("account-12345", "1234") and not account_matches("environment-1234", "1234")
    assert _refused(verifier(dns, account="account-1"), sign(key)).code == "wrong_account"


def test_rotated_key_verifies_after_one_refetch(key: rsa.RSAPrivateKey, other_key: rsa.RSAPrivateKey) -> None:
    dns = FakeDns({KEY_ID: [dkim_record(key)]})
    v = verifier(dns)
    verify(v, sign(key))
    dns.records[KEY_ID] = [dkim_record(other_key)]  # rotated; the cached key is stale
    dns.now += 31
    verify(v, sign(other_key))
    assert dns.lookups == 2
    assert _refused(v, sign(key)).code == "bad_signature"  # the old key is gone, no refetch storm
    assert dns.lookups == 2


_signature_values = st.one_of(
    st.text(max_size=300),
    st.builds(
        lambda k, h, sig: f'keyId="{k}",algorithm="rsa-sha256",headers="{h}",signature="{sig}"',
        st.sampled_from([KEY_ID, "x.copernica.com", "copernica.com", ""]) | st.text(max_size=30),
        st.sampled_from([SIGNED, "(request-target) host date x-copernica-id digest"]) | st.text(max_size=60),
        st.text(max_size=60),
    ),
)


@settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck))
@given(
    signature=_signature_values,
    digest=st.text(max_size=100),
    date=st.text(max_size=40),
    host=st.text(max_size=20),
    body=st.binary(max_size=100),
    target=st.text(max_size=40),
)
def test_any_header_values_end_in_signature_error(
    signature: str, digest: str, date: str, host: str, body: bytes, target: str
) -> None:
    """Whatever a caller sends, verification refuses with SignatureError and nothing else escapes."""
    dns = FakeDns({KEY_ID: [dkim_record(_FUZZ_KEY)]})
    headers = {"Signature": signature, "Digest": digest, "Date": date, "Host": host, "X-Copernica-ID": "a"}
    with pytest.raises(SignatureError):
        verify(verifier(dns, hosts=("h",), account="1"), headers, body, target)


_FUZZ_KEY = new_key()
