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

ALTER TABLE events ALTER COLUMN user_agent TYPE bigint USING agent_hash(user_agent);
ALTER TABLE events RENAME COLUMN user_agent TO user_agent_hash;

CREATE FUNCTION user_agent(e events) RETURNS text LANGUAGE sql STABLE AS $fn$
SELECT user_agent FROM user_agents WHERE agent_hash = e.user_agent_hash
$fn$;
