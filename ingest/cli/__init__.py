"""The `ingest` command line: one module per command group, each registering its commands.

Every command reads the settings once; a bad setting or an unreachable server ends it with a
one-line message on stderr and a non-zero exit, never a traceback (`ingest.cli.base`).
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Sequence

from common.settings import Settings, SettingsError
from ingest.cli.base import EXIT_FAILURE, EXIT_USAGE, CommandError, Handler, setup_logging

log = logging.getLogger("ingest.cli")

# The command groups, in the order `ingest --help` lists them. Each module has
# `register(subparsers)`, which adds its commands with `set_defaults(handler=...)`; their
# top-level imports stay light, so `ingest --help` does not load the workers.
COMMAND_MODULES: tuple[str, ...] = (
    "ingest.cli.run",  # serve, worker, dev
    "ingest.cli.schema",  # migrate, prune
    "ingest.cli.stats",  # stats
    "ingest.cli.messages",  # messages rebuild
    "ingest.cli.suppressions",  # suppressions export
    "ingest.cli.webhooks",  # webhooks list | create | delete
    "ingest.cli.verify",  # verify-url
    "ingest.cli.backfill",  # backfill, import
    "ingest.cli.reconcile",  # reconcile (--date, --mailing, --follow)
    "ingest.cli.rejected",  # rejected list | replay
    "ingest.cli.jobs",  # requeue-failed
    "ingest.cli.console",  # console, console hash-password
    "ingest.cli.erase",  # erase (personal data)
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ingest",
        description="Receive Copernica webhooks into Redis, store them in PostgreSQL with RQ workers.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for module in COMMAND_MODULES:
        importlib.import_module(module).register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        settings = Settings.from_env()
    except SettingsError as exc:
        print(f"ingest: {exc}", file=sys.stderr)
        return EXIT_USAGE
    setup_logging(settings.log_level)
    from workers.events import machine

    machine.configure(settings.machine_networks)
    handler: Handler = args.handler
    try:
        return handler(settings, args)
    except SettingsError as exc:
        print(f"ingest: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except CommandError as exc:
        print(f"ingest: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    except KeyboardInterrupt:
        return 130
    except Exception as exc:  # a server that is down, a refused connection, ...
        message = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        log.debug("command failed", exc_info=True)
        print(f"ingest: {args.command} failed: {message}", file=sys.stderr)
        return EXIT_FAILURE


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
