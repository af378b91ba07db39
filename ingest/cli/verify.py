"""`ingest verify-url FILE | --list | --remove NAME`: serve Copernica's URL verification file.

The dashboard hands out `smtpeter-xxxxx.txt`; storing it here (in Redis, `ingest.verification`)
makes every running receiver serve it at `/smtpeter-xxxxx.txt` and `/copernica/smtpeter-xxxxx.txt`
at once. A file that is refused ends with one line and exit code 2, with nothing stored.

Registered through `ingest.cli.COMMAND_MODULES`.
"""

from __future__ import annotations

import argparse
import logging
from typing import Any

from common.settings import Settings
from ingest.cli.base import EXIT_FAILURE, EXIT_USAGE, fail

log = logging.getLogger("ingest.cli.verify")


def register(subparsers: Any) -> None:
    """Add `verify-url` to the `ingest` parser."""
    verify = subparsers.add_parser(
        "verify-url",
        help="serve Copernica's URL verification file (smtpeter-xxxxx.txt)",
        description="Store the verification file Copernica's dashboard hands out (smtpeter-xxxxx.txt, at most "
        "4 KiB) in Redis: every receiver then serves it, without a restart, at /<name> and "
        "/copernica/<name>, unauthenticated. Remove it once the webhook is verified.",
    )
    verify.add_argument("file", nargs="?", metavar="FILE", help="the downloaded file; its base name is served")
    verify.add_argument("--list", action="store_true", help="print the stored file names, one per line")
    verify.add_argument("--remove", metavar="NAME", help="stop serving the file with this name")
    verify.set_defaults(handler=cmd_verify_url)


def cmd_verify_url(settings: Settings, args: argparse.Namespace) -> int:
    from ingest import verification
    from ingest.queueing import redis_client

    chosen = sum((args.file is not None, bool(args.list), args.remove is not None))
    if chosen != 1:
        return fail("verify-url: give FILE, --list or --remove NAME (one of them)", EXIT_USAGE)
    content = b""
    if args.file is not None:  # checked before Redis is asked anything
        try:
            name, content = verification.read_file(args.file)
        except verification.VerificationError as exc:
            return fail(f"verify-url: {exc}", EXIT_USAGE)
    settings.require("redis_url")
    connection = redis_client(settings, timeout=10)
    try:
        if args.list:
            for stored in verification.stored_names(connection):
                print(stored)
        elif args.remove is not None:
            if not verification.remove(connection, args.remove):
                return fail(f"verify-url: {args.remove!r} is not stored", EXIT_FAILURE)
            print(f"removed {args.remove}")
        else:
            verification.store(connection, name, content)
            print(f"stored {name} ({len(content)} bytes): served at /{name} and /copernica/{name}")
        return 0
    finally:
        connection.close()
