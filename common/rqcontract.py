"""The whole contract with RQ: every behaviour of RQ (and of redis-py under it) that the receiver
and the workers rely on, in one place. Each piece says which behaviour it relies on.

- Keys: a queue is a Redis list of job ids, a job a hash; their names come from RQ's own
  attributes, never written out.
- The job template: the receiver writes RQ's jobs without RQ on its hot path, from a record of
  the writes RQ's own enqueue makes (`JobTemplate`); the record refuses what it cannot place.
- Borrowing: the workers take queued job ids off the queue's list and read a job's `data` as RQ
  reads it (`queue_key`, `job_data`, `queued_calls`).
- The worker: RQ's SimpleWorker with a heartbeat while a job runs, a short abandonment TTL, a
  pub/sub thread that stops at once and a scheduler whose connection is built by us
  (`HeartbeatWorker`, `FactoryScheduler`: Sentinel).

Tests marked `rq_contract` check all of it, against the lowest and the highest rq and redis-py
that pyproject allows (`make test-rq-bounds`).
"""

from __future__ import annotations

import contextlib
import inspect
import logging
import threading
import time
import uuid
import zlib
from collections.abc import Callable, Iterator
from typing import Any, NamedTuple

import redis
from rq import Queue, Retry, SimpleWorker
from rq.defaults import DEFAULT_LOGGING_DATE_FORMAT, DEFAULT_LOGGING_FORMAT
from rq.job import Job
from rq.scheduler import RQScheduler
from rq.utils import now, utcformat
from rq.worker import WorkerStatus

log = logging.getLogger("common.rqcontract")


def _text(value: str | bytes) -> str:
    return value.decode() if isinstance(value, bytes) else value  # rq 2.0 gives some keys as bytes


# ---- The jobs -------------------------------------------------------------------------------------
# RQ: a job names the function it runs by its dotted path, imported by the worker; the receiver
# never imports the workers' code. A batch job's own name for the packed format (one zstd frame,
# common.envelope): a worker from before that format fails such a job (RQ keeps it in its failed
# registry, to be requeued once the worker is upgraded) instead of misreading it.
JOB_FUNCTION = "workers.jobs.store_packed"
STORE_FUNCTIONS = (JOB_FUNCTION, "workers.jobs.store_batch")  # what workers store (and borrow)


# ---- Keys -------------------------------------------------------------------------------------
# RQ: a queue is the list <QUEUE_PREFIX><name> of job ids, enqueued at its right end (RPUSH) and
# taken from its left; the set QUEUES_KEY names every queue; a job is the hash <JOB_PREFIX><id>.
QUEUE_PREFIX: str = _text(Queue.redis_queue_namespace_prefix)
QUEUES_KEY: str = _text(Queue.redis_queues_keys)
JOB_PREFIX: str = _text(Job.redis_job_namespace_prefix)


def queue_key(name: str) -> str:
    """The Redis list of a queue's job ids."""
    return QUEUE_PREFIX + name


def job_key(job_id: str) -> str:
    """The Redis hash of one job. RQ deletes it when a job with `result_ttl=0` succeeds, and so
    do the workers for the jobs they borrowed and stored (nothing else refers to a queued job)."""
    return JOB_PREFIX + job_id


# ---- A job's data -----------------------------------------------------------------------------


def job_data(raw: bytes) -> bytes:
    """A job's `data` field as RQ reads it (`Job.restore`): zlib-compressed by RQ's own
    enqueue, taken as it stands when it is not zlib's (the receiver's template writes it plain)."""
    try:
        return zlib.decompress(raw)
    except zlib.error:
        return raw


class QueuedCall(NamedTuple):
    func_name: str | None  # as RQ's Job gives it
    args: tuple[Any, ...]


def queued_calls(conn: redis.Redis, ids: list[str]) -> list[QueuedCall | None]:
    """What each queued job calls, from its `data` field alone (None: the job is gone), decoded
    by RQ's own Job (its serializer). `Job.fetch_many` would also read every date, the status
    and the meta of each: a third of borrowing's time."""
    with conn.pipeline(transaction=False) as pipe:
        for job_id in ids:
            pipe.hget(job_key(job_id), "data")
        found = pipe.execute()
    calls: list[QueuedCall | None] = []
    for job_id, data in zip(ids, found, strict=True):
        if data is None:
            calls.append(None)
            continue
        job = Job(job_id, connection=conn)
        job.data = job_data(data)  # RQ: setting `data` makes func_name and args read from it
        calls.append(QueuedCall(job.func_name, tuple(job.args)))
    return calls


# ---- The job template -------------------------------------------------------------------------


class TemplateError(RuntimeError):
    """RQ's enqueue did something the template cannot place: refuse to build it (and so to
    queue anything) rather than write jobs RQ may misread."""


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

# The pipeline writes RQ's enqueue makes (rq 2.0 to 3.x), each with what its first argument must
# be: "job" the job's hash, "queue" the queue's list, "queues" the set of queues.
_WRITES = {"hset": "job", "rpush": "queue", "lpush": "queue", "sadd": "queues"}


class _Recorder:
    """Stands in for a redis-py pipeline and records the writes RQ issues on it. Anything else
    (a read, whose answer RQ would wait for; `execute`; any other command) is refused."""

    # RQ: enqueue on a caller's pipeline puts it in MULTI mode (rq 3: unless it already is).
    # The replay is one script, all or nothing: a transaction from the start.
    explicit_transaction = True

    def __init__(self) -> None:
        self.commands: list[tuple[str, tuple[Any, ...], dict[str, Any]]] = []

    def multi(self) -> None:
        """Already a transaction (see `explicit_transaction`)."""

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_"):
            raise AttributeError(name)
        if name not in _WRITES:
            raise TemplateError(f"RQ's enqueue called {name}() on its pipeline: the template cannot replay it")

        def record(*args: Any, **kwargs: Any) -> _Recorder:
            self.commands.append((name, args, kwargs))
            return self

        return record


def _encode(value: Any) -> bytes:
    """A command argument as redis-py sends it (strings as UTF-8, numbers as their text)."""
    if isinstance(value, bytes):
        return value
    if isinstance(value, str):
        return value.encode()
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value).encode()
    if isinstance(value, float):
        return repr(value).encode()
    raise TemplateError(f"RQ's enqueue wrote a {type(value).__name__}: the template cannot encode it")


def _bulk(value: bytes) -> bytes:
    return b"$%d\r\n%s\r\n" % (len(value), value)


class JobTemplate:
    """The Redis writes of RQ's enqueue for one job of `function`, with blanks for what each job
    changes. Relies on: `Queue.enqueue_call(..., pipeline=p)` only writes on `p` (RQ executes a
    pipeline it was given no more than one it made), and a job is its hash plus its id in the
    queue's list; RQ reads the hash back with `Job.restore` (checked here once, at build)."""

    VARYING = ("data", "created_at", "enqueued_at", "description")  # hash fields set per job
    _SAMPLE_ID = "00000000-0000-4000-8000-000000000000"

    def __init__(
        self, queue: Queue, function: str, *, timeout: int, result_ttl: int, failure_ttl: int, retry: Retry
    ) -> None:
        # RQ: enqueue asks Redis its version once, on the queue's own connection: asked here
        # first, so that the recording holds writes only.
        queue.get_redis_server_version()
        recorder = _Recorder()
        job = queue.enqueue_call(
            function,
            args=(b"",),
            timeout=timeout,
            result_ttl=result_ttl,
            failure_ttl=failure_ttl,
            retry=retry,
            description="",
            job_id=self._SAMPLE_ID,
            pipeline=recorder,  # type: ignore[arg-type]  # records what RQ sends: a Pipeline by its shape
        )
        func_name, instance, _args, kwargs = queue.serializer.loads(job.data)
        self._call_shape = (func_name, instance, kwargs)
        self._dumps = queue.serializer.dumps
        self.queue_name = queue.name
        self._connection = queue.connection
        fixed = {"job": _text(job.key), "queue": _text(queue.key), "queues": QUEUES_KEY}
        # Times RQ stamped on the sample: a fixed field holding one would freeze it in every job.
        stamps = {_encode(utcformat(t)) for t in (job.created_at, job.enqueued_at) if t is not None}
        argv: list[bytes | str] = []
        self._hash: dict[bytes, bytes | str] = {}  # the job's hash fields: for the check below
        for name, args, options in recorder.commands:
            words = self._words(name, args, options, fixed, stamps)
            argv.append(str(len(words)).encode())
            argv.extend(words)
        missing = set(self.VARYING) - {word for word in argv if isinstance(word, str)}
        if missing:
            raise TemplateError(f"RQ's enqueue no longer writes {sorted(missing)}: the template cannot be built")
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
        self._check(function, retry)

    def _words(
        self, name: str, args: tuple[Any, ...], options: dict[str, Any], fixed: dict[str, str], stamps: set[bytes]
    ) -> list[bytes | str]:
        """One recorded write as the script's words: bytes where fixed, a name where it varies."""
        mapping = dict(options.pop("mapping", None) or {})
        if options:
            raise TemplateError(f"RQ's enqueue issued {name} with {sorted(options)}: the template cannot replay it")
        if not args or _text(args[0]) != fixed[_WRITES[name]]:
            raise TemplateError(f"RQ's enqueue issued {name} on {args[:1]}: the template cannot place that key")
        key, rest = args[0], list(args[1:])
        if name == "hset":  # hset(key, field, value) and/or hset(key, mapping=...)
            if len(rest) % 2:
                raise TemplateError(f"RQ's enqueue issued hset with {len(rest)} arguments: the template cannot read it")
            mapping = {**dict(zip(rest[::2], rest[1::2], strict=True)), **mapping}
            rest = []
        elif name in ("rpush", "lpush") and [_text(a) for a in rest] != [self._SAMPLE_ID]:
            raise TemplateError(f"RQ's enqueue pushed {rest} onto the queue: the template cannot place it")
        words: list[bytes | str] = [
            name.upper().encode(),
            "key" if fixed[_WRITES[name]] == fixed["job"] else _encode(key),
        ]
        for arg in rest:
            words.append("id" if _text(arg) == self._SAMPLE_ID else self._fixed(_encode(arg), stamps))
        for field, value in mapping.items():
            field_name = _text(field)
            words.append(_encode(field_name))
            if field_name in self.VARYING:
                words.append(field_name)
                self._hash[_encode(field_name)] = field_name
            else:
                words.append(self._fixed(_encode(value), stamps))
                self._hash[_encode(field_name)] = words[-1]
        return words

    def _fixed(self, value: bytes, stamps: set[bytes]) -> bytes:
        if self._SAMPLE_ID.encode() in value:
            raise TemplateError(
                f"RQ's enqueue wrote {value[:80]!r}, derived from the job id: the template cannot place it"
            )
        if value in stamps:
            raise TemplateError(
                f"RQ's enqueue wrote the time {value!r} outside {self.VARYING}: the template would freeze it"
            )
        return value

    def _check(self, function: str, retry: Retry) -> None:
        """RQ reads a job of this template back as the job it recorded."""
        job_id = str(uuid.uuid4())
        values = self._values(job_id, (b"",), b"check")
        job = Job(job_id, connection=self._connection)
        job.restore({field: values[v] if isinstance(v, str) else v for field, v in self._hash.items()})
        if (job.func_name, job.args, job.origin, job.description) != (
            function,
            (b"",),
            self.queue_name,
            "check",
        ) or job.retries_left != retry.max:
            raise TemplateError("RQ reads the template's job back differently: the template cannot be used")

    def _values(self, job_id: str, args: tuple[Any, ...], description: bytes) -> dict[str, bytes]:
        func_name, instance, kwargs = self._call_shape
        # The data is not compressed: RQ reads data that is not zlib's as it stands (`job_data`).
        stamp = utcformat(now()).encode()
        id_bytes = job_id.encode()
        return {
            "id": id_bytes,
            "key": job_key(job_id).encode(),
            "created_at": stamp,
            "enqueued_at": stamp,
            "data": self._dumps((func_name, instance, args, kwargs)),
            "description": description,
        }

    def pack(self, argument: Any, description: bytes) -> tuple[str, bytes]:
        """A new job id and the whole command (RESP-encoded) that enqueues a job calling the
        template's function with `argument`."""
        job_id = str(uuid.uuid4())
        values = self._values(job_id, (argument,), description)
        return job_id, b"".join(seg if isinstance(seg, bytes) else _bulk(values[seg]) for seg in self._segments)


# ---- The worker -------------------------------------------------------------------------------
# RQ 3 hands the job's Execution to perform_job and maintain_heartbeats; RQ 2 keeps it on the worker.
_EXECUTION_ARGUMENT = "execution" in inspect.signature(SimpleWorker.perform_job).parameters


LOST_REDIS_PAUSE = 1.0  # seconds a worker waits after a bookkeeping call found Redis gone


@contextlib.contextmanager
def _redis_lost(what: str) -> Iterator[None]:
    """A worker's bookkeeping call that finds Redis gone (a primary killed, a failover under
    way) logs it and pauses instead of stopping the worker."""
    try:
        yield
    except (redis.ConnectionError, redis.TimeoutError) as exc:
        log.warning("%s failed, Redis lost: %s", what, exc)
        time.sleep(LOST_REDIS_PAUSE)


class FactoryScheduler(RQScheduler):
    """RQ's scheduler with its connection built by a factory of ours.

    RQ: the scheduler does not use the worker's client. It keeps the worker's client class, its
    pool's connection class and connection kwargs (`rq.connections.parse_connection`), forgets
    its connection before it forks (`start`), and rebuilds one from those in the child (its
    `connection` property, read lazily). A Sentinel pool does not survive that rebuild (a plain
    pool of Sentinel-managed connections tied to the parent's pool): retries never ran, or
    `--burst` hung. The property is overridden here, so the child builds its own client (through
    Sentinel) with the factory, after the fork."""

    def __init__(self, *args: Any, connection_factory: Callable[[], redis.Redis], **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._factory = connection_factory

    @property
    def connection(self) -> redis.Redis:
        connection: redis.Redis | None = self._connection  # RQ resets it before the fork
        if connection is None:
            connection = self._factory()
            self._connection = connection  # type: ignore[assignment]  # RQ declares it None
        return connection


class HeartbeatWorker(SimpleWorker):
    """RQ's SimpleWorker (jobs run in this process) with:

    - a heartbeat thread while a job runs (RQ's SimpleWorker has none: its job counts as alive
      for its whole timeout plus a minute), each beat extending the job's entry in RQ's started
      registry by `abandoned_after` seconds (`get_heartbeat_ttl`). RQ's registry cleanup (any
      worker's maintenance) retries a job whose entry lapsed: its worker died.
    - a pub/sub thread that polls every `pubsub_poll` seconds. RQ starts it with a 60 s wait
      (rq >= 2.6) and, on exit, asks it to stop then waits for it (redis-py >= 8.2 joins it in
      `stop()`): when RQ's unsubscribe reply woke it just before, it waited the whole 60 s.
    """

    heartbeat_interval: float = 10.0
    abandoned_after: int = 30
    pubsub_poll: float = 0.2
    # Builds the scheduler's own connection (`FactoryScheduler`); None: RQ's rebuild.
    scheduler_connection: Callable[[], redis.Redis] | None = None

    def _start_scheduler(
        self,
        burst: bool = False,
        logging_level: Any = "INFO",
        date_format: str = DEFAULT_LOGGING_DATE_FORMAT,
        log_format: str = DEFAULT_LOGGING_FORMAT,
    ) -> None:
        # RQ: `work(with_scheduler=True)` calls this with these four arguments; it makes
        # `self.scheduler`, which takes the scheduler locks of the worker's queues; with them, a
        # burst worker enqueues the due jobs once, in this process, any other starts the
        # scheduler's process. Later, maintenance restarts that process through the same
        # scheduler (`acquire_locks(auto_start=True)`), so it keeps our connection factory.
        factory = self.scheduler_connection
        if factory is None:
            super()._start_scheduler(burst, logging_level, date_format, log_format)
            return
        self.scheduler = FactoryScheduler(
            self.queues,
            connection=self.connection,
            logging_level=logging_level if logging_level is not None else self.log.level,
            date_format=date_format,
            log_format=log_format,
            serializer=self.serializer,
            connection_factory=factory,
        )
        self.scheduler.acquire_locks()
        if not self.scheduler.acquired_locks:
            return
        if not burst:
            self.scheduler.start()
            return
        try:
            self.scheduler.register_birth()
            self.scheduler.enqueue_scheduled_jobs()
        finally:
            self.scheduler.release_locks()
            self.scheduler.register_death()

    def subscribe(self) -> None:
        # RQ: `subscribe` sets `pubsub` and `pubsub_thread` (the thread `unsubscribe` stops),
        # handles commands with `handle_payload` and survives reconnects with its handler.
        self.pubsub = self.connection.pubsub()
        self.pubsub.subscribe(**{self.pubsub_channel_name: self.handle_payload})
        self.pubsub_thread = self.pubsub.run_in_thread(  # type: ignore[assignment]  # RQ declares it None
            sleep_time=self.pubsub_poll, daemon=True, exception_handler=self._pubsub_exception_handler
        )

    def get_heartbeat_ttl(self, job: Job, working_time: float = 0.0) -> int:  # noqa: ARG002 - RQ's signature
        # RQ: the TTL `prepare_execution` and `maintain_heartbeats` give the started-registry
        # entry, counted from the current whole second (so it must be well above 1).
        return self.abandoned_after

    def execute_job(self, job: Job, queue: Queue) -> None:
        # RQ: its work loop quits the worker on any exception out of a job's bookkeeping, and
        # on a Redis timeout. Redis lost while a job runs (its primary killed, before a failover)
        # must not stop the worker: the job stays in RQ's started registry (on the new primary,
        # through replication), its entry lapses after `abandoned_after` seconds and RQ's
        # registry cleanup retries it (idempotent storing makes a second run harmless).
        try:
            self._execute_job(job, queue)
        except (redis.ConnectionError, redis.TimeoutError) as exc:
            log.warning("Redis lost while job %s ran (%s): it is retried once abandoned", job.id, exc)

    def heartbeat(self, *args: Any, **kwargs: Any) -> None:
        # RQ: the work loop beats after each job, checks for suspension and runs maintenance
        # outside the dequeue's reconnect loop (which waits for Redis with a back-off): these
        # three wait out a lost Redis here, then the dequeue's loop takes over.
        with _redis_lost("worker heartbeat"):
            super().heartbeat(*args, **kwargs)

    def check_for_suspension(self, burst: bool) -> None:
        with _redis_lost("suspension check"):
            super().check_for_suspension(burst)

    def run_maintenance_tasks(self) -> None:
        with _redis_lost("worker maintenance"):
            super().run_maintenance_tasks()

    def _execute_job(self, job: Job, queue: Queue) -> None:
        # RQ: SimpleWorker.execute_job is prepare_execution, perform_job, then state IDLE.
        execution = self.prepare_execution(job)
        stop = threading.Event()
        beat = threading.Thread(target=self._beat, args=(job, execution, stop), name="heartbeat", daemon=True)
        beat.start()
        try:
            if _EXECUTION_ARGUMENT:
                self.perform_job(job, queue, execution)
            else:
                self.perform_job(job, queue)  # type: ignore[call-arg]
        finally:
            stop.set()
            beat.join()
        self.set_state(WorkerStatus.IDLE)

    def _beat(self, job: Job, execution: Any, stop: threading.Event) -> None:
        while not stop.wait(self.heartbeat_interval):
            try:
                if _EXECUTION_ARGUMENT:
                    self.maintain_heartbeats(job, execution)
                else:
                    self.maintain_heartbeats(job)  # type: ignore[call-arg]
            except redis.RedisError as exc:  # the job goes on; at worst it is retried (idempotent)
                log.warning("heartbeat for job %s failed: %s", job.id, exc)
