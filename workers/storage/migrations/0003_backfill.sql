-- Backfill progress: one row per logfile (REST download) or imported file, so a rerun skips
-- what is complete and finishes the rest. Counts are those of the latest attempt and are
-- updated in the same transaction as each stored batch, so they never run ahead of the data.

CREATE TABLE backfill_files (
    id             bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    origin         text        NOT NULL CHECK (origin IN ('api', 'import')),
    name           text        NOT NULL,  -- logfile name, or the imported file's absolute path
    log_date       date,
    log_type       text        NOT NULL,
    format         text        NOT NULL,
    records        bigint      NOT NULL DEFAULT 0,
    stored         bigint      NOT NULL DEFAULT 0,
    duplicates     bigint      NOT NULL DEFAULT 0,
    rejected       bigint      NOT NULL DEFAULT 0,
    attempts       integer     NOT NULL DEFAULT 0,
    -- First attempt; also the received_at of the file's events and rejects, so that a rerun
    -- keys its rejected records exactly as the interrupted run did (no duplicate rejects).
    started_at     timestamptz NOT NULL DEFAULT now(),
    updated_at     timestamptz NOT NULL DEFAULT now(),
    completed_at   timestamptz,
    last_error     text,
    follow_cursor  bigint,  -- `backfill --follow`: unix time of the newest record seen
    CONSTRAINT backfill_files_origin_name_key UNIQUE (origin, name)
);
CREATE INDEX backfill_files_log_date_idx ON backfill_files (log_date);
