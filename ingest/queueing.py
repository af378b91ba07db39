"""The only code that knows RQ's enqueue: one batch of raw calls becomes one RQ job.

RQ stays the authority on what a job looks like in Redis. Once, at the first batch, we let
`Queue.enqueue_call` build a job onto a recording pipeline and keep what it wrote as a
template (`JobTemplate`): which keys, which hash fields, which fixed values. Each batch then
fills in only what differs per job (its id, its data, its times, its description) and the
writes go to Redis as one Lua script call on a connection of our own, so they apply together
or not at all, and cost the event loop one send and one reply. Building an RQ job and replaying
it through a redis-py pipeline cost about 0.3 ms of CPU per batch; the template about 0.1 ms.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from typing import Any

import redis
import redis.asyncio as aredis
from redis._parsers.encoders import Encoder
from redis.backoff import NoBackoff
from redis.retry import Retry as RedisRetry
from rq import Queue, Retry
from rq.utils import now, utcformat

from ingest.settings import Settings
from workers.envelope import pack_calls

log = logging.getLogger("ingest.queueing")

# What a batch job runs. Its own name for the packed format (one zstd frame, workers.envelope):
# a worker from before that format fails such a job (RQ keeps it in its failed registry, to be
# requeued once the worker is upgraded) instead of misreading it.
JOB_FUNCTION = "workers.jobs.store_packed"
STORE_FUNCTIONS = (JOB_FUNCTION, "workers.jobs.store_batch")  # what workers store (and borrow)
JOB_TIMEOUT = 600  # seconds a batch may take to store before RQ calls it failed
FAILURE_TTL = 365 * 24 * 3600  # a failed batch rests in the failed registry for a year
RESULT_TTL = 0  # a stored batch leaves Redis at once: the rows are in PostgreSQL

_BACK_OFF = (5, 10, 30, 60, 120, 300, 600)

# Runs a series of commands, each given as its argument count, then the command and its
# arguments. A script runs whole: no other client sees the job half written, and when Redis is
# out of memory its first write is refused, so nothing of the job is written.
REPLAY_SCRIPT = b"""local i = 1
while i <= #ARGV do
  local n = tonumber(ARGV[i])
  redis.call(unpack(ARGV, i + 1, i + n))
  i = i + n + 1
end
return 1"""


def retry_intervals(retries: int) -> list[int]:
    """Back-off for failed batches: 5 s, 10 s, 30 s, 1, 2, 5, 10 minutes, then every 15 minutes.
    Short at first, because the usual failure is brief (a worker killed, PostgreSQL restarting);
    a job abandoned by a dead worker is retried through the same back-off."""
    return [_BACK_OFF[i] if i < len(_BACK_OFF) else 900 for i in range(retries)]


def _client_options(settings: Settings, timeout: float | None) -> dict[str, Any]:
    limit = timeout if timeout is not None else settings.redis_timeout
    return {
        "socket_timeout": limit,
        "socket_connect_timeout": limit,
        # One immediate retry on a broken connection (Redis restarted under us); none on a
        # timeout, so a hung Redis costs one timeout, not several.
        "retry": RedisRetry(NoBackoff(), 1, supported_errors=(redis.ConnectionError,)),
        "retry_on_timeout": False,
        "health_check_interval": 0,
    }


def redis_client(settings: Settings, *, timeout: float | None = None) -> redis.Redis:
    """A synchronous client that fails fast (used by commands and tests)."""
    settings.require("redis_url")
    return redis.Redis.from_url(settings.redis_url, **_client_options(settings, timeout))


class _Recorder:
    """Stands in for a redis-py pipeline and records the writes RQ issues on it."""

    def __init__(self) -> None:
        self.commands: list[tuple[str, tuple[Any, ...], dict[str, Any]]] = []

    def __getattr__(self, name: str) -> Any:
        def record(*args: Any, **kwargs: Any) -> _Recorder:
            self.commands.append((name, args, kwargs))
            return self

        return record


def _bulk(value: bytes) -> bytes:
    return b"$%d\r\n%s\r\n" % (len(value), value)


class JobTemplate:
    """The Redis writes of RQ's enqueue for one batch job, with blanks for what each job changes."""

    VARYING = ("data", "created_at", "enqueued_at", "description")  # hash fields set per job
    _SAMPLE_ID = "00000000-0000-4000-8000-000000000000"

    def __init__(self, queue: Queue, retry: Retry) -> None:
        recorder = _Recorder()
        job = queue.enqueue_call(
            JOB_FUNCTION, args=([],), timeout=JOB_TIMEOUT, result_ttl=RESULT_TTL, failure_ttl=FAILURE_TTL,
            retry=retry, description="", job_id=self._SAMPLE_ID, pipeline=recorder,  # type: ignore[arg-type]
        )
        func_name, instance, _args, kwargs = queue.serializer.loads(job.data)
        self._call_shape = (func_name, instance, kwargs)
        self._dumps = queue.serializer.dumps
        encode = Encoder("utf-8", "strict", False).encode
        blanks = {job.key.encode(): "key", job.id.encode(): "id"}
        argv: list[bytes | str] = []
        found: set[str] = set()
        for name, args, options in recorder.commands:
            words: list[bytes | str] = [encode(name.upper()), *(encode(arg) for arg in args)]
            for field, value in (options.pop("mapping", None) or {}).items():
                words.append(encode(field))
                words.append(field if field in self.VARYING else encode(value))
            if options:
                raise RuntimeError(f"RQ's enqueue issued {name} with {sorted(options)}: the template cannot replay it")
            words = [blanks.get(word, word) if isinstance(word, bytes) else word for word in words]
            found.update(word for word in words if isinstance(word, str))
            argv.append(str(len(words)).encode())
            argv.extend(words)
        missing = set(self.VARYING) - found
        if missing:
            raise RuntimeError(f"RQ's enqueue no longer writes {sorted(missing)}: the template cannot be built")
        # Fixed pieces are encoded once; consecutive ones are joined into one bytes.
        head = b"*%d\r\n" % (3 + len(argv)) + _bulk(b"EVAL") + _bulk(REPLAY_SCRIPT) + _bulk(b"0")
        self._segments: list[bytes | str] = [head]
        for word in argv:
            if isinstance(word, str):
                self._segments.append(word)
            elif isinstance(self._segments[-1], bytes):
                self._segments[-1] += _bulk(word)
            else:
                self._segments.append(_bulk(word))

    def pack(self, calls: list[dict[str, Any]]) -> tuple[str, bytes]:
        """The job id and the whole command (RESP-encoded) that enqueues `calls` as one job."""
        job_id = str(uuid.uuid4())
        func_name, instance, kwargs = self._call_shape
        # The calls are compressed in their argument (workers.envelope), so the data is not: RQ
        # reads data that is not zlib's as it stands.
        data = self._dumps((func_name, instance, (pack_calls(calls),), kwargs))
        stamp = utcformat(now()).encode()
        id_bytes = job_id.encode()
        values = {"id": id_bytes, "key": b"rq:job:" + id_bytes, "data": data, "created_at": stamp,
                  "enqueued_at": stamp, "description": b"store_packed(%d calls)" % len(calls)}
        return job_id, b"".join(seg if type(seg) is bytes else _bulk(values[seg]) for seg in self._segments)


class BatchQueue:
    """Writes batches of raw calls to the RQ queue from the event loop."""

    def __init__(self, settings: Settings) -> None:
        settings.require("redis_url")
        self.settings = settings
        self.connection = aredis.Redis.from_url(settings.redis_url, **_client_options(settings, None))
        self._sync = redis_client(settings)
        self.queue = Queue(settings.queue, connection=self._sync)
        self.retry = Retry(max=settings.job_retries, interval=retry_intervals(settings.job_retries))
        self._template: JobTemplate | None = None
        # Connections of our own for the batch writes (the committer bounds how many at once):
        # redis-py's pool costs more per checkout than the whole write. They have no socket
        # timeout of their own (it costs a task per send): `enqueue` bounds the whole write.
        self._connections = aredis.ConnectionPool.from_url(
            settings.redis_url, **{**_client_options(settings, None), "socket_timeout": None})
        self._idle: list[aredis.connection.AbstractConnection] = []

    def template(self) -> JobTemplate:
        """Built at the first batch: RQ asks Redis its version once before it builds a job."""
        if self._template is None:
            self.queue.get_redis_server_version()
            self._template = JobTemplate(self.queue, self.retry)
        return self._template

    async def enqueue(self, calls: list[dict[str, Any]]) -> str:
        """Durably queue one batch; return the job id. Raises redis errors on failure."""
        template = self._template
        if template is None:
            template = await asyncio.get_running_loop().run_in_executor(None, self.template)
        job_id, command = template.pack(calls)
        async with asyncio.timeout(self.settings.redis_timeout * 2):
            await self._send(command)
        return job_id

    async def _send(self, command: bytes) -> None:
        """Send one command and read its reply; once more on a fresh connection if the first broke.
        A retried batch may be queued twice when the first reply was lost: storing is idempotent."""
        for attempt in (1, 2):
            conn = self._idle.pop() if self._idle else self._connections.make_connection()
            try:
                await conn.send_packed_command(command, check_health=False)
                await conn.read_response()  # an error reply raises, after it was read whole
            except redis.ConnectionError:
                await conn.disconnect()
                if attempt == 2:
                    raise
            except BaseException:  # a timeout or a cancellation: the reply may still come; drop the socket
                await conn.disconnect()
                raise
            else:
                return
            finally:
                self._idle.append(conn)

    def write_sync(self, conn: redis.Redis, calls: list[dict[str, Any]]) -> str:
        """Queue one batch from synchronous code (the benchmark, tests) the same way."""
        job_id, command = self.template().pack(calls)
        connection = conn.connection_pool.get_connection()
        try:
            connection.send_packed_command([command])
            connection.read_response()
        finally:
            conn.connection_pool.release(connection)
        return job_id

    async def ping(self) -> bool:
        try:
            return bool(await asyncio.wait_for(self.connection.ping(), timeout=self.settings.redis_timeout))
        except (TimeoutError, redis.RedisError, OSError):
            return False

    async def close(self) -> None:
        for conn in self._idle:
            await conn.disconnect()
        self._idle.clear()
        await self.connection.aclose()
        self._sync.close()
