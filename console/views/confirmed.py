"""The flow the rejected calls and the failed jobs share: a paged list, then an action (replay,
requeue) on one item or on all of them, asked for on a confirmation page (GET, which changes
nothing) and done by its form's POST (the CSRF token checked by the login middleware), its
outcome rendered at once.

A page group describes its own part in a `ConfirmedAction` (how to read a page, count, check
an item and act) and registers its routes through `add_routes`. Its templates are named after
it: `{path}.html` the list, `{action}_confirm.html` and `{action}_result.html`. The routes:

    {path}                    the list                      GET
    {path}/{action}           all: confirmation / action    GET / POST
    {path}/{id}               the item's own page           GET (when the group has one)
    {path}/{id}/{action}      one: confirmation / action    GET / POST

(aiohttp matches a plain path before a pattern: `{path}/{action}` is never an item's id).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import aiohttp_jinja2
from aiohttp import web

log = logging.getLogger("console.views.confirmed")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def page_number(request: web.Request) -> int:
    """The list's `?page=` (1 when missing or not a number)."""
    raw = request.query.get("page", "1")
    return max(1, int(raw)) if raw.isdigit() else 1


async def _as_is(_request: web.Request, raw: str) -> str:
    return raw


@dataclass(frozen=True, slots=True)
class ConfirmedAction:
    path: str  # where the list is: "/rejected"
    action: str  # the action's path segment and its name in the log: "replay"
    page_size: int
    items_name: str  # the list template's name of the page's items
    read_page: Callable[[web.Request, int], Awaitable[tuple[list[Any], int]]]  # (request, page) -> items, total
    id_name: str  # the confirmation and result templates' name of the item's id (None: all)
    count: Callable[[web.Request], Awaitable[int]]  # how many items an action on all would take
    # (request, id or None) -> the result template's values (the id is added) and the status
    act: Callable[[web.Request, Any], Awaitable[tuple[dict[str, Any], int]]]
    # the item's id from the URL's: raises HTTPNotFound when there is no such item
    find: Callable[[web.Request, str], Awaitable[Any]] = _as_is

    async def _target(self, request: web.Request) -> Any:
        """The item the request names, or None (all)."""
        raw = request.match_info.get("id")
        return None if raw is None else await self.find(request, raw)

    async def list_page(self, request: web.Request) -> web.StreamResponse:
        page = page_number(request)
        items, total = await self.read_page(request, page)
        return aiohttp_jinja2.render_template(
            f"{self.path.strip('/')}.html",
            request,
            {self.items_name: items, "total": total, "page": page, "more": page * self.page_size < total},
        )

    async def confirm(self, request: web.Request) -> web.StreamResponse:
        target = await self._target(request)
        total = await self.count(request)
        return aiohttp_jinja2.render_template(
            f"{self.action}_confirm.html", request, {self.id_name: target, "total": total}
        )

    async def do(self, request: web.Request) -> web.StreamResponse:
        target = await self._target(request)
        values, status = await self.act(request, target)
        context = {self.id_name: target} | values
        log.info("console %s of %s: %s", self.action, "all" if target is None else target, values)
        response = aiohttp_jinja2.render_template(f"{self.action}_result.html", request, context)
        response.set_status(status)
        return response

    def add_routes(self, app: web.Application, *, item: Handler | None = None) -> None:
        """The flow's routes (the module docstring's table); `item` serves `{path}/{id}`."""
        one = f"{self.path}/{{id}}/{self.action}"
        app.router.add_get(self.path, self.list_page)
        app.router.add_get(f"{self.path}/{self.action}", self.confirm)
        app.router.add_post(f"{self.path}/{self.action}", self.do)
        if item is not None:
            app.router.add_get(f"{self.path}/{{id}}", item)
        app.router.add_get(one, self.confirm)
        app.router.add_post(one, self.do)
