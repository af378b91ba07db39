"""Copernica's signed requests (../shared/copernica.md section 2): verified before the 200.

A signed call carries `Digest` (RFC 3230: a hash of the body), `Signature` (draft-cavage HTTP
Signatures, rsa-sha256 over a signing string built from the named headers) and the public key
lives in a DKIM-style DNS TXT record at the signature's `keyId`. This module knows those
formats; `ingest.auth` decides what a refusal answers.

Cost on the hot path once the key is cached: one body hash and one RSA verification, no DNS.
Keys are fetched with dnspython's async resolver, cached for INGEST_SIGNATURE_KEY_TTL and
refetched early, once, when a signature does not verify with the cached key (keys rotate
monthly). Refetches are rate-limited per keyId and lookups in flight are bounded, so forged
calls cannot turn the receiver into a DNS flood.

Replays: no nonce store is kept. A replayed call must still be within the Date window
(INGEST_SIGNATURE_MAX_AGE) and, when queued, stores nothing new: the event key makes a
second copy of an event a no-op.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import logging
import re
import time
from collections.abc import Awaitable, Callable, Mapping
from email.utils import parsedate_to_datetime
from typing import Any

from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from multidict import CIMultiDictProxy

log = logging.getLogger("ingest.signatures")

# RFC 3230 digest algorithms Copernica's library uses; names compared case-insensitively.
# adler32 (also in Copernica's library) is a checksum, not a hash: a Digest using it alone is refused.
DIGESTS: dict[str, Callable[[bytes], Any]] = {
    "sha-256": hashlib.sha256,
    "sha-512": hashlib.sha512,
    "sha": hashlib.sha1,
    "md5": hashlib.md5,
}

# Headers every signature must cover (Copernica's own verifier demands the same). X-Nonce must
# be covered too when the call carries one: an unsigned nonce would be a header anyone can add.
REQUIRED_SIGNED = ("(request-target)", "host", "date", "x-copernica-id", "digest")
KEY_DOMAIN = ".copernica.com"


class SignatureError(Exception):
    """The call's signature does not hold. `code` is a short fixed label (metrics); `reason` is
    the text for the caller and the log: fixed phrases, never a value the caller sent."""

    def __init__(self, code: str, reason: str, status: int = 401) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason
        self.status = status


class KeyUnavailable(Exception):
    """The signing key could not be fetched (DNS down or busy): the call cannot be judged now."""


# --- header formats ---------------------------------------------------------------------------

_PARAM = re.compile(r'\s*([A-Za-z]+)\s*=\s*"([^"]*)"\s*(?:,|$)')


def parse_signature(value: str) -> dict[str, str]:
    """The parameters of a draft-cavage `Signature` header: `keyId="..",headers="..",...`."""
    params: dict[str, str] = {}
    pos = 0
    while pos < len(value):
        match = _PARAM.match(value, pos)
        if match is None or match.end() == pos:
            raise SignatureError("malformed_signature", "Signature header is malformed")
        params[match.group(1)] = match.group(2)
        pos = match.end()
    if not params:
        raise SignatureError("malformed_signature", "Signature header is malformed")
    return params


def check_digest(header: str | None, body: bytes) -> None:
    """Every known algorithm in the `Digest` header must match the body; at least one must be known."""
    if not header:
        raise SignatureError("no_digest", "Digest header missing")
    known = False
    for part in header.split(","):
        name, sep, value = part.strip().partition("=")
        if not sep:
            raise SignatureError("malformed_digest", "Digest header is malformed")
        hasher = DIGESTS.get(name.strip().lower())
        if hasher is None:
            continue
        try:
            claimed = base64.b64decode(value.strip(), validate=True)
        except (binascii.Error, ValueError):
            raise SignatureError("malformed_digest", "Digest header is malformed") from None
        if claimed != hasher(body).digest():
            raise SignatureError("bad_digest", "Digest does not match the body")
        known = True
    if not known:
        raise SignatureError("bad_digest", "Digest uses no supported algorithm (sha-256, sha-512, sha, md5)")


def signing_string(names: list[str], method: str, target: str, headers: CIMultiDictProxy[str]) -> bytes:
    """The draft-cavage signing string: `name: value` per signed header, in order, joined by \\n.

    `target` is the raw request target (path and query, as sent). Header values are the bytes
    sent (aiohttp decodes them with surrogateescape, so encoding reverses it exactly); several
    values of one header are joined with ", ".
    """
    lines = []
    for name in names:
        if name == "(request-target)":
            lines.append(f"(request-target): {method.lower()} {target}")
            continue
        values = headers.getall(name, ())
        if not values:
            raise SignatureError("bad_signature", "a signed header is missing")
        lines.append(f"{name}: {', '.join(v.strip() for v in values)}")
    return "\n".join(lines).encode("utf-8", "surrogateescape")


def parse_dkim_key(records: list[list[bytes]]) -> rsa.RSAPublicKey:
    """The RSA key in a DKIM TXT answer: each record's strings joined, `;`-separated tags, the
    record whose `v` is DKIM1, `p` the base64 DER SubjectPublicKeyInfo."""
    for strings in records:
        text = b"".join(strings).decode("ascii", "replace")
        tags: dict[str, str] = {}
        for part in text.split(";"):
            name, sep, value = part.partition("=")
            if sep:
                tags[name.strip().lower()] = "".join(value.split())  # base64 may be folded
        if tags.get("v", "").upper() != "DKIM1" or tags.get("k", "rsa").lower() != "rsa" or not tags.get("p"):
            continue
        try:
            key = serialization.load_der_public_key(base64.b64decode(tags["p"], validate=True))
        except (binascii.Error, ValueError, UnsupportedAlgorithm):
            continue
        if isinstance(key, rsa.RSAPublicKey):
            return key
    raise SignatureError("unknown_key", "no DKIM1 RSA key published at keyId")


# --- keys from DNS ----------------------------------------------------------------------------

Resolve = Callable[[str], Awaitable[list[list[bytes]]]]


def dns_txt(server: str | None, timeout: float = 2.0) -> Resolve:
    """A TXT lookup through dnspython's async resolver, at `server` ("host:port") or the system's."""
    import dns.asyncresolver
    import dns.exception
    import dns.resolver

    resolver: dns.asyncresolver.Resolver | None = None

    async def resolve(name: str) -> list[list[bytes]]:
        nonlocal resolver
        try:
            if resolver is None:
                resolver = dns.asyncresolver.Resolver(configure=server is None)
                if server is not None:
                    host, _, port = server.rpartition(":")
                    resolver.nameservers = [host.strip("[]")]
                    resolver.port = int(port)
            answer = await resolver.resolve(name, "TXT", lifetime=timeout, search=False)
        except (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer):
            return []
        except dns.exception.DNSException as exc:
            raise KeyUnavailable(f"DNS lookup failed: {type(exc).__name__}") from None
        return [list(record.strings) for record in answer]

    return resolve


class KeyCache:
    """Public keys by keyId, fetched on first use and kept `ttl` seconds.

    `get(key_id, fresh=True)` refetches (after a failed verification) unless the key was fetched
    less than `refetch_after` seconds ago. Lookups of one keyId are shared; at most
    `max_lookups` run at once (past that KeyUnavailable, at once); unknown keyIds are
    remembered for `refetch_after` seconds; at most `max_keys` keys are kept.
    """

    def __init__(
        self,
        resolve: Resolve,
        ttl: float,
        *,
        refetch_after: float = 30.0,
        max_lookups: int = 8,
        max_keys: int = 64,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._resolve = resolve
        self._ttl = ttl
        self._refetch_after = refetch_after
        self._max_lookups = max_lookups
        self._max_keys = max_keys
        self._clock = clock
        self._keys: dict[str, tuple[rsa.RSAPublicKey | SignatureError, float]] = {}
        self._lookups: dict[str, asyncio.Future[rsa.RSAPublicKey | SignatureError]] = {}
        self.fetches = 0  # DNS lookups started (tests and metrics)

    async def get(self, key_id: str, *, fresh: bool = False) -> rsa.RSAPublicKey:
        now = self._clock()
        cached = self._keys.get(key_id)
        if cached is not None:
            found, fetched_at = cached
            age = now - fetched_at
            retry = age >= self._refetch_after and (fresh or isinstance(found, SignatureError))
            if age < self._ttl and not retry:
                return _unwrap(found)
        found = await self._fetch(key_id)
        return _unwrap(found)

    async def _fetch(self, key_id: str) -> rsa.RSAPublicKey | SignatureError:
        running = self._lookups.get(key_id)
        if running is not None:
            return await asyncio.shield(running)
        if len(self._lookups) >= self._max_lookups:
            raise KeyUnavailable("too many signing key lookups at once")
        future: asyncio.Future[rsa.RSAPublicKey | SignatureError] = asyncio.get_running_loop().create_future()
        self._lookups[key_id] = future
        self.fetches += 1
        try:
            try:
                found: rsa.RSAPublicKey | SignatureError = parse_dkim_key(await self._resolve(key_id))
            except SignatureError as exc:
                found = exc
            if len(self._keys) >= self._max_keys and key_id not in self._keys:
                self._keys.pop(next(iter(self._keys)))  # the oldest entry
            self._keys[key_id] = (found, self._clock())
            future.set_result(found)
            return found
        except BaseException as exc:
            future.set_exception(exc)
            future.exception()  # retrieved: no "never retrieved" warning when nobody else waits
            raise
        finally:
            del self._lookups[key_id]


def _unwrap(found: rsa.RSAPublicKey | SignatureError) -> rsa.RSAPublicKey:
    if isinstance(found, SignatureError):
        raise found
    return found


# --- the verification -------------------------------------------------------------------------


def account_matches(sent: str, expected: str) -> bool:
    """X-Copernica-ID varies by source: account-1234, account_1234, Account_1234; a bare number
    in the setting means the account of that number."""

    def canonical(value: str) -> str:
        return value.strip().lower().replace("_", "-")

    want = canonical(expected)
    if want.isdigit():
        want = f"account-{want}"
    return canonical(sent) == want


def host_matches(sent: str, hosts: tuple[str, ...]) -> bool:
    host = sent.strip().lower().rstrip(".")
    bare = host.rsplit(":", 1)[0] if not host.endswith("]") else host
    return host in hosts or bare.rstrip(".") in hosts


class Verifier:
    """Checks one signed call, cheapest checks first; raises SignatureError or KeyUnavailable."""

    def __init__(
        self,
        keys: KeyCache,
        *,
        max_age: float,
        hosts: tuple[str, ...] | None = None,
        account: str | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.keys = keys
        self._max_age = max_age
        self._hosts = hosts
        self._account = account
        self._clock = clock

    async def verify(self, method: str, target: str, headers: CIMultiDictProxy[str], body: bytes) -> None:
        params = parse_signature(headers.get("Signature", ""))
        key_id = params.get("keyId", "").strip().lower().rstrip(".")
        if not key_id.endswith(KEY_DOMAIN) or len(key_id) > 253:
            raise SignatureError("foreign_key", "keyId must be a host under copernica.com")
        if params.get("algorithm", "rsa-sha256").lower() != "rsa-sha256":
            raise SignatureError("bad_algorithm", "only rsa-sha256 signatures are accepted")
        names = params.get("headers", "").lower().split()
        missing = [n for n in REQUIRED_SIGNED if n not in names]
        if missing or ("X-Nonce" in headers and "x-nonce" not in names):
            raise SignatureError(
                "unsigned_headers", "the signature must cover (request-target) host date x-copernica-id digest x-nonce"
            )
        self._check_date(headers.get("Date", ""))
        self._check_origin(headers)
        check_digest(headers.get("Digest"), body)
        try:
            signature = base64.b64decode(params.get("signature", ""), validate=True)
        except (binascii.Error, ValueError):
            raise SignatureError("malformed_signature", "Signature header is malformed") from None
        signed = signing_string(names, method, target, headers)
        key = await self.keys.get(key_id)
        if _valid(key, signature, signed):
            return
        fresh = await self.keys.get(key_id, fresh=True)  # the key may have rotated
        if fresh is key or not _valid(fresh, signature, signed):
            raise SignatureError("bad_signature", "signature does not verify")

    def _check_date(self, value: str) -> None:
        try:
            sent = parsedate_to_datetime(value).timestamp()
        except (TypeError, ValueError, IndexError, OverflowError):
            raise SignatureError("bad_date", "Date header missing or malformed") from None
        if abs(self._clock() - sent) > self._max_age:
            raise SignatureError("stale_date", f"Date is more than {self._max_age:g} s from now")

    def _check_origin(self, headers: Mapping[str, str]) -> None:
        if self._hosts is not None and not host_matches(headers.get("Host", ""), self._hosts):
            raise SignatureError("wrong_host", "the call is addressed to another host", status=403)
        if self._account is not None and not account_matches(headers.get("X-Copernica-ID", ""), self._account):
            raise SignatureError("wrong_account", "X-Copernica-ID is not this receiver's account", status=403)


def _valid(key: rsa.RSAPublicKey, signature: bytes, signed: bytes) -> bool:
    try:
        key.verify(signature, signed, padding.PKCS1v15(), hashes.SHA256())
    except InvalidSignature:
        return False
    return True
