"""`ingest console` and `ingest console hash-password` as commands: the loopback rule's one-line
refusal, the hash printed, and the console serving on its port."""

from __future__ import annotations

import subprocess
import sys
import time
import urllib.request

from console.auth import verify_password
from ingest.processes import free_port
from tests.processes import Process, ingest_env, run_ingest


def hash_password(env: dict[str, str], typed: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "ingest", "console", "hash-password"],
        env=env,
        input=typed,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_without_users_it_refuses_a_non_loopback_address(redis_url: str, database_url: str) -> None:
    env = ingest_env(redis_url, database_url, INGEST_CONSOLE_HOST="0.0.0.0")
    done = run_ingest(["console"], env, timeout=60)
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("ingest: console: INGEST_CONSOLE_USERS is not set"), done.stderr
    assert "Traceback" not in done.stderr


def test_hash_password_reads_standard_input(redis_url: str, database_url: str) -> None:
    env = ingest_env(redis_url, database_url)
    done = hash_password(env, "open sesame\n")
    assert done.returncode == 0, done.stderr
    assert verify_password("open sesame", done.stdout.strip())
    empty = hash_password(env, "\n")
    assert empty.returncode == 2 and empty.stderr.strip() == "ingest: console hash-password: the password is empty"


def test_it_serves_on_its_port(redis_url: str, database_url: str) -> None:
    port = free_port()
    env = ingest_env(redis_url, database_url, INGEST_CONSOLE_PORT=str(port), INGEST_CONSOLE_SAMPLE_INTERVAL="1")
    with Process(["console"], env):
        deadline = time.monotonic() + 30
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/search", timeout=2) as resp:
                    assert resp.status == 200
                    assert b"Search events" in resp.read()
                break
            except OSError:
                assert time.monotonic() < deadline, "the console did not start"
                time.sleep(0.2)
