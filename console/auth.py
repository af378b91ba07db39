"""Who may use the console: password hashes, the user list, sessions and CSRF tokens.

- Hashes are scrypt (hashlib, N=2**14, r=8, p=1, 16-byte salt), written
  `scrypt.N.r.p.<salt>.<hash>` in unpadded URL-safe base64: no `$`, `:` or `,`, so a hash
  survives env files, systemd and compose unquoted (`INGEST_CONSOLE_USERS=name:hash,...`).
- Sessions live in an encrypted cookie (aiohttp-session's Fernet storage): HttpOnly,
  SameSite=Strict, and Secure when the request came over TLS (directly, or through a proxy
  of INGEST_TRUSTED_PROXIES saying `X-Forwarded-Proto: https`).
- Every POST carries the session's CSRF token in a form field; one without it is refused 403.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import ipaddress
import logging
import secrets
from collections.abc import Awaitable, Callable, Mapping

from aiohttp import web
from aiohttp_session import Session, get_session

from common.settings import CONSOLE_HASH, Items

log = logging.getLogger("console.auth")

SCRYPT_N, SCRYPT_R, SCRYPT_P = 2**14, 8, 1
SCRYPT_MAXMEM = 64 * 1024 * 1024
COOKIE_NAME = "ingest_console"
SESSION_MAX_AGE = 12 * 3600  # seconds a login lasts
CSRF_FIELD = "csrf"
USER_KEY = "user"
CSRF_KEY = "csrf"
LOCAL_USER = "local"  # the user of a console without INGEST_CONSOLE_USERS (loopback only)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def hash_password(password: str, *, salt: bytes | None = None) -> str:
    """A hash for INGEST_CONSOLE_USERS."""
    if not password:
        raise ValueError("the password is empty")
    salt = salt if salt is not None else secrets.token_bytes(16)
    digest = hashlib.scrypt(
        password.encode(), salt=salt, n=SCRYPT_N, r=SCRYPT_R, p=SCRYPT_P, maxmem=SCRYPT_MAXMEM, dklen=32
    )
    return f"scrypt.{SCRYPT_N}.{SCRYPT_R}.{SCRYPT_P}.{_b64(salt)}.{_b64(digest)}"


def verify_password(password: str, hashed: str) -> bool:
    """Whether `password` matches `hashed` (compared in constant time)."""
    if not CONSOLE_HASH.fullmatch(hashed):
        return False
    _scheme, n, r, p, salt, digest = hashed.split(".")
    expected = _unb64(digest)
    try:
        got = hashlib.scrypt(
            password.encode(),
            salt=_unb64(salt),
            n=int(n),
            r=int(r),
            p=int(p),
            maxmem=SCRYPT_MAXMEM,
            dklen=len(expected),
        )
    except ValueError:  # parameters scrypt refuses
        return False
    return hmac.compare_digest(got, expected)


# A hash no password was made for: an unknown name costs as much time as a known one.
_DUMMY = hash_password(secrets.token_urlsafe(16))


class Users:
    """The INGEST_CONSOLE_USERS list: name -> hash."""

    def __init__(self, pairs: Items | None) -> None:
        self.hashes: dict[str, str] = dict(pair.split(":", 1) for pair in pairs or ())

    def __bool__(self) -> bool:
        return bool(self.hashes)

    def check(self, name: str, password: str) -> bool:
        hashed = self.hashes.get(name)
        ok = verify_password(password, hashed if hashed is not None else _DUMMY)
        return ok and hashed is not None


def is_loopback(host: str) -> bool:
    """Whether `host` (an address or `localhost`) is a loopback address."""
    if host.lower() in {"localhost", "localhost."}:
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def refusal_to_start(host: str, users: Users) -> str | None:
    """The one-line reason the console may not start on `host`, or None."""
    if users or is_loopback(host):
        return None
    return (
        f"console: INGEST_CONSOLE_USERS is not set, so the console serves only on a loopback address "
        f"(127.0.0.1, ::1), not on {host!r}; set users (ingest console hash-password) or a loopback host"
    )


def session_key(secret: str | None) -> bytes:
    """The 32-byte cookie key: derived from INGEST_CONSOLE_SECRET, else new at every start."""
    if secret is None:
        return secrets.token_bytes(32)
    return hashlib.sha256(b"copernica-ingest console\x00" + secret.encode()).digest()


def csrf_token(session: Session) -> str:
    """The session's CSRF token, made on first use."""
    token = session.get(CSRF_KEY)
    if not isinstance(token, str):
        token = secrets.token_urlsafe(32)
        session[CSRF_KEY] = token
    return token


def csrf_ok(session: Session, form: Mapping[str, object]) -> bool:
    sent = form.get(CSRF_FIELD)
    token = session.get(CSRF_KEY)
    return isinstance(sent, str) and isinstance(token, str) and hmac.compare_digest(sent, token)


def over_tls(request: web.Request, trusted: Items | None) -> bool:
    """Whether the browser reached us over TLS: directly, or through a trusted proxy that says so."""
    if request.secure:
        return True
    if not trusted or request.headers.get("X-Forwarded-Proto", "").lower() != "https":
        return False
    try:
        peer = ipaddress.ip_address(request.remote or "")
    except ValueError:
        return False
    return any(peer in ipaddress.ip_network(net) for net in trusted)


async def current_user(request: web.Request) -> str | None:
    """The logged-in user; LOCAL_USER on a console without users; None when not logged in."""
    users: Users = request.app[USERS]
    if not users:
        return LOCAL_USER
    session = await get_session(request)
    user = session.get(USER_KEY)
    return user if isinstance(user, str) and user in users.hashes else None


USERS = web.AppKey("users", Users)
