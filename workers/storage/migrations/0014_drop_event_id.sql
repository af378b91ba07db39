-- `events.id` goes, with its primary key (id, occurred_at): an event is named by its key, and
-- (event_key, occurred_at) is UNIQUE already (0004; a uuid since 0011). The identity column
-- cost 8 bytes a row, a sequence call and an index entry per row stored, and the primary key's
-- index about 31 bytes an event; nothing needs them (the console's event page and its paging
-- go by the key now, the click rules by (event_key, occurred_at) since 0013, checked below).
--
-- Cheap on a big table: both statements go down to every partition, but DROP CONSTRAINT only
-- drops the primary key's indexes and DROP COLUMN only marks the column dropped (no rewrite, no
-- index rebuild; the unique constraint on (event_key, occurred_at) is left as it is). Rows
-- stored before keep the column's 8 bytes on disk until they are rewritten (VACUUM FULL) or
-- pruned; rows stored after do without them. `events` is locked only for the moment it takes.
-- The identity's sequence is dropped with the column.
--
-- Anything else on the column or on the primary key (an operator's view that names `id`,
-- `SELECT * FROM events` included; a foreign key to (id, occurred_at)) would stop the DROP,
-- and a view could not be made again as it was: its definition names `id`. The migration stops
-- first and names them, changing nothing. Views that read `events` without `id` (ours:
-- `suppressions`; any through the whole row, as `event_fields(e)`) are not touched.

DO $$
DECLARE
    names text;
BEGIN
    WITH tables AS (
        SELECT 'events'::regclass::oid AS rel
        UNION ALL
        SELECT inhrelid FROM pg_inherits WHERE inhparent = 'events'::regclass
    ), targets AS (  -- the column `id` of `events` and of each partition; the primary key's index and constraint
        SELECT 'pg_class'::regclass AS classid, a.attrelid AS objid, a.attnum::integer AS subid
        FROM tables t JOIN pg_attribute a ON a.attrelid = t.rel AND a.attname = 'id' AND NOT a.attisdropped
        UNION ALL
        SELECT 'pg_class'::regclass, i.indexrelid, 0 FROM tables t JOIN pg_index i ON i.indrelid = t.rel AND i.indisprimary
        UNION ALL
        SELECT 'pg_constraint'::regclass, c.oid, 0 FROM tables t JOIN pg_constraint c ON c.conrelid = t.rel AND c.contype = 'p'
    )
    SELECT string_agg(DISTINCT CASE WHEN r.oid IS NOT NULL THEN 'view ' || r.ev_class::regclass::text
                                    ELSE pg_describe_object(d.classid, d.objid, d.objsubid) END, ', ')
    INTO names
    FROM targets t
    JOIN pg_depend d ON d.refclassid = t.classid AND d.refobjid = t.objid AND d.refobjsubid = t.subid
                    AND d.deptype = 'n'
    LEFT JOIN pg_rewrite r ON d.classid = 'pg_rewrite'::regclass AND r.oid = d.objid
    LEFT JOIN pg_constraint k ON d.classid = 'pg_constraint'::regclass AND k.oid = d.objid
    WHERE coalesce(k.conparentid, 0) = 0;  -- a foreign key once, not once more per partition
    IF names IS NOT NULL THEN
        RAISE EXCEPTION 'these depend on events.id or its primary key (%): drop them, run `ingest migrate` again,'
                        ' then make them again without `id` (an event is named by its event_key, with occurred_at)',
                        names;
    END IF;
END $$;

ALTER TABLE events DROP CONSTRAINT events_pkey;
ALTER TABLE events DROP COLUMN id;

-- The click rules of 0006 read `events.id`; 0013 keys them by (event_key, occurred_at). Called
-- on no message, the function is planned and so checked: if it still reads `id` (0013 not
-- applied), the migration stops here and nothing is changed, rather than every click failing.
DO $$
BEGIN
    IF to_regprocedure('messages_apply_click_rules(text[])') IS NOT NULL THEN
        PERFORM messages_apply_click_rules('{}'::text[]);
    END IF;
EXCEPTION WHEN undefined_column THEN
    RAISE EXCEPTION 'messages_apply_click_rules still reads events.id (%): migration 0013 must come first,'
                    ' from a version of copernica-ingest that has it', SQLERRM;
END $$;
