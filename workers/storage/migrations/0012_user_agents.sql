-- User agents stored once: `events.user_agent` (a browser's is a hundred bytes or more, on most
-- opens and clicks, and a few thousand texts make nearly all of them) becomes
-- `events.user_agent_hash`, the first 8 bytes of the text's sha256 as a bigint, and the text is
-- kept once in `user_agents`. The workers add the texts they have not seen in the transaction
-- that stores their events (workers.storage.copy_text.agent_hash is the same hash).
--
-- `e.user_agent` keeps giving the text (a function of the row, `user_agent(events)`), so
-- `event_fields(e)` and the queries that name it through the row go on working; an unqualified
-- `user_agent` no longer exists.

CREATE FUNCTION agent_hash(text) RETURNS bigint LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE AS $fn$
SELECT ('x' || encode(substr(sha256(convert_to($1, 'UTF8')), 1, 8), 'hex'))::bit(64)::bigint
$fn$;

CREATE TABLE user_agents (
    agent_hash  bigint PRIMARY KEY,
    user_agent  text NOT NULL
);

-- Two different texts with one hash would fail here (the primary key), not lose one.
INSERT INTO user_agents (agent_hash, user_agent)
SELECT agent_hash(user_agent), user_agent FROM (SELECT DISTINCT user_agent FROM events WHERE user_agent IS NOT NULL) AS d;

-- A view that reads the column (an operator's, `SELECT * FROM events` included) would stop the
-- ALTER, and could not be made again as it was: its stored definition names `user_agent` bare,
-- which from now on is no column. The migration stops first and names them, changing nothing.
DO $$
DECLARE
    names text;
BEGIN
    SELECT string_agg(DISTINCT r.ev_class::regclass::text, ', ') INTO names
    FROM pg_depend d
    JOIN pg_rewrite r ON r.oid = d.objid
    JOIN pg_attribute a ON a.attrelid = d.refobjid AND a.attnum = d.refobjsubid AND a.attname = 'user_agent'
    WHERE d.classid = 'pg_rewrite'::regclass AND d.refclassid = 'pg_class'::regclass
      AND (d.refobjid = 'events'::regclass
           OR d.refobjid IN (SELECT inhrelid FROM pg_inherits WHERE inhparent = 'events'::regclass))
      AND r.ev_class <> d.refobjid;
    IF names IS NOT NULL THEN
        RAISE EXCEPTION 'views read events.user_agent (%): drop them, run `ingest migrate` again, then make them'
                        ' again reading e.user_agent (the text, now a function of the row: FROM events e)', names;
    END IF;
END $$;

ALTER TABLE events ALTER COLUMN user_agent TYPE bigint USING agent_hash(user_agent);
ALTER TABLE events RENAME COLUMN user_agent TO user_agent_hash;

CREATE FUNCTION user_agent(e events) RETURNS text LANGUAGE sql STABLE AS $fn$
SELECT user_agent FROM user_agents WHERE agent_hash = e.user_agent_hash
$fn$;
