"""Search (by recipient, message id, mailing, event_key, type or time range) and one event's page,
`/events/<event key>` (the key as the console shows it, 32 hex digits; any form a search takes)."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import aiohttp_jinja2
from aiohttp import web
from multidict import MultiMapping

from console.app import db
from workers.storage import browse, keys

FIELDS = ("recipient", "message_id", "mailing_id", "event_key", "event_type", "since", "until")


class BadSearch(ValueError):
    """A search field holds something that cannot be searched for."""


def parse_time(raw: str, name: str) -> datetime:
    """`2026-11-25`, `2026-11-25T12:00` or `2026-11-25 12:00:00` (UTC unless it has an offset)."""
    try:
        value = datetime.fromisoformat(raw.strip().replace(" ", "T", 1))
    except ValueError:
        raise BadSearch(f"{name}: not a date or time (2026-11-25, 2026-11-25T12:00)") from None
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def parse_search(query: MultiMapping[str]) -> browse.Search:
    values: dict[str, Any] = {}
    for name in ("recipient", "message_id", "event_type"):
        raw = query.get(name, "").strip()
        if raw:
            values[name] = raw
    raw_key = query.get("event_key", "").strip()
    if raw_key:
        key = keys.parse_key(raw_key)
        if key is None:
            raise BadSearch("event key: 64 or 32 hex digits (a uuid's hyphens are fine)")
        values["event_key"] = key
    mailing = query.get("mailing_id", "").strip()
    if mailing:
        if not mailing.isdigit():
            raise BadSearch("mailing: a whole number")
        values["mailing_id"] = int(mailing)
    for name in ("since", "until"):
        raw = query.get(name, "").strip()
        if raw:
            values[name] = parse_time(raw, name)
    return browse.Search(**values)


def parse_after(raw: str) -> tuple[datetime, str] | None:
    """The paging cursor `<occurred_at iso>,<event key>` of the last row shown."""
    if not raw:
        return None
    at, _, raw_key = raw.rpartition(",")
    key = keys.parse_key(raw_key)
    try:
        if key is None:
            raise ValueError(raw_key)
        return datetime.fromisoformat(at), key
    except ValueError:
        raise BadSearch("the page cursor is broken: search again") from None


async def search_page(request: web.Request) -> web.StreamResponse:
    form = {name: request.query.get(name, "") for name in FIELDS}
    context: dict[str, Any] = {"form": form, "rows": None, "error": None, "next_after": None}
    try:
        search = parse_search(request.query)
        after = parse_after(request.query.get("after", ""))
    except BadSearch as exc:
        context["error"] = str(exc)
        return _render(request, context, 400)
    if search:
        try:
            rows = await db(request, browse.search_events, search, after=after, limit=browse.PAGE + 1)
        except ValueError as exc:
            context["error"] = str(exc)
            return _render(request, context, 400)
        more = len(rows) > browse.PAGE
        rows = rows[: browse.PAGE]
        context["rows"] = rows
        if more:
            last = rows[-1]
            context["next_after"] = f"{last['occurred_at'].isoformat()},{last['event_key']}"
    return _render(request, context)


def _render(request: web.Request, context: dict[str, Any], status: int = 200) -> web.Response:
    response = aiohttp_jinja2.render_template("search.html", request, context)
    response.set_status(status)
    return response


def payload_text(payload: Any) -> str:
    """The payload as sent, as indented JSON text (shown as text, never as markup)."""
    return json.dumps(payload, indent=2, ensure_ascii=False, sort_keys=False, default=str)


async def event_page(request: web.Request) -> web.StreamResponse:
    raw = request.match_info["key"]
    key = keys.parse_key(raw)
    if key is None:  # an event number of an older version's link among them: events have none now
        raise web.HTTPNotFound(
            text="No such event: an event's page is named by its event key (32 hex digits, as a search shows it)."
        )
    event = await db(request, browse.get_event, key)
    if event is None:
        raise web.HTTPNotFound(text=f"No stored event with key {key}.")
    payload = event.pop("payload")
    return aiohttp_jinja2.render_template(
        "event.html", request, {"event": event, "columns": browse.EVENT_COLUMNS, "payload": payload_text(payload)}
    )


def add_routes(app: web.Application) -> None:
    app.router.add_get("/search", search_page)
    app.router.add_get("/events/{key}", event_page)
