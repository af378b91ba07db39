"""`ingest webhooks list | create | delete`: Copernica's webhooks set up through the REST API.

Every argument is checked before the first request: bad input ends with one line and exit 2,
and Copernica is not called. An API failure (after the client's retries) is one line and exit
1. The access token is never shown; a receiver token in a handler URL (`?token=`,
`/copernica/<token>`) is shown as `***`.
"""

from __future__ import annotations

import argparse
import ipaddress
import logging
import sys
import urllib.parse
from typing import TYPE_CHECKING

from common.settings import Settings
from ingest.cli.base import EXIT_FAILURE, EXIT_USAGE, fail

if TYPE_CHECKING:
    from workers.backfill.webhooks import Webhook

log = logging.getLogger("ingest.cli.webhooks")


class BadInput(Exception):
    """One-line message for bad arguments; exit code 2."""


# --- argument checks ---------------------------------------------------------------------------


def redact_url(url: str) -> str:
    """`url` with its secrets as `***`: a password, `token=` values, the segment after /copernica/."""
    try:
        parts = urllib.parse.urlsplit(url)
        netloc = parts.netloc
        if parts.password is not None:
            netloc = f"{parts.username or ''}:***@{netloc.rpartition('@')[2]}"
    except ValueError:
        return url
    segments = parts.path.split("/")
    for n in range(1, len(segments)):
        if segments[n - 1].lower() == "copernica" and segments[n]:
            segments[n] = "***"
    query = "&".join(
        f"{name}=***" if urllib.parse.unquote_plus(name).lower() == "token" else f"{name}{sep}{value}"
        for name, sep, value in (part.partition("=") for part in parts.query.split("&") if part)
    )
    return urllib.parse.urlunsplit((parts.scheme, netloc, "/".join(segments), query, parts.fragment))


def _loopback(host: str) -> bool:
    if host.lower().rstrip(".") == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_url(text: str | None) -> str:
    """The handler URL: https, or http for a loopback host only (what `ingest dev` serves)."""
    if not text or not text.strip():
        raise BadInput("webhooks create: --url URL is required (the receiver's https address)")
    url = text.strip()
    shown = redact_url(url)
    try:
        parts = urllib.parse.urlsplit(url)
        host, _port = parts.hostname, parts.port
    except ValueError:
        raise BadInput(f"webhooks create: --url {shown!r} is not a valid URL") from None
    if any(c.isspace() or ord(c) < 32 for c in url) or parts.scheme.lower() not in ("http", "https") or not host:
        raise BadInput(f"webhooks create: --url {shown!r} is not an http(s) URL with a host")
    if parts.scheme.lower() == "http" and not _loopback(host):
        raise BadInput(f"webhooks create: --url {shown!r} must use https (http only for a loopback host)")
    return url


def check_triggers(values: list[str] | None) -> list[str]:
    """Triggers in Copernica's order, each once; `all` is every one of them."""
    from workers.backfill.webhooks import TRIGGERS

    if not values:
        raise BadInput(f"webhooks create: --trigger is required ({', '.join(TRIGGERS)} or all)")
    wanted: set[str] = set()
    for value in values:
        for name in (v.strip().lower() for v in value.split(",")):
            if name == "all":
                wanted.update(TRIGGERS)
            elif name in TRIGGERS:
                wanted.add(name)
            else:
                raise BadInput(f"webhooks create: unknown trigger {name!r}: use {', '.join(TRIGGERS)} or all")
    return [t for t in TRIGGERS if t in wanted]


def check_callers(text: str | None) -> tuple[str, ...]:
    """`ms`, `publisher` or both; not given: every caller (Copernica's default)."""
    from workers.backfill.webhooks import CALLERS

    if text is None:
        return ()
    names = [v.strip().lower() for v in text.split(",")]
    for name in names:
        if name not in CALLERS:
            raise BadInput(f"webhooks create: unknown caller {name!r}: use ms, publisher or ms,publisher")
    return tuple(c for c in CALLERS if c in names)


def check_id(text: str | None, what: str) -> int | None:
    return None if text is None else parse_id(text, what)


def parse_id(text: str, what: str) -> int:
    if not text.strip().isdigit() or not text.strip().isascii() or int(text) <= 0:
        raise BadInput(f"webhooks: {what} {text!r} is not an id (a positive number)")
    return int(text)


# --- output --------------------------------------------------------------------------------------


def _row(hook: Webhook) -> dict[str, object]:
    return {
        "id": hook.id,
        "trigger": hook.trigger,
        "handler": redact_url(hook.handler),
        "callers": list(hook.callers),
        "database": hook.database,
        "collection": hook.collection,
    }


def _print_json(value: object) -> None:
    import orjson

    print(orjson.dumps(value).decode())


def _print_table(hooks: list[Webhook]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"{len(hooks)} webhook(s)", title_justify="left")
    for column in ("id", "trigger", "handler", "callers", "database", "collection"):
        table.add_column(column, justify="right" if column == "id" else "left", no_wrap=True)
    for hook in hooks:
        table.add_row(
            str(hook.id if hook.id is not None else "?"),
            hook.trigger,
            redact_url(hook.handler),
            ",".join(hook.callers) or "ms,publisher",
            str(hook.database or "any"),
            str(hook.collection or "any"),
        )
    # A pipe gets whole lines: no wrapping at some terminal width.
    Console(width=None if sys.stdout.isatty() else 400).print(table, highlight=False)


# --- commands ------------------------------------------------------------------------------------


def _run(action: str, settings: Settings, args: argparse.Namespace) -> int:
    from workers.backfill.api import ApiError, Interrupted

    try:
        if action == "list":
            return _list(settings, args)
        if action == "delete":
            return _delete(settings, args)
        return _create(settings, args)
    except BadInput as exc:
        return fail(str(exc), EXIT_USAGE)
    except ApiError as exc:  # AuthError (refused token) included
        return fail(f"webhooks {action}: {exc}", EXIT_FAILURE)
    except Interrupted:
        return 130


def _list(settings: Settings, args: argparse.Namespace) -> int:
    from workers.backfill.api import client_from_settings
    from workers.backfill.webhooks import list_webhooks

    client = client_from_settings(settings)
    hooks = list_webhooks(client)
    if args.json:
        _print_json([_row(h) for h in hooks])
    else:
        _print_table(hooks)
    return 0


def _delete(settings: Settings, args: argparse.Namespace) -> int:
    from workers.backfill.api import client_from_settings
    from workers.backfill.webhooks import delete_webhook

    webhook_id = parse_id(args.id, "ID")  # a required argument
    client = client_from_settings(settings)
    delete_webhook(client, webhook_id)
    print(f"deleted {webhook_id}")
    return 0


def _create(settings: Settings, args: argparse.Namespace) -> int:
    """One webhook per trigger; one that already exists (same URL, trigger, callers, limits) is kept."""
    from workers.backfill.api import client_from_settings
    from workers.backfill.webhooks import Webhook, create_webhook, list_webhooks

    url = check_url(args.url)
    triggers = check_triggers(args.trigger)
    callers = check_callers(args.callers)
    database = check_id(args.database, "--database")
    collection = check_id(args.collection, "--collection")
    client = client_from_settings(settings)
    existing = list_webhooks(client)
    done: list[dict[str, object]] = []
    for trigger in triggers:
        spec = Webhook(None, trigger, url, callers, database, collection)
        twin = next((h for h in existing if h.same_as(spec)), None)
        if twin is not None:
            done.append({"id": twin.id, "trigger": trigger, "created": False})
        else:
            done.append({"id": create_webhook(client, spec), "trigger": trigger, "created": True})
        if not args.json:
            entry = done[-1]
            shown = entry["id"] if entry["id"] is not None else "(no id in the answer: see `ingest webhooks list`)"
            print(f"{'created' if entry['created'] else 'exists'} {shown} {trigger}", flush=True)
    if args.json:
        _print_json(done)
    return 0


def cmd_list(settings: Settings, args: argparse.Namespace) -> int:
    return _run("list", settings, args)


def cmd_create(settings: Settings, args: argparse.Namespace) -> int:
    return _run("create", settings, args)


def cmd_delete(settings: Settings, args: argparse.Namespace) -> int:
    return _run("delete", settings, args)


# --- parser --------------------------------------------------------------------------------------


def register(sub: argparse._SubParsersAction) -> None:
    """Add `webhooks list|create|delete` to the `ingest` command line."""
    hooks = sub.add_parser(
        "webhooks",
        help="list, create or delete Copernica's webhooks (REST API)",
        description=(
            "Manage the account's webhooks through Copernica's REST API v4 (COPERNICA_ACCESS_TOKEN) instead of "
            "the dashboard. Copernica still has to verify a new webhook's URL before it sends anything."
        ),
    )
    actions = hooks.add_subparsers(dest="webhooks_action", metavar="ACTION", required=True)

    lst = actions.add_parser(
        "list",
        help="show every webhook",
        description=("Every webhook of the account: id, trigger, handler URL, callers, database and collection."),
    )
    lst.add_argument("--json", action="store_true", help="print JSON instead of a table")
    lst.set_defaults(handler=cmd_list)

    create = actions.add_parser(
        "create",
        help="create webhooks, one per trigger",
        description=(
            "Create one webhook per trigger for a handler URL (https; http only for a loopback host). "
            "A webhook that already exists with the same URL, trigger, callers and limits is not made twice."
        ),
    )
    create.add_argument(
        "--url", metavar="URL", help="the receiver's address, e.g. https://events.example.com/copernica"
    )
    create.add_argument(
        "--trigger",
        action="append",
        metavar="T",
        help="create, update, delete, click, delivery, open, bounce, failure, or all "
        "(one webhook each); repeat for several",
    )
    create.add_argument(
        "--callers", metavar="ms,publisher", help="which Copernica software may call it (default: both)"
    )
    create.add_argument("--database", metavar="ID", help="only events of this database")
    create.add_argument("--collection", metavar="ID", help="only events of this collection")
    create.add_argument("--json", action="store_true", help="print JSON instead of lines")
    create.set_defaults(handler=cmd_create)

    delete = actions.add_parser(
        "delete",
        help="delete one webhook",
        description=("Delete the webhook with this id (see `ingest webhooks list`). Exit 1 when there is none."),
    )
    delete.add_argument("id", metavar="ID", help="the webhook's id")
    delete.set_defaults(handler=cmd_delete)
