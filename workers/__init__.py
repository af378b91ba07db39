"""Everything after the queue: jobs, the event model, storage and backfill."""
