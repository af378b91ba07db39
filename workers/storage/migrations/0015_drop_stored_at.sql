-- `events.stored_at` goes: the time a worker stored the row, 8 bytes of every row (and its
-- alignment), read by nothing but the event page. What Copernica sent is untouched; how long
-- events wait before they are stored is the queue's age (metrics, the console's overview).
-- DROP COLUMN rewrites nothing: stored rows keep their bytes until they are rewritten, new
-- rows are without them.
--
-- A view that reads the column (an operator's, `SELECT * FROM events` included) would stop the
-- DROP with PostgreSQL's own error; the migration names them first, changing nothing.
DO $$
DECLARE
    names text;
BEGIN
    SELECT string_agg(DISTINCT r.ev_class::regclass::text, ', ') INTO names
    FROM pg_depend d
    JOIN pg_rewrite r ON r.oid = d.objid
    JOIN pg_attribute a ON a.attrelid = d.refobjid AND a.attnum = d.refobjsubid AND a.attname = 'stored_at'
    WHERE d.classid = 'pg_rewrite'::regclass AND d.refclassid = 'pg_class'::regclass
      AND (d.refobjid = 'events'::regclass
           OR d.refobjid IN (SELECT inhrelid FROM pg_inherits WHERE inhparent = 'events'::regclass))
      AND r.ev_class <> d.refobjid;
    IF names IS NOT NULL THEN
        RAISE EXCEPTION 'views read events.stored_at (%): drop them, run `ingest migrate` again, then make them'
                        ' again without it', names;
    END IF;
END $$;

ALTER TABLE events DROP COLUMN stored_at;
