"""Who may post: INGEST_AUTH's methods, stacked (a call any listed method accepts is taken).

- `signature`: Copernica's signed requests (ingest.signatures), verified before the 200.
- `token`: a shared secret in the URL, `/copernica?token=…` or `/copernica/<token>`, compared
  in constant time with every INGEST_TOKENS entry (several are valid during a rotation).
- `none`: every call.

INGEST_ALLOWED_NETWORKS, when set, is checked first and whatever the method (403 outside).

A refused call gets 401 (no or bad credentials) or 403 (credentials fine, caller not allowed),
is counted in REFUSALS by a short fixed code, is logged without secrets (at most once per code
every LOG_EVERY seconds, with the count since, so a flood of forged calls cannot flood the
log) and is never queued. A token is never stored: the request target kept in the envelope
is the one the caller sent with the token taken out.
"""

from __future__ import annotations

import hmac
import ipaddress
import logging
import time
from collections import Counter
from collections.abc import Coroutine
from typing import Any
from urllib.parse import unquote_plus

from aiohttp import web

from common.settings import Settings, SettingsError
from ingest.signatures import KeyCache, KeyUnavailable, SignatureError, Verifier, dns_txt

log = logging.getLogger("ingest.auth")

# Refused calls by reason code (bounded set of labels: the codes below and SignatureError's).
REFUSALS: Counter[str] = Counter()
LOG_EVERY = 10.0

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


class Refused(Exception):
    """The call may not post. `code` labels REFUSALS; `reason` is the text the caller sees."""

    def __init__(self, status: int, code: str, reason: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(reason)
        self.status = status
        self.code = code
        self.reason = reason
        self.headers = headers or {}


def strip_token(raw_target: str, path_token: bool) -> tuple[str, list[str]]:
    """The request target without its token, and the tokens it carried (path or `token=` query).

    Works on the raw target, so everything else in it is kept byte for byte.
    """
    path, sep, query = raw_target.partition("?")
    tokens: list[str] = []
    if path_token:
        head, _, tail = path.rstrip("/").rpartition("/")
        tokens.append(unquote_plus(tail))
        path = head or "/"
    if sep and ("token" in query.lower() or "%" in query):
        kept = []
        for part in query.split("&"):
            name, _, value = part.partition("=")
            if unquote_plus(name) == "token":
                tokens.append(unquote_plus(value))
            else:
                kept.append(part)
        query = "&".join(kept)
        sep = "?" if query else ""
    return f"{path}{sep}{query}", tokens


class Authenticator:
    """INGEST_AUTH, INGEST_ALLOWED_NETWORKS and friends, built once per app from the settings."""

    def __init__(self, settings: Settings, *, keys: KeyCache | None = None) -> None:
        methods = set(settings.auth)
        self.accept_all = "none" in methods
        self._tokens = [t.encode() for t in settings.tokens or ()]
        self._token = "token" in methods
        if self._token and not self._tokens and methods == {"token"}:
            raise SettingsError("INGEST_AUTH=token needs INGEST_TOKENS")
        self.verifier: Verifier | None = None
        if "signature" in methods:
            keys = keys or KeyCache(dns_txt(settings.dns_server), settings.signature_key_ttl)
            self.verifier = Verifier(
                keys,
                max_age=settings.signature_max_age,
                hosts=settings.public_hosts,
                account=settings.copernica_account_id,
            )
        self._allowed = _networks(settings.allowed_networks)
        self._proxies = _networks(settings.trusted_proxies) or ()
        self._last_logged: dict[str, tuple[float, int]] = {}
        self._retry_after = str(settings.retry_after)
        self._describe(settings)

    def _describe(self, settings: Settings) -> None:
        log.info("accepting calls by: %s", ", ".join(settings.auth))
        if self.accept_all:
            log.warning("INGEST_AUTH includes none: any caller may post")
        if self._token and not self._tokens:
            log.warning("INGEST_AUTH includes token but INGEST_TOKENS is unset: no token is accepted")
        if self.verifier is not None and settings.public_hosts is None:
            log.warning("INGEST_PUBLIC_HOSTS is unset: the Host of signed calls is not checked")

    def check(
        self, request: web.BaseRequest, body: bytes, *, path_token: bool = False
    ) -> str | Coroutine[Any, Any, str]:
        """The request target to keep (token removed) if the call may post; else raise Refused.
        `path_token`: the target's last path segment is a token (`/copernica/<token>`).

        When only the call's signature can decide, a coroutine that checks it (it returns the
        target or raises Refused): a call that needs no signature check costs no coroutine."""
        target, tokens = strip_token(request.raw_path, path_token)
        if self._allowed is not None and not self._network_allowed(request):
            self._refuse(request, Refused(403, "network", "caller's address is not allowed"))
        if self.accept_all:
            return target
        failure: Refused | None = None
        if self._token and tokens:
            if self._token_valid(tokens):
                return target
            failure = Refused(401, "bad_token", "invalid token")
        if self.verifier is not None and "Signature" in request.headers:
            return self._signed(self.verifier, request, body, target, failure)
        self._refuse(request, failure or Refused(401, "no_credentials", self._wanted()))
        raise AssertionError("unreachable")  # pragma: no cover

    async def _signed(
        self, verifier: Verifier, request: web.BaseRequest, body: bytes, target: str, failure: Refused | None
    ) -> str:
        try:
            await verifier.verify(request.method, request.raw_path, request.headers, body)
            return target
        except SignatureError as exc:
            failure = failure or Refused(exc.status, exc.code, exc.reason)
        except KeyUnavailable:
            failure = failure or Refused(
                503, "key_unavailable", "signing key cannot be fetched now", {"Retry-After": self._retry_after}
            )
        self._refuse(request, failure)
        raise AssertionError("unreachable")  # pragma: no cover

    def _token_valid(self, presented: list[str]) -> bool:
        """Constant time: every configured token is compared, whichever matches."""
        valid = False
        for token in presented:
            candidate = token.encode("utf-8", "surrogateescape")
            for secret in self._tokens:
                valid |= hmac.compare_digest(candidate, secret)
        return valid

    def _wanted(self) -> str:
        wanted = [name for name, on in (("signature", self.verifier), ("token", self._token)) if on]
        return f"credentials required ({' or '.join(wanted)})"

    def _network_allowed(self, request: web.BaseRequest) -> bool:
        client = self.client_address(request)
        return client is not None and any(client in net for net in self._allowed or ())

    def client_address(self, request: web.BaseRequest) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
        """The caller: the peer, or behind trusted proxies the last X-Forwarded-For hop they did
        not add themselves (right to left, skipping trusted proxies)."""
        address = _address(request.remote or "")
        if address is None or not _within(address, self._proxies):
            return address
        hops = [hop.strip() for value in request.headers.getall("X-Forwarded-For", ()) for hop in value.split(",")]
        for hop in reversed(hops):
            hop_address = _address(hop)
            if hop_address is None:
                return None  # a hop nobody can vouch for
            address = hop_address
            if not _within(address, self._proxies):
                break
        return address

    def _refuse(self, request: web.BaseRequest, refused: Refused) -> None:
        REFUSALS[refused.code] += 1
        now = time.monotonic()
        last, suppressed = self._last_logged.get(refused.code, (float("-inf"), 0))
        if now - last >= LOG_EVERY:
            more = f" ({suppressed} more since last logged)" if suppressed else ""
            # The target is not logged: its query or path may hold a token.
            log.warning(
                "refused %s from %s: %d %s%s", request.method, request.remote, refused.status, refused.reason, more
            )
            self._last_logged[refused.code] = (now, 0)
        else:
            self._last_logged[refused.code] = (last, suppressed + 1)
        raise refused


def _networks(items: tuple[str, ...] | None) -> tuple[Network, ...] | None:
    return None if items is None else tuple(ipaddress.ip_network(item) for item in items)


def _address(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        address = ipaddress.ip_address(text.strip("[]"))
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def _within(address: ipaddress.IPv4Address | ipaddress.IPv6Address, networks: tuple[Network, ...]) -> bool:
    return any(address in net for net in networks)
