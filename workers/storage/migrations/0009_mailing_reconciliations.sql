-- Each per-mailing reconciliation (`ingest reconcile --mailing`, and the mailings a round of
-- `ingest reconcile --follow` compares): Copernica's statistics against our counts, one row per
-- comparison (after `--fix` a second row, `fixed`, with the counts after the backfill). A check
-- that had no statistics (unknown mailing, API down) writes nothing. Only counts, no personal data.
-- `workers/storage/reconciliations.py` writes and reads it, and keeps the newest rows of each
-- mailing only (its KEEP): `--follow` compares a mailing every round for days.
CREATE TABLE mailing_reconciliations (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    mailing_id  bigint      NOT NULL,
    checked_at  timestamptz NOT NULL DEFAULT now(),
    source      text        NOT NULL CHECK (source IN ('ms', 'publisher')),
    since       date,                  -- `--since`: both sides counted from that day; NULL: all
    -- [{"name": "deliveries", "copernica": n or null, "stored": n, "missing": n, "extra": n}, ...]
    -- in the order `ingest reconcile` prints them
    measures    jsonb       NOT NULL,
    missing     boolean     NOT NULL,  -- some measure had fewer stored than Copernica counts
    fixed       boolean     NOT NULL DEFAULT false  -- the comparison after a `--fix` backfill
);
CREATE INDEX mailing_reconciliations_mailing_idx ON mailing_reconciliations (mailing_id, checked_at DESC, id DESC);
