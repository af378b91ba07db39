-- Retention: `events` partitioned by month (UTC) on occurred_at, so that `ingest prune` drops
-- old months whole (DETACH + DROP) instead of deleting rows. Converts the unpartitioned table
-- in this one transaction: every row is kept with its id, key and values; the identity goes on
-- past the old one; views on `events` (mailing_stats) are recreated from their own stored
-- definitions, and grants on `events` and those views are given again. The table is locked
-- and copied once: workers wait for the migration (the receiver does not, it only queues).
--
-- One row per event. A unique constraint of a partitioned table must contain the partition
-- key, so UNIQUE (event_key) becomes UNIQUE (event_key, occurred_at), and the primary key
-- (id, occurred_at). The guard is unchanged wherever occurred_at follows from the fields the
-- key is built from: message and profile keys contain the occurred second, read from the
-- same `time`/`timestamp` field that gives occurred_at (whole seconds), so every delivery of
-- such an event, webhook or logfile, has the same (event_key, occurred_at). Where it does not
-- (no usable time: occurred_at is the time of receipt; a timestamp text with a fraction of a
-- second), workers/store.py also looks the key up in every partition; see it for the limit.
--
-- Partitions: `events_pYYYYMM` holds [first of the month, first of the next) in UTC;
-- `events_default` catches anything else so that an insert never fails. Partitions are made
-- by events_create_partition() below, the one implementation, called by this migration (the
-- months present in the old rows), by `ingest migrate` (months ahead: workers.partitions)
-- and by workers for the months of a batch they lack.

-- Creates the partition of `month` unless it exists; returns whether it did. Rows of that
-- month already in the default partition (it had no partition when they came) would make the
-- ATTACH fail: they are moved into the new table first, in the same transaction. ATTACH locks
-- `events` only against other DDL (SHARE UPDATE EXCLUSIVE), unlike CREATE TABLE ... PARTITION
-- OF (ACCESS EXCLUSIVE); it still locks the default partition exclusively while it checks it.
CREATE FUNCTION events_create_partition(month date) RETURNS boolean LANGUAGE plpgsql AS $$
DECLARE
    first_day date := date_trunc('month', month)::date;
    lower_bound timestamptz := first_day::timestamp AT TIME ZONE 'UTC';
    upper_bound timestamptz := (first_day + interval '1 month')::timestamp AT TIME ZONE 'UTC';
    part text := 'events_p' || to_char(first_day, 'YYYYMM');
BEGIN
    -- one creator at a time; held until the caller's transaction ends
    PERFORM pg_advisory_xact_lock(hashtext('copernica-ingest: events partitions'));
    IF EXISTS (SELECT 1 FROM pg_inherits WHERE inhparent = 'events'::regclass
               AND inhrelid = to_regclass(quote_ident(part))) THEN
        RETURN false;
    END IF;
    EXECUTE format('CREATE TABLE %I (LIKE events INCLUDING DEFAULTS INCLUDING CONSTRAINTS)', part);
    IF to_regclass('events_default') IS NOT NULL THEN
        EXECUTE format('WITH moved AS (DELETE FROM events_default WHERE occurred_at >= $1 AND occurred_at < $2'
                       ' RETURNING *) INSERT INTO %I SELECT * FROM moved', part)
            USING lower_bound, upper_bound;
    END IF;
    EXECUTE format('ALTER TABLE events ATTACH PARTITION %I FOR VALUES FROM (%L) TO (%L)',
                   part, lower_bound, upper_bound);
    RETURN true;
END $$;

-- Views that read `events`, and grants on them and on `events`, kept to be made again.
CREATE TEMP TABLE events_dependents ON COMMIT DROP AS
SELECT v.oid, v.oid::regclass::text AS name, pg_get_viewdef(v.oid) AS definition, v.relacl
FROM pg_class v
WHERE v.relkind = 'v' AND v.oid IN (
    SELECT r.ev_class FROM pg_depend d JOIN pg_rewrite r ON r.oid = d.objid
    WHERE d.classid = 'pg_rewrite'::regclass AND d.refclassid = 'pg_class'::regclass
      AND d.refobjid = 'events'::regclass);
CREATE TEMP TABLE events_grants ON COMMIT DROP AS
SELECT 'events' AS name, relacl FROM pg_class WHERE oid = 'events'::regclass
UNION ALL
SELECT name, relacl FROM events_dependents;

DO $$
DECLARE v record;
BEGIN
    FOR v IN SELECT name FROM events_dependents ORDER BY oid DESC LOOP
        EXECUTE format('DROP VIEW %s', v.name);  -- RESTRICT: a view on such a view stops the migration
    END LOOP;
END $$;

-- The old table steps aside; its names are freed for the new one.
ALTER TABLE events RENAME TO events_unpartitioned;
ALTER TABLE events_unpartitioned RENAME CONSTRAINT events_pkey TO events_unpartitioned_pkey;
ALTER TABLE events_unpartitioned RENAME CONSTRAINT events_event_key_key TO events_unpartitioned_event_key_key;
DROP INDEX events_event_type_idx, events_occurred_at_idx, events_mailing_type_idx, events_message_id_idx,
    events_recipient_idx;
DO $$
BEGIN
    EXECUTE format('ALTER SEQUENCE %s RENAME TO events_unpartitioned_id_seq',
                   pg_get_serial_sequence('events_unpartitioned', 'id'));
END $$;

-- The same columns in the same order (0001, then 0002).
CREATE TABLE events (
    id              bigint GENERATED ALWAYS AS IDENTITY,
    event_key       text        NOT NULL,
    event_type      text        NOT NULL,
    copernica_type  text        NOT NULL,
    occurred_at     timestamptz NOT NULL,
    received_at     timestamptz NOT NULL,
    source          text        NOT NULL CHECK (source IN ('webhook', 'logfile')),
    message_id      text,
    recipient       text,
    payload         jsonb       NOT NULL,
    stored_at       timestamptz NOT NULL DEFAULT now(),
    ip              inet,
    user_agent      text,
    url             text,
    link_id         text,
    mailing_id      bigint,
    profile_id      bigint,
    subprofile_id   bigint,
    database_id     bigint,
    collection_id   bigint,
    template_id     bigint,
    tags            text[],
    smtp_code       integer,
    smtp_status     text,
    description     text,
    account         text
) PARTITION BY RANGE (occurred_at);
CREATE TABLE events_default PARTITION OF events DEFAULT;

SELECT events_create_partition(m)
FROM (SELECT DISTINCT date_trunc('month', occurred_at AT TIME ZONE 'UTC')::date AS m
      FROM events_unpartitioned) AS months
ORDER BY m;

-- Loaded before the indexes exist (one build per index instead of row-by-row upkeep).
INSERT INTO events (id, event_key, event_type, copernica_type, occurred_at, received_at, source, message_id,
                    recipient, payload, stored_at, ip, user_agent, url, link_id, mailing_id, profile_id,
                    subprofile_id, database_id, collection_id, template_id, tags, smtp_code, smtp_status,
                    description, account)
OVERRIDING SYSTEM VALUE
SELECT id, event_key, event_type, copernica_type, occurred_at, received_at, source, message_id,
       recipient, payload, stored_at, ip, user_agent, url, link_id, mailing_id, profile_id,
       subprofile_id, database_id, collection_id, template_id, tags, smtp_code, smtp_status,
       description, account
FROM events_unpartitioned;

-- New ids go on after the old table's: past its sequence (rolled-back inserts used numbers too)
-- and past every id kept.
SELECT setval(pg_get_serial_sequence('events', 'id'),
              greatest((SELECT max(id) FROM events), pg_sequence_last_value('events_unpartitioned_id_seq'), 0) + 1,
              false);

DROP TABLE events_unpartitioned;  -- RESTRICT: anything else depending on it stops the migration

ALTER TABLE events ADD CONSTRAINT events_pkey PRIMARY KEY (id, occurred_at);
ALTER TABLE events ADD CONSTRAINT events_event_key_occurred_at_key UNIQUE (event_key, occurred_at);
CREATE INDEX events_event_type_idx ON events (event_type);
CREATE INDEX events_occurred_at_idx ON events (occurred_at);
CREATE INDEX events_mailing_type_idx ON events (mailing_id, event_type);
CREATE INDEX events_message_id_idx ON events (message_id);
CREATE INDEX events_recipient_idx ON events (recipient);

DO $$
DECLARE v record; g record;
BEGIN
    FOR v IN SELECT name, definition FROM events_dependents ORDER BY oid LOOP
        EXECUTE format('CREATE VIEW %s AS %s', v.name, v.definition);
    END LOOP;
    FOR g IN SELECT e.name, a.privilege_type, a.grantee, a.is_grantable
             FROM events_grants e, aclexplode(e.relacl) a
             WHERE a.grantee <> a.grantor LOOP
        EXECUTE format('GRANT %s ON %s TO %s%s', g.privilege_type, g.name,
                       CASE WHEN g.grantee = 0 THEN 'PUBLIC' ELSE quote_ident(pg_get_userbyid(g.grantee)) END,
                       CASE WHEN g.is_grantable THEN ' WITH GRANT OPTION' ELSE '' END);
    END LOOP;
END $$;

ANALYZE events;
