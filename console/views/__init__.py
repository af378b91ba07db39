"""The console's pages, one module per page group; `add_routes` registers them all."""

from __future__ import annotations

from aiohttp import web


def add_routes(app: web.Application) -> None:
    from console.views import jobs, login, mailings, overview, rejected, search

    for module in (login, overview, mailings, search, rejected, jobs):
        module.add_routes(app)
