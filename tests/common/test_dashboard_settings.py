"""rq-dashboard's settings from ours: through a password-protected Sentinel to a password-protected
primary, with rq-dashboard's own connection code; a bad setting stops it with one line."""

from __future__ import annotations

import importlib
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest
import redis

from ingest.devstack.embedded import EmbeddedSentinel, EmbeddedValkey
from tests.processes import ingest_env

PRIMARY_PASSWORD = "primary-pw"
SENTINEL_PASSWORD = "sentinel-pw"


class LockedSentinel(EmbeddedSentinel):
    """A Sentinel that requires a password and knows the primary's."""

    def config(self) -> str:
        return (
            super().config()
            + f"sentinel auth-pass {self.master_name} {PRIMARY_PASSWORD}\nrequirepass {SENTINEL_PASSWORD}\n"
        )

    def _ready(self) -> bool:
        try:
            client = redis.Redis(port=self.port, password=SENTINEL_PASSWORD, socket_timeout=1)
            with client:
                return bool(client.ping())
        except redis.RedisError:
            return False


@pytest.fixture
def locked_sentinel(tmp_path: Path) -> Iterator[str]:
    """The address of a password-protected Sentinel watching a password-protected primary."""
    with EmbeddedValkey(tmp_path / "primary") as primary:
        with redis.Redis(port=primary.port) as client:
            client.config_set("requirepass", PRIMARY_PASSWORD)
        with LockedSentinel(tmp_path / "sentinel", ("127.0.0.1", primary.port), master_name="ingest") as sentinel:
            yield sentinel.address


def dashboard_settings(monkeypatch: pytest.MonkeyPatch, env: dict[str, str]) -> ModuleType:
    monkeypatch.chdir(Path(__file__).parent)  # no .env of the checkout
    for var in ("REDIS_URL", "REDIS_SENTINELS", "REDIS_SENTINEL_MASTER", "REDIS_SENTINEL_PASSWORD"):
        monkeypatch.delenv(var, raising=False)
    for var, value in env.items():
        monkeypatch.setenv(var, value)
    sys.modules.pop("common.dashboard_settings", None)
    return importlib.import_module("common.dashboard_settings")


def test_dashboard_reaches_the_primary_through_a_locked_sentinel(
    locked_sentinel: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytest.importorskip("rq_dashboard")
    from rq_dashboard.cli import make_flask_app
    from rq_dashboard.web import setup_rq_connection

    module = dashboard_settings(
        monkeypatch,
        {
            "REDIS_URL": f"redis://:{PRIMARY_PASSWORD}@ignored.invalid:1/0",
            "REDIS_SENTINELS": locked_sentinel,
            "REDIS_SENTINEL_MASTER": "ingest",
            "REDIS_SENTINEL_PASSWORD": SENTINEL_PASSWORD,
        },
    )
    # What `rq-dashboard --config common.dashboard_settings` does with the module.
    app = make_flask_app("common.dashboard_settings", None, None, "")
    assert app.config["RQ_DASHBOARD_REDIS_URL"] == module.RQ_DASHBOARD_REDIS_URL
    assert "pw" not in module.RQ_DASHBOARD_REDIS_URL
    setup_rq_connection(app)
    assert app.redis_conn.ping()
    assert app.redis_conn.set("dashboard-probe", "1")  # the primary, not a read-only replica
    response = app.test_client().get("/0/data/queues.json")
    assert response.status_code == 200, response.data


def test_dashboard_without_the_passwords_is_refused(locked_sentinel: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """The check above is not vacuous: the same servers refuse a dashboard given only the URL."""
    pytest.importorskip("rq_dashboard")
    from redis.sentinel import MasterNotFoundError
    from redis_sentinel_url import connect

    _, client = connect(f"redis+sentinel://{locked_sentinel}/ingest/0")
    with pytest.raises(MasterNotFoundError, match="AuthenticationError"):
        client.ping()  # the Sentinel refuses to name the primary
    module = dashboard_settings(monkeypatch, {"REDIS_SENTINELS": locked_sentinel, "REDIS_SENTINEL_MASTER": "ingest"})
    _, client = connect(module.RQ_DASHBOARD_REDIS_URL, sentinel_options={"password": SENTINEL_PASSWORD})
    with pytest.raises(redis.AuthenticationError):
        client.ping()  # the primary refuses the client


def test_bad_setting_stops_rq_dashboard_with_one_line() -> None:
    import subprocess

    rq_dashboard = Path(sys.executable).parent / "rq-dashboard"
    if not rq_dashboard.exists():
        pytest.skip("rq-dashboard is not installed in this virtualenv")
    env = ingest_env(
        "redis://reader:pw@127.0.0.1:1/0",
        "postgresql://x@127.0.0.1:1/x",
        REDIS_SENTINELS="127.0.0.1:1",
        REDIS_SENTINEL_MASTER="ingest",
    )
    done = subprocess.run(
        [str(rq_dashboard), "--config", "common.dashboard_settings", "--port", "1"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        cwd=Path(__file__).parent,
    )
    assert done.returncode == 1
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("ingest: rq-dashboard cannot reach"), done.stderr
