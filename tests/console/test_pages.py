"""The overview (tiles and charts from the kept samples, the workers) and the mailings pages."""

from __future__ import annotations

import json
import re
import time
from datetime import UTC, datetime, timedelta

import psycopg
import redis
from aiohttp.test_utils import TestClient

from console import samples
from console.views.overview import DAY_STEP
from tests.console.conftest import store_bodies
from tests.payloads import BASE_TIME, webhook_body


def chart_data(html: str, element: str) -> dict:
    found = re.search(rf'<script type="application/json" id="{element}">(.*?)</script>', html, re.S)
    assert found, element
    return json.loads(found.group(1))


async def test_the_overview_charts_the_kept_samples(logged_in: tuple[TestClient, str], redis_conn: redis.Redis) -> None:
    client, _csrf = logged_in
    now = time.time()
    if (now - 30) // DAY_STEP != (now - 10) // DAY_STEP:  # the three recent samples in one point of the day chart
        now -= 25
    samples.save(redis_conn, {"t": now - 7200, "acc": 0}, interval=10)  # older than the hour: the day chart only
    for n, (acc, ins) in enumerate([(0, 0), (40, 10), (100, 100)]):
        t = now - 30 + n * 10
        rec = {"t": t, "q": 3, "age": 1.5, "acc": acc, "ins": ins, "u503": n, "refused": {"token": n * 2}}
        rec |= {"rej1h": 7, "types1h": {"opened": 90, "clicked": 10}, "errors": []}
        samples.save(redis_conn, rec, interval=10)
    html = await (await client.get("/")).text()
    assert re.search(r'id="accepted-1h">100<', html) and re.search(r'id="stored-1h">100<', html)
    assert re.search(r'id="unavailable-1h">2<', html) and re.search(r'id="rejected-1h">7<', html)
    assert "<th>token</th><td>4</td>" in html
    data = chart_data(html, "chart-data")
    assert data["hour"]["accepted"] == [None, 4.0, 6.0]
    assert data["hour"]["stored"] == [None, 1.0, 9.0]
    assert data["hour"]["refused"] == {"token": [None, 0.2, 0.2]}
    assert len(data["day"]["times"]) == 2
    assert 'id="no-workers"' in html  # none registered on the queue
    assert '<script src="/static/plotly.min.js">' in html


async def test_the_overview_without_samples(logged_in: tuple[TestClient, str]) -> None:
    client, _csrf = logged_in
    html = await (await client.get("/")).text()
    assert 'id="accepted-1h">-<' in html
    assert chart_data(html, "chart-data")["hour"]["times"] == []


async def page_of(client: TestClient, url: str) -> str:
    resp = await client.get(url)
    assert resp.status == 200, await resp.text()
    return await resp.text()


def mailing_events(database_url: str, mailing: int, sent_at: int, *, recipients: int = 3) -> None:
    bodies = []
    for n in range(recipients):
        message = f"{mailing}-m{n}"
        bodies.append(webhook_body("attempt", id=message, time=str(sent_at), mailing=str(mailing)))
        bodies.append(webhook_body("open", id=message, time=str(sent_at + 3600 + n), ip="192.0.2.1"))
    bodies.append(webhook_body("click", id=f"{mailing}-m0", time=str(sent_at + 7300), url="https://e.x/"))
    bodies.append(
        webhook_body(
            "failure",
            id=f"{mailing}-x",
            time=str(sent_at + 60),
            mailing=str(mailing),
            action="failed",
            state="rcpt",
            code="550",
            extended="5.1.1",
            description="user unknown",
        )
    )
    store_bodies(database_url, *bodies)


async def test_mailings_of_the_last_90_days(logged_in: tuple[TestClient, str], database_url: str) -> None:
    client, _csrf = logged_in
    recent = int((datetime.now(UTC) - timedelta(days=2)).timestamp())
    mailing_events(database_url, 4711, recent)
    mailing_events(database_url, 4712, recent)
    mailing_events(database_url, 99, int((datetime.now(UTC) - timedelta(days=120)).timestamp()))
    html = await page_of(client, "/mailings")
    rows = re.findall(r'<a href="/mailings/(\d+)">', html)
    assert rows == ["4712", "4711"]  # not the mailing of 120 days ago
    assert "unique opens" in html
    row = html[html.index('href="/mailings/4711"') :]
    cells = re.findall(r"<td>([^<]*)</td>", row.split("</tr>")[0])
    assert cells[:3] == ["3", "0", "3"]  # sent, delivered, opens


async def test_a_mailing_page(logged_in: tuple[TestClient, str], database_url: str, db: psycopg.Connection) -> None:
    client, _csrf = logged_in
    mailing_events(database_url, 4711, BASE_TIME)
    html = await page_of(client, "/mailings/4711")
    assert "Sent from 2026-11-26 12:00 UTC" in html
    chart = chart_data(html, "mailing-data")
    assert chart["hours"] == [1.0, 2.0] and chart["opens"] == [3, 0] and chart["clicks"] == [0, 1]
    assert "user unknown" in html and "5.1.1" in html
    assert (await client.get("/mailings/5")).status == 404
    assert db.execute("SELECT count(*) FROM events WHERE mailing_id IS NULL").fetchone()[0] == 4  # attributed


def figures(html: str) -> dict[str, str]:
    """A mailing page's figures table: {column: shown value}."""
    table = html[html.index('id="figures"') :].split("</table>")[0]
    return dict(re.findall(r"<tr><th>([^<]*)</th><td>([^<]*)</td></tr>", table))


def list_row(html: str, mailing: int) -> list[str]:
    """The cells of a mailing's row in the list, after its id."""
    return re.findall(r"<td>([^<]*)</td>", html[html.index(f'href="/mailings/{mailing}"') :].split("</tr>")[0])


async def test_the_figures_show_what_was_stored_just_before(
    logged_in: tuple[TestClient, str], database_url: str
) -> None:
    client, _csrf = logged_in
    recent = int((datetime.now(UTC) - timedelta(days=2)).timestamp())
    mailing_events(database_url, 4711, recent)
    page = await page_of(client, "/mailings/4711")
    assert (figures(page)["opens"], figures(page)["clicks"]) == ("3", "1")
    assert chart_data(page, "mailing-data")["opens"] == [3, 0]
    assert list_row(await page_of(client, "/mailings"), 4711)[:3] == ["3", "0", "3"]

    store_bodies(
        database_url,
        webhook_body("open", id="4711-m1", time=str(recent + 3700), ip="192.0.2.2"),
        webhook_body("click", id="4711-m2", time=str(recent + 7400), url="https://e.x/"),
        webhook_body("delivery", id="4711-m0", time=str(recent + 5), mailing="4711"),
    )
    page = await page_of(client, "/mailings/4711")
    assert (figures(page)["opens"], figures(page)["clicks"], figures(page)["delivered"]) == ("4", "2", "1")
    chart = chart_data(page, "mailing-data")
    assert chart["opens"] == [4, 0] and chart["clicks"] == [0, 2]
    assert list_row(await page_of(client, "/mailings"), 4711)[:3] == ["3", "1", "4"]  # sent, delivered, opens
    assert 'id="computing"' not in page and "http-equiv" not in page


async def test_a_mailing_page_shows_the_latest_reconcile_result(
    logged_in: tuple[TestClient, str], database_url: str, db: psycopg.Connection
) -> None:
    from workers.backfill.statistics import Measure
    from workers.storage.reconciliations import record

    client, _csrf = logged_in
    recent = int((datetime.now(UTC) - timedelta(days=2)).timestamp())
    mailing_events(database_url, 4711, recent)
    mailing_events(database_url, 4712, recent)
    html = await page_of(client, "/mailings/4711")
    assert 'id="not-reconciled"' in html and "run <code>ingest reconcile --mailing 4711</code>" in html
    assert 'id="reconcile"' not in html

    record(db, 4711, [Measure("deliveries", 5, 5), Measure("impressions", 9, 3)], source="ms")
    record(
        db, 4711, [Measure("deliveries", 5, 5), Measure("impressions", 7, 3), Measure("abuses", None, 0)], source="ms"
    )
    html = await page_of(client, "/mailings/4711")
    assert 'id="not-reconciled"' not in html and 'id="reconciled"' in html
    table = html[html.index('id="reconcile"') :].split("</table>")[0]
    rows = re.findall(r"<tr( class=\"missing\")?><td>([^<]*)</td><td>([^<]*)</td><td>([^<]*)</td>", table)
    assert rows == [
        ("", "deliveries", "5", "5"),
        (' class="missing"', "impressions", "7", "3"),  # the newest check, highlighted
        ("", "abuses", "-", "0"),
    ]
    assert "4 missing" in html[html.index('id="reconciled"') :]

    listing = await page_of(client, "/mailings")
    row = listing[listing.index('href="/mailings/4711"') :].split("</tr>")[0]
    assert '<span class="missing"' in row and "4 missing" in row
    row = listing[listing.index('href="/mailings/4712"') :].split("</tr>")[0]
    assert "missing" not in row and '<td class="check"><span class="hint">-</span>' in row
