"""`ingest console`: the operator's web console (aiohttp, server-rendered pages).

It reads what the receivers, workers and the database already hold (Redis, PostgreSQL, the
receivers' `/metrics`) and never writes events itself: replays go through
`workers.storage.rejected.replay` and `ingest.cli.jobs.requeue_failed`.
"""
