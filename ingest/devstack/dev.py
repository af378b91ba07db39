"""`ingest dev`: the whole stack on one machine, in one command.

Starts the embedded Valkey and PostgreSQL (unless REDIS_URL / DATABASE_URL point elsewhere),
migrates, then runs the receiver, one worker, the console and rq-dashboard as child processes. Anyone may
post (INGEST_AUTH=none) unless INGEST_AUTH is set, so the receiver listens on 127.0.0.1 unless
INGEST_HOST is set; the banner says both. Ctrl-C or
SIGTERM stops everything in order; every child also dies with this process (PR_SET_PDEATHSIG),
so a `kill -9` leaves nothing running and the next start finds its ports free.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from common.settings import Settings
from ingest.devstack.embedded import (
    EmbeddedPostgres,
    EmbeddedSentinel,
    EmbeddedValkey,
    _die_with_parent,
    _Server,
    prune_stale,
)
from ingest.processes import StopSignals

log = logging.getLogger("ingest.devstack.dev")


class Stack:
    """The child processes of `ingest dev`, started and stopped in order."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        self.servers: list[_Server] = []
        self.children: dict[str, subprocess.Popen[bytes]] = {}

    def spawn(self, name: str, argv: list[str], env: dict[str, str]) -> None:
        pid_file = self.data_dir / f"{name}.pid"
        # A leftover is recognised by its command line: ours are `... -m ingest <command>`.
        prune_stale(pid_file, " ".join(argv[1:]) if name != "dashboard" else "rq-dashboard")
        child = subprocess.Popen(argv, env=env, stdin=subprocess.DEVNULL, preexec_fn=_die_with_parent(signal.SIGTERM))
        pid_file.write_text(f"{child.pid}\n")
        self.children[name] = child

    def exited(self) -> str | None:
        for name, child in self.children.items():
            if child.poll() is not None:
                return name
        return None

    def stop(self) -> None:
        for child in self.children.values():
            if child.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    child.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 20
        for name, child in self.children.items():
            try:
                child.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                child.kill()
                child.wait()
            (self.data_dir / f"{name}.pid").unlink(missing_ok=True)
        self.children.clear()
        for server in reversed(self.servers):
            server.stop()
        self.servers.clear()


def _chosen(var: str) -> bool:
    """`var` set in the environment or in .env (else `ingest dev` picks its own default)."""
    from common.settings import _read_dotenv

    return bool(os.environ.get(var) or _read_dotenv().get(var))


def _wait_for_receiver(host: str, port: int, process: subprocess.Popen[bytes], timeout: float = 30) -> bool:
    """True once the receiver accepts connections on `host` (any address it listens on)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and process.poll() is None:
        try:
            socket.create_connection((host, port), timeout=0.2).close()
            return True
        except OSError:
            time.sleep(0.05)
    return False


SENTINEL_MASTER = "ingest"
DASHBOARD_CONFIG = "common.dashboard_settings"  # rq-dashboard --config: its settings from ours


def start_ha(stack: Stack, data_dir: Path, redis_port: int) -> dict[str, str]:
    """`ingest dev --ha`: a primary on `redis_port`, its replica on the next port and three
    Sentinels (quorum 2) on the three after; the settings that reach the primary through them."""
    primary = EmbeddedValkey(data_dir / "valkey", redis_port)
    primary.start()
    stack.servers.append(primary)
    replica = EmbeddedValkey(data_dir / "valkey-replica", redis_port + 1, replica_of=("127.0.0.1", redis_port))
    replica.start()
    stack.servers.append(replica)
    sentinels = []
    for n in range(3):
        sentinel = EmbeddedSentinel(
            data_dir / f"sentinel-{n + 1}", ("127.0.0.1", redis_port), redis_port + 2 + n, master_name=SENTINEL_MASTER
        )
        sentinel.start()
        stack.servers.append(sentinel)
        sentinels.append(sentinel.address)
    return {
        "REDIS_URL": "redis:///0",
        "REDIS_SENTINELS": ",".join(sentinels),
        "REDIS_SENTINEL_MASTER": SENTINEL_MASTER,
    }


def _redis_env(settings: Settings, stack: Stack, data_dir: Path, redis_port: int, *, ha: bool) -> dict[str, str]:
    """The Redis settings of the stack's children: the embedded server(s) unless set."""
    if ha and settings.redis_url is None and not settings.redis_sentinels:
        return start_ha(stack, data_dir, redis_port)
    if settings.redis_url is None and not settings.redis_sentinels:
        valkey = EmbeddedValkey(data_dir / "valkey", redis_port)
        valkey.start()
        stack.servers.append(valkey)
        return {"REDIS_URL": valkey.url}
    env = settings.to_env()
    return {var: env[var] for var in ("REDIS_URL", "REDIS_SENTINELS", "REDIS_SENTINEL_MASTER") if var in env}


def _redis_banner(redis: dict[str, str], failover: str | None) -> tuple[str, str]:
    """The banner's Redis lines and the variables other commands need."""
    exports = " ".join(f"{var}={value}" for var, value in redis.items())
    if "REDIS_SENTINELS" not in redis:
        return f"  redis URL      {redis['REDIS_URL']}\n", exports
    line = f"  redis          through Sentinels {redis['REDIS_SENTINELS']}\n"
    if failover:
        line += (
            f"  try a failover {failover}\n"
            "                 (Sentinel promotes the replica within seconds; the stack follows it)\n"
        )
    return line, exports


def _spawn_console(stack: Stack, settings: Settings, env: dict[str, str], host: str, dashboard_port: int) -> str:
    """`ingest console`, sampling this stack's receiver and linking its rq-dashboard unless told
    otherwise; its URL."""
    receiver = f"[{host}]" if ":" in host else host
    console_env = dict(env)
    if not _chosen("INGEST_CONSOLE_METRICS_URLS"):
        console_env["INGEST_CONSOLE_METRICS_URLS"] = f"http://{receiver}:{settings.port}/metrics"
    if not _chosen("INGEST_CONSOLE_DASHBOARD_URL"):
        console_env["INGEST_CONSOLE_DASHBOARD_URL"] = f"http://127.0.0.1:{dashboard_port}/"
    stack.spawn("console", [sys.executable, "-m", "ingest", "console"], console_env)
    console_host = "127.0.0.1" if settings.console_host in ("0.0.0.0", "::") else settings.console_host
    shown = f"[{console_host}]" if ":" in console_host else console_host
    login = "" if settings.console_users else " (no login: this machine only)"
    return f"http://{shown}:{settings.console_port}/{login}"


def run_dev(
    settings: Settings,
    *,
    redis_port: int = 16379,
    postgres_port: int = 15432,
    dashboard_port: int = 9181,
    ha: bool = False,
) -> int:
    from workers.storage.schema import apply_migrations

    data_dir = Path(settings.data_dir).resolve()
    data_dir.mkdir(parents=True, exist_ok=True)
    stack = Stack(data_dir)
    signals = StopSignals()
    try:
        redis = _redis_env(settings, stack, data_dir, redis_port, ha=ha)
        database_url = settings.database_url
        if database_url is None:
            postgres = EmbeddedPostgres(data_dir / "postgres", postgres_port)
            postgres.start()
            stack.servers.append(postgres)
            database_url = postgres.url
        apply_migrations(database_url)

        env = {**os.environ, **settings.to_env(), **redis, "DATABASE_URL": database_url}
        # On one's own machine anyone may post, unless INGEST_AUTH says otherwise; so by default
        # only this machine can reach the receiver, unless INGEST_HOST says otherwise (said at start).
        env["INGEST_AUTH"] = auth = str(settings.auth) if _chosen("INGEST_AUTH") else "none"
        anyone = " (anyone; set INGEST_AUTH to require a signature or token)" if auth == "none" else ""
        env["INGEST_HOST"] = listen = settings.host if _chosen("INGEST_HOST") else "127.0.0.1"
        reach = (
            " (this machine only; set INGEST_HOST=0.0.0.0 to take calls from the network)"
            if listen in ("127.0.0.1", "::1", "localhost")
            else " (reachable from the network)"
        )
        python = sys.executable
        stack.spawn("receiver", [python, "-m", "ingest", "serve"], env)
        stack.spawn("worker", [python, "-m", "ingest", "worker"], env)
        dashboard = shutil.which("rq-dashboard", path=str(Path(python).parent)) or shutil.which("rq-dashboard")
        if dashboard:
            # Its Redis (and through Sentinel, the passwords) from the same environment as the rest.
            argv = [dashboard, "--config", DASHBOARD_CONFIG, "--port", str(dashboard_port), "--bind", "127.0.0.1"]
            stack.spawn(
                "dashboard",
                argv,
                env,
            )
        host = "127.0.0.1" if listen in ("0.0.0.0", "::") else listen
        console_url = _spawn_console(stack, settings, env, host, dashboard_port)
        if not _wait_for_receiver(host, settings.port, stack.children["receiver"]):
            log.error("the receiver did not start")
            return 1
        shown = f"[{host}]" if ":" in host else host
        ha_started = any(isinstance(server, EmbeddedSentinel) for server in stack.servers)
        failover = f"kill -9 $(cat {data_dir / 'valkey' / 'valkey.pid'})" if ha_started else None
        redis_line, exports = _redis_banner(redis, failover)
        print(
            "\ncopernica-ingest is running (Ctrl-C stops everything)\n"
            f"  webhook URL    http://{shown}:{settings.port}/copernica\n"
            f"  listening on   INGEST_HOST={listen}{reach}\n"
            f"  who may post   INGEST_AUTH={auth}{anyone}\n"
            f"  console        {console_url}\n"
            f"  dashboard      http://127.0.0.1:{dashboard_port}/\n"
            f"  database URL   {database_url}\n"
            f"{redis_line}"
            "  for other commands in another terminal:\n"
            f"    export {exports} DATABASE_URL={database_url}\n",
            flush=True,
        )
        while not signals.caught:
            gone = stack.exited()
            if gone is not None:
                log.error("%s exited unexpectedly; stopping the stack", gone)
                return 1
            time.sleep(0.2)
        return 0
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        stack.stop()
        log.info("stopped")
