"""What every command shares: exit codes, the one-line failure, and the logging set-up.

A command reads the settings once; bad input or an unreachable server ends it with a one-line
message on stderr and a non-zero exit, never a traceback.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable

from common.settings import Settings

EXIT_USAGE = 2
EXIT_FAILURE = 1

Handler = Callable[[Settings, argparse.Namespace], int]


class CommandError(Exception):
    """A command cannot do its work; the message is printed as one line."""


def fail(message: str, code: int = EXIT_FAILURE) -> int:
    """Print `ingest: <message>` on stderr and return the exit code (for command handlers)."""
    print(f"ingest: {message}", file=sys.stderr)
    return code


def one_target(command: str, args: object, metavar: str) -> int | None:
    """`--id X` or `--all`, exactly one: the usage error to return, or None when it is fine."""
    chosen = getattr(args, "id", None) is not None, bool(getattr(args, "all", False))
    if chosen == (False, False):
        return fail(f"{command}: give --id {metavar} or --all", EXIT_USAGE)
    if chosen == (True, True):
        return fail(f"{command}: give --id {metavar} or --all, not both", EXIT_USAGE)
    return None


def setup_logging(level: str) -> None:
    logging.basicConfig(
        level=getattr(logging, level, logging.INFO),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
