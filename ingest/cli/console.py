"""`ingest console` (the operator's web console) and `ingest console hash-password`.

Registered through `ingest.cli.COMMAND_MODULES`; the application is the `console` package.
"""

from __future__ import annotations

import argparse
import getpass
import logging
import sys
from typing import Any

from common.settings import Settings
from ingest.cli.base import EXIT_FAILURE, EXIT_USAGE, fail

log = logging.getLogger("ingest.cli.console")


def register(subparsers: Any) -> None:
    """Add the `console` command to the `ingest` parser."""
    console = subparsers.add_parser(
        "console",
        help="the operator's web console (overview, mailings, search, rejected calls, failed jobs)",
        description="Serve the web console on INGEST_CONSOLE_HOST:INGEST_CONSOLE_PORT (default 127.0.0.1:9182). "
        "Without INGEST_CONSOLE_USERS it serves only on a loopback address.",
    )
    console.add_argument("--host", help="listen on this address (default INGEST_CONSOLE_HOST)")
    console.add_argument("--port", type=int, help="listen on this port (default INGEST_CONSOLE_PORT)")
    sub = console.add_subparsers(dest="console_command", metavar="ACTION")
    hashing = sub.add_parser(
        "hash-password",
        help="print a password hash for INGEST_CONSOLE_USERS",
        description="Read a password (asked twice on a terminal, else one line from standard input) and print "
        "its hash; put `name:<hash>` in INGEST_CONSOLE_USERS.",
    )
    hashing.set_defaults(handler=cmd_hash_password)
    console.set_defaults(handler=cmd_console)


def read_password() -> str:
    """The password: asked twice on a terminal, else the first line of standard input."""
    if sys.stdin.isatty():
        first = getpass.getpass("password: ")
        if getpass.getpass("again: ") != first:
            raise ValueError("the two passwords differ")
        return first
    return sys.stdin.readline().rstrip("\r\n")


def cmd_hash_password(_settings: Settings, _args: argparse.Namespace) -> int:
    from console.auth import hash_password

    try:
        password = read_password()
        print(hash_password(password))
    except ValueError as exc:
        return fail(f"console hash-password: {exc}", EXIT_USAGE)
    return 0


def cmd_console(settings: Settings, args: argparse.Namespace) -> int:
    from aiohttp import web

    from console.app import build_app, check_database
    from console.auth import Users, refusal_to_start

    host = args.host or settings.console_host
    port = settings.console_port if args.port is None else args.port
    if not 0 <= port <= 65535:
        return fail("console: --port must be a port number (0-65535)", EXIT_USAGE)
    if (reason := refusal_to_start(host, Users(settings.console_users))) is not None:
        return fail(reason, EXIT_USAGE)
    try:
        check_database(settings.required("database_url"))
    except Exception as exc:  # PostgreSQL down: one line, no traceback
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        return fail(f"console: PostgreSQL does not answer: {first}", EXIT_FAILURE)
    app = build_app(settings)
    shown = f"[{host}]" if ":" in host else host
    log.info("console on http://%s:%d/ (%s)", shown, port, "login required" if settings.console_users else "no login")
    web.run_app(app, host=host, port=port, print=None, access_log=None, handle_signals=True)
    return 0
