"""The console in a real browser: Debian's Chromium driven by Playwright (its Python package,
pointed at the system's browser: nothing is downloaded). A real receiver, worker and
`ingest console` run against the test servers; each test saves screenshots of the pages it
saw in its own pytest temporary folder (`tmp_path`), so a failure can be looked at.

`make test` installs Chromium where it is missing (apt-get); without it these tests skip,
saying so.
"""

from __future__ import annotations

import shutil
import time
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import psycopg
import pytest
import redis

from console import samples
from ingest.processes import free_port, wait_for_port
from tests.console.conftest import HASH, NAME, PASSWORD
from tests.payloads import BASE_TIME, webhook_body
from tests.processes import Process, Receiver, ingest_env, receiver, run_ingest
from tests.workers.storage.test_rejected import keep, open_call

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
if CHROMIUM is None:
    pytest.skip(
        "chromium is not installed: `make test` installs it (apt-get install -y chromium); these browser tests skip",
        allow_module_level=True,
    )
sync_api = pytest.importorskip("playwright.sync_api", reason="the playwright package is not installed")

FORM = "application/x-www-form-urlencoded"
PAGES = ("/", "/mailings", "/search", "/rejected", "/failed", "/events/1", "/rejected/1", "/mailings/1")


@dataclass
class Stack:
    console: str  # the console's base URL
    receiver: Receiver
    env: dict[str, str]

    def post(self, body: bytes) -> None:
        request = urllib.request.Request(self.receiver.url, data=body, headers={"Content-Type": FORM})
        with urllib.request.urlopen(request, timeout=10) as resp:
            assert resp.status == 200

    def drain(self) -> None:
        done = run_ingest(["worker", "--burst"], self.env, timeout=120)
        assert done.returncode == 0, done.stderr[-2000:]


@pytest.fixture(scope="module")
def stack(redis_url: str, migrated_database_url: str) -> Iterator[Stack]:
    """A receiver and a console (one user, sampling every second) for the module."""
    env = ingest_env(redis_url, migrated_database_url)
    with receiver(env) as running:
        port = free_port()
        console_env = env | {
            "INGEST_CONSOLE_PORT": str(port),
            "INGEST_CONSOLE_USERS": f"{NAME}:{HASH}",
            "INGEST_CONSOLE_METRICS_URLS": f"{running}/metrics",
            "INGEST_CONSOLE_SAMPLE_INTERVAL": "1",
        }
        console = Process(["console"], console_env, quiet=False).start()
        try:
            assert wait_for_port(port, console.popen, timeout=30), "the console did not start"
            yield Stack(f"http://127.0.0.1:{port}", running, env)
        finally:
            console.stop()


@pytest.fixture(scope="module")
def browser() -> Iterator[sync_api.Browser]:
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=CHROMIUM, headless=True, args=["--no-sandbox", "--disable-dev-shm-usage"]
        )
        yield browser
        browser.close()


@pytest.fixture
def page(browser: sync_api.Browser, tmp_path: Path) -> Iterator[sync_api.Page]:
    """A fresh browser context (no cookies); on failure the last page is saved too."""
    context = browser.new_context(viewport={"width": 1400, "height": 1000})
    page = context.new_page()
    page.set_default_timeout(15000)
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    yield page
    page.screenshot(path=tmp_path / "last.png", full_page=True)
    context.close()
    assert errors == [], f"JavaScript errors on the page: {errors}"


def shot(page: sync_api.Page, tmp_path: Path, name: str) -> None:
    page.screenshot(path=tmp_path / f"{name}.png", full_page=True)


def log_in(page: sync_api.Page, stack: Stack, password: str = PASSWORD) -> None:
    page.goto(f"{stack.console}/")
    page.fill("input[name=name]", NAME)
    page.fill("input[name=password]", password)
    page.click("button[type=submit]")


def test_log_in_and_a_wrong_password_refused(page: sync_api.Page, stack: Stack, tmp_path: Path) -> None:
    page.goto(f"{stack.console}/search")
    assert page.url.startswith(f"{stack.console}/login?next=")
    shot(page, tmp_path, "login")
    log_in(page, stack, password="not the password")
    assert page.locator("#login-failed").inner_text() == "Wrong name or password."
    shot(page, tmp_path, "login-refused")
    log_in(page, stack)
    page.wait_for_url(f"{stack.console}/")
    assert page.locator("header").inner_text().count(NAME) == 1
    cookie = next(c for c in page.context.cookies() if c["name"] == "ingest_console")
    assert cookie["httpOnly"] and cookie["sameSite"] == "Strict"
    shot(page, tmp_path, "overview")


def test_unauthenticated_requests_are_redirected_or_refused(page: sync_api.Page, stack: Stack) -> None:
    for path in PAGES:
        page.goto(f"{stack.console}{path}")
        assert urllib.parse.urlsplit(page.url).path == "/login", path
    for path in ("/rejected/replay", "/failed/requeue", "/rejected/1/replay", "/logout"):
        resp = page.request.post(f"{stack.console}{path}", form={"csrf": "x"}, max_redirects=0)
        assert resp.status == 401, path


def wait_for_samples(conn: redis.Redis, done: Callable[[list[dict]], bool], timeout: float = 30) -> None:
    """Until the console's kept samples (of the last hour) satisfy `done`."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        records = samples.load(conn, time.time() - 3600)
        if records and done(records):
            return
        time.sleep(0.2)
    raise AssertionError(f"the samples never got there: {samples.load(conn, 0)[-3:]}")


def test_the_overview_charts_what_was_posted(
    page: sync_api.Page, stack: Stack, redis_conn: redis.Redis, tmp_path: Path
) -> None:
    before = urllib.request.urlopen(f"{stack.receiver}/metrics", timeout=5).read().decode()
    accepted = next(
        float(line.split()[-1])
        for line in before.splitlines()
        if line.startswith("copernica_ingest_events_accepted_total")
    )
    # a sample before the posting, so that what the overview counts is ours
    wait_for_samples(redis_conn, lambda records: records[-1].get("acc") == accepted)
    for n in range(25):
        stack.post(webhook_body("open", id=f"chart-{n}", time=str(BASE_TIME + n), recipient=f"c{n}@example.com"))
    stack.drain()
    wait_for_samples(
        redis_conn,
        lambda records: (
            records[-1].get("acc") == accepted + 25 and (samples.growth(records, "ins", restarts=False) or 0) >= 25
        ),
    )
    log_in(page, stack)
    page.wait_for_url(f"{stack.console}/")
    page.wait_for_function("document.documentElement.dataset.chartsDrawn === 'yes'")
    assert page.locator("#accepted-1h").inner_text() == "25"
    assert int(page.locator("#stored-1h").inner_text()) >= 25
    traces = page.evaluate("() => document.getElementById('chart-hour-rates').data.map(t => ({name: t.name, y: t.y}))")
    accepted_per_s = [y for y in traces[0]["y"] if y is not None]
    stored_per_s = [y for y in traces[1]["y"] if y is not None]
    assert traces[0]["name"] == "calls accepted /s" and max(accepted_per_s) > 0
    assert traces[1]["name"] == "events stored /s" and max(stored_per_s) > 0
    assert page.locator("#chart-hour-rates .scatterlayer .trace").count() == 2  # drawn, as SVG
    shot(page, tmp_path, "overview")
    for path in ("/mailings", "/failed", "/rejected"):
        page.goto(f"{stack.console}{path}")
        shot(page, tmp_path, path.strip("/"))


@pytest.mark.usefixtures("database_url")
def test_a_search_finds_a_posted_event_and_shows_its_payload(page: sync_api.Page, stack: Stack, tmp_path: Path) -> None:
    stack.post(webhook_body("open", id="findme-1", time=str(BASE_TIME), recipient="find@example.com", extra="kept"))
    stack.drain()
    log_in(page, stack)
    page.wait_for_url(f"{stack.console}/")
    page.click("text=Search")
    page.fill("input[name=recipient]", "find@example.com")
    page.click("form.search button")
    assert page.locator("#results tbody tr").count() == 1
    shot(page, tmp_path, "search")
    page.click("#results tbody tr a >> nth=0")
    payload = page.locator("#payload").inner_text()
    assert '"id": "findme-1"' in payload and '"extra": "kept"' in payload
    assert "webhook" in page.locator("main p").first.inner_text()
    shot(page, tmp_path, "event")


def test_a_hostile_payload_renders_inert(
    page: sync_api.Page, stack: Stack, db: psycopg.Connection, tmp_path: Path
) -> None:
    hostile = '<script>window.pwned = 1</script>"><img src=x onerror="window.pwned = 2">'
    stack.post(webhook_body("open", id="hostile-1", time=str(BASE_TIME), recipient=hostile, note=hostile))
    stack.drain()
    dialogs: list[str] = []
    page.on("dialog", lambda dialog: (dialogs.append(dialog.message), dialog.dismiss()))
    log_in(page, stack)
    page.wait_for_url(f"{stack.console}/")
    [key] = [row[0].hex for row in db.execute("SELECT event_key FROM events WHERE message_id = 'hostile-1'")]
    for path in (f"/events/{key}", "/search?message_id=hostile-1"):
        page.goto(f"{stack.console}{path}")
        page.wait_for_load_state("load")
        assert page.evaluate("() => window.pwned === undefined"), path
        assert page.locator("main img").count() == 0 and page.locator("main script").count() == 0, path
        shot(page, tmp_path, "hostile-" + path.strip("/").split("?")[0].replace("/", "-"))
        assert hostile in page.locator("main").inner_text(), path  # shown, as text
        if path.startswith("/events/"):
            assert "<script>window.pwned = 1</script>" in page.locator("#payload").inner_text()
    assert dialogs == []


def test_replaying_a_rejected_call_after_a_fix_stores_it(
    page: sync_api.Page, stack: Stack, db: psycopg.Connection, tmp_path: Path
) -> None:
    call_id = keep(db, open_call(), "old parser bug")  # rejected by an older version; read now
    log_in(page, stack)
    page.wait_for_url(f"{stack.console}/")
    page.click("header >> text=Rejected")
    assert "old parser bug" in page.locator("#rejected").inner_text()
    shot(page, tmp_path, "rejected")
    page.click(f"a[href='/rejected/{call_id}']")
    assert "old parser bug" in page.locator("#reason").inner_text()
    shot(page, tmp_path, "rejected-call")
    page.click("text=Replay…")
    shot(page, tmp_path, "replay-confirm")
    assert db.execute("SELECT count(*) FROM events").fetchone()[0] == 0
    page.click("#confirm")
    outcome = " ".join(page.locator("#outcome").inner_text().split())
    assert outcome == "Replayed 1: 1 now stored (1 new events, 0 already stored), 0 still rejected."
    shot(page, tmp_path, "replay-result")
    assert db.execute("SELECT count(*) FROM events").fetchone()[0] == 1
    assert db.execute("SELECT count(*) FROM rejected_events").fetchone()[0] == 0


def test_a_post_without_the_csrf_token_is_refused(
    page: sync_api.Page, stack: Stack, db: psycopg.Connection, tmp_path: Path
) -> None:
    keep(db, open_call(), "old parser bug")
    log_in(page, stack)
    page.wait_for_url(f"{stack.console}/")
    page.goto(f"{stack.console}/rejected/replay")
    page.evaluate("() => document.querySelector('main form input[name=csrf]').remove()")
    page.click("#confirm")
    assert page.locator("h1").inner_text() == "403"
    shot(page, tmp_path, "csrf-refused")
    status = page.evaluate(
        "() => fetch('/rejected/replay', {method: 'POST', body: new URLSearchParams()}).then(r => r.status)"
    )
    assert status == 403
    assert db.execute("SELECT count(*) FROM rejected_events").fetchone()[0] == 1  # nothing replayed


@pytest.mark.usefixtures("database_url")
def test_a_mailing_page_draws_opens_after_the_send(page: sync_api.Page, stack: Stack, tmp_path: Path) -> None:
    sent = int(time.time()) - 7200
    stack.post(webhook_body("attempt", id="mail-1", time=str(sent), mailing="77", recipient="m@example.com"))
    stack.post(webhook_body("open", id="mail-1", time=str(sent + 3700), ip="192.0.2.7"))
    stack.drain()
    log_in(page, stack)
    page.wait_for_url(f"{stack.console}/")
    page.click("header >> text=Mailings")
    assert page.locator("#mailings a[href='/mailings/77']").count() == 1  # read at the request: no waiting
    shot(page, tmp_path, "mailings")
    page.click("#mailings a[href='/mailings/77']")
    page.wait_for_function("document.documentElement.dataset.chartsDrawn === 'yes'", timeout=20000)
    opens = page.evaluate("() => document.getElementById('chart-mailing').data[0].y")
    assert sum(opens) == 1
    assert "unique opens" in page.locator("#figures").inner_text()
    shot(page, tmp_path, "mailing")
