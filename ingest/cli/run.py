"""`ingest serve`, `ingest worker`, `ingest dev`: the long-running processes."""

from __future__ import annotations

import argparse
from typing import Any

from common.settings import Settings


def register(sub: Any) -> None:
    serve = sub.add_parser(
        "serve",
        help="run the webhook receiver",
        description=("Run the aiohttp receiver: POST /copernica answers 200 once the call is in Redis."),
    )
    serve.add_argument("--host", help="listen address (default: INGEST_HOST)")
    serve.add_argument("--port", type=int, help="listen port (default: INGEST_PORT)")
    serve.add_argument(
        "--processes",
        type=int,
        default=1,
        metavar="N",
        help="run N receiver processes on one port (SO_REUSEPORT); default 1",
    )
    serve.add_argument("--reuse-port", action="store_true", help=argparse.SUPPRESS)
    serve.set_defaults(handler=cmd_serve)

    worker = sub.add_parser(
        "worker",
        help="run an RQ worker that stores queued calls",
        description=("Run a non-forking RQ worker on INGEST_QUEUE that parses queued calls and stores them."),
    )
    worker.add_argument("--burst", action="store_true", help="stop once the queue is empty")
    worker.add_argument("--name", help="worker name shown in RQ (default: generated)")
    worker.set_defaults(handler=cmd_worker)

    dev = sub.add_parser(
        "dev",
        help="run the whole stack on this machine",
        description=(
            "Start embedded Valkey and PostgreSQL (unless REDIS_URL / DATABASE_URL are set), migrate, and run "
            "the receiver, one worker, the console (ingest console) and rq-dashboard until Ctrl-C."
        ),
    )
    dev.add_argument("--redis-port", type=int, default=16379, help="embedded Valkey port (default 16379)")
    dev.add_argument("--postgres-port", type=int, default=15432, help="embedded PostgreSQL port (default 15432)")
    dev.add_argument("--dashboard-port", type=int, default=9181, help="rq-dashboard port (default 9181)")
    dev.add_argument(
        "--ha",
        action="store_true",
        help="embedded Valkey as a primary, a replica and three Sentinels (try a failover: kill the primary)",
    )
    dev.set_defaults(handler=cmd_dev)


def cmd_serve(settings: Settings, args: argparse.Namespace) -> int:
    from ingest.server import serve

    settings.require("redis_url")
    return serve(settings, processes=args.processes, host=args.host, port=args.port, reuse_port=args.reuse_port)


def cmd_worker(settings: Settings, args: argparse.Namespace) -> int:
    from workers.runner import run_worker

    settings.require("redis_url", "database_url")
    return run_worker(settings, burst=args.burst, name=args.name)


def cmd_dev(settings: Settings, args: argparse.Namespace) -> int:
    from ingest.devstack.dev import run_dev

    return run_dev(
        settings,
        redis_port=args.redis_port,
        postgres_port=args.postgres_port,
        dashboard_port=args.dashboard_port,
        ha=args.ha,
    )
