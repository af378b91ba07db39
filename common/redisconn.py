"""The one place Redis clients and pools are built from the settings: synchronous or asyncio,
for a plain `REDIS_URL` or through Sentinel (`REDIS_SENTINELS`, `REDIS_SENTINEL_MASTER`).

Through Sentinel, every connection asks the Sentinels for the current primary when it connects
(redis-py's `SentinelManagedConnection`), so a client follows a failover without a restart: a
connection to the old primary breaks (or gets READONLY, which redis-py turns into a
`ConnectionError` and a dropped socket) and the next one reaches the new primary. `REDIS_URL`
then gives only the database number, the user name and password, and TLS (`rediss://`).
"""

from __future__ import annotations

from typing import Any

import redis
import redis.asyncio as aredis
import redis.asyncio.sentinel as asentinel
import redis.sentinel as sentinel
from redis.connection import parse_url

from common.settings import Settings, SettingsError

DEFAULT_TIMEOUT = 5.0  # seconds a Sentinel may take to answer, when the options name none


def uses_sentinel(settings: Settings) -> bool:
    return bool(settings.redis_sentinels)


def sentinel_addresses(settings: Settings) -> list[tuple[str, int]]:
    """REDIS_SENTINELS as (host, port) pairs (the setting's cast has checked the form)."""
    pairs = []
    for item in settings.redis_sentinels or ():
        host, _, port = item.rpartition(":")
        pairs.append((host, int(port)))
    return pairs


def _master_name(settings: Settings) -> str:
    if not settings.redis_sentinel_master:
        raise SettingsError("REDIS_SENTINELS is set but REDIS_SENTINEL_MASTER is not (the monitored name)")
    return settings.redis_sentinel_master


def _primary_options(settings: Settings) -> dict[str, Any]:
    """What REDIS_URL still says with Sentinel: database, user, password, TLS (never the address)."""
    if settings.redis_url is None:
        return {}
    parsed = parse_url(settings.redis_url)
    options = {key: parsed[key] for key in ("db", "username", "password") if parsed.get(key) is not None}
    if settings.redis_url.startswith("rediss://"):
        options["ssl"] = True
    return options


def _sentinel_options(settings: Settings, options: dict[str, Any]) -> dict[str, Any]:
    timeout = options.get("socket_connect_timeout") or options.get("socket_timeout") or DEFAULT_TIMEOUT
    found: dict[str, Any] = {"socket_timeout": timeout, "socket_connect_timeout": timeout}
    if settings.redis_sentinel_password:
        found["password"] = settings.redis_sentinel_password
    return found


def sync_client(settings: Settings, **options: Any) -> redis.Redis:
    """A synchronous client of the primary; `options` are redis-py's client options."""
    if not uses_sentinel(settings):
        return redis.Redis.from_url(settings.required("redis_url"), **options)
    manager = sentinel.Sentinel(sentinel_addresses(settings), sentinel_kwargs=_sentinel_options(settings, options))
    client: redis.Redis = manager.master_for(_master_name(settings), **_primary_options(settings), **options)
    return client


def async_client(settings: Settings, **options: Any) -> aredis.Redis:
    """An asyncio client of the primary."""
    client: aredis.Redis = aredis.Redis.from_pool(async_pool(settings, **options))  # owns (closes) its pool
    return client


def async_pool(settings: Settings, **options: Any) -> aredis.ConnectionPool:
    """An asyncio connection pool of the primary. Its connections must be connected with
    `connect()` before a bare `send_packed_command`: that one connects to the connection's own
    address, which for a Sentinel-managed connection is not yet the primary's."""
    if not uses_sentinel(settings):
        return aredis.ConnectionPool.from_url(settings.required("redis_url"), **options)
    manager = asentinel.Sentinel(sentinel_addresses(settings), sentinel_kwargs=_sentinel_options(settings, options))
    return asentinel.SentinelConnectionPool(
        _master_name(settings), manager, **{**manager.connection_kwargs, **_primary_options(settings), **options}
    )


def dashboard_url(settings: Settings) -> str:
    """The Redis URL for rq-dashboard: REDIS_URL, or with Sentinel its `redis+sentinel://` form
    (`host:port,...,/master/db`, which rq-dashboard reads with redis-sentinel-url). With Sentinel
    the passwords stay out of it: `dashboard_config` hands them to rq-dashboard apart."""
    if not uses_sentinel(settings):
        return settings.required("redis_url")
    db = _primary_options(settings).get("db", 0)
    return f"redis+sentinel://{','.join(settings.redis_sentinels or ())}/{_master_name(settings)}/{db}"


def dashboard_config(settings: Settings) -> dict[str, Any]:
    """rq-dashboard's Flask settings for our Redis (`rq-dashboard --config common.dashboard_settings`).

    rq-dashboard 0.9 connects with `redis_sentinel_url.connect(url, sentinel_options={"password":
    RQ_DASHBOARD_REDIS_SENTINEL_PASSWORD}, client_options={"password": RQ_DASHBOARD_REDIS_PASSWORD})`,
    and those two settings can only come from a config module or file, never from its command line
    or environment. Its Sentinel URL carries no user name and no TLS, so a Sentinel-managed primary
    that needs either is refused here with the reason rather than failing at the first page."""
    url = dashboard_url(settings)
    if not uses_sentinel(settings):
        return {"RQ_DASHBOARD_REDIS_URL": url}  # the URL carries user, password and TLS itself
    primary = _primary_options(settings)
    if primary.get("username") or primary.get("ssl"):
        raise SettingsError(
            "rq-dashboard cannot reach a Sentinel-managed primary with a user name or TLS "
            "(its redis+sentinel URL carries neither): use REDIS_URL=redis://:PASSWORD@/DB"
        )
    return {
        "RQ_DASHBOARD_REDIS_URL": url,
        "RQ_DASHBOARD_REDIS_PASSWORD": primary.get("password"),
        "RQ_DASHBOARD_REDIS_SENTINEL_PASSWORD": settings.redis_sentinel_password,
    }
