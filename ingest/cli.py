"""The `ingest` command line: serve, worker, migrate, stats, dev.

Every command reads the settings once; a bad setting or an unreachable server ends it with a
one-line message on stderr and a non-zero exit, never a traceback.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Callable, Sequence

from ingest.settings import Settings, SettingsError

log = logging.getLogger("ingest.cli")

EXIT_USAGE = 2
EXIT_FAILURE = 1


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


class CommandError(Exception):
    """A command cannot do its work; the message is printed as one line."""


def setup_logging(level: str) -> None:
    logging.basicConfig(
        level=getattr(logging, level, logging.INFO),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )


# --- commands ---------------------------------------------------------------------------------

def cmd_serve(settings: Settings, args: argparse.Namespace) -> int:
    from ingest.server import serve

    settings.require("redis_url")
    return serve(settings, processes=args.processes, host=args.host, port=args.port,
                 reuse_port=args.reuse_port)


def cmd_worker(settings: Settings, args: argparse.Namespace) -> int:
    from workers.runner import run_worker

    settings.require("redis_url", "database_url")
    return run_worker(settings, burst=args.burst, name=args.name)


def cmd_migrate(settings: Settings, args: argparse.Namespace) -> int:
    from workers.schema import apply_migrations

    settings.require("database_url")
    done = apply_migrations(settings.database_url)
    if done:
        for migration in done:
            print(f"applied {migration.version:04d}_{migration.name}")
    else:
        print("schema is up to date")
    return 0


def cmd_stats(settings: Settings, args: argparse.Namespace) -> int:
    from ingest.stats import print_mailing, print_stats

    if args.mailing is not None:
        return print_mailing(settings, args.mailing, as_json=args.json)
    settings.require("redis_url", "database_url")
    if args.watch:
        from ingest.watch import run_watch

        if not args.interval > 0:
            print("ingest: stats: --interval must be a positive number of seconds", file=sys.stderr)
            return EXIT_USAGE
        return run_watch(settings, interval=args.interval, metrics_urls=args.metrics_url or (),
                         frames=args.frames)
    return print_stats(settings, as_json=args.json)


def cmd_dev(settings: Settings, args: argparse.Namespace) -> int:
    from ingest.dev import run_dev

    return run_dev(settings, redis_port=args.redis_port, postgres_port=args.postgres_port,
                   dashboard_port=args.dashboard_port)


# --- parser -----------------------------------------------------------------------------------

Handler = Callable[[Settings, argparse.Namespace], int]

# Command groups kept in modules of their own: each module has `register(subparsers)` that adds
# its sub-commands with `set_defaults(handler=...)`. Keep their top-level imports light.
COMMAND_MODULES: tuple[str, ...] = ("ingest.commands_events", "ingest.commands_backfill", "ingest.commands_ops",
                                   "ingest.commands_retention", "ingest.commands_verify", "ingest.commands_webhooks")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ingest",
        description="Receive Copernica webhooks into Redis, store them in PostgreSQL with RQ workers.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    serve = sub.add_parser("serve", help="run the webhook receiver", description=(
        "Run the aiohttp receiver: POST /copernica answers 200 once the call is in Redis."))
    serve.add_argument("--host", help="listen address (default: INGEST_HOST)")
    serve.add_argument("--port", type=int, help="listen port (default: INGEST_PORT)")
    serve.add_argument("--processes", type=int, default=1, metavar="N",
                       help="run N receiver processes on one port (SO_REUSEPORT); default 1")
    serve.add_argument("--reuse-port", action="store_true", help=argparse.SUPPRESS)
    serve.set_defaults(handler=cmd_serve)

    worker = sub.add_parser("worker", help="run an RQ worker that stores queued calls", description=(
        "Run a non-forking RQ worker on INGEST_QUEUE that parses queued calls and stores them."))
    worker.add_argument("--burst", action="store_true", help="stop once the queue is empty")
    worker.add_argument("--name", help="worker name shown in RQ (default: generated)")
    worker.set_defaults(handler=cmd_worker)

    migrate = sub.add_parser("migrate", help="create or upgrade the PostgreSQL schema", description=(
        "Apply pending schema migrations. Idempotent: a second run changes nothing."))
    migrate.set_defaults(handler=cmd_migrate)

    stats = sub.add_parser("stats", help="show the queue and the stored events", description=(
        "Queue length, age of the oldest queued job, started and failed jobs, events per type."))
    stats.add_argument("--json", action="store_true", help="print JSON instead of a table")
    stats.add_argument("--mailing", type=int, metavar="ID",
                       help="the mailing_stats row of one mailing: sent, delivered, opens, clicks, rates ...")
    stats.add_argument("--watch", action="store_true",
                       help="live view: queue depth, lag, intake and drain rates with history, failures (Ctrl-C ends)")
    stats.add_argument("--interval", type=float, default=2.0, metavar="S",
                       help="seconds between --watch samples (default 2)")
    stats.add_argument("--metrics-url", action="append", metavar="URL",
                       help="a receiver's /metrics, for the intake rate in --watch; repeat for each process")
    stats.add_argument("--frames", type=int, help=argparse.SUPPRESS)  # tests: stop after N frames
    stats.set_defaults(handler=cmd_stats)

    dev = sub.add_parser("dev", help="run the whole stack on this machine", description=(
        "Start embedded Valkey and PostgreSQL (unless REDIS_URL / DATABASE_URL are set), migrate, and run "
        "the receiver, one worker and rq-dashboard until Ctrl-C."))
    dev.add_argument("--redis-port", type=int, default=16379, help="embedded Valkey port (default 16379)")
    dev.add_argument("--postgres-port", type=int, default=15432,
                     help="embedded PostgreSQL port (default 15432)")
    dev.add_argument("--dashboard-port", type=int, default=9181, help="rq-dashboard port (default 9181)")
    dev.set_defaults(handler=cmd_dev)

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
