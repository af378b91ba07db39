"""One typed settings object, read once from the environment (12-factor).

A `.env` file in the working directory is read when present; variables already set in the
environment win over it. A bad value stops the program with a one-line message that names
the setting (`SettingsError`), never a traceback.
"""

from __future__ import annotations

import ipaddress
import os
import re
import zoneinfo
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from typing import Any, Literal
from urllib.parse import urlsplit


class SettingsError(ValueError):
    """A setting holds a value the program cannot use."""


def _int(raw: str) -> int:
    try:
        return int(raw)
    except ValueError:
        raise ValueError("must be a whole number") from None


def _positive_int(raw: str) -> int:
    value = _int(raw)
    if value <= 0:
        raise ValueError("must be a positive whole number")
    return value


def _non_negative_int(raw: str) -> int:
    value = _int(raw)
    if value < 0:
        raise ValueError("must be zero or a positive whole number")
    return value


def _port(raw: str) -> int:
    value = _int(raw)
    if not 0 <= value <= 65535:
        raise ValueError("must be a port number (0-65535)")
    return value


def _positive_float(raw: str) -> float:
    try:
        value = float(raw)
    except ValueError:
        raise ValueError("must be a number") from None
    if not value > 0:
        raise ValueError("must be a positive number")
    return value


def _url(*schemes: str) -> Callable[[str], str]:
    def cast(raw: str) -> str:
        parts = urlsplit(raw)
        if parts.scheme not in schemes:
            raise ValueError(f"must be a URL starting with {' or '.join(s + '://' for s in schemes)}")
        return raw

    return cast


def _timezone(raw: str) -> str:
    try:
        zoneinfo.ZoneInfo(raw)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError) as exc:
        raise ValueError("must be an IANA time zone name such as Europe/Amsterdam") from exc
    return raw


def _log_level(raw: str) -> str:
    level = raw.upper()
    if level not in {"DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"}:
        raise ValueError("must be one of DEBUG, INFO, WARNING, ERROR, CRITICAL")
    return level


def _text(raw: str) -> str:
    if not raw.strip():
        raise ValueError("must not be empty")
    return raw.strip()


class Items(tuple[str, ...]):
    """A comma-separated setting, parsed: shown (README, `to_env`) as the comma list it came from."""

    def __str__(self) -> str:
        return ",".join(self)


def _items(raw: str) -> list[str]:
    items = [part.strip() for part in raw.split(",") if part.strip()]
    if not items:
        raise ValueError("must list at least one value")
    return items


AUTH_METHODS = ("signature", "token", "none")


def _auth_methods(raw: str) -> Items:
    methods = [m.lower() for m in _items(raw)]
    unknown = sorted(set(methods) - set(AUTH_METHODS))
    if unknown:
        raise ValueError(f"must be a comma-separated list of {', '.join(AUTH_METHODS)} (not {', '.join(unknown)})")
    return Items(dict.fromkeys(methods))


_TOKEN_CHARS = re.compile(r"[A-Za-z0-9._~-]{16,}")


def _tokens(raw: str) -> Items:
    tokens = _items(raw)
    if not all(_TOKEN_CHARS.fullmatch(t) for t in tokens):
        # The message never repeats a token: they are secrets.
        raise ValueError("each token must be at least 16 URL-safe characters (A-Z a-z 0-9 . _ ~ -)")
    return Items(tokens)


def _networks(raw: str) -> Items:
    try:
        return Items(str(ipaddress.ip_network(item, strict=False)) for item in _items(raw))
    except ValueError:
        raise ValueError("must be a comma-separated list of addresses or CIDR networks") from None


def _hosts(raw: str) -> Items:
    return Items(item.lower().rstrip(".") for item in _items(raw))


def _dns_server(raw: str) -> str:
    host, port = raw.strip(), "53"
    if host.startswith("["):
        host, _, rest = host[1:].partition("]")
        port = rest.removeprefix(":") or port
    elif host.count(":") == 1:
        host, port = host.split(":")
    try:
        ipaddress.ip_address(host)
        port_number = _port(port)
    except ValueError:
        raise ValueError("must be an IP address with an optional port (127.0.0.1:53, [::1]:53)") from None
    return f"[{host}]:{port_number}" if ":" in host else f"{host}:{port_number}"


def _sentinels(raw: str) -> Items:
    addresses = []
    for item in _items(raw):
        host, sep, port = item.rpartition(":")
        host = host.removeprefix("[").removesuffix("]")
        try:
            if not sep or not host or not 0 < int(port) <= 65535:
                raise ValueError
        except ValueError:
            raise ValueError("must be a comma-separated list of host:port (10.0.0.1:26379,10.0.0.2:26379)") from None
        addresses.append(f"{host}:{int(port)}")
    return Items(addresses)


CONSOLE_HASH = re.compile(r"scrypt\.\d+\.\d+\.\d+\.[A-Za-z0-9_-]{16,}\.[A-Za-z0-9_-]{32,}")
_CONSOLE_NAME = re.compile(r"[A-Za-z0-9._@-]{1,64}")


def _console_users(raw: str) -> Items:
    """`name:hash,name:hash`: each hash as `ingest console hash-password` prints it."""
    pairs = _items(raw)
    names = []
    for pair in pairs:
        name, sep, hashed = pair.partition(":")
        if not sep or not _CONSOLE_NAME.fullmatch(name) or not CONSOLE_HASH.fullmatch(hashed):
            # The message never repeats a hash.
            raise ValueError(
                "must be comma-separated name:hash pairs (names of A-Z a-z 0-9 . _ @ -; "
                "hashes from `ingest console hash-password`)"
            )
        names.append(name)
    if len(set(names)) != len(names):
        raise ValueError("names a user twice")
    return Items(pairs)


def _console_secret(raw: str) -> str:
    if len(raw.strip()) < 32:
        raise ValueError("must be at least 32 characters")
    return raw.strip()


def _metrics_urls(raw: str) -> Items:
    cast = _url("http", "https")
    return Items(cast(item) for item in _items(raw))


def _erasure_key(raw: str) -> str:
    if len(raw.strip()) < 16:
        raise ValueError("must be at least 16 characters (a long random secret)")
    return raw.strip()


IP_PRIVACY = ("full", "truncate", "drop")


def _ip_privacy(raw: str) -> str:
    value = raw.strip().lower()
    if value not in IP_PRIVACY:
        raise ValueError(f"must be one of {', '.join(IP_PRIVACY)}")
    return value


def setting(var: str, cast: Callable[[str], Any], default: Any, doc: str, *, secret: bool = False) -> Any:
    """One setting, written once: its variable, cast, default and help text (the README's settings
    table lists them). A secret is kept out of `repr` and never repeated in an error message."""
    return field(default=default, repr=not secret, metadata={"var": var, "cast": cast, "doc": doc, "secret": secret})


@dataclass(frozen=True, slots=True)
class Settings:
    redis_url: str | None = setting(
        "REDIS_URL",
        _url("redis", "rediss", "unix"),
        None,
        "Redis/Valkey holding the queue. Unset: `ingest dev` starts an embedded Valkey.",
    )
    redis_sentinels: Items | None = setting(
        "REDIS_SENTINELS",
        _sentinels,
        None,
        "Redis Sentinels (comma-separated `host:port`): the current primary is asked of them, and "
        "followed when it changes; `REDIS_URL` then gives only the database number and password.",
    )
    redis_sentinel_master: str | None = setting(
        "REDIS_SENTINEL_MASTER",
        _text,
        None,
        "The name the Sentinels monitor the primary by (needed with `REDIS_SENTINELS`).",
    )
    redis_sentinel_password: str | None = setting(
        "REDIS_SENTINEL_PASSWORD",
        _text,
        None,
        "Password of the Sentinels themselves, for Sentinels that require one.",
        secret=True,
    )
    database_url: str | None = setting(
        "DATABASE_URL",
        _url("postgresql", "postgres"),
        None,
        "PostgreSQL for the events; several hosts (`h1,h2`, with `target_session_attrs=read-write`) "
        "follow a switch. Unset: `ingest dev` starts an embedded PostgreSQL.",
    )
    queue: str = setting("INGEST_QUEUE", _text, "copernica", "RQ queue the receiver fills and workers drain.")
    host: str = setting(
        "INGEST_HOST",
        _text,
        "0.0.0.0",
        "Address the receiver listens on. `ingest dev` listens on `127.0.0.1` unless this is set.",
    )
    port: int = setting("INGEST_PORT", _port, 8080, "Port the receiver listens on.")
    max_body_bytes: int = setting(
        "INGEST_MAX_BODY_BYTES",
        _positive_int,
        10 * 1024 * 1024,
        "Largest webhook body accepted (bounces carry whole MIME messages); larger gets 413.",
    )
    max_batch: int = setting(
        "INGEST_MAX_BATCH", _positive_int, 500, "Most webhook calls written to Redis as one RQ job (group commit)."
    )
    max_in_flight: int = setting(
        "INGEST_MAX_IN_FLIGHT",
        _positive_int,
        3,
        "Batches being written to Redis at once by one receiver process (one, and more only once the "
        "next holds 10 calls).",
    )
    max_pending: int = setting(
        "INGEST_MAX_PENDING",
        _positive_int,
        20000,
        "Most calls waiting for Redis at once; past it a call gets 503 at once (bounded memory).",
    )
    max_queue_depth: int = setting(
        "INGEST_MAX_QUEUE_DEPTH",
        _non_negative_int,
        1_000_000,
        "High-water mark: past about this many queued calls the receiver answers 503; 0 means no mark.",
    )
    redis_timeout: float = setting(
        "INGEST_REDIS_TIMEOUT",
        _positive_float,
        1.0,
        "Seconds a Redis write may take before the calls it carries get 503.",
    )
    redis_min_replicas: int = setting(
        "INGEST_REDIS_MIN_REPLICAS",
        _non_negative_int,
        0,
        "Replicas that must have a batch (Redis `WAIT`) before its calls get 200; fewer in time: 503. 0: no wait.",
    )
    redis_replica_timeout: int = setting(
        "INGEST_REDIS_REPLICA_TIMEOUT",
        _positive_int,
        500,
        "Milliseconds a batch waits for INGEST_REDIS_MIN_REPLICAS replicas to have it before its calls get 503.",
    )
    retry_after: int = setting("INGEST_RETRY_AFTER", _positive_int, 5, "Seconds sent in Retry-After with a 503.")
    job_retries: int = setting(
        "INGEST_JOB_RETRIES",
        _positive_int,
        8,
        "Times a failed store job is retried (with growing back-off) before it rests in the failed registry.",
    )
    worker_batch: int = setting(
        "INGEST_WORKER_BATCH",
        _non_negative_int,
        5000,
        "Calls a worker stores in one transaction, taking queued batches together; 0 stores job by job.",
    )
    worker_metrics_port: int = setting(
        "INGEST_WORKER_METRICS_PORT",
        _port,
        9400,
        "Port of a worker's Prometheus metrics (`/metrics`); 0 turns them off. One port per worker on a machine.",
    )
    reconcile_metrics_port: int = setting(
        "INGEST_RECONCILE_METRICS_PORT",
        _port,
        9410,
        "Port of the Prometheus metrics of `ingest reconcile --follow` (`/metrics`); 0 turns them off.",
    )
    data_dir: str = setting("INGEST_DATA_DIR", _text, ".ingest", "Where `ingest dev` keeps its embedded servers' data.")
    copernica_timezone: str = setting(
        "COPERNICA_TIMEZONE",
        _timezone,
        "Europe/Amsterdam",
        "Zone of Copernica's zone-less times (`timestamp` fields, logfile `time`).",
    )
    log_level: str = setting("INGEST_LOG_LEVEL", _log_level, "INFO", "Logging level of every component.")
    copernica_access_token: str | None = setting(
        "COPERNICA_ACCESS_TOKEN",
        _text,
        None,
        "Copernica REST API access token (secret) for `ingest backfill` and `ingest reconcile`.",
        secret=True,
    )
    copernica_api_url: str = setting(
        "COPERNICA_API_URL",
        _url("http", "https"),
        "https://api.copernica.com/v4",
        "Copernica REST API base URL (`https://rest.copernica.com/v4` for larger data sets).",
    )
    copernica_auth_url: str = setting(
        "COPERNICA_AUTH_URL",
        _url("http", "https"),
        "https://authenticate.copernica.com",
        "Where the access token is exchanged for a JWT (REST API v4).",
    )
    copernica_retries: int = setting(
        "COPERNICA_RETRIES",
        _non_negative_int,
        6,
        "Times a REST call is retried after 429/502/503/504 or a dropped connection before its file fails.",
    )
    copernica_retry_delay: float = setting(
        "COPERNICA_RETRY_DELAY",
        _positive_float,
        1.0,
        "Seconds of the first retry back-off (doubled each time, with jitter; Retry-After wins).",
    )
    auth: Items = setting(
        "INGEST_AUTH",
        _auth_methods,
        Items(("signature", "token")),
        "Who may post: any of `signature` (Copernica's signed requests), `token` (INGEST_TOKENS), `none`.",
    )
    tokens: Items | None = setting(
        "INGEST_TOKENS",
        _tokens,
        None,
        "Secret tokens (comma-separated, several during a rotation) accepted in `?token=` or `/copernica/<token>`.",
        secret=True,
    )
    public_hosts: Items | None = setting(
        "INGEST_PUBLIC_HOSTS",
        _hosts,
        None,
        "Host names signed calls must be addressed to (comma-separated). Unset: Host is not checked.",
    )
    copernica_account_id: str | None = setting(
        "COPERNICA_ACCOUNT_ID",
        _text,
        None,
        "Signed calls must carry this X-Copernica-ID (`account-1234`, `1234`; `-`/`_` and case ignored).",
    )
    signature_max_age: int = setting(
        "INGEST_SIGNATURE_MAX_AGE",
        _positive_int,
        60,
        "Seconds a signed call's Date may differ from the receiver's clock (past or future).",
    )
    signature_key_ttl: int = setting(
        "INGEST_SIGNATURE_KEY_TTL",
        _positive_int,
        3600,
        "Seconds a signing key fetched from DNS is kept (refetched early once when a signature fails).",
    )
    dns_server: str | None = setting(
        "INGEST_DNS_SERVER",
        _dns_server,
        None,
        "DNS server (`host:port`) asked for signing keys. Unset: the system's resolvers.",
    )
    allowed_networks: Items | None = setting(
        "INGEST_ALLOWED_NETWORKS",
        _networks,
        None,
        "Only callers in these CIDR networks may post (others get 403). Unset: any address.",
    )
    trusted_proxies: Items | None = setting(
        "INGEST_TRUSTED_PROXIES",
        _networks,
        None,
        "Proxies (CIDRs) whose X-Forwarded-For names the caller for INGEST_ALLOWED_NETWORKS.",
    )
    machine_networks: Items | None = setting(
        "INGEST_MACHINE_NETWORKS",
        _networks,
        None,
        "Opens and clicks from these CIDR networks are machine fetches (security scanners, link checkers), "
        "added to Apple's built-in proxy ranges; `ingest messages rebuild` applies a change to stored events.",
    )
    body_timeout: float = setting(
        "INGEST_BODY_TIMEOUT",
        _positive_float,
        30.0,
        "Seconds a caller may take to send its body; slower gets 408 (a stalled sender cannot hold the receiver).",
    )
    head_timeout: float = setting(
        "INGEST_HEAD_TIMEOUT",
        _positive_float,
        10.0,
        "Seconds a caller may take to send a request's line and headers, counted from the connection's "
        "opening or the previous response once bytes of the next request arrive; slower is disconnected.",
    )
    max_connections: int = setting(
        "INGEST_MAX_CONNECTIONS",
        _positive_int,
        4096,
        "Open connections one receiver process keeps; past it a new connection gets 503 with Retry-After "
        "and is closed at once.",
    )

    console_host: str = setting(
        "INGEST_CONSOLE_HOST",
        _text,
        "127.0.0.1",
        "Address `ingest console` listens on; without INGEST_CONSOLE_USERS only a loopback address is allowed.",
    )
    console_port: int = setting("INGEST_CONSOLE_PORT", _port, 9182, "Port `ingest console` listens on.")
    console_users: Items | None = setting(
        "INGEST_CONSOLE_USERS",
        _console_users,
        None,
        "Who may log in to the console: comma-separated `name:hash` (`ingest console hash-password` makes a hash). "
        "Unset: no login, loopback only.",
        secret=True,
    )
    console_secret: str | None = setting(
        "INGEST_CONSOLE_SECRET",
        _console_secret,
        None,
        "Key of the console's session cookies (32+ characters; the same on every console replica). "
        "Unset: a new key at each start (logins end with a restart).",
        secret=True,
    )
    console_metrics_urls: Items | None = setting(
        "INGEST_CONSOLE_METRICS_URLS",
        _metrics_urls,
        None,
        "The receivers' `/metrics` (comma-separated, one per process) the console samples for calls accepted, "
        "503s and refusals. Unset: those charts stay empty.",
    )
    console_sample_interval: float = setting(
        "INGEST_CONSOLE_SAMPLE_INTERVAL",
        _positive_float,
        10.0,
        "Seconds between the console's samples of the queue, the database and the receivers (kept 24 h in Redis).",
    )
    console_dashboard_url: str = setting(
        "INGEST_CONSOLE_DASHBOARD_URL",
        _url("http", "https"),
        "http://127.0.0.1:9181/",
        "rq-dashboard's address, linked from the console for the jobs themselves.",
    )
    erasure_key: str | None = setting(
        "INGEST_ERASURE_KEY",
        _erasure_key,
        None,
        "Secret key (16+ characters) of the keyed hashes of erased people (`ingest erase`); the same on every "
        "worker and command, never changed. Unset: `ingest erase` refuses.",
        secret=True,
    )
    ip_privacy: str = setting(
        "INGEST_IP_PRIVACY",
        _ip_privacy,
        "full",
        "What is kept of a reader's IP address: `full`, `truncate` (IPv4 to /24, IPv6 to /48) or `drop`.",
    )

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, *, dotenv: bool = True) -> Settings:
        """Read every setting once. `environ` defaults to `os.environ` plus `.env` when present."""
        if environ is None:
            environ = dict(os.environ)
            if dotenv:
                environ = {**_read_dotenv(), **environ}
        values: dict[str, Any] = {}
        for attr, var, cast, default, _doc in SPEC:
            raw = environ.get(var)
            if raw is None or raw == "":
                values[attr] = default
                continue
            try:
                values[attr] = cast(raw)
            except ValueError as exc:
                shown = var if var in SECRETS else f"{var}={raw!r}"  # a secret is never echoed
                raise SettingsError(f"{shown} is not valid: {exc}") from None
        return cls(**values)

    def require(self, *attrs: str) -> None:
        """Stop with a one-line message when a setting a command needs is unset."""
        for attr in attrs:
            if attr == "redis_url" and self.redis_sentinels:
                continue  # the Sentinels name the primary; REDIS_URL, if set, its database and password
            if getattr(self, attr) is None:
                var = next(v for a, v, *_ in SPEC if a == attr)
                raise SettingsError(f"{var} is not set (run `ingest dev` for the embedded servers)")

    def required(self, attr: Literal["redis_url", "database_url"]) -> str:
        """A server's URL a command cannot do without: its value, or `require`'s message."""
        self.require(attr)
        value: str = getattr(self, attr) or "redis://"  # (only None with REDIS_SENTINELS)
        return value

    def to_env(self) -> dict[str, str]:
        """The settings as environment variables, for child processes."""
        env = {}
        for attr, var, *_ in SPEC:
            value = getattr(self, attr)
            if value is not None:
                env[var] = str(value)
        return env


def _read_dotenv() -> dict[str, str]:
    if not os.path.exists(".env"):
        return {}
    from dotenv import dotenv_values

    return {k: v for k, v in dotenv_values(".env").items() if v is not None}


# (attribute, variable, cast, default, description) of every setting, in the class's order.
SPEC: tuple[tuple[str, str, Callable[[str], Any], Any, str], ...] = tuple(
    (f.name, f.metadata["var"], f.metadata["cast"], f.default, f.metadata["doc"]) for f in fields(Settings)
)

# Settings whose values are secrets: never repeated in an error message.
SECRETS = frozenset(f.metadata["var"] for f in fields(Settings) if f.metadata["secret"])
