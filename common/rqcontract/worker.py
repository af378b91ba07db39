"""RQ's worker as the store workers rely on it: RQ's SimpleWorker with a heartbeat while a job
runs, a short abandonment TTL, a pub/sub thread that stops at once, a scheduler whose connection
is built by us (Sentinel), and a worker that outlives a lost Redis and puts the job it was
running back on the queue of the primary that took over (`HeartbeatWorker`)."""

from __future__ import annotations

import contextlib
import inspect
import logging
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import redis
from rq import Queue, SimpleWorker
from rq.defaults import DEFAULT_LOGGING_DATE_FORMAT, DEFAULT_LOGGING_FORMAT
from rq.job import Job
from rq.registry import ScheduledJobRegistry, StartedJobRegistry
from rq.scheduler import RQScheduler
from rq.worker import WorkerStatus

log = logging.getLogger("common.rqcontract.worker")

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


# Puts back on its queue a job whose worker lost Redis while running it, on whichever primary
# answers now. What the new primary holds of the job depends on how much of RQ's bookkeeping was
# replicated before the loss: the job id still in the queue (its dequeue was lost: nothing to
# do), in the queue's intermediate list (RQ's LMOVE dequeue), in the started registry (one entry
# per execution, "<job id>:<execution id>"), or nowhere but its hash. A job whose hash is gone
# had finished (result_ttl=0) or was never acknowledged; a job scheduled for a retry, or failed,
# is RQ's to handle. Everything else is requeued: entries in the started and intermediate lists
# removed, the status set back to queued, the id pushed on the queue. One script: atomic.
# KEYS: job hash, queue list, intermediate list, started registry, scheduled registry, the set
# of queues. ARGV: job id.
_REQUEUE_SCRIPT = """
if redis.call('EXISTS', KEYS[1]) == 0 then return 'gone' end
local status = redis.call('HGET', KEYS[1], 'status')
if status == 'finished' or status == 'failed' or status == 'canceled' or status == 'stopped' then
  return 'left ' .. status
end
if redis.call('LPOS', KEYS[2], ARGV[1]) then return 'still queued' end
if redis.call('ZSCORE', KEYS[5], ARGV[1]) then return 'scheduled for a retry' end
local prefix = ARGV[1] .. ':'
for _, entry in ipairs(redis.call('ZRANGE', KEYS[4], 0, -1)) do
  if entry == ARGV[1] or string.sub(entry, 1, #prefix) == prefix then
    redis.call('ZREM', KEYS[4], entry)
  end
end
redis.call('LREM', KEYS[3], 0, ARGV[1])
redis.call('HSET', KEYS[1], 'status', 'queued')
redis.call('RPUSH', KEYS[2], ARGV[1])
redis.call('SADD', KEYS[6], KEYS[2])
return 'requeued'
"""


def requeue_interrupted(connection: redis.Redis, job_id: str, queue: Queue) -> str:
    """Put back on `queue` the job `job_id` whose worker lost Redis while running it, unless
    the primary that answers now shows it queued, finished, failed or scheduled (see
    `_REQUEUE_SCRIPT`); what was done, in words ("requeued", "still queued", "gone", …).

    RQ: a queue's intermediate list (`Queue.intermediate_queue_key`, its LMOVE dequeue), the
    started registry's composite entries, the scheduled registry and the set of queues, all
    named by RQ's own attributes; a job's `status` field holds RQ's JobStatus values."""
    keys = [
        Job.key_for(job_id),
        queue.key,
        queue.intermediate_queue_key,
        StartedJobRegistry(queue.name, connection=connection).key,
        ScheduledJobRegistry(queue.name, connection=connection).key,
        Queue.redis_queues_keys,
    ]
    outcome = connection.eval(_REQUEUE_SCRIPT, len(keys), *keys, job_id)
    return outcome.decode() if isinstance(outcome, bytes) else str(outcome)


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
    # How long a worker that lost Redis under a job keeps trying to put that job back (a
    # Sentinel failover takes seconds); after that RQ's abandoned-job handling still retries it.
    requeue_within: float = 60.0
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
        # must not stop the worker, nor leave the job to RQ's abandoned-job handling (its entry
        # in the started registry lapses only after `abandoned_after` seconds, and the next
        # maintenance round comes later still): once a primary answers again, the worker puts
        # the job back on its queue itself (`requeue_interrupted`). Running it twice is harmless:
        # storing is idempotent.
        try:
            self._execute_job(job, queue)
        except (redis.ConnectionError, redis.TimeoutError) as exc:
            log.warning("Redis lost while job %s ran (%s): requeueing it once Redis answers", job.id, exc)
            self._requeue_when_back(job, queue)

    def _requeue_when_back(self, job: Job, queue: Queue) -> None:
        deadline = time.monotonic() + self.requeue_within
        while True:
            try:
                outcome = requeue_interrupted(self.connection, job.id, queue)
            except (redis.ConnectionError, redis.TimeoutError) as exc:
                if time.monotonic() >= deadline:
                    log.warning(
                        "Redis still lost after %.0f s (%s): job %s is left to RQ's abandoned-job handling",
                        self.requeue_within,
                        exc,
                        job.id,
                    )
                    return
                time.sleep(LOST_REDIS_PAUSE)
                continue
            log.info("job %s after the loss of Redis: %s", job.id, outcome)
            return

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
