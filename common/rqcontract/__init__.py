"""The whole contract with RQ: every behaviour of RQ (and of redis-py under it) that the receiver
and the workers rely on, in this package. Each piece says which behaviour it relies on.

- `jobs`: keys (a queue is a Redis list of job ids, a job a hash; their names come from RQ's own
  attributes, never written out); the job template the receiver writes RQ's jobs with, without RQ
  on its hot path, from a record of the writes RQ's own enqueue makes (`JobTemplate`, which
  refuses what it cannot place); what borrowing reads (`queue_key`, `job_data`, `queued_calls`).
- `worker`: RQ's SimpleWorker with a heartbeat while a job runs, a short abandonment TTL, a
  pub/sub thread that stops at once, a scheduler whose connection is built by us (Sentinel), and
  the job it was running put back on the queue when Redis was lost under it (`HeartbeatWorker`).

Tests marked `rq_contract` check all of it, against the lowest and the highest rq and redis-py
that pyproject allows (`make test-rq-bounds`).
"""
