"""The console in-process on aiohttp's test server, against the real Redis and PostgreSQL."""

from __future__ import annotations

import re
import time
from collections.abc import AsyncIterator

import pytest
from aiohttp.test_utils import TestClient, TestServer

from common.envelope import Envelope
from common.settings import Settings
from console.app import build_app
from console.auth import hash_password
from workers.jobs import parse_calls
from workers.storage import store

NAME, PASSWORD = "alice", "correct horse battery staple"
HASH = hash_password(PASSWORD)
CSRF = re.compile(r'name="csrf" value="([^"]+)"')
FORM = "application/x-www-form-urlencoded"


def console_settings(settings: Settings, **extra: str) -> Settings:
    env = {**settings.to_env(), "INGEST_CONSOLE_USERS": f"{NAME}:{HASH}", **extra}
    return Settings.from_env({k: v for k, v in env.items() if v != ""}, dotenv=False)


def csrf_of(html: str) -> str:
    found = CSRF.search(html)
    assert found, "no CSRF token in the page"
    return found.group(1)


async def login(client: TestClient, name: str = NAME, password: str = PASSWORD) -> str:
    """Log in through the login page; the CSRF token of the new session."""
    page = await client.get("/login")
    resp = await client.post(
        "/login",
        data={"csrf": csrf_of(await page.text()), "name": name, "password": password, "next": "/search"},
        allow_redirects=False,
    )
    assert resp.status == 302, await resp.text()
    return csrf_of(await (await client.get("/search")).text())


def store_bodies(database_url: str, *bodies: bytes, content_type: str = FORM) -> int:
    """Store calls as the worker does (parse, then the store path); the events stored."""
    calls = [Envelope(body=body, content_type=content_type, received_at=time.time()).to_wire() for body in bodies]
    events, origins, rejects = parse_calls(calls, "Europe/Amsterdam")
    with store.connect(database_url) as conn:
        return store.store(conn, events, rejects, origins).stored


@pytest.fixture
async def console(settings: Settings) -> AsyncIterator[TestClient]:
    """A console with one user (alice), not logged in."""
    async with TestClient(TestServer(build_app(console_settings(settings), sample=False))) as client:
        yield client


@pytest.fixture
async def open_console(settings: Settings) -> AsyncIterator[TestClient]:
    """A console without users (loopback only): no login."""
    async with TestClient(TestServer(build_app(settings, sample=False))) as client:
        yield client


@pytest.fixture
async def logged_in(console: TestClient) -> tuple[TestClient, str]:
    """The console with alice logged in, and her session's CSRF token."""
    return console, await login(console)
