"""RQ's keys, jobs and job data as the receiver and the workers rely on them: the job template
the receiver writes with (`JobTemplate`, refusing what it cannot place) and what borrowing
reads (`queue_key`, `job_data`, `queued_calls`)."""

from __future__ import annotations

import uuid
import zlib
from typing import Any, NamedTuple

import redis
from rq import Queue, Retry
from rq.job import Job
from rq.utils import now, utcformat


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
