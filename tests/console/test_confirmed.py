"""The flow rejected calls and failed jobs share (`console.views.confirmed`): its routes, the
page number, and confirmation pages that check the item and change nothing."""

from __future__ import annotations

import psycopg
import pytest
import redis
from aiohttp.test_utils import TestClient, make_mocked_request
from rq import Queue
from rq.registry import FailedJobRegistry

from common.settings import Settings
from console.app import build_app
from console.views.confirmed import page_number
from tests.console.test_replay import count
from tests.workers.storage.test_rejected import keep, open_call


def test_the_routes_of_both_flows(settings: Settings) -> None:
    app = build_app(settings, sample=False)
    routes = sorted(
        (route.method, route.resource.canonical)
        for route in app.router.routes()
        if route.method != "HEAD"
        and route.resource is not None
        and route.resource.canonical.startswith(("/rejected", "/failed"))
    )
    assert routes == sorted(
        [
            ("GET", "/rejected"),
            ("GET", "/rejected/replay"),
            ("POST", "/rejected/replay"),
            ("GET", "/rejected/{id}"),
            ("GET", "/rejected/{id}/replay"),
            ("POST", "/rejected/{id}/replay"),
            ("GET", "/failed"),
            ("GET", "/failed/requeue"),
            ("POST", "/failed/requeue"),
            ("GET", "/failed/{id}/requeue"),
            ("POST", "/failed/{id}/requeue"),
        ]
    )


@pytest.mark.parametrize(("query", "page"), [("", 1), ("?page=3", 3), ("?page=0", 1), ("?page=-2", 1), ("?page=x", 1)])
def test_the_page_number(query: str, page: int) -> None:
    assert page_number(make_mocked_request("GET", f"/rejected{query}")) == page


async def test_confirming_one_call_checks_it_and_changes_nothing(
    logged_in: tuple[TestClient, str], db: psycopg.Connection
) -> None:
    client, _csrf = logged_in
    call_id = keep(db, open_call(), "old parser bug")
    html = await (await client.get(f"/rejected/{call_id}/replay")).text()
    assert f"Replay rejected call {call_id}?" in html and f'action="/rejected/{call_id}/replay"' in html
    assert (count(db, "events"), count(db, "rejected_events")) == (0, 1)
    unknown = await client.get(f"/rejected/{call_id + 1}/replay")
    assert unknown.status == 404 and f"No rejected call with id {call_id + 1}." in await unknown.text()
    assert (await client.get("/rejected/abc/replay")).status == 404
    assert (await client.get("/rejected/abc")).status == 404
    html = await (await client.get("/rejected/replay")).text()
    assert "Replay all 1 rejected calls?" in html and 'action="/rejected/replay"' in html


async def test_confirming_a_requeue_counts_the_failed_jobs(
    logged_in: tuple[TestClient, str], redis_conn: redis.Redis
) -> None:
    client, csrf = logged_in
    html = await (await client.get("/failed/requeue")).text()
    assert "Requeue all 0 failed jobs?" in html
    html = await (await client.get("/failed/job%201/requeue")).text()
    assert "Requeue failed job job 1?" in html and 'action="/failed/job%201/requeue"' in html
    resp = await client.post("/failed/requeue", data={"csrf": csrf})
    assert resp.status == 200 and "Requeued 0 failed jobs." in await resp.text()
    assert FailedJobRegistry(queue=Queue("copernica", connection=redis_conn)).get_job_count() == 0
