"""The login page, logging in and out."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import aiohttp_jinja2
from aiohttp import web
from aiohttp_session import get_session, new_session

from console import auth

log = logging.getLogger("console.views.login")

FAILED_LOGIN_PAUSE = 1.0  # seconds a wrong password costs the caller


def _next(raw: object) -> str:
    """Where to go after logging in: a path of this console only (no open redirect)."""
    target = raw if isinstance(raw, str) else ""
    return target if target.startswith("/") and not target.startswith("//") and "\\" not in target else "/"


async def login_page(request: web.Request) -> web.StreamResponse:
    if not request.app[auth.USERS]:
        raise web.HTTPFound("/")
    return aiohttp_jinja2.render_template(
        "login.html", request, {"next": _next(request.query.get("next")), "failed": False, "name": ""}
    )


async def login(request: web.Request) -> web.StreamResponse:
    users: auth.Users = request.app[auth.USERS]
    if not users:
        raise web.HTTPFound("/")
    form = await request.post()
    name, password = str(form.get("name", "")), str(form.get("password", ""))
    target = _next(form.get("next"))
    if not await asyncio.to_thread(users.check, name, password):
        log.warning("console login refused for %r from %s", name[:64], request.remote)
        await asyncio.sleep(FAILED_LOGIN_PAUSE)
        context: dict[str, Any] = {"next": target, "failed": True, "name": name}
        response = aiohttp_jinja2.render_template("login.html", request, context)
        response.set_status(401)
        return response
    session = await new_session(request)  # a fresh session (and CSRF token) at every login
    session[auth.USER_KEY] = name
    auth.csrf_token(session)
    log.info("console login: %s from %s", name, request.remote)
    raise web.HTTPFound(target)


async def logout(request: web.Request) -> web.StreamResponse:
    session = await get_session(request)
    session.invalidate()
    raise web.HTTPFound("/login" if request.app[auth.USERS] else "/")


def add_routes(app: web.Application) -> None:
    app.router.add_get("/login", login_page)
    app.router.add_post("/login", login)
    app.router.add_post("/logout", logout)
