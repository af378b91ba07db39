-- `events.event_key` as a `uuid`: the first 128 bits of the sha256 key (32 hex digits) instead
-- of the whole key as 64 characters of text (workers.storage.keys.stored_key says why 128 bits
-- are enough). 16 bytes of fixed width: the unique index (event_key, occurred_at) shrinks from
-- about 137 to about 50 bytes per event, and each row by 49 bytes.
--
-- Every row is kept, its key cut to its first 32 hex digits, so a re-delivery of a stored event
-- (which workers now write the same way) is still refused by the unique constraint. A key that
-- is not hex (none is made by workers.events.model.event_key; a row typed in by hand might be)
-- becomes the md5 of its text rather than stopping the migration.
--
-- `events` is partitioned (0004): the ALTER goes down to every partition, rewrites each and
-- rebuilds its indexes, the unique constraint's included, all in this transaction; `events` is
-- locked meanwhile (workers wait, the receiver does not). Partitions made later copy the
-- parent's columns (`events_create_partition`: LIKE events), so they get the uuid too.
--
-- Views that read the column, of `events` or a partition (none of the project's: an operator's,
-- `SELECT * FROM events` included) would stop the ALTER: they, and views on them, are dropped
-- and made again from their own stored definitions, with their grants, as 0004 did.

CREATE TEMP TABLE event_key_views ON COMMIT DROP AS
WITH RECURSIVE dependents(oid, depth) AS (
    SELECT DISTINCT r.ev_class, 1  -- on the column, of `events` or of one of its partitions
    FROM pg_depend d
    JOIN pg_rewrite r ON r.oid = d.objid
    JOIN pg_attribute a ON a.attrelid = d.refobjid AND a.attnum = d.refobjsubid AND a.attname = 'event_key'
    WHERE d.classid = 'pg_rewrite'::regclass AND d.refclassid = 'pg_class'::regclass
      AND (d.refobjid = 'events'::regclass
           OR d.refobjid IN (SELECT inhrelid FROM pg_inherits WHERE inhparent = 'events'::regclass))
      AND r.ev_class <> d.refobjid
    UNION
    SELECT r.ev_class, v.depth + 1
    FROM dependents v
    JOIN pg_depend d ON d.refclassid = 'pg_class'::regclass AND d.refobjid = v.oid
    JOIN pg_rewrite r ON d.classid = 'pg_rewrite'::regclass AND r.oid = d.objid
    WHERE r.ev_class <> v.oid AND v.depth < 50
)
SELECT c.oid, c.oid::regclass::text AS name, pg_get_viewdef(c.oid) AS definition, c.relacl,
       max(v.depth) AS depth
FROM dependents v JOIN pg_class c ON c.oid = v.oid
WHERE c.relkind = 'v'
GROUP BY c.oid;

DO $$
DECLARE v record;
BEGIN
    FOR v IN SELECT name FROM event_key_views ORDER BY depth DESC, oid DESC LOOP
        EXECUTE format('DROP VIEW %s', v.name);  -- RESTRICT: anything else on it stops the migration
    END LOOP;
END $$;

ALTER TABLE events ALTER COLUMN event_key TYPE uuid USING
    CASE WHEN event_key ~* '^[0-9a-f]{32}' THEN left(event_key, 32) ELSE md5(event_key) END::uuid;

DO $$
DECLARE v record; g record;
BEGIN
    FOR v IN SELECT name, definition FROM event_key_views ORDER BY depth, oid LOOP
        EXECUTE format('CREATE VIEW %s AS %s', v.name, v.definition);
    END LOOP;
    FOR g IN SELECT e.name, a.privilege_type, a.grantee, a.is_grantable
             FROM event_key_views e, aclexplode(e.relacl) a
             WHERE a.grantee <> a.grantor LOOP
        EXECUTE format('GRANT %s ON %s TO %s%s', g.privilege_type, g.name,
                       CASE WHEN g.grantee = 0 THEN 'PUBLIC' ELSE quote_ident(pg_get_userbyid(g.grantee)) END,
                       CASE WHEN g.is_grantable THEN ' WITH GRANT OPTION' ELSE '' END);
    END LOOP;
END $$;

ANALYZE events;
