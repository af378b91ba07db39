"""A small, streaming client for Copernica's REST API (v4): logfile lists and downloads.

Authentication (v4): the access token is exchanged once for a JWT at the authenticate
endpoint; the JWT is cached until shortly before it expires (`exp` in its payload, else 24 h)
and sent as `Authorization: Bearer`. A 401 from the API renews it once per request.

Robustness: 429, 502, 503, 504 and dropped or timed-out connections are retried with
exponential back-off and jitter, never sooner than `Retry-After` says, up to `retries` times;
then `RetriesExhausted` is raised and the caller decides (the backfill fails that one file).
A call that creates something (`idempotent=False`) is sent again only when the first try
certainly did nothing (429, 503, a refused connection): anything else might have been carried
out, so it is raised for the caller to check instead of being repeated.

Secrets: neither the access token nor the JWT ever appear in a log line or an exception
message; text that comes back from the server is scrubbed of both before it is shown.

urllib is used on purpose: a download is one sequential stream written to a file, which
needs no event loop, and the standard library keeps this module light.
"""

from __future__ import annotations

import base64
import email.utils
import http.client
import importlib.metadata
import logging
import random
import socket
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from email.message import Message
from typing import TYPE_CHECKING, BinaryIO, TypeVar

import orjson

if TYPE_CHECKING:
    from common.settings import Settings

log = logging.getLogger("workers.backfill.api")

_T = TypeVar("_T")

RETRY_STATUSES = frozenset({429, 502, 503, 504})
UNDONE_STATUSES = frozenset({429, 503})  # rate limit, load balancer: the request did nothing
JWT_LIFETIME = 24 * 3600  # documented lifetime when the JWT carries no `exp`
JWT_MARGIN = 60  # renew this many seconds before the JWT expires
CHUNK = 1 << 16
try:
    USER_AGENT = f"copernica-ingest/{importlib.metadata.version('copernica-ingest')}"
except importlib.metadata.PackageNotFoundError:  # run from a checkout that was never installed
    USER_AGENT = "copernica-ingest"
# `?from=` is documented for these download formats only; for CSV the whole file comes back.
FROM_FORMATS = frozenset({"json", "xml"})


class ApiError(Exception):
    """The API answered with an error, or could not be reached. The message holds no secret."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class AuthError(ApiError):
    """The access token was refused: nothing else can work, so the whole run stops."""


class RetriesExhausted(ApiError):
    """A transient failure outlasted every retry."""


class Interrupted(Exception):
    """The caller asked to stop (SIGINT/SIGTERM) while the client was waiting."""


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    retries: int = 6  # retries after the first try
    base_delay: float = 1.0  # first back-off, doubled each retry
    max_delay: float = 120.0  # cap of the computed back-off
    max_retry_after: float = 900.0  # a server asking for longer than this is capped

    def backoff(self, attempt: int, retry_after: float | None) -> float:
        """Delay before retry number `attempt` (0-based): "equal jitter" exponential back-off,
        and never less than what the server asked for in Retry-After."""
        delay = min(self.max_delay, self.base_delay * (2**attempt))
        delay = delay / 2 + random.uniform(0, delay / 2)
        if retry_after is not None:
            delay = max(delay, min(retry_after, self.max_retry_after))
        return delay


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """Retry-After as seconds: either delta-seconds or an HTTP date."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when is None:
        return None
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


def jwt_expiry(jwt: str) -> float | None:
    """The `exp` claim of a JWT (unix seconds), read without verifying: we only need to know
    when to ask for a new one, and a wrong guess costs one 401 and a renewal."""
    parts = jwt.split(".")
    if len(parts) != 3:
        return None
    try:
        payload = orjson.loads(base64.urlsafe_b64decode(parts[1] + "=" * (-len(parts[1]) % 4)))
        exp = payload.get("exp") if isinstance(payload, dict) else None
        return float(exp) if exp is not None else None
    except (ValueError, TypeError, orjson.JSONDecodeError):
        return None


def _looks_like_jwt(text: str) -> bool:
    return text.count(".") == 2 and " " not in text and len(text) > 10


def parse_auth_answer(body: bytes) -> tuple[str, float | None]:
    """The JWT (and an `expires_in` if given) from the authenticate endpoint's answer.

    The answer's shape is not documented: a bare token, a JSON string, or a JSON object under
    some key are all accepted."""
    text = body.decode("utf-8", "replace").strip()
    expires_in: float | None = None
    value: object = text
    if text[:1] in ('"', "{", "["):
        try:
            value = orjson.loads(text)
        except orjson.JSONDecodeError:
            value = text
    if isinstance(value, list) and len(value) == 1:
        value = value[0]
    if isinstance(value, dict):
        raw_expiry = value.get("expires_in")
        if isinstance(raw_expiry, int | float) and raw_expiry > 0:
            expires_in = float(raw_expiry)
        found = None
        for key in ("access_token", "token", "jwt", "id_token", "data"):
            candidate = value.get(key)
            if isinstance(candidate, str) and candidate.strip():
                found = candidate
                break
        if found is None:
            found = next((v for v in value.values() if isinstance(v, str) and _looks_like_jwt(v.strip())), None)
        value = found
    if not isinstance(value, str) or not value.strip() or any(c.isspace() for c in value.strip()):
        raise AuthError("the authenticate endpoint answered without a usable token")
    return value.strip(), expires_in


_UNSURE = "; it may have been carried out all the same: check before trying again"


def _raise_unless_retryable(what: str, status: int, detail: str, *, idempotent: bool) -> None:
    """An HTTP error answer worth another try returns; the others raise (401 and 403 as AuthError)."""
    if status in (401, 403):
        message = f"{what}: Copernica refused the credentials (HTTP {status}{detail})"
        raise AuthError(message, status) from None  # raised while the HTTPError is handled: not its context
    if status not in RETRY_STATUSES:
        raise ApiError(f"{what}: HTTP {status}{detail}", status) from None
    if not idempotent and status not in UNDONE_STATUSES:
        raise ApiError(f"{what}: HTTP {status}{detail}{_UNSURE}", status) from None


class CopernicaClient:
    """Copernica REST API v4. Thread-compatible but not meant to be shared across threads."""

    def __init__(
        self,
        access_token: str,
        api_url: str = "https://api.copernica.com/v4",
        auth_url: str = "https://authenticate.copernica.com",
        *,
        policy: RetryPolicy | None = None,
        timeout: float = 60.0,
        stop: threading.Event | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if not access_token:
            raise AuthError("COPERNICA_ACCESS_TOKEN is not set")
        self._token = access_token
        self.api_url = api_url.rstrip("/")
        self.auth_url = auth_url
        self.policy = policy or RetryPolicy()
        self.timeout = timeout
        self.stop = stop or threading.Event()
        self._clock = clock
        self._jwt: str | None = None
        self._jwt_expires = 0.0
        self.retried = 0  # retries done so far, for the summary
        self.authentications = 0

    def __repr__(self) -> str:  # never show the token
        return f"CopernicaClient(api_url={self.api_url!r})"

    # --- secrets ----------------------------------------------------------------------------

    def scrub(self, text: str) -> str:
        """`text` without the access token or the JWT."""
        for secret in (self._token, self._jwt):
            if secret:
                text = text.replace(secret, "***")
        return text

    def _bearer(self, renew: bool = False) -> str:
        if renew or self._jwt is None or self._clock() >= self._jwt_expires:
            self._authenticate()
        assert self._jwt is not None
        return self._jwt

    def _authenticate(self) -> None:
        body = urllib.parse.urlencode({"access_token": self._token}).encode()
        answer = self._with_retries(
            "authenticate",
            lambda: self._open("POST", self.auth_url, body, {"Content-Type": "application/x-www-form-urlencoded"}),
            lambda resp: resp.read(1 << 20),
            authenticated=False,
        )
        jwt, expires_in = parse_auth_answer(answer)
        now = self._clock()
        expiry = jwt_expiry(jwt) or (now + (expires_in or JWT_LIFETIME))
        self._jwt = jwt
        self._jwt_expires = max(now, expiry - JWT_MARGIN)
        self.authentications += 1
        log.info("authenticated with Copernica; token valid for %.0f s", max(0.0, expiry - now))

    # --- HTTP ---------------------------------------------------------------------------------

    def _open(self, method: str, url: str, body: bytes | None, headers: dict[str, str]) -> http.client.HTTPResponse:
        request = urllib.request.Request(url, data=body, method=method, headers={"User-Agent": USER_AGENT, **headers})
        return urllib.request.urlopen(request, timeout=self.timeout)  # URLs come from settings (bandit S310)

    def _wait(self, seconds: float) -> None:
        if self.stop.wait(seconds):
            raise Interrupted()

    def _with_retries(
        self,
        what: str,
        send: Callable[[], http.client.HTTPResponse],
        consume: Callable[[http.client.HTTPResponse], _T],
        *,
        authenticated: bool = True,
        on_retry: Callable[[], None] | None = None,
        idempotent: bool = True,
    ) -> _T:
        """Send a request and consume its answer, retrying transient failures. `consume` runs
        inside the retry loop, so a connection dropped mid-body retries the whole request."""
        renewed = False
        attempt = 0
        while True:
            if self.stop.is_set():
                raise Interrupted()
            retry_after: float | None = None
            try:
                with send() as resp:
                    return consume(resp)
            except urllib.error.HTTPError as exc:
                status = exc.code
                retry_after = parse_retry_after(exc.headers.get("Retry-After") if exc.headers else None)
                detail = self._error_detail(exc)
                exc.close()
                if status == 401 and authenticated and not renewed:
                    log.info("%s: HTTP 401, renewing the API token", what)
                    renewed = True
                    self._bearer(renew=True)
                    continue
                _raise_unless_retryable(what, status, detail, idempotent=idempotent)
                problem = f"HTTP {status}"
            except (urllib.error.URLError, http.client.HTTPException, OSError, _Truncated) as exc:
                status = None
                problem = self.scrub(_describe(exc))
                if not idempotent and not _never_sent(exc):
                    raise ApiError(f"{what}: {problem}{_UNSURE}") from None
            if attempt >= self.policy.retries:
                raise RetriesExhausted(f"{what}: {problem}, still failing after {attempt} retries", status)
            delay = self.policy.backoff(attempt, retry_after)
            attempt += 1
            self.retried += 1
            log.warning("%s: %s; retry %d/%d in %.1f s", what, problem, attempt, self.policy.retries, delay)
            if on_retry is not None:
                on_retry()
            self._wait(delay)

    def _error_detail(self, exc: urllib.error.HTTPError) -> str:
        try:
            text = exc.read(300).decode("utf-8", "replace")
        except (OSError, http.client.HTTPException):
            return ""
        text = " ".join(self.scrub(text).split())[:200]
        return f": {text}" if text else ""

    def _get(
        self,
        path: str,
        params: dict[str, str | int] | None,
        what: str,
        consume: Callable[[http.client.HTTPResponse], _T],
        on_retry: Callable[[], None] | None = None,
    ) -> _T:
        url = f"{self.api_url}/{path.lstrip('/')}"
        if params:
            url += "?" + urllib.parse.urlencode(params)
        return self._with_retries(
            what,
            lambda: self._open(
                "GET", url, None, {"Authorization": f"Bearer {self._bearer()}", "Accept-Encoding": "gzip"}
            ),
            consume,
            on_retry=on_retry,
        )

    def get_json(self, path: str, params: dict[str, str | int] | None = None) -> object:
        def consume(resp: http.client.HTTPResponse) -> object:
            data = _read_all(resp, 64 << 20)
            if data[:2] == b"\x1f\x8b":
                import gzip

                data = gzip.decompress(data)
            try:
                return orjson.loads(data)
            except orjson.JSONDecodeError:
                raise ApiError(f"GET /{path}: the answer is not JSON") from None

        return self._get(path, params, f"GET /{path}", consume)

    def paged(self, path: str, params: dict[str, str | int] | None = None) -> list:
        """All items of a listing: a plain list, or pages (`{"start","limit","count","total","data"}`)
        followed by `start`/`limit` (at most 1000) until `total` is reached."""
        params = dict(params or {})
        found: list = []
        while True:
            answer = self.get_json(path, params or None)
            items = _items(answer)
            found.extend(items)
            total = answer.get("total") if isinstance(answer, dict) else None
            if not items or not isinstance(total, int) or len(found) >= total:
                return found
            params = {**params, "start": len(found), "limit": PAGE_LIMIT}

    def send_json(self, method: str, path: str, payload: object | None = None, *, idempotent: bool = True) -> Answer:
        """`method` on `path` with an optional JSON body; the (small) answer read whole.
        `idempotent=False` for calls that create something (see the module's docstring)."""
        url = f"{self.api_url}/{path.lstrip('/')}"
        body = None if payload is None else orjson.dumps(payload)
        extra = {"Content-Type": "application/json"} if body is not None else {}

        def consume(resp: http.client.HTTPResponse) -> Answer:
            return Answer(resp.status, resp.headers, _read_all(resp, 1 << 20))

        return self._with_retries(
            f"{method} /{path.lstrip('/')}",
            lambda: self._open(method, url, body, {"Authorization": f"Bearer {self._bearer()}", **extra}),
            consume,
            idempotent=idempotent,
        )

    # --- logfiles -----------------------------------------------------------------------------

    def _list(self, params: dict[str, str | int]) -> list[str]:
        """All names of a logfile listing."""
        return [str(v) for v in self.paged("logfiles", params) if isinstance(v, str | int) and str(v)]

    def list_dates(self) -> list[str]:
        """Dates (YYYY-MM-DD) for which Copernica holds logfiles."""
        return self._list({})

    def list_logfiles(self, date: str | None = None, log_type: str | None = None) -> list[str]:
        """Names of the logfiles of a date and type (both optional)."""
        params: dict[str, str | int] = {}
        if date:
            params["date"] = date
        if log_type:
            params["type"] = log_type
        return self._list(params)

    def download(
        self,
        name: str,
        fmt: str,
        dest: BinaryIO,
        *,
        since: int | None = None,
        on_bytes: Callable[[int], None] | None = None,
    ) -> int:
        """Stream logfile `name` in `fmt` (json, csv, xml) into `dest`; return the bytes written.

        The body is written chunk by chunk, never held whole. A connection dropped midway (or a
        body shorter than its Content-Length) starts the download again from an empty `dest`.
        `since` asks only for records after that unix time (`?from=`): JSON and XML only
        (`FROM_FORMATS`); with CSV it is a ValueError, the caller filters the whole file."""
        if since is not None and fmt not in FROM_FORMATS:
            raise ValueError(f"?from= is not documented for {fmt} downloads")
        quoted = urllib.parse.quote(name, safe="")
        path = f"logfile/{quoted}/{fmt}"
        params: dict[str, str | int] | None = {"from": int(since)} if since is not None else None

        def restart() -> None:
            dest.seek(0)
            dest.truncate()

        def consume(resp: http.client.HTTPResponse) -> int:
            restart()
            expected = resp.headers.get("Content-Length")
            total = 0
            while True:
                if self.stop.is_set():
                    raise Interrupted()
                chunk = resp.read(CHUNK)
                if not chunk:
                    break
                dest.write(chunk)
                total += len(chunk)
                if on_bytes is not None:
                    on_bytes(len(chunk))
            if expected is not None and expected.isdigit() and total < int(expected):
                raise _Truncated(f"connection closed after {total} of {expected} bytes")
            dest.flush()
            return total

        return self._get(path, params, f"GET /logfile/{name}/{fmt}", consume, on_retry=restart)


class _Truncated(Exception):
    """A body that ended before its Content-Length: treated as a dropped connection."""


PAGE_LIMIT = 1000  # the most items Copernica gives per page


@dataclass(frozen=True, slots=True)
class Answer:
    """A small answer read whole (POST, DELETE): status, headers, body."""

    status: int
    headers: Message
    body: bytes


def client_from_settings(settings: Settings, stop: threading.Event | None = None) -> CopernicaClient:
    """The client every command uses: token, URLs and retries from the settings. No token is a
    usage error (exit 2), raised before any request."""
    from common.settings import SettingsError

    if not settings.copernica_access_token:
        raise SettingsError("COPERNICA_ACCESS_TOKEN is not set (a REST API access token from the Copernica dashboard)")
    policy = RetryPolicy(retries=settings.copernica_retries, base_delay=settings.copernica_retry_delay)
    return CopernicaClient(
        settings.copernica_access_token,
        settings.copernica_api_url,
        settings.copernica_auth_url,
        policy=policy,
        stop=stop,
    )


def _never_sent(exc: BaseException) -> bool:
    """A failure that happened before the request left: connection refused, unknown host."""
    reason = exc.reason if isinstance(exc, urllib.error.URLError) else exc
    return isinstance(reason, ConnectionRefusedError | socket.gaierror)


def _read_all(resp: http.client.HTTPResponse, limit: int) -> bytes:
    data = resp.read(limit + 1)
    if len(data) > limit:
        raise ApiError(f"answer larger than {limit} bytes")
    expected = resp.headers.get("Content-Length")
    if expected is not None and expected.isdigit() and len(data) < int(expected):
        raise _Truncated(f"connection closed after {len(data)} of {expected} bytes")
    return data


def _items(answer: object) -> list:
    """A list answer, or the `data` of a paged answer (`{"start", "limit", "count", "total", "data"}`)."""
    if isinstance(answer, dict):
        answer = answer.get("data", [])
    if not isinstance(answer, list):
        raise ApiError(f"expected a list, got {type(answer).__name__}")
    return answer


def _describe(exc: BaseException) -> str:
    if isinstance(exc, urllib.error.URLError) and not isinstance(exc, urllib.error.HTTPError):
        reason = exc.reason
        return f"connection failed: {reason}" if not isinstance(reason, BaseException) else _describe(reason)
    if isinstance(exc, http.client.IncompleteRead):
        return f"connection dropped after {len(exc.partial)} bytes of a chunk"
    if isinstance(exc, TimeoutError):
        return "timed out"
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
