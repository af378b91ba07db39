"""The console's aiohttp application: middlewares (security headers, session, login, CSRF,
error pages), templates, static files, and the shared PostgreSQL pool and Redis client.

Database and Redis work is synchronous (the storage functions take a psycopg connection, RQ's
registries a redis-py client) and runs in threads (`db` / `in_thread`), never on the loop.
"""

from __future__ import annotations

import asyncio
import logging
import warnings
from collections.abc import AsyncIterator, Callable
from importlib import resources
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import quote

import aiohttp_jinja2
import jinja2
import psycopg
import redis
from aiohttp import web
from aiohttp_session import get_session, session_middleware
from aiohttp_session.cookie_storage import EncryptedCookieStorage
from psycopg_pool import ConnectionPool

from common import redisconn
from common.settings import Settings
from console import auth, samples

log = logging.getLogger("console.app")

# aiohttp-session and aiohttp-jinja2 keep their request state under plain string keys, which
# aiohttp warns about on every request; the warning is theirs to act on, not the operator's.
for _module in ("aiohttp_session", "aiohttp_jinja2"):
    warnings.filterwarnings("ignore", category=web.NotAppKeyWarning, module=_module)

T = TypeVar("T")

SETTINGS = web.AppKey("settings", Settings)
POOL = web.AppKey("pool", ConnectionPool)
REDIS = web.AppKey("redis", redis.Redis)
HERE = Path(__file__).resolve().parent
PUBLIC_PREFIXES = ("/static/", "/login", "/healthz")
CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; "
    "object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
)


def plotly_js() -> Path:
    """plotly.js as the `plotly` package ships it (served from here: no CDN, works offline)."""
    return Path(str(resources.files("plotly") / "package_data" / "plotly.min.js"))


async def db(request: web.Request, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """`fn(conn, *args)` with a pooled connection (autocommit), in a thread."""
    pool = request.app[POOL]

    def run() -> T:
        with pool.connection() as conn:
            return fn(conn, *args, **kwargs)

    return await asyncio.to_thread(run)


async def in_thread(fn: Callable[..., T], *args: Any) -> T:
    return await asyncio.to_thread(fn, *args)


@web.middleware
async def headers_middleware(request: web.Request, handler: auth.Handler) -> web.StreamResponse:
    """Security headers on every answer, and the session cookie Secure when over TLS."""
    response = await handler(request)
    response.headers.setdefault("Content-Security-Policy", CSP)
    response.headers.setdefault("X-Content-Type-Options", "nosniff")
    response.headers.setdefault("Referrer-Policy", "same-origin")
    response.headers.setdefault("X-Frame-Options", "DENY")
    if not request.path.startswith("/static/"):
        response.headers.setdefault("Cache-Control", "no-store")
    cookie = response.cookies.get(auth.COOKIE_NAME)
    if cookie is not None and auth.over_tls(request, request.app[SETTINGS].trusted_proxies):
        cookie["secure"] = True
    return response


@web.middleware
async def login_middleware(request: web.Request, handler: auth.Handler) -> web.StreamResponse:
    """Pages need a login (a GET is sent to the login page, anything else refused 401); every
    POST needs the session's CSRF token."""
    public = request.path.startswith(PUBLIC_PREFIXES)
    if not public and await auth.current_user(request) is None:
        if request.method in {"GET", "HEAD"}:
            raise web.HTTPFound(f"/login?next={quote(request.path_qs, safe='')}")
        return error_page(request, 401, "Log in first.")
    if request.method == "POST":
        form = await request.post()
        if not auth.csrf_ok(await get_session(request), form):
            log.warning("POST %s refused: missing or wrong CSRF token", request.path)
            return error_page(
                request, 403, "The form's security token is missing or stale: reload the page and try again."
            )
    return await handler(request)


@web.middleware
async def error_middleware(request: web.Request, handler: auth.Handler) -> web.StreamResponse:
    """HTML error pages instead of aiohttp's plain text."""
    try:
        return await handler(request)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        return error_page(request, exc.status, exc.text or exc.reason)
    except Exception:
        log.exception("console page %s failed", request.path)
        return error_page(request, 500, "The page failed; the console's log has the details.")


def error_page(request: web.Request, status: int, message: str) -> web.Response:
    env = aiohttp_jinja2.get_env(request.app)
    body = env.get_template("error.html").render(status=status, message=message, user=None)
    return web.Response(status=status, text=body, content_type="text/html")


async def context(request: web.Request) -> dict[str, Any]:
    """What every template may use: the user, the CSRF token, the rq-dashboard link."""
    session = await get_session(request)
    return {
        "user": await auth.current_user(request),
        "login_required": bool(request.app[auth.USERS]),
        "csrf": auth.csrf_token(session),
        "csrf_field": auth.CSRF_FIELD,
        "dashboard_url": request.app[SETTINGS].console_dashboard_url,
        "path": request.path,
    }


async def healthz(_request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def plotly(_request: web.Request) -> web.FileResponse:
    return web.FileResponse(plotly_js(), headers={"Cache-Control": "public, max-age=86400"})


def build_app(settings: Settings, *, sample: bool = True) -> web.Application:
    """The console for `settings`; `sample=False` leaves the sampler off (tests that feed samples)."""
    settings.require("redis_url", "database_url")
    users = auth.Users(settings.console_users)
    storage = EncryptedCookieStorage(
        auth.session_key(settings.console_secret),
        cookie_name=auth.COOKIE_NAME,
        httponly=True,
        samesite="Strict",
        max_age=auth.SESSION_MAX_AGE,
        path="/",
    )
    app = web.Application(
        middlewares=[headers_middleware, error_middleware, session_middleware(storage), login_middleware],
        client_max_size=1024 * 1024,
    )
    app[SETTINGS] = settings
    app[auth.USERS] = users
    aiohttp_jinja2.setup(
        app,
        loader=jinja2.FileSystemLoader(HERE / "templates"),
        autoescape=True,  # every value is text: a payload holding markup shows as markup, inert
        undefined=jinja2.StrictUndefined,
        context_processors=[context],
    )
    from console.views import add_routes

    app.router.add_get("/healthz", healthz)
    app.router.add_get("/static/plotly.min.js", plotly)
    app.router.add_static("/static/", HERE / "static")
    add_routes(app)
    app.cleanup_ctx.append(lambda app: _resources(app, sample))
    return app


async def _resources(app: web.Application, sample: bool) -> AsyncIterator[None]:
    settings = app[SETTINGS]
    pool = ConnectionPool(
        settings.required("database_url"),
        min_size=1,
        max_size=6,
        kwargs={
            "autocommit": True,
            "connect_timeout": 5,
            "application_name": "copernica-ingest console",
            # Custom plans always: a generic plan of a prepared search does not know which
            # partitions and how selective its values are (it picked index scans of whole months).
            "options": "-c statement_timeout=30000 -c timezone=UTC -c plan_cache_mode=force_custom_plan",
        },
        open=False,
    )
    await asyncio.to_thread(pool.open, False)
    app[POOL] = pool
    app[REDIS] = redisconn.sync_client(settings, socket_timeout=5, socket_connect_timeout=5)
    stop = asyncio.Event()
    task = asyncio.create_task(samples.run_sampler(settings, app[REDIS], stop)) if sample else None
    try:
        yield
    finally:
        stop.set()
        if task is not None:
            await task
        await asyncio.to_thread(pool.close)
        app[REDIS].close()


def check_database(url: str) -> None:
    """Fail early (one line) when PostgreSQL does not answer."""
    with psycopg.connect(url, connect_timeout=5) as conn:
        conn.execute("SELECT 1")
