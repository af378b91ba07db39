"""The Redis client builder: a plain REDIS_URL exactly as before, Sentinel settings parsed into
Sentinel-managed pools, bad Sentinel settings stopped with one line."""

from __future__ import annotations

import pytest
import redis
import redis.asyncio as aredis
import redis.asyncio.sentinel as asentinel
import redis.sentinel as sentinel
from rq import Queue

from common import redisconn
from common.rqcontract.worker import FactoryScheduler, HeartbeatWorker
from common.settings import Settings, SettingsError
from tests.processes import ingest_env, run_ingest

SENTINEL_ENV = {
    "REDIS_URL": "redis://:secret@ignored.example:1/3",
    "REDIS_SENTINELS": "10.0.0.1:26379, sentinel-b:26380",
    "REDIS_SENTINEL_MASTER": "ingest",
    "REDIS_SENTINEL_PASSWORD": "sentinel-secret",
}


def sentinel_settings(**extra: str) -> Settings:
    return Settings.from_env({**SENTINEL_ENV, **extra}, dotenv=False)


def plain(kwargs: dict[str, object]) -> dict[str, object]:
    """Connection options, without redis-py's per-pool objects (handlers, registries)."""
    return {k: v for k, v in kwargs.items() if isinstance(v, str | int | float | bool | type(None))}


def test_plain_url_builds_what_from_url_builds() -> None:
    url = "redis://:pw@127.0.0.1:6390/2"
    settings = Settings.from_env({"REDIS_URL": url}, dotenv=False)
    built = redisconn.sync_client(settings, socket_timeout=5, socket_connect_timeout=5)
    expected = redis.Redis.from_url(url, socket_timeout=5, socket_connect_timeout=5)
    assert type(built.connection_pool) is redis.ConnectionPool
    assert built.connection_pool.connection_class is expected.connection_pool.connection_class
    assert plain(built.connection_pool.connection_kwargs) == plain(expected.connection_pool.connection_kwargs)
    assert plain(built.connection_pool.connection_kwargs)["db"] == 2
    pool = redisconn.async_pool(settings, socket_timeout=None)
    assert type(pool) is aredis.ConnectionPool
    assert plain(pool.connection_kwargs) == plain(
        aredis.ConnectionPool.from_url(url, socket_timeout=None).connection_kwargs
    )
    assert not redisconn.uses_sentinel(settings)
    assert redisconn.dashboard_url(settings) == url


def test_sentinel_settings_parsed() -> None:
    settings = sentinel_settings()
    assert redisconn.sentinel_addresses(settings) == [("10.0.0.1", 26379), ("sentinel-b", 26380)]
    assert "sentinel-secret" not in repr(settings)
    client = redisconn.sync_client(settings, socket_timeout=2)
    pool = client.connection_pool
    assert isinstance(pool, sentinel.SentinelConnectionPool)
    assert pool.service_name == "ingest" and pool.is_master
    # REDIS_URL gives the database and the password only, never the address
    assert pool.connection_kwargs["db"] == 3 and pool.connection_kwargs["password"] == "secret"
    assert "host" not in pool.connection_kwargs or pool.connection_kwargs["host"] != "ignored.example"
    assert pool.connection_kwargs["socket_timeout"] == 2
    sentinels = pool.sentinel_manager.sentinels
    assert [s.connection_pool.connection_kwargs["port"] for s in sentinels] == [26379, 26380]
    assert {s.connection_pool.connection_kwargs["password"] for s in sentinels} == {"sentinel-secret"}


def test_sentinel_async_pool_and_dashboard() -> None:
    settings = sentinel_settings()
    pool = redisconn.async_pool(settings, socket_timeout=None)
    assert isinstance(pool, asentinel.SentinelConnectionPool)
    assert pool.connection_class is asentinel.SentinelManagedConnection
    assert pool.connection_kwargs["db"] == 3
    assert isinstance(redisconn.async_client(settings).connection_pool, asentinel.SentinelConnectionPool)
    assert redisconn.dashboard_url(settings) == "redis+sentinel://10.0.0.1:26379,sentinel-b:26380/ingest/3"


def test_sentinel_without_redis_url_is_enough() -> None:
    settings = Settings.from_env({"REDIS_SENTINELS": "127.0.0.1:26379", "REDIS_SENTINEL_MASTER": "m"}, dotenv=False)
    settings.require("redis_url")
    assert redisconn.sync_client(settings).connection_pool.connection_kwargs.get("db", 0) == 0


def test_sentinels_without_master_stop() -> None:
    settings = Settings.from_env({"REDIS_SENTINELS": "127.0.0.1:26379"}, dotenv=False)
    with pytest.raises(SettingsError, match="REDIS_SENTINEL_MASTER"):
        redisconn.sync_client(settings)


@pytest.mark.parametrize("bad", ["sentinel-a", "a:b", "a:0", ":26379", ","])
def test_bad_sentinels_refused(bad: str) -> None:
    with pytest.raises(SettingsError, match="REDIS_SENTINELS"):
        Settings.from_env({"REDIS_SENTINELS": bad}, dotenv=False)


def test_bad_sentinels_exit_2_with_one_line() -> None:
    env = ingest_env("redis://127.0.0.1:1/0", "postgresql://x@127.0.0.1:1/x", REDIS_SENTINELS="sentinel-a")
    done = run_ingest(["stats"], env, timeout=60)
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("ingest: REDIS_SENTINELS="), done.stderr


def test_worker_scheduler_builds_its_own_connection(redis_url: str) -> None:
    """With a factory, the scheduler's connection comes from it (not RQ's rebuild from the
    worker's pool arguments, which loses a Sentinel pool)."""
    connection = redis.Redis.from_url(redis_url)
    built: list[redis.Redis] = []

    def factory() -> redis.Redis:
        built.append(redis.Redis.from_url(redis_url))
        return built[-1]

    worker = HeartbeatWorker([Queue("redisconn-test", connection=connection)], connection=connection)
    worker.scheduler_connection = factory
    worker._start_scheduler(burst=True)
    assert isinstance(worker.scheduler, FactoryScheduler)
    assert built and worker.scheduler.connection is built[0]


def test_dashboard_config_plain_url_is_the_url_alone() -> None:
    settings = Settings.from_env({"REDIS_URL": "rediss://user:pw@redis.example:6380/2"}, dotenv=False)
    assert redisconn.dashboard_config(settings) == {"RQ_DASHBOARD_REDIS_URL": "rediss://user:pw@redis.example:6380/2"}


def test_dashboard_config_hands_both_sentinel_passwords_apart() -> None:
    config = redisconn.dashboard_config(sentinel_settings())
    assert config == {
        "RQ_DASHBOARD_REDIS_URL": "redis+sentinel://10.0.0.1:26379,sentinel-b:26380/ingest/3",
        "RQ_DASHBOARD_REDIS_PASSWORD": "secret",
        "RQ_DASHBOARD_REDIS_SENTINEL_PASSWORD": "sentinel-secret",
    }


@pytest.mark.parametrize("url", ["redis://reader:pw@x/0", "rediss://:pw@x/0"])
def test_dashboard_config_refuses_what_its_sentinel_url_cannot_carry(url: str) -> None:
    with pytest.raises(SettingsError, match="rq-dashboard cannot reach a Sentinel-managed primary"):
        redisconn.dashboard_config(sentinel_settings(REDIS_URL=url))
