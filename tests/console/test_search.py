"""Search and the event page: found through each field, paged, the payload shown as text."""

from __future__ import annotations

import re
import uuid

import psycopg
from aiohttp.test_utils import TestClient

from common.envelope import Envelope
from tests.console.conftest import store_bodies
from tests.payloads import BASE_TIME, webhook_body
from workers.jobs import parse_calls

HOSTILE = '<script>alert(1)</script>"><img src=x onerror=alert(2)>'


def event_keys(html: str) -> list[str]:
    """The events a page links to, by their keys (32 hex digits)."""
    return re.findall(r'href="/events/([0-9a-f]{32})"', html)


def stored_key(db: psycopg.Connection, message_id: str) -> str:
    return db.execute("SELECT event_key FROM events WHERE message_id = %s", (message_id,)).fetchone()[0].hex


async def test_each_field_finds_the_event(
    logged_in: tuple[TestClient, str], database_url: str, db: psycopg.Connection
) -> None:
    client, _csrf = logged_in
    body = webhook_body("open", id="msg-1", time=str(BASE_TIME), recipient="a@example.com", mailing="4711")
    other = webhook_body("click", id="msg-2", time=str(BASE_TIME + 5), recipient="b@example.com", url="https://x")
    assert store_bodies(database_url, body, other) == 2
    wanted = key = stored_key(db, "msg-1")
    for query in (
        "recipient=a@example.com",
        "message_id=msg-1",
        "mailing_id=4711",
        f"event_key={key}",
        "event_type=opened&since=2026-11-26",
        "since=2026-11-26T12:00:00&until=2026-11-26T12:00:02",
    ):
        resp = await client.get(f"/search?{query}")
        assert resp.status == 200
        assert event_keys(await resp.text()) == [wanted], query
    resp = await client.get("/search?recipient=nobody@example.com")
    assert "Nothing found" in await resp.text()
    both = await (await client.get("/search?since=2026-11-26")).text()
    assert len(event_keys(both)) == 2


async def test_the_event_page_shows_columns_origin_and_payload(
    logged_in: tuple[TestClient, str], database_url: str, db: psycopg.Connection
) -> None:
    client, _csrf = logged_in
    store_bodies(database_url, webhook_body("open", id="msg-1", time=str(BASE_TIME), recipient="a@example.com"))
    key = stored_key(db, "msg-1")
    html = await (await client.get(f"/events/{key}")).text()
    assert "Came from a <strong>webhook</strong>" in html
    assert "a@example.com" in html and "opened" in html and key in html
    assert 'id="shared-key"' not in html
    payload = re.search(r'<pre id="payload">(.*?)</pre>', html, re.S).group(1)
    assert "&#34;id&#34;: &#34;msg-1&#34;" in payload
    unknown = ("1" if key[0] == "0" else "0") + key[1:]
    resp = await client.get(f"/events/{unknown}")
    assert resp.status == 404 and f"No stored event with key {unknown}." in await resp.text()
    assert (await client.get("/events/x")).status == 404


async def test_the_event_page_is_found_by_each_form_of_the_key(
    logged_in: tuple[TestClient, str], database_url: str, db: psycopg.Connection
) -> None:
    client, _csrf = logged_in
    store_bodies(database_url, webhook_body("open", id="msg-1", time=str(BASE_TIME), recipient="a@example.com"))
    key = stored_key(db, "msg-1")
    for form in (key, str(uuid.UUID(key)), key.upper()):
        resp = await client.get(f"/events/{form}")
        assert resp.status == 200, form
        assert 'id="payload"' in await resp.text()


async def test_an_event_number_of_an_older_link_is_a_clear_404_page(
    logged_in: tuple[TestClient, str], database_url: str
) -> None:
    """Events had numbers (`events.id`, dropped by migration 0014); a bookmarked `/events/<n>` is
    an HTML page saying how events are named now."""
    client, _csrf = logged_in
    store_bodies(database_url, webhook_body("open", id="msg-1", time=str(BASE_TIME), recipient="a@example.com"))
    for number in ("1", "123456"):
        resp = await client.get(f"/events/{number}")
        assert resp.status == 404 and resp.content_type == "text/html"
        assert "named by its event key" in await resp.text()


async def test_a_key_two_rows_share_shows_the_first_and_links_them_all(
    logged_in: tuple[TestClient, str], database_url: str, db: psycopg.Connection
) -> None:
    """Two copies of an event without a time of its own, stored at the same moment by two
    workers, are two rows with one key (store._NEW_KEY's limit): the page says so."""
    client, _csrf = logged_in
    store_bodies(database_url, webhook_body("open", id="msg-1", time=str(BASE_TIME), recipient="a@example.com"))
    db.execute(
        "INSERT INTO events (event_key, event_type, copernica_type, occurred_at, received_at, source, message_id,"
        " payload) SELECT event_key, event_type, copernica_type, occurred_at + interval '1 s', received_at, source,"
        " 'msg-1-copy', payload FROM events"
    )
    key = stored_key(db, "msg-1")
    html = await (await client.get(f"/events/{key}")).text()
    assert 'id="shared-key"' in html and f'href="/search?event_key={key}"' in html
    assert "msg-1-copy" not in html  # the earlier row is shown


async def test_a_hostile_payload_is_shown_as_text(
    logged_in: tuple[TestClient, str], database_url: str, db: psycopg.Connection
) -> None:
    client, _csrf = logged_in
    store_bodies(database_url, webhook_body("open", id="msg-h", time=str(BASE_TIME), recipient=HOSTILE, x=HOSTILE))
    key = stored_key(db, "msg-h")
    for page in (f"/events/{key}", "/search?message_id=msg-h"):
        html = await (await client.get(page)).text()
        assert "<script>alert" not in html and "<img src=x" not in html, page
        assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html, page


async def test_results_are_paged_newest_first(
    logged_in: tuple[TestClient, str], database_url: str, monkeypatch: object
) -> None:
    from workers.storage import browse

    client, _csrf = logged_in
    monkeypatch.setattr(browse, "PAGE", 3)  # type: ignore[attr-defined]
    bodies = [webhook_body("open", id=f"m{n}", time=str(BASE_TIME + n), recipient="r@example.com") for n in range(7)]
    store_bodies(database_url, *bodies)
    seen: list[str] = []
    url = "/search?recipient=r@example.com"
    while True:
        html = await (await client.get(url)).text()
        seen.extend(event_keys(html))
        found = re.search(r'id="next-page" href="([^"]+)"', html)
        if not found:
            break
        url = "/search" + found.group(1).replace("&amp;", "&")
    assert len(seen) == 7 and len(set(seen)) == 7


async def test_pages_of_events_of_one_second_leave_none_out_and_show_none_twice(
    logged_in: tuple[TestClient, str], database_url: str, db: psycopg.Connection, monkeypatch: object
) -> None:
    """Seven events of one second, three a page: the cursor's key orders them within the second."""
    from workers.storage import browse

    client, _csrf = logged_in
    monkeypatch.setattr(browse, "PAGE", 3)  # type: ignore[attr-defined]
    store_bodies(
        database_url,
        *(webhook_body("open", id=f"m{n}", time=str(BASE_TIME), recipient="r@example.com") for n in range(7)),
    )
    seen: list[str] = []
    url, pages = "/search?recipient=r@example.com", 0
    while True:
        html = await (await client.get(url)).text()
        seen.extend(event_keys(html))
        pages += 1
        found = re.search(r'id="next-page" href="([^"]+)"', html)
        if not found:
            break
        url = "/search" + found.group(1).replace("&amp;", "&")
    stored = [k.hex for (k,) in db.execute("SELECT event_key FROM events ORDER BY event_key DESC")]
    assert pages == 3 and seen == stored


async def test_bad_search_input_is_a_400_page(logged_in: tuple[TestClient, str]) -> None:
    client, _csrf = logged_in
    for query in (
        "mailing_id=abc",
        "since=yesterday",
        "recipient=a&after=broken",
        "recipient=a&after=2026-11-26T12:00:00%2B00:00,42",  # an older version's cursor: an event's number
        "event_type=opened",
        "event_key=abc123",
        "event_key=" + "g" * 32,
    ):
        resp = await client.get(f"/search?{query}")
        assert resp.status == 400, query
        assert 'id="search-error"' in await resp.text()


async def test_an_event_key_is_found_in_each_form_a_user_may_copy(
    logged_in: tuple[TestClient, str], database_url: str, db: psycopg.Connection
) -> None:
    """The whole 64-digit key (as the model makes it), its 32 stored digits (as the event page
    shows them), the uuid with hyphens (as psql shows it), in capitals, in braces."""
    client, _csrf = logged_in
    body = webhook_body("open", id="msg-1", time=str(BASE_TIME), recipient="a@example.com")
    other = webhook_body("open", id="msg-2", time=str(BASE_TIME), recipient="a@example.com")
    assert store_bodies(database_url, body, other) == 2
    call = Envelope(body=body, content_type="application/x-www-form-urlencoded", received_at=0.0).to_wire()
    [event], _origins, _rejects = parse_calls([call], "Europe/Amsterdam")
    full = event.event_key
    assert len(full) == 64
    wanted = stored_key(db, "msg-1")
    hyphenated = str(uuid.UUID(full[:32]))
    for key in (full, full[:32], hyphenated, full.upper(), "{" + hyphenated + "}", f"  {full[:32]} "):
        resp = await client.get("/search", params={"event_key": key})
        assert resp.status == 200, key
        assert event_keys(await resp.text()) == [wanted], key
    page = await (await client.get(f"/events/{wanted}")).text()
    assert full[:32] in page and hyphenated not in page  # shown as a search takes it
    other_key = ("1" if full[0] == "0" else "0") + full[1:]
    resp = await client.get("/search", params={"event_key": other_key})
    assert "Nothing found" in await resp.text()
