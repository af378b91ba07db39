"""The email-facts benchmark: its transactions never mix an import with the drain, its rates
are each part's own, and a small run goes end to end against the real schema."""

from __future__ import annotations

from collections.abc import Iterator

import psycopg
import pytest
from psycopg.conninfo import make_conninfo

from bench import scale
from workers.events.model import Event


def test_a_transaction_holds_sent_records_or_webhook_calls_never_both() -> None:
    batches = list(scale.transactions(5_000, recipients=1_000))

    assert sum(len(batch) for batch in batches) == 5_000
    assert all(len(batch) <= scale.TRANSACTION for batch in batches)
    for batch in batches:
        records = {isinstance(item, Event) for item in batch}
        assert len(records) == 1
        assert scale.kind(batch) == ("import" if records == {True} else "drain")
    # a mailing's sends, then its calls, then the next mailing's sends: both kinds, in turn
    kinds = [scale.kind(batch) for batch in batches]
    assert kinds[0] == "import"
    assert "drain" in kinds
    assert kinds.index("import", kinds.index("drain")) > kinds.index("drain")


def test_each_part_has_its_own_rate_and_all_their_sum() -> None:
    spent = {("new", "drain"): 2.0, ("new", "import"): 1.0}

    rates = scale._rates(spent, {"drain": 6_000, "import": 4_000}, "new")

    assert rates == {"drain": 3_000.0, "import": 4_000.0, "all": 10_000 / 3.0}


@pytest.fixture
def bench_server(migrated_database_url: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """The test server as the bench's; the databases it leaves (old and new) dropped after."""
    monkeypatch.setenv("BENCH_DATABASE_URL", migrated_database_url)
    yield
    with psycopg.connect(make_conninfo(migrated_database_url, dbname="postgres"), autocommit=True) as conn:
        for name in scale.DATABASES:
            conn.execute(f"DROP DATABASE IF EXISTS bench_scale_{name} WITH (FORCE)")


@pytest.mark.usefixtures("bench_server")
def test_a_small_run_reports_the_drain_and_the_import_apart(capsys: pytest.CaptureFixture[str]) -> None:
    assert scale.main(["--events", "3000", "--recipients", "1000"]) == 0

    out = capsys.readouterr().out
    for row in ("webhook drain (parse + store)", "`sent` records (store)", "all events", "bytes per open"):
        assert row in out
    assert out.count("messages cost") == 3
