"""Who may use the console: login, the session cookie, CSRF on every POST, pages refused
without a login, and the loopback rule of a console without users."""

from __future__ import annotations

import pytest
from aiohttp.test_utils import TestClient, TestServer

from common.settings import Settings
from console.app import build_app
from tests.console.conftest import NAME, console_settings, csrf_of, login

PAGES = (
    "/",
    "/mailings",
    "/mailings/1",
    "/search",
    "/search?recipient=a",
    "/events/1",
    "/rejected",
    "/rejected/1",
    "/rejected/replay",
    "/rejected/1/replay",
    "/failed",
    "/failed/requeue",
    "/failed/x/requeue",
)
POSTS = ("/rejected/replay", "/rejected/1/replay", "/failed/requeue", "/failed/x/requeue", "/logout")


async def test_every_page_sends_a_stranger_to_the_login_page(console: TestClient) -> None:
    for page in PAGES:
        resp = await console.get(page, allow_redirects=False)
        assert resp.status == 302, page
        assert resp.headers["Location"].startswith("/login?next="), page


async def test_every_post_of_a_stranger_is_refused(console: TestClient) -> None:
    for target in POSTS:
        resp = await console.post(target, data={"csrf": "guess"}, allow_redirects=False)
        assert resp.status == 401, target
        assert "Log in first" in await resp.text()


async def test_a_wrong_password_is_refused(console: TestClient) -> None:
    page = await console.get("/login")
    resp = await console.post(
        "/login", data={"csrf": csrf_of(await page.text()), "name": NAME, "password": "wrong"}, allow_redirects=False
    )
    assert resp.status == 401
    assert "Wrong name or password" in await resp.text()
    assert (await console.get("/search", allow_redirects=False)).status == 302
    resp = await console.post(
        "/login", data={"csrf": csrf_of(await page.text()), "name": "mallory", "password": "x"}, allow_redirects=False
    )
    assert resp.status == 401


async def test_login_opens_the_pages_and_logout_closes_them(console: TestClient) -> None:
    csrf = await login(console)
    for page in ("/", "/mailings", "/search", "/rejected", "/failed"):
        resp = await console.get(page, allow_redirects=False)
        assert resp.status == 200, (page, await resp.text())
        assert NAME in await resp.text()
    resp = await console.post("/logout", data={"csrf": csrf}, allow_redirects=False)
    assert resp.status == 302
    assert (await console.get("/", allow_redirects=False)).status == 302


async def test_the_login_goes_back_only_to_a_page_of_the_console(console: TestClient) -> None:
    page = await console.get("/login?next=//evil.example/x")
    assert 'name="next" value="/"' in await page.text()


async def test_a_login_without_the_csrf_token_is_refused(console: TestClient) -> None:
    await console.get("/login")
    resp = await console.post("/login", data={"name": NAME, "password": "x"}, allow_redirects=False)
    assert resp.status == 403


async def test_a_post_without_or_with_a_wrong_csrf_token_is_refused(logged_in: tuple[TestClient, str]) -> None:
    client, csrf = logged_in
    for data in ({}, {"csrf": csrf[:-1] + ("A" if csrf[-1] != "A" else "B")}):
        resp = await client.post("/rejected/replay", data=data, allow_redirects=False)
        assert resp.status == 403
        assert "security token" in await resp.text()
    resp = await client.post("/rejected/replay", data={"csrf": csrf}, allow_redirects=False)
    assert resp.status == 200


async def test_the_session_cookie_is_httponly_and_samesite(console: TestClient) -> None:
    page = await console.get("/login")
    cookie = page.cookies["ingest_console"]
    assert cookie["httponly"] and cookie["samesite"] == "Strict" and not cookie["secure"]
    assert "script-src 'self'" in page.headers["Content-Security-Policy"]


async def test_the_cookie_is_secure_behind_a_tls_proxy(settings: Settings) -> None:
    app = build_app(console_settings(settings, INGEST_TRUSTED_PROXIES="127.0.0.1/32"), sample=False)
    async with TestClient(TestServer(app)) as client:
        page = await client.get("/login", headers={"X-Forwarded-Proto": "https"})
        assert page.cookies["ingest_console"]["secure"]
        plain = await client.get("/login")
        assert not plain.cookies["ingest_console"]["secure"]


async def test_an_untrusted_forwarded_proto_does_not_make_it_secure(console: TestClient) -> None:
    page = await console.get("/login", headers={"X-Forwarded-Proto": "https"})
    assert not page.cookies["ingest_console"]["secure"]


async def test_without_users_the_pages_need_no_login(open_console: TestClient) -> None:
    for page in ("/", "/search", "/rejected", "/failed", "/mailings"):
        assert (await open_console.get(page, allow_redirects=False)).status == 200, page
    assert (await open_console.get("/login", allow_redirects=False)).status == 302
    page = await (await open_console.get("/rejected")).text()
    assert (await open_console.post("/rejected/replay", data={}, allow_redirects=False)).status == 403
    # the CSRF token is on every page with a form (here: none yet); a confirmation page has one
    confirm = await (await open_console.get("/rejected/replay")).text()
    assert "Log out" not in page
    resp = await open_console.post("/rejected/replay", data={"csrf": csrf_of(confirm)})
    assert resp.status == 200


@pytest.mark.parametrize("path", ["/static/plotly.min.js", "/static/console.js", "/healthz"])
async def test_static_files_need_no_login(console: TestClient, path: str) -> None:
    resp = await console.get(path)
    assert resp.status == 200
    assert len(await resp.read()) > 10


async def test_an_unknown_page_is_an_html_404(logged_in: tuple[TestClient, str]) -> None:
    client, _csrf = logged_in
    resp = await client.get("/nothing-here")
    assert resp.status == 404
    assert resp.content_type == "text/html"
