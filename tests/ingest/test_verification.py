"""URL verification: `ingest verify-url FILE` stores Copernica's smtpeter-xxxxx.txt in Redis and
every running receiver serves it, unauthenticated, at /<name> and /copernica/<name>."""

from __future__ import annotations

import subprocess
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import orjson
import pytest
import redis

from common.settings import Settings
from ingest import verification
from ingest.processes import free_port
from tests.clients import receiver_client
from tests.payloads import webhook_body
from tests.processes import ingest_env, receiver, run_ingest

TOKEN = "verify-token-0123456789"
# Bytes that would not survive a decode/encode or a newline translation.
CONTENT = b"smtpeter verification 7f3a\r\nline two \xff\xfe\n"


@pytest.fixture
def env(settings: Settings) -> dict[str, str]:
    return ingest_env(settings.redis_url, settings.database_url)


def verify_url(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return run_ingest(["verify-url", *args], env, timeout=60)


def write(directory: Path, name: str, content: bytes = CONTENT) -> Path:
    path = directory / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content)
    return path


@dataclass
class Answer:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> object:
        return orjson.loads(self.body)


def call(url: str, method: str = "GET", data: bytes | None = None, **headers: str) -> Answer:
    """One HTTP request; any status is an answer (no exception for 4xx/5xx)."""
    request = urllib.request.Request(url, data=data, method=method, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=5) as resp:
            return Answer(resp.status, dict(resp.headers), resp.read())
    except urllib.error.HTTPError as error:
        return Answer(error.code, dict(error.headers), error.read())


def queue_length(conn: redis.Redis, settings: Settings) -> int:
    return conn.llen(f"rq:queue:{settings.queue}")


def assert_served(base: str, name: str, content: bytes) -> None:
    for path in (f"/{name}", f"/copernica/{name}"):
        resp = call(base + path)
        assert resp.status == 200, path
        assert resp.headers["Content-Type"].split(";")[0] == "text/plain"
        assert resp.body == content
        head = call(base + path, "HEAD")
        assert head.status == 200
        assert head.body == b""
        assert int(head.headers["Content-Length"]) == len(content)


def assert_not_found(base: str, name: str) -> None:
    for path in (f"/{name}", f"/copernica/{name}"):
        resp = call(base + path)
        assert resp.status == 404, path
        assert resp.json() == {"status": "error", "reason": "not found"}


@pytest.fixture
def open_receiver(env: dict[str, str]) -> Iterator[str]:
    with receiver(env) as url:
        yield url


def test_stored_file_is_served_by_a_running_receiver(
    open_receiver: str, env: dict[str, str], tmp_path: Path, redis_conn: redis.Redis, settings: Settings
) -> None:
    name = "smtpeter-Ab3_x-9.txt"
    assert_not_found(open_receiver, name)  # the receiver runs before the file is stored
    done = verify_url(env, str(write(tmp_path / "downloads", name)))  # a path: only the base name counts
    assert done.returncode == 0, done.stderr
    assert name in done.stdout
    before = queue_length(redis_conn, settings)
    assert_served(open_receiver, name, CONTENT)
    assert call(f"{open_receiver}/smtpeter-Ab3_x-9.txt?x=1").body == CONTENT
    assert queue_length(redis_conn, settings) == before == 0  # serving queues nothing
    # Other names are not served, and the probe of /copernica/<token> answers as before.
    assert_not_found(open_receiver, "smtpeter-other.txt")
    probe = call(f"{open_receiver}/copernica/{TOKEN}")
    assert probe.status == 200 and probe.json() == {"status": "ok"}
    assert call(f"{open_receiver}/copernica/x/{name}").status == 404
    assert call(f"{open_receiver}/{name}", "POST", b"a=1").status == 404


def test_storing_again_replaces_the_file(open_receiver: str, env: dict[str, str], tmp_path: Path) -> None:
    name = "smtpeter-again.txt"
    assert verify_url(env, str(write(tmp_path, name, b"first"))).returncode == 0
    assert verify_url(env, str(write(tmp_path / "later", name, b"second"))).returncode == 0
    assert_served(open_receiver, name, b"second")


@pytest.mark.parametrize(
    "auth",
    [
        {"INGEST_AUTH": "token", "INGEST_TOKENS": TOKEN},
        {"INGEST_AUTH": "signature"},
        {"INGEST_AUTH": "signature,token", "INGEST_TOKENS": TOKEN},
    ],
    ids=lambda auth: auth["INGEST_AUTH"],
)
def test_served_without_credentials_whatever_the_auth(
    settings: Settings, tmp_path: Path, auth: dict[str, str], redis_conn: redis.Redis
) -> None:
    env = ingest_env(settings.redis_url, settings.database_url, **auth)
    name = "smtpeter-signed1.txt"
    with receiver(env) as url:
        assert verify_url(env, str(write(tmp_path, name))).returncode == 0
        assert_served(url, name, CONTENT)
        # The webhook itself still wants credentials.
        refused = call(
            f"{url}/copernica", "POST", webhook_body("open"), **{"Content-Type": "application/x-www-form-urlencoded"}
        )
        assert refused.status == 401
    assert queue_length(redis_conn, settings) == 0


@pytest.mark.parametrize(
    "argument, make",
    [
        ("../x", lambda d: write(d, "x")),
        ("smtpeter-a.html", lambda d: write(d, "smtpeter-a.html")),
        ("smtpeter-a.txt.exe", lambda d: write(d, "smtpeter-a.txt.exe")),
        ("smtpeter-.txt", lambda d: write(d, "smtpeter-.txt")),
        ("smtpeter-a (1).txt", lambda d: write(d, "smtpeter-a (1).txt")),
        ("smtpeter-a.b.txt", lambda d: write(d, "smtpeter-a.b.txt")),
        ("SMTPETER-a.txt", lambda d: write(d, "SMTPETER-a.txt")),
        ("smtpeter-" + "a" * 65 + ".txt", lambda d: write(d, "smtpeter-" + "a" * 65 + ".txt")),
        ("smtpeter-big.txt", lambda d: write(d, "smtpeter-big.txt", b"x" * (verification.MAX_BYTES + 1))),
        ("smtpeter-missing.txt", lambda _d: None),
        ("smtpeter-dir.txt", lambda d: (d / "smtpeter-dir.txt").mkdir()),
        ("smtpeter-dir.txt/", lambda d: (d / "smtpeter-dir.txt").mkdir()),
    ],
    ids=lambda value: value if isinstance(value, str) else "",
)
def test_refused_files_store_nothing(
    env: dict[str, str], tmp_path: Path, redis_conn: redis.Redis, argument: str, make
) -> None:
    work = tmp_path / "work"
    work.mkdir()
    make(work)
    done = verify_url(env, f"{work}/{argument}")
    assert done.returncode == 2, done.stderr
    lines = done.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("ingest: verify-url: "), done.stderr
    assert "Traceback" not in done.stderr
    assert not redis_conn.exists(verification.REDIS_KEY)


def test_largest_allowed_file_is_stored(open_receiver: str, env: dict[str, str], tmp_path: Path) -> None:
    content = bytes(range(256)) * (verification.MAX_BYTES // 256)
    assert len(content) == verification.MAX_BYTES
    assert verify_url(env, str(write(tmp_path, "smtpeter-4k.txt", content))).returncode == 0
    assert_served(open_receiver, "smtpeter-4k.txt", content)


def test_list_and_remove(open_receiver: str, env: dict[str, str], tmp_path: Path) -> None:
    listed = verify_url(env, "--list")
    assert listed.returncode == 0 and listed.stdout == ""
    for name in ("smtpeter-b.txt", "smtpeter-a.txt"):
        assert verify_url(env, str(write(tmp_path, name))).returncode == 0
    listed = verify_url(env, "--list")
    assert listed.returncode == 0, listed.stderr
    assert listed.stdout.splitlines() == ["smtpeter-a.txt", "smtpeter-b.txt"]

    removed = verify_url(env, "--remove", "smtpeter-a.txt")
    assert removed.returncode == 0, removed.stderr
    assert_not_found(open_receiver, "smtpeter-a.txt")
    assert_served(open_receiver, "smtpeter-b.txt", CONTENT)
    assert verify_url(env, "--list").stdout.splitlines() == ["smtpeter-b.txt"]

    again = verify_url(env, "--remove", "smtpeter-a.txt")
    assert again.returncode == 1
    assert again.stderr.splitlines() == ["ingest: verify-url: 'smtpeter-a.txt' is not stored"]


@pytest.mark.parametrize("args", [[], ["--list", "--remove", "smtpeter-a.txt"], ["smtpeter-a.txt", "--list"]])
def test_exactly_one_action(env: dict[str, str], args: list[str]) -> None:
    done = verify_url(env, *args)
    assert done.returncode == 2
    assert len(done.stderr.splitlines()) == 1 and done.stderr.startswith("ingest: verify-url: ")


def test_unreachable_redis_is_one_line(tmp_path: Path, settings: Settings) -> None:
    env = ingest_env(f"redis://127.0.0.1:{free_port()}/0", settings.database_url)
    done = verify_url(env, str(write(tmp_path, "smtpeter-down.txt")))
    assert done.returncode == 1
    assert len(done.stderr.splitlines()) == 1 and done.stderr.startswith("ingest: verify-url failed: ")


async def test_redis_down_while_serving_is_503(settings: Settings) -> None:
    down = Settings.from_env({**settings.to_env(), "REDIS_URL": f"redis://127.0.0.1:{free_port()}/0"}, dotenv=False)
    async with receiver_client(down) as client:
        for path in ("/smtpeter-a.txt", "/copernica/smtpeter-a.txt"):
            resp = await client.get(path)
            assert resp.status == 503
            assert resp.headers["Retry-After"] == str(down.retry_after)
            assert (await resp.json())["status"] == "unavailable"
        probe = await client.get(f"/copernica/{TOKEN}")  # not a file name: Redis is not asked
        assert probe.status == 200


def test_names_in_paths() -> None:
    find = verification.name_in_path
    assert find("/smtpeter-abc.txt") == "smtpeter-abc.txt"
    assert find("/copernica/smtpeter-abc.txt?x=1") == "smtpeter-abc.txt"
    assert find("/copernica") is None
    assert find("/copernica/" + TOKEN) is None
    assert find("/other/smtpeter-abc.txt") is None
    assert find("/copernica/a/smtpeter-abc.txt") is None
    assert find("/smtpeter-abc.txt/") is None
    assert find("/smtpeter-%2e%2e.txt") is None
    assert find("/smtpeter-abc.txt\n") is None
